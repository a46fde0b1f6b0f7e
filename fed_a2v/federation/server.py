"""The server's side: resolve the config, make targets, run the strategy, record the run."""

from __future__ import annotations

import json
import logging
import math
import shlex
import time
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid

from fed_a2v.config.load import describe, load_config
from fed_a2v.config.schema import Config
from fed_a2v.data.audio import skipped_clips_note
from fed_a2v.data.node_corpora import corpus_index
from fed_a2v.encode.encoders import describe_audio_encoder
from fed_a2v.encode.text_targets import targets_for
from fed_a2v.federation.baselines import RidgeBaselines
from fed_a2v.federation.distillation import KDAggregation
from fed_a2v.federation.flower_strategies import build_strategy
from fed_a2v.federation.privacy import privacy_record, with_privacy
from fed_a2v.federation.rounds import QuorumError, check_simulated_federation
from fed_a2v.model.adapters import adapter_names, adapters_for_targets, adapters_state
from fed_a2v.model.generators import required_checkpoints
from fed_a2v.model.pretrained import FedA2VAdapters, package_config
from fed_a2v.runs.checkpoints import AdapterCheckpoints
from fed_a2v.runs.report import write_report
from fed_a2v.runs.run_dir import (
    CONFIG_FILE,
    RunRecorder,
    last_round,
    new_run_dir,
    run_to_resume,
)
from fed_a2v.runs.wandb_log import require_wandb

log = logging.getLogger(__name__)

RIDGE_FILE = "ridge-stats.safetensors"  # the baselines' statistics, for a resumed run
DEFAULT_CONFIG = "configs/quickstart.json"  # the app's `config` (pyproject's run config)


def resolve_path(value: str, app_dir: Path) -> Path:
    """Absolute as given; relative: against the working directory, else the app directory."""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists() or not (app_dir / path).exists():
        return path.resolve()
    return (app_dir / path).resolve()


def config_for_run(run_config: dict[str, Any], app_dir: Path) -> Config:
    """The experiment JSON named by the run config, with its overrides and absolute paths,
    logged in one line with its path. `set` holds `--set` items separated by spaces (shell
    quoting), e.g. `flwr run --run-config "set='federation.global_rounds=3 dataset.path=/x'"`."""
    path = resolve_path(str(run_config.get("config", DEFAULT_CONFIG)), app_dir)
    config = load_config(path, shlex.split(str(run_config.get("set") or "")))
    if int(run_config.get("rounds", 0) or 0) > 0:
        config.federation.global_rounds = int(run_config["rounds"])
    if run_config.get("output-dir"):
        config.experiment.output_dir = str(run_config["output-dir"])
    config.make_paths_absolute()
    log.info("experiment %s: %s", path, describe(config))
    return config


def lr_plan(config: Config):
    rounds = config.federation.global_rounds

    def lr_for_round(server_round: int) -> dict[str, float]:
        return {name: round_lr(config.adapter_lr(name), config.adapter_schedule(name),
                               server_round, rounds, config.feda2v.lr_warmup_rounds,
                               config.feda2v.lr_min_ratio)
                for name in adapter_names(config.feda2v)}

    return lr_for_round


def run_federation(grid: Grid, context: Context, app_dir: Path) -> dict[str, Any]:
    """Run every round of the experiment; returns the summary written to `summary.json`.

    With `resume`, the run in `run-dir` goes on after its last finished round, with its own
    config (`rounds` still overrides its number of rounds)."""
    entered = time.time()
    run_config = dict(context.run_config)
    run_dir_value = str(run_config.get("run-dir") or "")
    resume = bool(run_config.get("resume"))
    if resume:
        run_config["config"] = str(run_to_resume(run_dir_value) / CONFIG_FILE)
    config = config_for_run(run_config, app_dir)
    require_wandb(config)  # a missing package fails now, not after the targets are computed
    check_simulated_federation(grid, config.federation.num_clients, config.federation.min_clients)
    run_dir = Path(run_dir_value).resolve() if run_dir_value else new_run_dir(config)
    fed = config.federation
    corpus = corpus_index(config)
    targets = targets_for(config, corpus)
    audio_config, features = describe_audio_encoder(config.feda2v.audio_model_name)
    d_audio = audio_config.hidden_size
    adapters = adapters_for_targets(d_audio, targets.tensors, config.feda2v,
                                    seed=config.experiment.seed)
    initial = ArrayRecord(adapters_state(adapters))
    dims = {"d_audio": d_audio, **{f"d_{n}": targets.tensors[n].shape[-1] for n in adapters}}
    checkpoints = AdapterCheckpoints(config, run_dir, dims)
    started_from = None
    if config.feda2v.adapter_load_checkpoint:
        loaded_round, state, files = checkpoints.load_latest(adapters_state(adapters))
        initial = ArrayRecord(state)
        started_from = {"round": loaded_round, "files": [str(f) for f in files]}
    payload = sum(t.numel() * t.element_size() for t in adapters_state(adapters).values())
    mode = config.feda2v.adapter_aggregation_mode
    standalone = mode == "none"
    if standalone:  # every node builds the same init from the seed and keeps its own adapters
        initial, payload = ArrayRecord(), 0
    generators_found = found_generators(config) if mode != "kd" else None
    log.info("run directory: %s", run_dir)
    log.info("%d targets (%s); adapters (%s): %.2f MB per node per round each way",
             len(targets.names), targets.source, mode, payload / 2**20)

    strategy = build_strategy(
        fed.strategy, fed.strategy_options, targets=targets, lr_for_round=lr_plan(config),
        max_update_norm=fed.max_update_norm, allow_overlap=fed.allow_overlap,
        aggregation_mode=mode, eval_gap=fed.eval_gap,
        render_every=config.feda2v.generate_nodes_images_frequency,
        transport_dtype=fed.transport_dtype,
        baselines=RidgeBaselines(fed.baseline_ridge_lambda, d_audio, len(targets.names),
                                 run_dir / RIDGE_FILE) if fed.baselines else None,
        kd=KDAggregation(config, targets, d_audio) if mode == "kd" else None,
        round_protocol=fed.round_protocol, quorum_timeout=fed.quorum_timeout,
        fraction_train=fed.join_ratio, fraction_evaluate=1.0, min_train_nodes=fed.min_clients,
        min_evaluate_nodes=fed.min_clients, min_available_nodes=fed.min_clients,
    )
    recorder = RunRecorder(run_dir, config, resume=resume)
    if resume:
        point = recorder.resume_point()
        if point is not None:
            strategy.round_offset, state, progress = point
            strategy.restore(progress)
            initial = ArrayRecord(state)
        log.info("resuming %s after round %d of %d", run_dir, strategy.round_offset,
                 fed.global_rounds)

    def end_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        server_round += strategy.round_offset
        write_due_lines()
        state = arrays.to_torch_state_dict()
        record = recorder.end_round(server_round, strategy.round_metrics.get(server_round, {}),
                                    state, strategy.node_metrics.get(server_round, {}),
                                    strategy.progress(),
                                    hold=strategy.awaiting_eval == server_round)
        checkpoints.save_if_due(server_round, state)
        round_ends.append(time.time())
        return MetricRecord({k: v for k, v in record.items() if v is not None})

    def write_due_lines(final: bool = False) -> None:
        """One-stage rounds: the line of the round whose evaluation the last train replies
        brought (before the next round's checkpoint, so a resume finds it); `final`: also the
        one still waiting (`FedA2VStrategy.lines_due`)."""
        for due in strategy.lines_due(final):
            recorder.write_line(due, strategy.round_metrics.get(due, {}),
                                strategy.node_metrics.get(due, {}))

    node_config = ConfigRecord({"experiment": json.dumps(config.to_dict()),
                                "targets-key": targets.key})
    round_ends: list[float] = []
    started = time.time()
    final = initial  # a resumed run with no round left only writes its final files
    runner = with_privacy(strategy, config)  # `strategy` itself without differential privacy
    if fed.global_rounds > strategy.round_offset:
        try:
            result = runner.start(grid, initial, fed.global_rounds - strategy.round_offset,
                                  timeout=fed.round_timeout, train_config=node_config,
                                  evaluate_config=ConfigRecord(dict(node_config)),
                                  evaluate_fn=end_round)
        except QuorumError as err:
            raise QuorumError(
                f"{err}. The run stops after round {last_round(run_dir)}, its last checkpoint; "
                f"once the nodes are back, resume it: `flwr run . <federation> --run-config "
                f"\"resume=true run-dir='{run_dir}'\"` (or `fed-a2v simulate --resume "
                f"{run_dir}`)") from None
        if not strategy.nodes_seen:
            raise RuntimeError("no node completed a training round; see the errors above")
        final = result.arrays
    if strategy.awaiting_eval is not None:  # resumed with no round left to carry it
        log.warning("round %d was not evaluated: the run was resumed with no round left; its "
                    "line has no eval metrics", strategy.awaiting_eval)
        write_due_lines(final=True)
    package = None if standalone else FedA2VAdapters.from_state(
        package_config(config, targets, dims, features, {
            "name": run_dir.name, "rounds": fed.global_rounds, "seed": config.experiment.seed,
            "num_nodes": len(strategy.nodes_seen), "aggregation_mode": mode}),
        final.to_torch_state_dict(), targets)
    extra = {
        "encoded_clips": strategy.totals["encoded-clips"],
        "cached_clips": strategy.totals["cached-clips"],
        # Distinct clips: a node that loads its data again (another process) reports them again.
        "skipped_clips": len(strategy.skipped_files),
        "skipped_files": sorted(strategy.skipped_files),
        "rejected_updates": [{"round": r, "node": name, "flower_node_id": n, "why": why}
                             for r, n, why, name in strategy.rejected],
        "failed_replies": [{"round": r, "stage": stage, "node": name, "flower_node_id": n,
                            "why": why} for r, stage, n, why, name in strategy.failed],
        "targets_source": targets.source,
        "started_from_checkpoint": started_from,
        "targets_bytes": strategy.targets_bytes,
        "control_bytes_per_round": max(strategy.control_bytes.values(), default=0),
        "adapter_aggregation_mode": mode,
        "adapter_bytes_sent_per_round": strategy.adapter_bytes_per_round(fed.global_rounds),
        # What the nodes' train replies carried back, in `transport_dtype` (all nodes).
        "transport_dtype": fed.transport_dtype,
        # Flower's strategy that made the global adapters, and its own options (as given).
        "strategy": fed.strategy,
        "strategy_options": fed.strategy_options,
        "update_bytes_received_per_round": strategy.update_bytes_per_round(fed.global_rounds),
        "eval_gap": fed.eval_gap,
        # Differential privacy (fed_a2v.federation.privacy): mechanism, settings, the (ε, δ) spent.
        "privacy": privacy_record(runner),
        # generator_load_checkpoint outside KD: the generators the run found (phase 2)
        "generators_found": generators_found,
        # KD aggregation: the class generators the server held, what the nodes sent of them.
        "kd": {"classes_with_generators": sorted(strategy.kd.generators),
               "generator_bytes_received": strategy.kd.generator_bytes,
               "teacher": config.feda2v.kd_teacher,
               "generator_type": config.feda2v.generator_type} if strategy.kd else None,
        # Images rendered on the nodes (they stay there): round, node, count, folder.
        "node_images": strategy.node_images,
        # Held-out top-1 of linear ridge maps and chance beside FedA2V's
        # (fed_a2v.federation.baselines); null with federation.baselines false.
        "baselines": strategy.baselines.summary(
            {s: recorder.last.get(f"eval_{s}_top1") for s in targets.tensors},
            strategy.names.by_key,
            {s: recorder.last.get(f"eval_{s}_cosine") for s in targets.tensors})
        if strategy.baselines else None,
        # Unix times in this server process: its start, the first instruction's, each
        # round's end (a resumed run: the rounds it ran).
        "timings": {"server_start": entered, "rounds_start": started, "round_ends": round_ends},
    }
    if standalone:
        extra["standalone"] = {
            "node_adapters": strategy.node_adapters,
            "overlap_check": "skipped: standalone nodes never share a model, so a clip two "
                             "nodes hold cannot leak from one node's training into another's "
                             "evaluation"}
    summary = recorder.finish(package, payload,
                              fed.global_rounds, len(strategy.nodes_seen), extra)
    log.info("finished %d rounds in %.1fs: %s", fed.global_rounds, time.time() - started,
             run_dir / "summary.json")
    skipped = skipped_clips_note(extra["skipped_files"])
    if skipped:
        log.warning(skipped)
    log.info("report: %s", write_report(run_dir))
    return summary


def found_generators(config: Config) -> dict[str, Any] | None:
    """Upstream's second phase outside KD (`generator_load_checkpoint`): the saved generators
    must be there (FileNotFoundError naming the folder otherwise); images are drawn from them
    with `fed-a2v generate --generators`. The run itself does not use them, so only their
    names are read, not their tensors."""
    fa = config.feda2v
    if not fa.generator_load_checkpoint:
        return None
    found = required_checkpoints(Path(fa.generator_checkpoint_dir),
                                 fa.generator_checkpoint_base_name)
    files = sorted(p.name for paths in found.values() for p in paths)
    log.info("generator_load_checkpoint: %d generator files of %d nodes in %s; images from "
             "them: fed-a2v generate <run dir> --generators %s --generator-base %s",
             len(files), len(found), fa.generator_checkpoint_dir, fa.generator_checkpoint_dir,
             fa.generator_checkpoint_base_name)
    return {"dir": fa.generator_checkpoint_dir, "nodes": sorted(found), "files": files}


def round_lr(base_lr: float, schedule: str, server_round: int, num_rounds: int,
             warmup_rounds: int = 1, min_ratio: float = 0.1) -> float:
    """LR for round `server_round` (1-based) of `num_rounds`.

    `constant`: `base_lr` every round. `cosine`: linear warmup over `warmup_rounds` up to
    `base_lr`, then a cosine decay that reaches `min_ratio * base_lr` in the last round.
    """
    if not 1 <= server_round <= num_rounds:
        raise ValueError(f"round {server_round} is outside 1..{num_rounds}")
    if schedule == "constant":
        return base_lr
    if schedule != "cosine":
        raise ValueError(f"unknown schedule '{schedule}'; use 'constant' or 'cosine'")
    warmup = min(warmup_rounds, num_rounds - 1)
    if server_round <= warmup:
        return base_lr * server_round / (warmup + 1)
    decay_rounds = num_rounds - warmup
    progress = (server_round - warmup - 1) / max(decay_rounds - 1, 1)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
