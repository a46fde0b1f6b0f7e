"""A run as pictures: PNG plots of every per-round series, per adapter and per node, and the
learning-rate schedules, with `report.md` holding the final numbers. Rounds without a value
(no evaluation there: `eval_gap`; no val clips) are left out of a series, never drawn as 0."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SERIES = {
    "losses": ("training loss (last local epoch)", ["train_clip_loss", "train_t5_loss"]),
    "mse": ("MSE (eval: held-out clips, val: validation clips)",
            ["eval_clip_mse", "eval_t5_mse", "val_clip_mse", "val_t5_mse"]),
    "cosine": ("cosine to own target (eval: held-out, val: validation)",
               ["eval_clip_cosine", "eval_t5_cosine", "val_clip_cosine", "val_t5_cosine"]),
    "top1": ("top-1 (eval: held-out, val: validation)",
             ["eval_clip_top1", "eval_t5_top1", "val_clip_top1", "val_t5_top1"]),
    "lr": ("learning rate", ["clip_lr", "t5_lr"]),
}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def write_report(run_dir: str | Path) -> Path:
    """Write `plot_*.png` and `report.md` into the run directory; returns the report's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rounds = _read_jsonl(run_dir / "metrics.jsonl")
    if not rounds:
        raise ValueError(f"{run_dir}: no metrics.jsonl with rounds in it")
    nodes = _read_jsonl(run_dir / "nodes.jsonl")
    # The per-node grid shows only the adapters the run trained: an sd run has no t5.
    recorded = {k for r in rounds + nodes for k, v in r.items() if v is not None}
    images = []
    for name, (title, keys) in SERIES.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in keys:
            points = [(r["round"], r[key]) for r in rounds if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=key)
        ax.set(title=title, xlabel="round")
        ax.grid(alpha=0.3)
        ax.legend()
        images.append(_save(fig, run_dir / f"plot_{name}.png", plt))
    keys = [k for _, series in SERIES.values() for k in series
            if not k.endswith("_lr") and k in recorded]
    if nodes and keys:
        rows = len({k.split("_")[1] for k in keys}) or 1  # one row per adapter
        cols = -(-len(keys) // rows)
        fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.5 * rows), squeeze=False)
        for ax, key in zip(axes.T.flat, keys, strict=False):
            for node in sorted({n["node"] for n in nodes}):
                points = [(n["round"], n[key]) for n in nodes
                          if n["node"] == node and n.get(key) is not None]
                if points:
                    ax.plot(*zip(*points, strict=True), marker=".", label=f"node {node}")
            ax.set(title=f"{key} per node", xlabel="round")
            ax.grid(alpha=0.3)
        axes.flat[0].legend(fontsize=7)
        images.append(_save(fig, run_dir / "plot_nodes.png", plt))
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    # A metric's final value is its last recorded one (evaluated rounds only, with eval_gap).
    final = {k: (r["round"], v) for r in rounds for k, v in r.items()
             if k != "round" and isinstance(v, (int, float))}
    lines = [f"# Run {run_dir.name}", "",
             f"{len(rounds)} rounds recorded" + (f" of {summary['rounds']}, "
                                                 f"{summary['num_nodes']} nodes, "
                                                 f"{summary['wall_seconds']} s"
                                                 if summary else " (no summary: unfinished)"),
             "", *_mode_lines(summary), "| metric | final | round |", "|---|---|---|"]
    lines += [f"| {k} | {v:.4g} | {r} |" for k, (r, v) in final.items()]
    lines += ["", *[f"![{p.stem}]({p.name})" for p in images]]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _mode_lines(summary: dict[str, Any]) -> list[str]:
    """How the nodes' adapters were combined and evaluated, from the summary."""
    lines = []
    if summary.get("adapter_aggregation_mode"):
        lines.append(f"Adapter aggregation: {summary['adapter_aggregation_mode']}; nodes "
                     f"evaluated every {summary.get('eval_gap', 1)} rounds and after the last.")
    standalone = summary.get("standalone")
    if standalone:
        lines += ["", "Standalone run: every node trained its own adapters and kept them; no "
                  "adapter crossed the network. Overlap check " + standalone["overlap_check"]
                  + ".", "", "| node | its adapters | rounds trained |", "|---|---|---|"]
        lines += [f"| {node} | `{own['path']}` | {own['rounds']} |"
                  for node, own in sorted(standalone["node_adapters"].items())]
    return [*lines, ""] if lines else []


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
