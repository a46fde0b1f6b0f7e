"""The batch-size study: does batch size, stratified batching or the per-class loss matter?

Every arm trains fresh adapters on the same clips (all classes, the configured train folds),
with the same targets, epochs and seeds; only batch size, batching, loss and gradient
accumulation differ. Held-out top-1 is measured after every epoch.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fed_a2v.config.schema import Config, NodeConfig
from fed_a2v.data.node_corpora import open_corpus
from fed_a2v.encode.encoded_set import EncodedSet
from fed_a2v.encode.node_data import NodeIdentity, node_data
from fed_a2v.encode.text_targets import Targets, targets_for
from fed_a2v.model.adapters import adapter_names, adapters_for_targets
from fed_a2v.model.evaluation import evaluate_adapters
from fed_a2v.model.train import LocalTrainConfig, train_local

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


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def run_arm(arm: Arm, config: Config, train: EncodedSet, test: EncodedSet, targets: Targets,
            seeds: list[int], epochs: int, lr: dict[str, float]) -> dict[str, Any]:
    """Train `arm` once per seed on `train`, evaluating on `test` after every epoch. The record
    names the data it used by digest (`split`), computed from `train` and `test` themselves."""
    cpu = torch.device("cpu")
    names = adapter_names(config.feda2v)
    runs = []
    for seed in seeds:
        adapters = adapters_for_targets(train.tokens.arrays[0].shape[-1], targets.tensors,
                                        config.feda2v, seed=seed)
        curves: dict[str, list[float]] = {f"eval_{n}_top1": [] for n in names}

        def after_epoch(_: int, adapters=adapters, curves=curves) -> None:
            metrics = evaluate_adapters(adapters, test, targets.tensors,
                                        config.training.eval_batch_size, cpu)
            for key in curves:
                curves[key].append(metrics[key])

        local = LocalTrainConfig(
            epochs=epochs, batch_size=arm.batch_size, stratified=arm.stratified,
            per_class_loss=arm.per_class_loss, grad_accum_steps=arm.grad_accum_steps,
            retrieval_weight=config.feda2v.retrieval_loss_weight,
            retrieval_temperature=config.feda2v.retrieval_temperature, learning_rates=lr,
            weight_decays={n: config.adapter_weight_decay(n) for n in names}, seed=seed)
        history = train_local(adapters, train, targets.tensors, local, cpu, on_epoch=after_epoch)
        runs.append({"seed": seed, **{f"train_{n}_loss": history[n] for n in names}, **curves})
    final = {key: mean_std([r[key][-1] for r in runs])
             for key in (*(f"train_{n}_loss" for n in names), *curves)}
    log.info("%s: %s", arm.name, {k: round(v["mean"], 4) for k, v in final.items()})
    return {"arm": asdict(arm), "name": arm.name, "epochs": epochs,
            "train_clips": len(train), "test_clips": len(test),
            "split": {"train": train.digest(), "test": test.digest()},
            "runs": runs, "final": final}


def check_same_split(arms: list[dict[str, Any]]) -> None:
    """Raise unless every arm trained and was evaluated on the same data (by digest)."""
    differ = [a["name"] for a in arms if a["split"] != arms[0]["split"]]
    if differ:
        raise ValueError(f"the study's arms used different data: {', '.join(differ)} "
                         f"differ from {arms[0]['name']}")


def run_study(config: Config, arms: list[Arm], seeds: list[int], epochs: int,
              lr: dict[str, float] | None = None) -> dict[str, Any]:
    """Train every arm with every seed for `epochs`; returns everything measured."""
    corpus = open_corpus(config)
    targets = targets_for(config, corpus)
    ident = NodeIdentity(NodeConfig(), 0, 1, "study")  # one node holding every clip
    data, _ = node_data(config, ident, targets)
    if config.feda2v.use_cls_token_only:
        data = data.first_tokens(1)
    lr = lr or {name: config.adapter_lr(name) for name in adapter_names(config.feda2v)}
    results = [run_arm(arm, config, data.train, data.test, targets, seeds, epochs, lr)
               for arm in arms]
    check_same_split(results)
    return {"epochs": epochs, "seeds": seeds, "learning_rates": lr,
            "train_clips": len(data.train), "test_clips": len(data.test),
            "classes": len(targets.names), "arms": results}


def format_cell(stat: dict[str, float], digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _final_keys(study: dict[str, Any], kind: str) -> list[str]:
    """The study's `train_*_loss` (kind "train") or `eval_*_top1` ("eval") keys, in order."""
    return [k for k in study["arms"][0]["final"] if k.startswith(f"{kind}_")]


def study_table(study: dict[str, Any]) -> str:
    losses, top1 = _final_keys(study, "train"), _final_keys(study, "eval")
    heads = [f"{k.split('_')[1].upper()} loss (epoch {study['epochs']})" for k in losses] + top1
    lines = [f"| arm | {' | '.join(heads)} |", "|---" * (len(heads) + 1) + "|"]
    for arm in study["arms"]:
        f = arm["final"]
        cells = [format_cell(f[k], 4) for k in losses] + [format_cell(f[k]) for k in top1]
        lines.append(f"| {arm['name']} | {' | '.join(cells)} |")
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
            for metric in study["arms"][0]["final"]} if pairs else {}


def one_class_pairs(study: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Mean- and per-class-loss arms whose batches each hold one class (batch size 1, or
    stratified): there both losses have the same gradient, so the two must train identically.
    Returns (mean arm, per-class arm, whether every run of the two is identical)."""
    by_key: dict[str, dict[bool, dict[str, Any]]] = {}
    for arm in study["arms"]:
        a = arm["arm"]
        if a["batch_size"] == 1 or a["stratified"]:
            key = json.dumps({k: v for k, v in a.items() if k != "per_class_loss"}, sort_keys=True)
            by_key.setdefault(key, {})[a["per_class_loss"]] = arm
    return [(d[False]["name"], d[True]["name"], d[False]["runs"] == d[True]["runs"])
            for d in by_key.values() if len(d) == 2]


def plot_study(study: dict[str, Any], out: Path) -> list[Path]:
    # Deferred: matplotlib is the `plots` extra's (the CLI checks for it before a study).
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({(a["arm"]["batch_size"], a["arm"]["grad_accum_steps"]) for a in study["arms"]})
    written = []
    for name, keys in (("loss", _final_keys(study, "train")),
                       ("accuracy", _final_keys(study, "eval"))):
        fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), sharex=True,
                                 squeeze=False)
        axes = axes[0]
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
        axes[-1].legend(fontsize=6, ncol=2)
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
          *[f"- {mean} and {per_class}: every batch holds one class, so the per-class loss "
            f"is the mean loss; {'identical, run for run' if same else 'NOT IDENTICAL'}."
            for mean, per_class, same in one_class_pairs(study)], "",
          *[f"![{p.stem}]({p.name})" for p in plots]]
    path = out / "study.md"
    path.write_text("\n".join(md) + "\n")
    return path
