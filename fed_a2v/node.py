"""A node's side of the federation: who it is, its encoded data, and its train/evaluate replies."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from .adapters import adapters_state, build_adapters, load_adapters_state
from .audio import load_audio
from .config import Config, NodeConfig, config_from_dict, load_node_config
from .data import Clip, open_corpus, split_for_node
from .encoders import AudioEncoder, resolve_device
from .evaluation import evaluate_adapters
from .strategy import TARGETS_KEY
from .train import EncodedSet, LocalTrainConfig, train_local

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeIdentity:
    settings: NodeConfig
    index: int  # which disjoint shard of the corpus is this node's
    num_nodes: int
    name: str  # for messages: "node 2" or the node's JSON file


def identify(context: Context, config: Config) -> NodeIdentity:
    """Simulation: the `nodes` entry of the partition id. Deployment: the node's own JSON file."""
    node_config = context.node_config
    if "node-config" in node_config:
        path = str(node_config["node-config"])
        settings = load_node_config(path)
        return NodeIdentity(settings, settings.node_split_id or 0, settings.num_nodes or 1, path)
    pid = int(node_config["partition-id"])
    return NodeIdentity(config.node(pid), pid, int(node_config["num-partitions"]), f"node {pid}")


@dataclass
class NodeData:
    train: EncodedSet
    test: EncodedSet
    hidden_size: int
    skipped: list[str]


_CACHE: dict[str, NodeData] = {}


def encode_clips(encoder: AudioEncoder, clips: list[Clip], classes: list[str],
                 clip_seconds: float, skipped: list[str]) -> EncodedSet:
    waves, labels = [], []
    for clip in clips:
        try:
            waves.append(load_audio(clip.path, encoder.settings.sampling_rate, clip_seconds))
        except Exception as err:  # noqa: BLE001 - any unreadable file is skipped, not fatal
            skipped.append(f"{clip.path}: {err}")
            continue
        labels.append(classes.index(clip.label))
    if not waves:
        return EncodedSet(torch.empty(0, 0, encoder.hidden_size), torch.empty(0, dtype=torch.long))
    return EncodedSet(encoder.encode(waves), torch.tensor(labels, dtype=torch.long))


def node_data(config: Config, ident: NodeIdentity, classes: list[str]) -> NodeData:
    """This node's clips, encoded once by the frozen AST and kept for later rounds."""
    key = json.dumps([asdict(config.dataset), config.feda2v.audio_model_name,
                      config.experiment.seed, asdict(ident.settings), ident.index,
                      ident.num_nodes, classes])
    if key in _CACHE:
        return _CACHE[key]
    corpus = open_corpus(config, ident.settings.dataset_path)
    split = split_for_node(corpus, ident.settings, ident.index, ident.num_nodes, config,
                           where=ident.name)
    for clip in split.train + split.test:
        if clip.label not in classes:
            raise ValueError(f"{ident.name}: class '{clip.label}' has no target on the server")
    encoder = AudioEncoder.load(config.feda2v.audio_model_name, _device(config, ident))
    skipped: list[str] = []
    train = encode_clips(encoder, split.train, classes, config.dataset.clip_seconds, skipped)
    test = encode_clips(encoder, split.test, classes, config.dataset.clip_seconds, skipped)
    if skipped:
        log.warning("%s: skipped %d unreadable clips:\n  %s", ident.name, len(skipped),
                    "\n  ".join(skipped))
    if len(train) == 0:
        raise ValueError(f"{ident.name}: no usable training clip (classes {split.classes})")
    log.info("%s: %d train / %d held-out clips of %d classes", ident.name, len(train),
             len(test), len(split.classes))
    data = NodeData(train, test, encoder.hidden_size, skipped)
    _CACHE[key] = data
    return data


def _device(config: Config, ident: NodeIdentity) -> str:
    return ident.settings.device or config.experiment.device


class NodeRound:
    """What one instruction message tells a node: config, classes, targets, global adapters."""

    def __init__(self, msg: Message, context: Context) -> None:
        cfg_record = msg.content["config"]
        self.config = config_from_dict(json.loads(str(cfg_record["experiment"])), "server config")
        self.classes: list[str] = json.loads(str(cfg_record["classes"]))
        self.server_round = int(cfg_record["server-round"])
        self.record = cfg_record
        self.ident = identify(context, self.config)
        self.device = resolve_device(_device(self.config, self.ident))
        self.targets = msg.content[TARGETS_KEY].to_torch_state_dict()
        self.data = node_data(self.config, self.ident, self.classes)
        self.adapters = build_adapters(self.data.hidden_size, self.targets["clip"].shape[-1],
                                       self.targets["t5"].shape[-1], self.config.feda2v)
        load_adapters_state(self.adapters, msg.content["arrays"].to_torch_state_dict())


def train_reply(msg: Message, context: Context) -> Message:
    rnd = NodeRound(msg, context)
    cfg = rnd.config
    local = LocalTrainConfig(
        epochs=cfg.federation.local_epochs,
        batch_size=rnd.ident.settings.batch_size or cfg.training.batch_size,
        stratified=cfg.feda2v.use_stratified_batching,
        per_class_loss=cfg.feda2v.use_per_class_loss,
        grad_accum_steps=cfg.training.gradient_accumulation_steps,
        learning_rates={name: float(rnd.record[f"{name}-lr"]) for name in rnd.adapters},
        weight_decays={name: cfg.adapter_weight_decay(name) for name in rnd.adapters},
        seed=cfg.experiment.seed * 10_007 + rnd.server_round * 101 + rnd.ident.index,
    )
    history = train_local(rnd.adapters, rnd.data.train, rnd.targets, local, rnd.device)
    state = {k: v.detach().cpu() for k, v in adapters_state(rnd.adapters).items()}
    metrics = MetricRecord({"num-examples": len(rnd.data.train),
                            **{f"train_{name}_loss": h[-1] for name, h in history.items()}})
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)


def evaluate_reply(msg: Message, context: Context) -> Message:
    rnd = NodeRound(msg, context)
    metrics = evaluate_adapters(rnd.adapters, rnd.data.test, rnd.targets,
                                rnd.config.training.eval_batch_size, rnd.device)
    record = MetricRecord({"num-examples": len(rnd.data.test), **metrics})
    return Message(RecordDict({"metrics": record}), reply_to=msg)

