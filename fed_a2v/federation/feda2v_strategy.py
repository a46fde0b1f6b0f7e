"""The server's Flower strategy: FedAvg per adapter (weighted by examples, unweighted, or none at
all for standalone nodes), a learning rate per adapter each round, the text targets delivered
once to each node, evaluation every `eval_gap` rounds, and rounds that do not wait for nodes gone
away (see `fed_a2v.federation.rounds`)."""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from fed_a2v.encode.target_set import Targets
from fed_a2v.federation.aggregation import RunningAverage, update_problem
from fed_a2v.federation.baselines import RidgeBaselines
from fed_a2v.federation.distillation import KDAggregation
from fed_a2v.federation.overlap_check import OverlapCheck
from fed_a2v.federation.protocol import (
    ARRAYS_INDEX,
    EVALUATE_ROUND,
    EVALUATION,
    SIDE_ARRAYS,
    TARGET_NAMES,
    TARGETS,
    TRANSPORT,
)
from fed_a2v.federation.replies import aggregate_metrics, node_key, reply_metrics
from fed_a2v.federation.round_loop import run_rounds
from fed_a2v.federation.rounds import (
    RoundGrid,
    RoundTimeout,
    ShortRound,
    quorum_nodes,
    sample_nodes,
)
from fed_a2v.federation.run_records import RunRecords
from fed_a2v.federation.transport import WireUpdate, pack

log = logging.getLogger(__name__)


class FedA2VStrategy(RunRecords, FedAvg):
    """FedAvg whose instructions carry per-round adapter LRs (`clip-lr`, `t5-lr`) and, until a
    node has answered once, the targets. What it keeps of the run (each round's metrics in
    `round_metrics`, clip counts in `totals`, nodes, bytes...) is `RunRecords`'.

    `aggregation_mode` (`feda2v.adapter_aggregation_mode`): `weighted_average` (FedAvg by
    examples), `avg` (every accepted update weighs the same) or `none`: standalone nodes, each
    training its own adapters, which never leave it; instructions then carry an empty
    ArrayRecord and so do the replies. Nodes evaluate after every `eval_gap`-th round and after
    the last one.

    `round_protocol` (`federation.round_protocol`): `one_stage`, one message per node per
    round: round r+1's train instruction asks the node to evaluate the global adapters of
    round r (`EVALUATE_ROUND`) before it trains, and round r's metrics line waits for those
    replies (`awaiting_eval`, `lines_due`); the last round has its own evaluate stage.
    `two_stage`: Flower's train stage, then an evaluate stage, every round.

    `min_train_nodes` is the quorum: a stage is sent only once that many nodes are connected
    (waiting at most `quorum_timeout`, else a QuorumError naming the missing nodes stops the
    run), and a round's adapters are averaged only from that many usable updates (fewer: a
    ShortRound from `aggregate_train`; `run_rounds` runs the round again once).

    Train updates are aggregated as they arrive (`take_update`, called by the `RoundGrid` for
    each reply): screened, decoded from `transport_dtype` one tensor at a time, added to a
    running float64 sum, and dropped, so the server holds one update at a time, not N."""

    def __init__(self, targets: Targets, lr_for_round: Callable[[int], dict[str, float]],
                 max_update_norm: float | None = None, allow_overlap: bool = False,
                 aggregation_mode: str = "weighted_average", eval_gap: int = 1,
                 render_every: int = 0, transport_dtype: str = "fp32",
                 baselines: RidgeBaselines | None = None, kd: KDAggregation | None = None,
                 round_protocol: str = "one_stage", quorum_timeout: float | None = None,
                 **fedavg_kwargs) -> None:
        super().__init__(train_metrics_aggr_fn=aggregate_metrics,
                         evaluate_metrics_aggr_fn=aggregate_metrics, **fedavg_kwargs)
        self.targets_records = {
            TARGETS: ArrayRecord(targets.tensors),
            TARGET_NAMES: ConfigRecord({"names": json.dumps(targets.names)}),
        }
        self.lr_for_round = lr_for_round
        self.max_update_norm = max_update_norm
        self.global_state: dict[str, np.ndarray] = {}
        self.round_offset = 0  # rounds finished before a resume: Flower counts from 1 again
        self.timeouts = RoundTimeout()
        # (round, node) -> bytes sent besides the adapters and the one-time targets
        self.control_bytes: dict[tuple[int, int], int] = {}
        self.aggregation_mode = aggregation_mode
        self.standalone = aggregation_mode == "none"
        self.eval_gap = eval_gap
        self.one_stage = round_protocol == "one_stage"
        self.quorum_timeout = quorum_timeout  # None: the stage's round timeout
        # one stage: the round whose global adapters the next train instruction has the nodes
        # evaluate (its metrics line waits for them), and a round whose evaluation came in with
        # the last train replies (its line is due)
        self.awaiting_eval: int | None = None
        self.evaluated: int | None = None
        # Nodes render images every `render_every` rounds (0: never), in the evaluate stage.
        self.render_every = render_every
        self.last_round: int | None = None  # known once `start` is called
        self.transport_dtype = transport_dtype
        self.train_round = 0  # the round whose updates `take_update` adds up
        self.average: RunningAverage | None = None  # that round's running sum
        # id(reply) -> (reply, why it was refused or None); holding the reply keeps its id
        self.taken: dict[int, tuple[Message, str | None]] = {}
        # Ridge baselines (federation.baselines): their statistics and maps travel beside
        # the adapters, never in their ArrayRecord
        self.baselines = baselines
        # KD aggregation (adapter_aggregation_mode kd): generators, teacher sums, distillation
        self.kd = kd
        # Clips shared between nodes fail the run; standalone nodes never share a model, so a
        # clip in two nodes' sets cannot leak from one node's evaluation to another's.
        self.overlap = None if self.standalone else OverlapCheck(allow_overlap)
        if self.standalone:
            log.info("standalone nodes: no adapters are exchanged, and clips shared between "
                     "nodes are not checked (no node's model ever sees another's clips)")

    @property
    def targets_bytes(self) -> int:
        return sum(r.count_bytes() for r in self.targets_records.values())

    def _finish_messages(self, server_round: int, messages: Iterable[Message]) -> list[Message]:
        """Add the targets for nodes that lack them; count what is sent besides the adapters."""
        out = []
        for message in messages:
            node = message.metadata.dst_node_id
            extra = {**({} if node in self.has_targets else self.targets_records),
                     **(self.overlap.request(node) if self.overlap else {}),
                     **(self.baselines.records(node, message.metadata.message_type,
                                               server_round == self.last_round)
                        if self.baselines else {}),
                     **(self.kd.records(message.metadata.message_type) if self.kd else {})}
            if extra:
                content = RecordDict({**dict(message.content.items()), **extra})
                message = Message(content, dst_node_id=node,
                                  message_type=message.metadata.message_type)
            out.append(message)
            key = (server_round, node)
            self.control_bytes[key] = (self.control_bytes.get(key, 0)
                                       + message.content["config"].count_bytes())
            arrays = message.content.array_records.get(self.arrayrecord_key)
            self.adapter_bytes[server_round] = (self.adapter_bytes.get(server_round, 0)
                                                + (arrays.count_bytes() if arrays else 0))
        return out

    def evaluates(self, server_round: int) -> bool:
        """Whether nodes evaluate after `server_round`: every `eval_gap`-th, the last, and
        every round whose global adapters nodes render images with (`render_every`)."""
        return (server_round % self.eval_gap == 0 or server_round == self.last_round
                or bool(self.render_every and server_round % self.render_every == 0))

    def round_grid(self, grid: Grid, num_rounds: int, timeout: float | None) -> RoundGrid:
        """Set up a run of `num_rounds` rounds; the grid they run on: a `RoundGrid` whose
        stages wait `timeout` seconds for replies (None: a timeout that follows the rounds
        observed, `RoundTimeout`) and hand train replies to `take_update` as they arrive. A
        strategy wrapping this one (`fed_a2v.federation.privacy`) runs its rounds on it too."""
        self.timeouts = RoundTimeout(timeout)
        self.last_round = self.round_offset + num_rounds
        return RoundGrid(grid, self.timeouts, on_train_reply=self.take_update,
                         name_of=self.name_of)

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float | None = None, **kwargs: Any) -> Result:
        """The rounds (`run_rounds`: Flower's sequence, numbered as the run's) on
        `round_grid`."""
        return run_rounds(self, self.round_grid(grid, num_rounds, timeout), initial_arrays,
                          num_rounds, self.round_offset + 1, self.last_round, **kwargs)

    def _instructions(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                      grid: Grid, kind: str) -> list[Message]:
        """FedAvg's sampling, except that it waits for nodes at most one round timeout (FedAvg
        waits without end for `min_available_nodes`, so one dead node could stall a run)."""
        train = kind == MessageType.TRAIN
        fraction = self.fraction_train if train else self.fraction_evaluate
        if fraction == 0.0:
            return []
        minimum = max(self.min_train_nodes if train else self.min_evaluate_nodes, 1)
        wait = (self.quorum_timeout if self.quorum_timeout is not None
                else self.timeouts.seconds(kind))
        connected = quorum_nodes(grid, minimum, wait, self.names.by_id,
                                 f"round {server_round}'s {kind} stage")
        nodes = sample_nodes(connected, fraction, minimum)
        log.info("round %d: %s on %d nodes", server_round, kind, len(nodes))
        # one Array for all adapters (fed_a2v.federation.transport); none for standalone nodes.
        # A train stage's adapters are those `_open_train_round` has just read into global_state.
        state = self.global_state if train else {k: v.numpy() for k, v in arrays.items()}
        packed, index = pack({} if self.standalone else state)
        record = RecordDict({self.arrayrecord_key: packed, ARRAYS_INDEX: ConfigRecord(index),
                             self.configrecord_key: ConfigRecord(
                                 {**config, "server-round": server_round})})
        return self._finish_messages(server_round,
                                     self._construct_messages(record, nodes, kind))

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        config = self._open_train_round(server_round, arrays, config)
        return self._instructions(server_round, arrays, config, grid, MessageType.TRAIN)

    def _open_train_round(self, server_round: int, arrays: ArrayRecord,
                          config: ConfigRecord) -> ConfigRecord:
        """Start taking the round's updates; its train config, with each adapter's LR and, in
        one-stage rounds, the round whose global adapters the nodes evaluate first."""
        self.global_state = {k: v.numpy() for k, v in arrays.items()}
        self.train_round, self.average, self.taken = server_round, None, {}
        if self.kd:
            self.kd.open_round(server_round)
        lrs = self.lr_for_round(server_round)
        self.round_metrics[server_round] = {f"{name}_lr": lr for name, lr in lrs.items()}
        evaluate = {} if self.awaiting_eval is None else {EVALUATE_ROUND: self.awaiting_eval}
        return ConfigRecord({**config, **{f"{name}-lr": lr for name, lr in lrs.items()},
                             **evaluate})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        if not self.evaluates(server_round):
            log.info("round %d: no evaluation (eval_gap %d)", server_round, self.eval_gap)
            return []
        if self.one_stage and server_round != self.last_round:
            return []  # the next round's train instructions have the nodes evaluate
        return self._instructions(server_round, arrays, config, grid, MessageType.EVALUATE)

    def take_update(self, reply: Message) -> Message:
        """Screen one train reply and add its adapters to the round's running average, or
        refuse it (logged, kept in `rejected`). The reply keeps its metrics; its arrays are
        dropped. Replies already taken, and error replies, are returned as they are."""
        if reply.has_error() or id(reply) in self.taken:
            return reply
        if self.baselines:  # before the arrays are dropped below
            self.baselines.take(reply, node_key(reply), self.node_name(reply))
        if self.kd:
            self.kd.take(reply, node_key(reply), self.node_name(reply))
        received = sum(a.count_bytes() for k, a in reply.content.array_records.items()
                       if k not in SIDE_ARRAYS)
        self.update_bytes[self.train_round] = self.update_bytes.get(self.train_round, 0) + received
        problem = self._take(reply.content, id(reply))
        self.taken[id(reply)] = reply, problem
        if problem:
            name = self.node_name(reply)
            log.warning("round %d: dropped the update of %s: %s", self.train_round, name,
                        problem)
            self.rejected.append((self.train_round, reply.metadata.src_node_id, problem, name))
        for key in list(reply.content.array_records):
            reply.content[key] = ArrayRecord()
        gc.collect(0)  # inflated records sit in young reference cycles: free this update now
        return reply

    def _take(self, content: RecordDict, key: int) -> str | None:
        """Add a reply's adapters to the running average; why not, if they cannot be."""
        arrays = [a for k, a in content.array_records.items() if k not in SIDE_ARRAYS]
        metrics = reply_metrics(content)
        if len(arrays) != 1 or metrics is None or self.weighted_by_key not in metrics:
            return f"expected one ArrayRecord and one MetricRecord with '{self.weighted_by_key}'"
        if self.standalone:
            return (f"a standalone node keeps its adapters, yet sent {len(arrays[0])} arrays"
                    if len(arrays[0]) else None)
        if not len(arrays[0]):
            return ("the reply holds no adapters (only standalone nodes, adapter_aggregation_"
                    "mode 'none', keep theirs)")
        update = WireUpdate(arrays[0], content.config_records.get(TRANSPORT),
                            self.global_state, self.transport_dtype)
        problem = update.problem or update_problem(update, self.global_state,
                                                   self.max_update_norm)
        if problem:
            return problem
        examples = float(metrics[self.weighted_by_key])
        weight = examples if self.aggregation_mode in ("weighted_average", "kd") else 1.0
        try:
            self._add(key, update, weight)
        except ValueError as err:  # e.g. a negative example count; the sum is untouched
            return str(err)
        if self.kd:  # the node's adapters teach the classes it holds
            self.kd.teach(update, key, examples)
        return None

    def _add(self, key: int, update: WireUpdate, weight: float) -> None:
        """Add one screened update (of the reply with id `key`) to the round's running sum."""
        if self.average is None:
            self.average = RunningAverage(self.global_state)
        self.average.add(update, weight)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        local_round = server_round
        server_round += self.round_offset
        if server_round != self.train_round:  # not configured by configure_train (tests)
            self.train_round, self.average, self.taken = server_round, None, {}
        replies = sorted(replies, key=node_key)  # metric sums must not follow arrival order
        self._note_replies(server_round, replies)
        # Flower's own consistency check fails the whole run when one reply's keys differ:
        # each reply is screened on its own instead, and only a bad one is dropped.
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        accepted = []
        for msg in valid:
            self.take_update(msg)  # replies the RoundGrid streamed in are taken already
            if self.taken[id(msg)][1] is None:
                accepted.append(msg)
                self._note_node(server_round, msg)
        self.round_metrics.setdefault(server_round, {})["train_nodes"] = len(accepted)
        if len(accepted) < max(self.min_train_nodes, 1):
            unusable = [*(f"{self.node_name(m)} ({m.error.reason})" for m in replies
                          if m.has_error()),
                        *(f"{self.node_name(m)} ({self.taken[id(m)][1]})" for m in valid
                          if self.taken[id(m)][1])]
            self.average, self.taken = None, {}
            raise ShortRound(
                f"round {server_round}: {len(accepted)} usable updates, fewer than the "
                f"{self.min_train_nodes} it needs (federation.min_clients); not usable: "
                f"{', '.join(unusable) or 'none (too few nodes were sent the round)'}")
        self.nodes_seen.update(node_key(m) for m in accepted)
        if self.awaiting_eval is not None:  # one stage: the evaluation these replies carry
            self._aggregate_evaluation(self.awaiting_eval, [
                (m, m.content.metric_records.get(EVALUATION)) for m in valid], final=False)
            self.evaluated = self.awaiting_eval
        self.awaiting_eval = (server_round if self.one_stage and self.evaluates(server_round)
                              and server_round != self.last_round else None)
        # nothing to aggregate for standalone nodes: they keep their own adapters
        arrays = ArrayRecord() if self.standalone else self._new_global(local_round, accepted)
        self.average, self.taken = None, {}
        if self.kd and arrays is not None:
            arrays, kd_metrics = self.kd.finish(arrays, server_round)
            self.round_metrics.setdefault(server_round, {}).update(kd_metrics)
        metrics = self.train_metrics_aggr_fn([m.content for m in accepted],
                                             self.weighted_by_key)
        self._record(server_round, metrics)
        return arrays, metrics

    def _new_global(self, server_round: int, accepted: list[Message]) -> ArrayRecord | None:
        """The global adapters after the round whose `accepted` updates were taken: their
        running average (`fed_a2v.federation.flower_strategies` hands it to the chosen Flower
        strategy)."""
        return ArrayRecord({k: Array(v) for k, v in self.average.pop_result()})

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        server_round += self.round_offset
        replies = sorted(replies, key=node_key)  # float sums must not follow arrival order
        self._note_replies(server_round, replies)
        # Not Flower's consistency check: nodes without val clips report no val_* keys.
        valid, _ = self._check_and_log_replies(replies, is_train=False, validate=False)
        return self._aggregate_evaluation(
            server_round, [(m, reply_metrics(m.content)) for m in valid], final=True)

    def _aggregate_evaluation(self, server_round: int,
                              replies: list[tuple[Message, MetricRecord | None]],
                              final: bool) -> MetricRecord | None:
        """The nodes' evaluation of round `server_round`'s global adapters (each reply with its
        evaluation MetricRecord): recorded for the round and returned. `final`: an evaluate
        stage's replies, which may carry the ridge baselines' hits."""
        usable = []
        for msg, metrics in replies:
            if metrics is None or self.weighted_by_key not in metrics:
                log.warning("round %d: %s's evaluation has no MetricRecord with '%s'",
                            server_round, self.node_name(msg), self.weighted_by_key)
                continue
            usable.append(metrics)
            self._note_node(server_round, msg, metrics)
            if final and self.baselines:
                self.baselines.note_hits(msg)
        if len(usable) < self.min_evaluate_nodes:
            log.warning("round %d: %d nodes evaluated, fewer than min_clients (%d)",
                        server_round, len(usable), self.min_evaluate_nodes)
        if not usable:
            return None
        metrics = self.evaluate_metrics_aggr_fn([RecordDict({"metrics": m}) for m in usable],
                                                self.weighted_by_key)
        self._record(server_round, metrics)
        return metrics

    def lines_due(self, final: bool = False) -> list[int]:
        """One stage: the round whose evaluation came in with the last train replies, so its
        metrics line can be written now (once); `final` (no round left to bring an
        evaluation): also the round still waiting for one."""
        due = [r for r in (self.evaluated, self.awaiting_eval if final else None)
               if r is not None]
        self.evaluated = None
        if final:
            self.awaiting_eval = None
        return due
