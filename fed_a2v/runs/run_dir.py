"""A run's directory: resolved config, per-round metrics, TensorBoard, checkpoints, summary,
and the final adapters package (`final/`)."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.schema import Config
from fed_a2v.extras import absent
from fed_a2v.files import atomic_write_text
from fed_a2v.model.adapters import adapter_names, save_adapters
from fed_a2v.model.pretrained import package_card
from fed_a2v.runs.node_records import FLOWER_NODE_ID, node_lines, node_order, node_tag
from fed_a2v.runs.wandb_log import start_wandb

if TYPE_CHECKING:
    from fed_a2v.model.pretrained import FedA2VAdapters

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"


def round_keys(config: Config) -> tuple[str, ...]:
    """What `metrics.jsonl` records each round, for the adapters the experiment trains. Rounds
    without evaluation (`eval_gap`) have null `eval_*`/`val_*`; runs without val clips, null
    `val_*`."""
    names = adapter_names(config.feda2v)
    return (*(f"train_{a}_loss" for a in names),
            *(f"{stage}_{a}_{m}" for stage in ("eval", "val") for m in ("mse", "cosine", "top1")
              for a in names),
            *(f"{a}_lr" for a in names), "train_nodes",
            # differential privacy (fed_a2v.federation.privacy): ε spent so far, the round's
            # clipping norm
            *(("dp_epsilon", "dp_clipping_norm") if config.privacy.mechanism != "none" else ()),
            # KD aggregation (fed_a2v.federation.distillation): the distillation's last-epoch
            # loss per adapter, the classes it taught (null in a round without a teacher)
            *((*(f"kd_{a}_loss" for a in names), "kd_classes")
              if config.feda2v.adapter_aggregation_mode == "kd" else ()),
            # the nodes' generators, in the rounds they fit them (fed_a2v.federation.distillation)
            *((*(f"generator_{a}_top1" for a in names), "generator_frechet")
              if config.feda2v.adapter_aggregation_mode == "kd"
              or config.feda2v.generator_training_mode else ()))


def eval_keys(config: Config) -> tuple[str, ...]:
    """The held-out metrics among `round_keys`: what `summary.json` reports."""
    return tuple(k for k in round_keys(config) if k.startswith("eval_"))


def val_keys(config: Config) -> tuple[str, ...]:
    """The validation metrics among `round_keys` (null without val clips): reported in
    `summary.json` beside `eval_keys`."""
    return tuple(k for k in round_keys(config) if k.startswith("val_"))


def new_run_dir(config: Config) -> Path:
    """`<output_dir>/<name>-<timestamp>`, unique even for runs started in the same second."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(config.experiment.output_dir) / f"{config.experiment.name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path.resolve()


def run_to_resume(value: str) -> Path:
    """The directory of a run to resume (`run-dir`); an error if it holds no run."""
    if not value:
        raise ConfigError("resume needs run-dir: the directory of the run to continue")
    path = Path(value).expanduser().resolve()
    if not (path / CONFIG_FILE).is_file():
        raise ConfigError(f"run-dir {path}: no {CONFIG_FILE} there, so no run to resume")
    return path


def checkpoint_path(run_dir: Path, server_round: int) -> Path:
    """The global adapters after `server_round`."""
    return run_dir / "checkpoints" / f"round-{server_round:04d}.safetensors"


def finished_rounds(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics of the rounds a run finished: 1, 2, ... as long as each has a complete
    line in `metrics.jsonl` and its checkpoint (what a resume goes on from)."""
    path = run_dir / "metrics.jsonl"
    records: list[dict[str, Any]] = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if record.get("round") != len(records) + 1:
            break
        if not checkpoint_path(run_dir, record["round"]).exists():
            break
        records.append(record)
    return records


def checkpoint_progress(run_dir: Path, server_round: int) -> dict[str, Any]:
    """The progress saved with the checkpoint of `server_round` (see `RunRecorder.end_round`)."""
    with safe_open(str(checkpoint_path(run_dir, server_round)), "pt") as f:
        return json.loads((f.metadata() or {}).get("progress", "{}"))


def held_round(run_dir: Path, finished: int) -> int | None:
    """One-stage rounds: the round after the `finished` ones if its checkpoint is there and its
    metrics line waits for its evaluation (`held` in its progress), which the first train
    instruction of a resumed run asks for; else None."""
    after = finished + 1
    if not checkpoint_path(run_dir, after).exists():
        return None
    held = checkpoint_progress(run_dir, after).get("held") or {}
    return after if held.get("round") == after else None


def last_round(run_dir: Path) -> int:
    """The round a resume of the run in `run_dir` goes on after."""
    finished = len(finished_rounds(run_dir))
    return held_round(run_dir, finished) or finished


class RunRecorder:
    """Writes everything a run leaves behind, round by round. A new run writes its config; a
    resumed one (`resume=True`) keeps the config its directory holds."""

    def __init__(self, run_dir: Path, config: Config, resume: bool = False) -> None:
        self.dir = Path(run_dir)
        if resume:
            run_to_resume(str(self.dir))
        elif (self.dir / "metrics.jsonl").exists():
            raise ValueError(f"run-dir {self.dir} holds a run already: resume it or choose "
                             "another directory")
        (self.dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.config = config
        self.started = time.time()
        self.seconds_before = 0.0  # spent by the stopped part of a resumed run
        self.last: dict[str, Any] = {}
        if not resume:
            atomic_write_text(self.dir / CONFIG_FILE, json.dumps(config.to_dict(), indent=2))
        self.tb = None  # TensorBoard: the `plots` extra; a run goes on without it
        if "tensorboard" not in absent("plots"):
            # Deferred: torch.utils.tensorboard imports tensorboard (the `plots` extra).
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.dir / "tb"))
        self.wandb = start_wandb(config, self.dir, resume)

    def seconds(self) -> float:
        """Wall time of the whole run so far, resumed parts included."""
        return self.seconds_before + time.time() - self.started

    def end_round(self, server_round: int, metrics: dict[str, float],
                  state: dict[str, torch.Tensor],
                  nodes: dict[str, dict[str, float]] | None = None,
                  progress: dict[str, Any] | None = None, hold: bool = False) -> dict[str, Any]:
        """Record one finished round: a checkpoint, then its line (`write_line`), unless `hold`
        (one-stage rounds: the round's evaluation comes with the next round's replies, and
        `write_line` is called then; `progress` holds what the line has so far). `progress`
        (what the summary adds up over the run) is kept in the checkpoint with the wall time so
        far."""
        progress = {**(progress or {}), "wall_seconds": self.seconds()}
        # Checkpoint first: a metrics line always has its checkpoint (what `resume` relies on).
        save_adapters(state, self.checkpoint(server_round),
                      {"round": str(server_round), "progress": json.dumps(progress)})
        if hold:
            return self.line(server_round, metrics)
        return self.write_line(server_round, metrics, nodes)

    def line(self, server_round: int, metrics: dict[str, float]) -> dict[str, Any]:
        """The round's `metrics.jsonl` line."""
        return {"round": server_round, **{k: metrics.get(k) for k in round_keys(self.config)}}

    def write_line(self, server_round: int, metrics: dict[str, float],
                   nodes: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
        """A round's metrics line, each node's own metrics (`nodes`: node name -> metrics and
        `flower_node_id`; a line each in `nodes.jsonl`) and scalars, global and per node
        ("node 0/train_clip_loss"), to TensorBoard and (if enabled) W&B."""
        record = self.line(server_round, metrics)
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {key.replace("_", "/", 1): value for key, value in record.items()
                   if key != "round" and value is not None}
        with open(self.dir / "nodes.jsonl", "a") as f:
            for node, values in sorted((nodes or {}).items(), key=lambda n: node_order(n[0])):
                f.write(json.dumps({"round": server_round, "node": node, **values}) + "\n")
                scalars.update({node_tag(node, key): value for key, value in values.items()
                                if key != FLOWER_NODE_ID})
        if self.tb:
            for tag, value in scalars.items():
                self.tb.add_scalar(tag, value, server_round)
            self.tb.flush()
        if self.wandb:
            self.wandb.log(scalars, server_round)
        self.last = record
        log.info("round %d | %s", server_round, " ".join(
            f"{k}={v:.4g}" for k, v in record.items() if k != "round" and v is not None))
        return record

    def checkpoint(self, server_round: int) -> Path:
        return checkpoint_path(self.dir, server_round)

    def resume_point(self) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None:
        """The last finished round, its global adapters and the progress saved with them (see
        `end_round`), or None if no round finished. The wall time goes on from there.

        A round is finished when its metrics line is complete, or, in one-stage rounds, when
        its checkpoint holds the line that waits for its evaluation (`held_round`); anything
        after it (a torn line, a later checkpoint written just before a crash) is dropped.
        """
        records = finished_rounds(self.dir)
        atomic_write_text(self.dir / "metrics.jsonl",
                          "".join(json.dumps(r) + "\n" for r in records))
        self._keep_node_lines(len(records))
        self.last = records[-1] if records else {}
        last = held_round(self.dir, len(records)) or len(records)
        if not last:
            return None
        progress = checkpoint_progress(self.dir, last)
        self.seconds_before = float(progress.get("wall_seconds", 0.0))
        return last, load_file(str(self.checkpoint(last))), progress

    def _keep_node_lines(self, last: int) -> None:
        """Drop the `nodes.jsonl` lines of rounds after `last` (a round the stopped part did not
        finish, which the resumed part records again) and any torn line."""
        path = self.dir / "nodes.jsonl"
        if path.exists():
            atomic_write_text(path, "".join(line + "\n" for line, record in node_lines(path)
                                            if record["round"] <= last))

    def finish(self, package: FedA2VAdapters | None, adapter_bytes_per_round: int, rounds: int,
               num_nodes: int, extra: dict[str, Any]) -> dict[str, Any]:
        """`summary.json`, and the global adapters as a package in `final/` with a model card
        made from the run (`fed_a2v.model.pretrained`); no package for standalone nodes, whose
        adapters stay on their own disks (`package` None)."""
        summary = {**{k: self.last.get(k) for k in eval_keys(self.config)
                      + val_keys(self.config)}, "rounds": rounds,
                   "num_nodes": num_nodes, "wall_seconds": round(self.seconds(), 2),
                   "adapter_bytes_per_round": adapter_bytes_per_round, **extra}
        if package is not None:
            package.save_pretrained(self.dir / "final", package_card(package, summary, self.config))
        atomic_write_text(self.dir / "summary.json", json.dumps(summary, indent=2))
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish(summary)
        return summary
