"""A node's side of the federation: who it is, its encoded data, and its train/evaluate replies."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fed_a2v.config.load import load_node_config
from fed_a2v.config.schema import Config, NodeConfig
from fed_a2v.config.validate import check_node_diffusion, config_from_dict
from fed_a2v.encode.devices import resolve_device
from fed_a2v.encode.node_data import (
    COUNT_KEYS,
    NodeIdentity,
    node_cache_root,
    node_data,
    node_device,
)
from fed_a2v.encode.target_set import Targets
from fed_a2v.federation.baselines import hits_reply, stats_reply
from fed_a2v.federation.distillation import generator_reply
from fed_a2v.federation.overlap_check import digests_record
from fed_a2v.federation.protocol import (
    ARRAYS_INDEX,
    DIGESTS,
    DIGESTS_REQUEST,
    EVALUATE_ROUND,
    EVALUATION,
    IMAGES,
    NODE,
    RIDGE_MAPS,
    RIDGE_REQUEST,
    SKIPPED,
    STANDALONE,
    TARGET_NAMES,
    TARGETS,
    TRANSPORT,
    VAL_EXAMPLES,
)
from fed_a2v.federation.standalone import load_own_adapters, own_adapters_path, save_own_adapters
from fed_a2v.federation.transport import encode_update, unpack
from fed_a2v.generate.node_images import images_dir, render_held_out, renders
from fed_a2v.model.adapters import adapters_for_targets, adapters_state, load_adapters_state
from fed_a2v.model.evaluation import evaluate_adapters
from fed_a2v.model.train import LocalTrainConfig, train_local

log = logging.getLogger(__name__)


def identify(context: Context, config: Config) -> NodeIdentity:
    """Simulation: the `nodes` entry of the partition id. Deployment: the node's own JSON file
    (without split keys the node uses its whole corpus), or, with no node config at all, the
    experiment's corpus, whole.

    The node's name (its log lines, the run's records) is "node <i>" for shard i (the
    partition id, or the node JSON's `node_split_id`), the node JSON's file stem without split
    keys ("node-2" for node-2.json), else "node <Flower node id>" (which a restart changes).
    Its key, which seeds its training, is as it always was."""
    node_config = context.node_config
    if "node-config" in node_config:
        path = str(node_config["node-config"])
        settings = load_node_config(path)
        index, num_nodes = settings.own_shard(path)
        if settings.node_split_id is not None:
            name, key = f"node {index}", f"shard {index}/{num_nodes}"
        else:
            name, key = Path(path).stem, f"node-config {path}"
        return NodeIdentity(settings, index, num_nodes, name, key, path)
    if "partition-id" in node_config:
        pid, num = int(node_config["partition-id"]), int(node_config["num-partitions"])
        return NodeIdentity(config.node(pid), pid, num, f"node {pid}", f"shard {pid}/{num}",
                            f"the experiment's 'nodes.{pid}'" if str(pid) in config.nodes else "")
    return NodeIdentity(NodeConfig(), 0, 1, f"node {context.node_id}",
                        f"flower node {context.node_id}")


def node_seed(seed: int, server_round: int, node_key: str) -> int:
    """The training seed of one node in one round: 63 bits of SHA-256 of (experiment seed,
    round, node key), so no two (round, node) pairs share one short of a hash collision."""
    digest = hashlib.sha256(json.dumps([seed, server_round, node_key]).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


_TARGETS: dict[str, Targets] = {}


def receive_targets(msg: Message, key: str, cache_dir: Path, name: str) -> Targets:
    """The targets with `key`: from this message, this process, or this node's disk."""
    path = cache_dir / "targets" / f"delivered-{key}.safetensors"
    if TARGETS in msg.content:
        names = json.loads(str(msg.content[TARGET_NAMES]["names"]))
        targets = Targets(names, names, msg.content[TARGETS].to_torch_state_dict(), "delivered")
        if targets.key != key:
            raise ValueError(f"{name}: the targets received do not match their key {key}")
        targets.save(path)
        _TARGETS[key] = targets
    if key not in _TARGETS:
        if not path.exists():
            raise RuntimeError(f"{name}: targets {key} are not on this node; the server sends "
                               "them again with its next message")
        _TARGETS[key] = Targets.load(path, "delivered")
    return _TARGETS[key]


class NodeRound:
    """What one instruction message tells a node: config, targets, global adapters (or, for a
    standalone node, that it goes on with its own: see `fed_a2v.federation.standalone`)."""

    def __init__(self, msg: Message, context: Context) -> None:
        cfg_record = msg.content["config"]
        self.config = config_from_dict(json.loads(str(cfg_record["experiment"])), "server config")
        self.server_round = int(cfg_record["server-round"])
        self.record = cfg_record
        self.ident = identify(context, self.config)
        check_node_diffusion(self.config, self.ident.settings, self.ident.where)
        self.device = resolve_device(node_device(self.config, self.ident))
        self.targets = receive_targets(msg, str(cfg_record["targets-key"]),
                                       node_cache_root(self.config, self.ident), self.ident.name)
        self.data, fresh = node_data(self.config, self.ident, self.targets)
        self.counts = self.data.counts if fresh else dict.fromkeys(COUNT_KEYS, 0)
        self.skipped = self.data.skipped if fresh else []
        if self.config.for_node(self.ident.settings, "use_cls_token_only"):
            self.data = self.data.first_tokens(1)
        # Built from the experiment seed: the server's init, which a standalone node never
        # receives; a federated node's are replaced by the global adapters at once.
        self.adapters = adapters_for_targets(self.data.hidden_size, self.targets.tensors,
                                             self.config.feda2v, seed=self.config.experiment.seed)
        self.standalone = self.config.feda2v.adapter_aggregation_mode == "none"
        self.own_path, self.own_rounds = None, 0
        self.received: dict[str, np.ndarray] = {}  # the global adapters this message carried
        if self.standalone:
            self.own_path = own_adapters_path(node_cache_root(self.config, self.ident),
                                              msg.metadata.run_id, self.ident.key)
            self.own_rounds = load_own_adapters(self.adapters, self.own_path, self.ident.name)
        else:
            self.received = unpack(msg.content["arrays"],
                                   msg.content.config_records.get(ARRAYS_INDEX))
            load_adapters_state(self.adapters, {k: torch.from_numpy(v)
                                                for k, v in self.received.items()})

    def reports(self, msg: Message) -> dict[str, ConfigRecord]:
        """What a reply tells besides metrics: the node's key and name, the clips this node
        could not use (once, when its data was loaded), and its clips' salted digests if the
        server asks for them."""
        records = {SKIPPED: ConfigRecord({"files": json.dumps(self.skipped)}),
                   NODE: ConfigRecord({"key": self.ident.key, "name": self.ident.name})}
        if self.standalone:
            records[STANDALONE] = ConfigRecord({"path": str(self.own_path),
                                                "rounds": self.own_rounds})
        if DIGESTS_REQUEST in msg.content:
            records[DIGESTS] = digests_record(
                str(msg.content[DIGESTS_REQUEST]["salt"]), self.ident.key, self.ident.where,
                self.data.digests["train"], self.data.digests["test"] + self.data.digests["val"])
        return records


def train_reply(msg: Message, context: Context) -> Message:
    """Local training; besides the losses, the node reports its own seconds: `train_seconds`
    in training, `train_setup_seconds` before it (config, targets, data, adapters), and how the
    message reached it (`train_delivery_seconds`, `train_startup_seconds`: `delivery_seconds`).
    In one-stage rounds the instruction names the round whose global adapters it carries
    (`EVALUATE_ROUND`): the node evaluates them first, and the reply holds that evaluation
    (`EVALUATION`, as an evaluate reply's metrics) beside the update."""
    delivered = delivery_seconds(msg.metadata.created_at, "train")
    started = time.perf_counter()
    rnd = NodeRound(msg, context)
    setup = time.perf_counter() - started
    evaluated: dict = {}
    if EVALUATE_ROUND in rnd.record:
        record, records = evaluation(rnd, msg, int(rnd.record[EVALUATE_ROUND]))
        evaluated = {EVALUATION: record, **records}
    started_training = time.perf_counter()
    cfg = rnd.config
    local = LocalTrainConfig(
        epochs=cfg.federation.local_epochs,
        batch_size=rnd.ident.settings.batch_size or cfg.training.batch_size,
        stratified=cfg.feda2v.use_stratified_batching,
        per_class_loss=cfg.feda2v.use_per_class_loss,
        retrieval_weight=cfg.feda2v.retrieval_loss_weight,
        retrieval_temperature=cfg.feda2v.retrieval_temperature,
        grad_accum_steps=cfg.training.gradient_accumulation_steps,
        learning_rates={name: float(rnd.record[f"{name}-lr"]) for name in rnd.adapters},
        weight_decays={name: cfg.adapter_weight_decay(name) for name in rnd.adapters},
        seed=node_seed(cfg.experiment.seed, rnd.server_round, rnd.ident.key),
        # FedProx's weight, which Flower's FedProx puts in the train config
        proximal_mu=float(rnd.record.get("proximal-mu", 0.0)),
    )
    # upstream's first phase: the nodes fit (and save) their generators and train no adapters
    history = ({} if cfg.feda2v.generator_training_mode else
               train_local(rnd.adapters, rnd.data.train, rnd.targets.tensors, local, rnd.device))
    seconds = {**delivered, "train_setup_seconds": setup,
               "train_seconds": time.perf_counter() - started_training}
    if rnd.standalone:  # the adapters stay here: on this node's disk, for its next message
        rnd.own_rounds += 1
        save_own_adapters(rnd.adapters, rnd.own_path, rnd.own_rounds)
        arrays, transport = ArrayRecord(), {}
    else:  # in federation.transport_dtype, deltas against `received` for int8
        arrays, record = encode_update(
            {k: v.detach().cpu().numpy() for k, v in adapters_state(rnd.adapters).items()},
            rnd.received, cfg.federation.transport_dtype)
        transport = {TRANSPORT: record}
    metrics = MetricRecord({"num-examples": len(rnd.data.train), **rnd.counts, **seconds,
                            **{f"train_{name}_loss": h[-1] for name, h in history.items()}})
    # The ridge baselines' statistics, once, beside the adapters (fed_a2v.federation.baselines)
    ridge = (stats_reply(msg.content[RIDGE_REQUEST], rnd.ident.key, rnd.data.train,
                         len(rnd.targets.names)) if RIDGE_REQUEST in msg.content else {})
    # KD: the node's class counts, its generators once (fed_a2v.federation.distillation)
    # its number in generator file names: its shard, else (a whole corpus each) its Flower id
    sharded = rnd.ident.num_nodes > 1 or "partition-id" in context.node_config
    generators, generator_metrics = generator_reply(
        cfg, msg, rnd.ident.key, rnd.ident.index if sharded else context.node_id,
        rnd.server_round, rnd.data.train, rnd.targets, rnd.adapters)
    metrics.update(generator_metrics)
    return Message(RecordDict({"arrays": arrays, "metrics": metrics, **evaluated, **transport,
                               **ridge, **generators, **rnd.reports(msg)}), reply_to=msg)


def evaluate_reply(msg: Message, context: Context) -> Message:
    """The node's `evaluation` of the adapters the instruction carries, with its own seconds,
    as in `train_reply`: `eval_setup_seconds`, `eval_delivery_seconds`, `eval_startup_seconds`."""
    delivered = delivery_seconds(msg.metadata.created_at, "eval")
    started = time.perf_counter()
    rnd = NodeRound(msg, context)
    setup = time.perf_counter() - started
    record, records = evaluation(rnd, msg, rnd.server_round)
    record.update({**rnd.counts, **delivered, "eval_setup_seconds": setup})
    return Message(RecordDict({"metrics": record, **records, **rnd.reports(msg)}),
                   reply_to=msg)


def evaluation(rnd: NodeRound, msg: Message, server_round: int
               ) -> tuple[MetricRecord, dict[str, ConfigRecord]]:
    """The node's evaluation of the adapters it holds (round `server_round`'s global ones, or
    a standalone node's own): `eval_*` metrics on the held-out clips and, if the node has val
    clips, `val_*` on those (with their count, `VAL_EXAMPLES`), `eval_seconds` (evaluation, not
    rendering); the ridge baselines' hits when the instruction carries their maps; on
    rendering rounds, images of the first held-out clips, kept on the node
    (`fed_a2v.generate.node_images`)."""
    started = time.perf_counter()
    batch = rnd.config.training.eval_batch_size
    metrics = evaluate_adapters(rnd.adapters, rnd.data.test, rnd.targets.tensors, batch,
                                rnd.device)
    if len(rnd.data.val):
        metrics |= {VAL_EXAMPLES: len(rnd.data.val),
                    **evaluate_adapters(rnd.adapters, rnd.data.val, rnd.targets.tensors, batch,
                                        rnd.device, prefix="val")}
    metrics["eval_seconds"] = time.perf_counter() - started
    records: dict[str, ConfigRecord] = {}
    if RIDGE_MAPS in msg.content:  # the final evaluation: the ridge baselines' maps too
        records |= hits_reply(msg.content[RIDGE_MAPS], rnd.data.test, rnd.targets.tensors)
    if renders(rnd.config, server_round):
        folder = images_dir(rnd.config, rnd.ident.settings, rnd.ident.name,
                            node_cache_root(rnd.config, rnd.ident), msg.metadata.run_id,
                            server_round)
        count = render_held_out(rnd.adapters, rnd.data.test, rnd.data.test_stems, rnd.config,
                                rnd.ident.settings, rnd.device, folder)
        records[IMAGES] = ConfigRecord({"count": count, "dir": str(folder),
                                        "round": server_round})
    return MetricRecord({"num-examples": len(rnd.data.test), **metrics}), records


def process_age() -> float | None:
    """Seconds since this process started, to 10 ms, or None where /proc cannot tell."""
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start, in ticks
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None


def delivery_seconds(created_at: float, prefix: str) -> dict[str, float]:
    """`<prefix>_delivery_seconds` and, for a process started for this message,
    `<prefix>_startup_seconds`. A process older than the message (a simulation's long-lived
    worker) counts all of the wait as delivery."""
    now = time.time()
    age = process_age()
    if age is None or now - age < created_at:
        return {f"{prefix}_delivery_seconds": max(0.0, now - created_at)}
    return {f"{prefix}_delivery_seconds": now - age - created_at,
            f"{prefix}_startup_seconds": age}
