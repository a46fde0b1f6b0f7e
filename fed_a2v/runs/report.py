"""A run as pictures: PNG plots of every per-round series, per adapter and per node, and the
learning-rate schedules, with `report.md` holding the final numbers and each node's. Rounds
without a value (no evaluation there: `eval_gap`; no val clips) are left out of a series, never
drawn as 0. Round axes have whole-number ticks. Nodes appear under their names
(`fed_a2v.runs.node_records`), each once, also after a resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fed_a2v.extras import absent, install_command
from fed_a2v.runs.node_records import node_names, node_order, read_nodes

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
LINES_UP_TO = 8  # the per-node plot: a line per node up to this many nodes, else a heatmap


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def write_report(run_dir: str | Path) -> Path:
    """Write `plot_*.png` and `report.md` into the run directory; returns the report's path.
    Without matplotlib (the `plots` extra) only `report.md`, after one warning."""
    run_dir = Path(run_dir)
    rounds = _read_jsonl(run_dir / "metrics.jsonl")
    if not rounds:
        raise ValueError(f"{run_dir}: no metrics.jsonl with rounds in it")
    nodes = read_nodes(run_dir / "nodes.jsonl")
    plotted = "matplotlib" not in absent("plots")
    images = _plots(run_dir, rounds, nodes) if plotted else []
    report = run_dir / "report.md"
    report.write_text("\n".join(_report_lines(run_dir, rounds, nodes, images, plotted)) + "\n")
    return report


def _pyplot() -> Any:
    """matplotlib.pyplot, drawing to files only."""
    # Deferred: matplotlib is the `plots` extra's, and a run without it still writes report.md.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _round_axis(ax: Any) -> None:
    """An x axis of rounds: whole-number ticks only."""
    from matplotlib.ticker import MaxNLocator  # deferred: the `plots` extra, as in `_pyplot`

    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def node_keys(nodes: list[dict[str, Any]]) -> list[str]:
    """The series the per-node plot shows: those of SERIES the nodes recorded (no learning
    rates; an sd run has no t5)."""
    recorded = {k for n in nodes for k, v in n.items() if v is not None}
    return [k for _, series in SERIES.values() for k in series
            if not k.endswith("_lr") and k in recorded]


def series_figure(rounds: list[dict[str, Any]], title: str, keys: list[str]) -> Any:
    """One plot of `metrics.jsonl`'s series `keys` over the rounds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in keys:
        points = [(r["round"], r[key]) for r in rounds if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=key)
    ax.set_title(title)
    _round_axis(ax)
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend()
    return fig


def nodes_figure(nodes: list[dict[str, Any]], keys: list[str]) -> Any:
    """Each node's own series (`read_nodes`' records), one panel per series, a row per
    adapter: with up to LINES_UP_TO nodes a line per node (one colour each, named in the
    legend), with more a heatmap of rounds × nodes (the nodes named on its side)."""
    plt = _pyplot()
    names = node_names(nodes)
    heatmap = len(names) > LINES_UP_TO
    rows = len({k.split("_")[1] for k in keys}) or 1  # one row per adapter
    cols = -(-len(keys) // rows)
    height = max(3.5, 0.16 * len(names) + 1.5) if heatmap else 3.5
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, height * rows), squeeze=False)
    for ax in list(axes.T.flat)[len(keys):]:  # filled column by column: an adapter a row
        ax.set_visible(False)
    for ax, key in zip(axes.T.flat, keys, strict=False):
        if heatmap:
            _node_heatmap(fig, ax, names, nodes, key)
        else:
            for i, node in enumerate(names):
                points = [(n["round"], n[key]) for n in nodes
                          if n["node"] == node and n.get(key) is not None]
                if points:
                    ax.plot(*zip(*points, strict=True), marker=".", label=node,
                            color=plt.get_cmap("tab10")(i))
            ax.grid(alpha=0.3)
        ax.set_title(f"{key} per node")
        _round_axis(ax)
    if not heatmap:
        from matplotlib.lines import Line2D  # deferred: the `plots` extra, as in `_pyplot`

        axes.flat[0].legend(handles=[Line2D([], [], color=plt.get_cmap("tab10")(i), marker=".",
                                            label=node) for i, node in enumerate(names)],
                            fontsize=7)
    return fig


def _node_heatmap(fig: Any, ax: Any, names: list[str], nodes: list[dict[str, Any]],
                  key: str) -> None:
    """`key` of every node (rows) in every round (columns); no value: blank."""
    first, last = nodes[0]["round"], nodes[-1]["round"]  # `read_nodes` sorts by round
    rows = {name: i for i, name in enumerate(names)}
    grid = np.full((len(names), last - first + 1), np.nan)
    for n in nodes:
        if n.get(key) is not None:
            grid[rows[n["node"]], n["round"] - first] = n[key]
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", interpolation="nearest",
                      extent=(first - 0.5, last + 0.5, len(names) - 0.5, -0.5))
    ax.set_yticks(range(len(names)), names, fontsize=6 if len(names) > 20 else 7)
    fig.colorbar(image, ax=ax)


def _plots(run_dir: Path, rounds: list[dict[str, Any]],
           nodes: list[dict[str, Any]]) -> list[Path]:
    """The PNG plots: each series of SERIES, and each node's series side by side."""
    plt = _pyplot()
    images = [_save(series_figure(rounds, title, keys), run_dir / f"plot_{name}.png", plt)
              for name, (title, keys) in SERIES.items()]
    keys = node_keys(nodes)
    if nodes and keys:
        images.append(_save(nodes_figure(nodes, keys), run_dir / "plot_nodes.png", plt))
    return images


def _report_lines(run_dir: Path, rounds: list[dict[str, Any]], nodes: list[dict[str, Any]],
                  images: list[Path], plotted: bool) -> list[str]:
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
    lines += ["", *node_table(nodes), *_baseline_lines(summary.get("baselines")),
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
                  for node, own in sorted(standalone["node_adapters"].items(),
                                          key=lambda n: node_order(n[0]))]
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


def node_table(nodes: list[dict[str, Any]]) -> list[str]:
    """report.md's table of the nodes, named as in `nodes.jsonl`: the rounds each trained in
    and its last training losses and held-out top-1."""
    if not nodes:
        return []
    keys = [k for k in (*SERIES["losses"][1], *SERIES["top1"][1][:2])
            if any(k in n for n in nodes)]
    lines = ["## Nodes", "", "Each node's own metrics (`nodes.jsonl`, `plot_nodes.png`); "
             "the last value recorded of each.", "",
             "| node | rounds trained | " + " | ".join(keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for name in node_names(nodes):
        own = [n for n in nodes if n["node"] == name]
        trained = sum(any(k.startswith("train_") for k in n) for n in own)
        last = {k: n[k] for n in own for k in keys if n.get(k) is not None}
        lines.append(f"| {name} | {trained} | "
                     + " | ".join(f"{last[k]:.4g}" if k in last else "–" for k in keys) + " |")
    return [*lines, ""]


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
                         for node, v in sorted(local["per_node"].items(),
                                               key=lambda n: node_order(n[0])))
    return [*lines, "", f"Local-only ridge per node: {per_node}.", "",
            *_cosine_lines(baselines.get("held_out_cosine"), spaces)]


def _cosine_lines(cosine: dict[str, Any] | None, spaces: list[str]) -> list[str]:
    """FedA2V's held-out cosine to the own target (what the diffusion model is conditioned
    on) beside the ridge maps': a map can buy top-1 with predictions far from every target."""
    if not cosine:
        return []
    rows = [("FedA2V (final round)", cosine["fedA2V"]),
            ("ridge, centralized", cosine["ridge_centralized"]),
            ("ridge, local-only (mean of the nodes)", cosine["local_only_ridge"])]
    return [f"Held-out cosine to the own target (the ridge maps' over the {cosine['clips']} "
            "held-out clips whose nodes reported it):", "",
            "| | " + " | ".join(f"{s} cosine" for s in spaces) + " |",
            "|---|" + "---|" * len(spaces),
            *(f"| {label} | " + " | ".join("–" if v.get(s) is None else f"{v[s]:.3f}"
                                           for s in spaces) + " |" for label, v in rows), ""]


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
