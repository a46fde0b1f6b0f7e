"""Flower's own strategies, run the FedA2V way (`federation.strategy`, `strategy_options`).

Each name gets one class, made once, that puts FedA2V around the Flower class (its MRO):

    FedA2V<Name> -> Composed -> FedA2VStrategy -> <Flower class> ... -> StreamedFedAvg -> FedAvg

- `configure_train`: FedA2V opens the round (each adapter's learning rate), the Flower class
  adds its own (FedProx: `proximal-mu` in the train config; FedOpt, FedAvgM: the round's global
  arrays), then `StreamedFedAvg` samples nodes and builds the messages the FedA2V way (targets,
  waiting at most a round timeout). Evaluation stays FedA2V's.
- `aggregate_train`: FedA2V screens each update as it arrives and aggregates the metrics. The
  mean-based strategies (`STREAMING`) call FedAvg's `aggregate_train` for their mean, which
  `StreamedFedAvg` answers with FedA2V's running average (so the server still holds one update at
  a time), and apply their own server step (momentum, Adam, ...) to it. The robust ones need
  every update at once: each accepted update is decoded from its transport dtype and kept, and
  the Flower class gets them all as replies (weight: the node's examples, or 1 with
  `adapter_aggregation_mode` `avg`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

import flwr.serverapp.strategy as flower
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
from flwr.serverapp.strategy import FedAvg

from fed_a2v.config.schema import STRATEGY_NAMES
from fed_a2v.config.strategy_options import STRATEGY_OPTIONS, check_strategy
from fed_a2v.federation.aggregation import check_weight
from fed_a2v.federation.feda2v_strategy import FedA2VStrategy
from fed_a2v.federation.transport import WireUpdate

STRATEGIES: dict[str, type[FedAvg]] = {name: getattr(flower, name) for name in STRATEGY_NAMES}
# Those whose aggregate_train takes FedAvg's mean and goes on from it: they stream.
STREAMING = ("FedAvg", "FedProx", "FedAvgM", "FedAdam", "FedYogi", "FedAdagrad")


def build_strategy(name: str, options: Mapping[str, Any] | None = None,
                   **kwargs: Any) -> FedA2VStrategy:
    """FedA2V's strategy around Flower's `name`, made with FedA2VStrategy's `kwargs` (targets,
    lr_for_round, ..., fraction_train, min_train_nodes, ...) and the Flower class's `options`."""
    options = dict(options or {})
    check_strategy(name, options, int(kwargs.get("min_train_nodes", 2)),
                   kwargs.get("aggregation_mode", "weighted_average"))
    typed = {k: float(v) if STRATEGY_OPTIONS[name][k] is float else v
             for k, v in options.items()}
    return strategy_class(name)(**kwargs, **typed)


class StreamedFedAvg(FedAvg):
    """Flower's FedAvg as FedA2V runs it, below the Flower class: FedA2V's sampling and
    messages, and, as FedAvg's mean, the round's running average (`Composed._mean`)."""

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self._instructions(server_round + self.round_offset, arrays, config, grid,
                                  MessageType.TRAIN)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self._mean, None


class Composed(FedA2VStrategy):
    """FedA2VStrategy in front of a Flower class (`strategy_class` makes the classes)."""

    streams = True  # set per class: STREAMING or not
    _mean: ArrayRecord | None = None
    kept: dict[int, tuple[ArrayRecord, float]]  # robust: reply id -> decoded arrays, weight

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kept = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config = self._open_train_round(server_round + self.round_offset, arrays, config)
        return super(FedA2VStrategy, self).configure_train(server_round, arrays, config, grid)

    def _open_train_round(self, server_round: int, arrays: ArrayRecord,
                          config: ConfigRecord) -> ConfigRecord:
        self.kept = {}
        return super()._open_train_round(server_round, arrays, config)

    def _add(self, key: int, update: WireUpdate, weight: float) -> None:
        if self.streams:
            super()._add(key, update, weight)
            return
        check_weight(weight)
        # Decoded to the global adapters' dtype; the reply's wire arrays are dropped.
        self.kept[key] = ArrayRecord({k: Array(np.ascontiguousarray(update[k]))
                                      for k in update}), weight

    def _new_global(self, server_round: int, accepted: list[Message]) -> ArrayRecord | None:
        """The Flower class's aggregate (round numbers as Flower counts them, from 1 in this
        process: FedAdam's bias correction starts again with its moments after a resume)."""
        if self.streams:
            mean = super()._new_global(server_round, accepted)
            # in the global adapters' key order: FedAvgM pairs arrays by position
            self._mean = ArrayRecord({k: mean[k] for k in self.global_state})
            replies = accepted
        else:
            replies = [self._as_reply(msg) for msg in accepted]
            self.kept = {}
        try:
            arrays, _ = super(FedA2VStrategy, self).aggregate_train(server_round, replies)
        finally:
            self._mean = None
        if arrays is None:
            return None
        # Back to the global adapters' dtypes (FedAdam's step, for one, is float64).
        return ArrayRecord({k: a if np.dtype(a.dtype) == self.global_state[k].dtype
                            else Array(a.numpy().astype(self.global_state[k].dtype))
                            for k, a in arrays.items()})

    def _as_reply(self, msg: Message) -> Message:
        """An accepted reply as the Flower class reads it: its decoded arrays and weight."""
        arrays, weight = self.kept.pop(id(msg))
        content = RecordDict({self.arrayrecord_key: arrays,
                              "metrics": MetricRecord({self.weighted_by_key: weight})})
        return Message(content, dst_node_id=msg.metadata.src_node_id,
                       message_type=MessageType.TRAIN)


@cache
def strategy_class(name: str) -> type[FedA2VStrategy]:
    """The FedA2V class for Flower's strategy `name` (see the module's docstring)."""
    cls = STRATEGIES[name]
    bases = (Composed, StreamedFedAvg) if cls is FedAvg else (Composed, cls, StreamedFedAvg)
    return type(f"FedA2V{name}", bases, {"streams": name in STREAMING,
                                         "__module__": __name__,
                                         "__doc__": f"Flower's {name}, run by FedA2V."})
