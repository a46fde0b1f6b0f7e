"""A run as pictures: PNG plots of every per-round series, per adapter and per node, and the
learning-rate schedules, with `report.md` holding the final numbers. Rounds without a value
(no evaluation there: `eval_gap`; no val clips) are left out of a series, never drawn as 0."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fed_a2v.extras import absent, install_command

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
    """Write `plot_*.png` and `report.md` into the run directory; returns the report's path.
    Without matplotlib (the `plots` extra) only `report.md`, after one warning."""
    run_dir = Path(run_dir)
    rounds = _read_jsonl(run_dir / "metrics.jsonl")
    if not rounds:
        raise ValueError(f"{run_dir}: no metrics.jsonl with rounds in it")
    nodes = _read_jsonl(run_dir / "nodes.jsonl")
    plotted = "matplotlib" not in absent("plots")
    images = _plots(run_dir, rounds, nodes) if plotted else []
    report = run_dir / "report.md"
    report.write_text("\n".join(_report_lines(run_dir, rounds, images, plotted)) + "\n")
    return report


def _plots(run_dir: Path, rounds: list[dict[str, Any]],
           nodes: list[dict[str, Any]]) -> list[Path]:
    """The PNG plots: each series of SERIES, and each node's series side by side."""
    # Deferred: matplotlib is the `plots` extra's, and a run without it still writes report.md.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    return images


def _report_lines(run_dir: Path, rounds: list[dict[str, Any]], images: list[Path],
                  plotted: bool) -> list[str]:
    """report.md's lines."""
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
    lines += ["", *_baseline_lines(summary.get("baselines")),
              *[f"![{p.stem}]({p.name})" for p in images]]
    if not plotted:
        lines += [f"No plots: matplotlib is not installed ({install_command('plots')}, then "
                  "`fed-a2v report` on this folder)."]
    return lines


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
    lines += _privacy_lines(summary.get("privacy"))
    return [*lines, ""] if lines else []


def _privacy_lines(privacy: dict[str, Any] | None) -> list[str]:
    """The (ε, δ) the run spent, node level (fed_a2v.federation.privacy)."""
    if not privacy or privacy.get("mechanism", "none") == "none":
        return []
    settings = (f"{privacy['mechanism']}, noise multiplier {privacy['noise_multiplier']:g}, "
                f"clipping norm {privacy['clipping_norm']:.4g}")
    if privacy["epsilon"] is None:
        return ["", f"Differential privacy ({settings}): no guarantee, the noise multiplier is "
                "0 (ε is infinite)."]
    return ["", f"Differential privacy ({settings}): (ε, δ) = ({privacy['epsilon']:.4g}, "
            f"{privacy['delta']:g}) after {privacy['rounds']} released rounds, for one node's "
            "participation in the global adapters (not the metrics nodes report)."]


def _baseline_lines(baselines: dict[str, Any] | None) -> list[str]:
    """FedA2V's final held-out top-1 beside the ridge baselines' and chance, with the gaps."""
    if not baselines:
        return []
    spaces = [k.removesuffix("_top1") for k in baselines["ridge_centralized"]]
    local = baselines["local_only_ridge"]

    def num(v: float | None, sign: str = "") -> str:
        return "–" if v is None else f"{v:{sign}.3f}"

    rows = [("FedA2V (final round)", [num(baselines["fedA2V"][f"{s}_top1"]) for s in spaces],
             None),
            ("ridge, centralized", [num(baselines["ridge_centralized"][f"{s}_top1"])
                                    for s in spaces], "ridge_centralized"),
            (f"ridge, local-only (mean, min–max of {len(local['per_node'])} nodes)",
             [f"{num(local.get(f'{s}_top1_mean'))} ({num(local.get(f'{s}_top1_min'))}–"
              f"{num(local.get(f'{s}_top1_max'))})" for s in spaces], "local_only_ridge"),
            ("chance", [num(baselines["chance"][f"{s}_top1"]) for s in spaces], "chance")]
    lines = [
        "## Baselines", "",
        f"Held-out top-1 on the same {baselines['held_out_clips']} clips ("
        f"{baselines['evaluated_nodes']} nodes) as FedA2V's final evaluation. Ridge: the "
        f"closed-form linear map from pooled tokens ({baselines['features']}) to the targets, "
        f"λ = {baselines['ridge_lambda']:g} × the mean diagonal of XᵀX. Centralized: solved on "
        "every node's training clips together (exactly, from the statistics the nodes sent "
        "once). Local-only: each node's own map from its training clips alone, scored on all "
        "held-out clips; this is a linear map, not local-only adapter training (the federation "
        "study's own arm). Chance: one over the number of targets competing.", "",
        "| | " + " | ".join(f"{s} top-1" for s in spaces) + " | "
        + " | ".join(f"FedA2V minus it ({s})" for s in spaces) + " |",
        "|---|" + "---|" * (2 * len(spaces))]
    for label, values, key in rows:
        gaps = [num(baselines["gap"][key][f"{s}_top1"], "+") if key else "" for s in spaces]
        lines.append(f"| {label} | " + " | ".join(values + gaps) + " |")
    per_node = "; ".join(f"{node}: " + ", ".join(f"{s} {num(v.get(f'{s}_top1'))}"
                                                for s in spaces)
                         for node, v in sorted(local["per_node"].items()))
    return [*lines, "", f"Local-only ridge per node: {per_node}.", ""]


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
