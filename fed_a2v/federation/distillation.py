"""KD aggregation (`feda2v.adapter_aggregation_mode` `kd`) across the network: each node sends
its per-class generators once (`fed_a2v.model.generators`), the server merges them into one
generator per class, and from the next round on it distils the round's FedAvg on their samples,
each class taught by the nodes that hold it (`fed_a2v.model.distill`).

What crosses the network besides the adapters: per node, once, each of its classes' generator
(a mean token sequence, `generator_rank` directions with their spreads, a noise level: for
`replay`, the clips' tokens themselves) and, every round, how many training clips of each class
it holds. The server keeps one generator per class and the teacher's running sums, so its
memory does not grow with the number of nodes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType
from torch import nn

from fed_a2v.config.feda2v_section import FedA2VConfig
from fed_a2v.config.schema import Config
from fed_a2v.encode.encoded_set import EncodedSet
from fed_a2v.encode.target_set import Targets
from fed_a2v.federation.protocol import CLASS_COUNTS, GENERATOR_REQUEST, GENERATORS
from fed_a2v.model.adapters import adapters_for_targets, adapters_state, load_adapters_state
from fed_a2v.model.distill import TeacherSums, TransferSet, distill
from fed_a2v.model.evaluation import evaluate_adapters
from fed_a2v.model.generators import (
    ClassGenerator,
    fit_generators,
    flatten,
    frechet_distance,
    load_latest,
    merge_generators,
    merge_parts,
    save_checkpoints,
    unflatten,
)

log = logging.getLogger(__name__)


# The node's side.

def row_names(data: EncodedSet, targets: Targets) -> list[str]:
    """Each training clip's class: the name of its target row."""
    return [targets.names[int(r)] for r in data.target_ids]


def class_counts_record(data: EncodedSet, targets: Targets) -> ConfigRecord:
    names = row_names(data, targets)
    return ConfigRecord({"counts": json.dumps({c: names.count(c) for c in dict.fromkeys(names)})})


def node_generators(data: EncodedSet, targets: Targets, cfg: FedA2VConfig
                    ) -> dict[str, ClassGenerator]:
    """The generators of a node's training clips, one per class (target row)."""
    tokens = data.tokens.batch(list(range(len(data))))
    return fit_generators(tokens, row_names(data, targets), cfg.generator_type,
                          cfg.generator_granularity, cfg.generator_rank,
                          cfg.generator_class_groups)


def generators_records(generators: dict[str, ClassGenerator]) -> dict[str, Any]:
    """A node's generators as its reply carries them: one ArrayRecord (`flatten`) and the
    class of each entry."""
    arrays = ArrayRecord({k: Array(np.ascontiguousarray(v))
                          for k, v in flatten(generators).items()})
    return {GENERATORS: arrays,
            f"{GENERATORS}-classes": ConfigRecord({"classes": json.dumps(list(generators))})}


def generators_from_records(arrays: ArrayRecord, classes: ConfigRecord, where: str
                            ) -> dict[str, ClassGenerator]:
    """The inverse of `generators_records`; ValueError naming `where`."""
    return unflatten({k: v.numpy() for k, v in arrays.items()},
                     json.loads(str(classes["classes"])), where)


@torch.no_grad()
def validate_generators(generators: dict[str, ClassGenerator], adapters: dict[str, nn.Module],
                        data: EncodedSet, targets: Targets, samples: int, seed: int
                        ) -> dict[str, float]:
    """How a node's generators do: `generator_<adapter>_top1`, how often its own adapters put
    a sample nearest its class (as held-out top-1 scores a clip), and `generator_frechet`, the
    Fréchet distance between the mean-pooled tokens of samples and of the node's clips."""
    rng = torch.Generator().manual_seed(seed)
    tokens = torch.cat([g.sample(samples, rng) for g in generators.values()])
    rows = torch.tensor([targets.names.index(c) for c in generators for _ in range(samples)])
    sampled = EncodedSet(tokens, rows)
    top1 = {k: v for k, v in evaluate_adapters(
        adapters, sampled, targets.tensors, 64, torch.device("cpu"), prefix="generator").items()
        if k.endswith("_top1")}
    real = torch.cat([chunk.mean(1) for chunk in data.tokens.chunks(64)])
    return {**top1, "generator_frechet": frechet_distance(tokens.mean(1), real)}


def generator_reply(config: Config, msg: Message, node_key: str, node_index: int,
                    server_round: int, data: EncodedSet, targets: Targets,
                    adapters: dict[str, nn.Module]) -> tuple[dict[str, Any], dict[str, float]]:
    """What a train reply adds for KD and generator training: the node's class counts; its
    generators when the server asks for them; saved under upstream's names when the config
    says so (`generator_save_checkpoint`, or `generator_training_mode` in its first and last
    round); and, from a round that fits them, their validation metrics
    (`generator_validation_frequency`)."""
    cfg = config.feda2v
    kd = cfg.adapter_aggregation_mode == "kd"
    asked = GENERATOR_REQUEST in msg.content and node_key not in json.loads(
        str(msg.content[GENERATOR_REQUEST]["have"]))
    save = cfg.generator_training_mode and server_round in (1, config.federation.global_rounds)
    if not (asked or save or kd):
        return {}, {}
    out: dict[str, Any] = {CLASS_COUNTS: class_counts_record(data, targets)}
    metrics: dict[str, float] = {}
    if asked or save:
        generators = node_generators(data, targets, cfg)
        if asked:
            out |= generators_records(generators)
        if save or (asked and cfg.generator_save_checkpoint):
            paths = save_checkpoints(generators, Path(cfg.generator_checkpoint_dir),
                                     cfg.generator_checkpoint_base_name, node_index,
                                     cfg.generator_granularity, server_round,
                                     cfg.generator_class_groups)
            log.info("saved %d generator file(s) to %s", len(paths), cfg.generator_checkpoint_dir)
        every = cfg.generator_validation_frequency
        if every and (server_round == 1 or server_round % every == 0
                      or server_round == config.federation.global_rounds):
            metrics = validate_generators(generators, adapters, data, targets,
                                          cfg.kd_samples_per_class, server_round)
    return out, metrics


# The server's side.

class KDAggregation:
    """The server's KD state: one generator per class (merged over the nodes that sent one),
    this round's teacher sums, and what distillation did each round."""

    def __init__(self, config: Config, targets: Targets, d_audio: int) -> None:
        self.cfg = config.feda2v
        self.seed = config.experiment.seed
        self.batch_size = config.training.batch_size
        self.targets, self.d_audio = targets, d_audio
        self.template = adapters_for_targets(d_audio, targets.tensors, self.cfg, self.seed)
        self.generators: dict[str, ClassGenerator] = {}
        self.pending: dict[str, list[ClassGenerator]] = {}  # arrived this round
        self.have: set[str] = set()  # node keys whose generators the server holds
        self.teacher: TeacherSums | None = None
        self.counts: dict[int, dict[str, int]] = {}  # reply id -> its classes' clip counts
        self.names: dict[int, str] = {}  # reply id -> its node's name in the run's records
        self.generator_bytes = 0
        if self.cfg.generator_load_checkpoint:
            self.load(Path(self.cfg.generator_checkpoint_dir))

    def load(self, folder: Path) -> None:
        """Start from the generators saved in `folder`: each node's latest round."""
        parts = load_latest(folder, self.cfg.generator_checkpoint_base_name)
        self.generators = merge_parts(parts, self.cfg.generator_rank)
        nodes = sorted({p.node for ps in parts.values() for p in ps})
        self.have.update(f"checkpoint node{n}" for n in nodes)
        log.info("KD: %d class generators loaded from %s (%d nodes)", len(self.generators),
                 folder, len(nodes))

    def records(self, kind: str) -> dict[str, Any]:
        """Train instructions ask every node whose generators the server lacks."""
        if kind != MessageType.TRAIN or self.cfg.generator_load_checkpoint:
            return {}
        return {GENERATOR_REQUEST: ConfigRecord({"have": json.dumps(sorted(self.have))})}

    def round_seed(self, server_round: int) -> int:
        """The seed of a round's transfer samples and of its distillation."""
        return self.seed * 100_003 + server_round

    def open_round(self, server_round: int) -> None:
        self.counts, self.names = {}, {}
        self.teacher = (TeacherSums(TransferSet(self.generators, self.cfg.kd_samples_per_class,
                                                self.round_seed(server_round)))
                        if self.generators else None)

    def take(self, reply: Message, node_key: str, name: str) -> None:
        """A train reply's class counts and generators (refused ones are logged)."""
        content = reply.content
        self.names[id(reply)] = name
        if CLASS_COUNTS in content:
            try:
                counts = json.loads(str(content[CLASS_COUNTS]["counts"]))
                self.counts[id(reply)] = {str(c): int(n) for c, n in counts.items()}
            except (ValueError, TypeError, AttributeError) as err:
                log.warning("KD: class counts of %s refused: %s", name, err)
        if GENERATORS not in content or node_key in self.have:
            return
        try:
            generators = generators_from_records(content[GENERATORS],
                                                 content[f"{GENERATORS}-classes"], name)
            wrong = [c for c, g in generators.items() if g.shape[-1] != self.d_audio]
            if wrong:
                raise ValueError(f"generators of {', '.join(wrong)} make tokens of width "
                                 f"{generators[wrong[0]].shape[-1]}, not the encoder's "
                                 f"{self.d_audio}")
        except (ValueError, KeyError) as err:
            log.warning("KD: the generators of %s refused: %s", name, err)
            return
        self.generator_bytes += content[GENERATORS].count_bytes()
        unknown = [c for c in generators if c not in self.targets.names]
        if unknown:
            log.warning("KD: %s sent generators of classes the targets lack: %s", name,
                        ", ".join(unknown))
        for c, gen in generators.items():
            if c not in unknown:
                self.pending.setdefault(c, []).append(gen)
        self.have.add(node_key)

    def teach(self, update: Any, key: int, examples: float) -> None:
        """Add the adapters of one accepted update (of the reply with id `key`, `take`n
        before) to the teacher sums, then drop them."""
        if self.teacher is None:
            return
        if self.cfg.kd_teacher == "all_nodes":
            weights = dict.fromkeys(self.teacher.transfer.classes, examples)
        else:
            weights = {c: float(n) for c, n in self.counts.get(key, {}).items()}
        load_adapters_state(self.template, {k: torch.from_numpy(np.asarray(update[k]))
                                            for k in update})
        self.teacher.add(self.template, weights, self.names.get(key, str(key)))

    def finish(self, arrays: ArrayRecord, server_round: int) -> tuple[ArrayRecord,
                                                                     dict[str, float]]:
        """The round's global adapters: FedAvg's `arrays`, distilled if there is a teacher;
        the round's KD metrics. Generators that arrived this round join for the next one."""
        metrics: dict[str, float] = {}
        if self.teacher is not None and self.teacher.weights:
            load_adapters_state(self.template, {k: torch.from_numpy(a.numpy().copy())
                                                for k, a in arrays.items()})
            losses = distill(self.template, self.teacher, self.cfg.kd_training_epochs,
                             self.cfg.kd_learning_rate, self.batch_size,
                             self.round_seed(server_round))
            metrics = {f"kd_{k}_loss": v for k, v in losses.items()}
            metrics["kd_classes"] = float(len(self.teacher.weights))
            state = adapters_state(self.template)
            arrays = ArrayRecord({k: Array(state[k].detach().numpy().astype(
                arrays[k].numpy().dtype)) for k in arrays})
        self.teacher = None
        self.merge_pending()
        return arrays, metrics

    def merge_pending(self) -> None:
        for c, parts in self.pending.items():
            known = [self.generators[c]] if c in self.generators else []
            self.generators[c] = merge_generators(known + parts, self.cfg.generator_rank)
        self.pending = {}
