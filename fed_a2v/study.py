"""The batch-size study: does batch size, stratified batching or the per-class loss matter?

Every arm trains fresh adapters on the same clips (all classes, the configured train folds),
with the same targets, epochs and seeds; only batch size, batching, loss and gradient
accumulation differ. Held-out top-1 is measured after every epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .adapters import build_adapters
from .config import Config, NodeConfig
from .data import open_corpus, split_for_node
from .evaluation import evaluate_adapters
from .node import NodeIdentity, node_data
from .targets import targets_for
from .train import LocalTrainConfig, train_local

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arm:
    batch_size: int
    stratified: bool
    per_class_loss: bool
    grad_accum_steps: int = 1

    @property
    def name(self) -> str:
        parts = [f"bs{self.batch_size}", "stratified" if self.stratified else "random",
                 "per-class" if self.per_class_loss else "mean"]
        if self.grad_accum_steps > 1:
            parts.append(f"accum{self.grad_accum_steps}")
        return " ".join(parts)


def default_arms(batch_sizes: tuple[int, ...] = (1, 8, 16, 32)) -> list[Arm]:
    """Batch sizes x random/stratified x mean/per-class, and gradient accumulation (4 x 4)."""
    arms = [Arm(bs, strat, per_class) for bs in batch_sizes for strat in (False, True)
            for per_class in (False, True)]
    return arms + [Arm(4, False, False, grad_accum_steps=4)]


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def run_study(config: Config, arms: list[Arm], seeds: list[int], epochs: int,
              lr: dict[str, float] | None = None) -> dict[str, Any]:
    """Train every arm with every seed for `epochs`; returns everything measured."""
    corpus = open_corpus(config)
    targets = targets_for(config, corpus)
    ident = NodeIdentity(NodeConfig(), 0, 1, "study")  # one node holding every clip
    data, _ = node_data(config, ident, targets)
    train, test, hidden = data.train, data.test, data.hidden_size
    split = split_for_node(corpus, ident.settings, 0, 1, config, where="study")
    split_id = hashlib.sha256("\n".join(str(c.path) for c in split.train).encode()).hexdigest()
    lr = lr or {name: config.adapter_lr(name) for name in ("clip", "t5")}
    cpu = torch.device("cpu")
    d_clip, d_t5 = (targets.tensors[k].shape[-1] for k in ("clip", "t5"))

    results = []
    for arm in arms:
        runs = []
        for seed in seeds:
            adapters = build_adapters(hidden, d_clip, d_t5, config.feda2v, seed=seed)
            curves: dict[str, list[float]] = {"eval_clip_top1": [], "eval_t5_top1": []}

            def after_epoch(_: int, adapters=adapters, curves=curves) -> None:
                metrics = evaluate_adapters(adapters, test, targets.tensors,
                                            config.training.eval_batch_size, cpu)
                for key in curves:
                    curves[key].append(metrics[key])

            local = LocalTrainConfig(
                epochs=epochs, batch_size=arm.batch_size, stratified=arm.stratified,
                per_class_loss=arm.per_class_loss, grad_accum_steps=arm.grad_accum_steps,
                learning_rates=lr,
                weight_decays={n: config.adapter_weight_decay(n) for n in ("clip", "t5")},
                seed=seed)
            history = train_local(adapters, train, targets.tensors, local, cpu,
                                  on_epoch=after_epoch)
            runs.append({"seed": seed, "train_clip_loss": history["clip"],
                         "train_t5_loss": history["t5"], **curves})
        final = {key: _mean_std([r[key][-1] for r in runs])
                 for key in ("train_clip_loss", "train_t5_loss", "eval_clip_top1",
                             "eval_t5_top1")}
        log.info("%s: %s", arm.name, {k: round(v["mean"], 4) for k, v in final.items()})
        results.append({"arm": asdict(arm), "name": arm.name, "epochs": epochs,
                        "train_clips": len(train), "test_clips": len(test),
                        "split": split_id, "runs": runs, "final": final})
    return {"epochs": epochs, "seeds": seeds, "learning_rates": lr,
            "train_clips": len(train), "test_clips": len(test), "classes": len(targets.names),
            "arms": results}


def _cell(stat: dict[str, float], digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def study_table(study: dict[str, Any]) -> str:
    lines = [f"| arm | CLIP loss (epoch {study['epochs']}) | T5 loss (epoch {study['epochs']}) "
             "| eval_clip_top1 | eval_t5_top1 |", "|---|---|---|---|---|"]
    for arm in study["arms"]:
        f = arm["final"]
        lines.append(f"| {arm['name']} | {_cell(f['train_clip_loss'], 4)} | "
                     f"{_cell(f['train_t5_loss'], 4)} | {_cell(f['eval_clip_top1'])} | "
                     f"{_cell(f['eval_t5_top1'])} |")
    return "\n".join(lines)


def effect(study: dict[str, Any], factor: str) -> dict[str, float]:
    """Mean change of each final value when `factor` is switched on, over matching arms."""
    by_key = {json.dumps({k: v for k, v in a["arm"].items() if k != factor}, sort_keys=True):
              {} for a in study["arms"]}
    for arm in study["arms"]:
        key = json.dumps({k: v for k, v in arm["arm"].items() if k != factor}, sort_keys=True)
        by_key[key][arm["arm"][factor]] = arm["final"]
    pairs = [(d[False], d[True]) for d in by_key.values() if False in d and True in d]
    return {metric: statistics.fmean(on[metric]["mean"] - off[metric]["mean"]
                                     for off, on in pairs)
            for metric in ("train_clip_loss", "train_t5_loss", "eval_clip_top1",
                           "eval_t5_top1")} if pairs else {}


def plot_study(study: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({(a["arm"]["batch_size"], a["arm"]["grad_accum_steps"]) for a in study["arms"]})
    written = []
    for name, keys in (("loss", ("train_clip_loss", "train_t5_loss")),
                       ("accuracy", ("eval_clip_top1", "eval_t5_top1"))):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
        for ax, key in zip(axes, keys, strict=True):
            for arm in study["arms"]:
                curves = torch.tensor([r[key] for r in arm["runs"]])
                a = arm["arm"]
                # Colour: batch size; dashed: stratified; dots: per-class loss.
                ax.plot(range(1, study["epochs"] + 1), curves.mean(0), label=arm["name"],
                        color=f"C{sizes.index((a['batch_size'], a['grad_accum_steps']))}",
                        linestyle="--" if a["stratified"] else "-",
                        marker="." if a["per_class_loss"] else None)
            ax.set_title(key)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=6, ncol=2)
        fig.tight_layout()
        path = out / f"study_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_study(study: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(study, indent=1))
    plots = plot_study(study, out)
    reading = []
    for factor, label in (("stratified", "stratified batching"),
                          ("per_class_loss", "the per-class loss")):
        change = effect(study, factor)
        if change:
            reading.append(
                f"- Switching on {label} changes, on average over the matching arms: "
                + ", ".join(f"{k} {v:+.4f}" for k, v in change.items()) + ".")
    md = ["# Batch-size study\n",
          f"{study['train_clips']} training clips, {study['test_clips']} held-out clips, "
          f"{study['classes']} classes; every arm {study['epochs']} epochs on the same clips; "
          f"seeds {study['seeds']}; LR {study['learning_rates']}. Mean ± std over seeds.\n",
          study_table(study), "", "## Reading", *reading,
          "- With stratified batches every batch holds one class, so there the per-class loss "
          "equals the mean loss: those pairs differ by seed noise only.", "",
          *[f"![{p.stem}]({p.name})" for p in plots]]
    path = out / "study.md"
    path.write_text("\n".join(md) + "\n")
    return path
