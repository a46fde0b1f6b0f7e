"""The server's Flower strategy: FedAvg per adapter, a learning rate per adapter each round,
and the class targets delivered with every instruction."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from .aggregation import fedavg_per_adapter

log = logging.getLogger(__name__)

TARGETS_KEY = "targets"


class FedA2VStrategy(FedAvg):
    """FedAvg whose instructions carry per-round adapter LRs and the targets.

    `lr_for_round(round) -> {"clip": lr, "t5": lr}` is sent as `clip-lr` / `t5-lr`. The
    aggregated train and evaluate metrics of each round are kept in `round_metrics`.
    """

    def __init__(self, targets: ArrayRecord, lr_for_round: Callable[[int], dict[str, float]],
                 **fedavg_kwargs) -> None:
        super().__init__(**fedavg_kwargs)
        self.targets = targets
        self.lr_for_round = lr_for_round
        self.round_metrics: dict[int, dict[str, float]] = {}
        self.nodes_seen: set[int] = set()

    def _with_targets(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        for message in messages:
            message.content[TARGETS_KEY] = self.targets
        return messages

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        lrs = self.lr_for_round(server_round)
        self.round_metrics[server_round] = {f"{name}_lr": lr for name, lr in lrs.items()}
        config = ConfigRecord({**config, **{f"{name}-lr": lr for name, lr in lrs.items()}})
        return self._with_targets(super().configure_train(server_round, arrays, config, grid))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self._with_targets(super().configure_evaluate(server_round, arrays, config, grid))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        self.nodes_seen.update(m.metadata.src_node_id for m in valid)
        contents = [m.content for m in valid]
        states = [{k: v.numpy() for k, v in next(iter(c.array_records.values())).items()}
                  for c in contents]
        weights = [float(next(iter(c.metric_records.values()))[self.weighted_by_key])
                   for c in contents]
        averaged = fedavg_per_adapter(states, weights)
        arrays = ArrayRecord({k: Array(v) for k, v in averaged.items()})
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        self.round_metrics.setdefault(server_round, {}).update(metrics)
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        metrics = super().aggregate_evaluate(server_round, replies)
        if metrics is not None:
            self.round_metrics.setdefault(server_round, {}).update(metrics)
        return metrics

