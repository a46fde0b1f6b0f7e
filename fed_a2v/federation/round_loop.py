"""The rounds of a run: Flower's `Strategy.start` sequence, numbered and logged as the run's.

Each round is what Flower's `start` does: the train stage (`configure_train`, the grid's
`send_and_receive`, `aggregate_train`), the evaluate stage (the same with `configure_evaluate`
and `aggregate_evaluate`), then the server's end of round (`evaluate_fn`), on any Flower
strategy (FedA2V's, or a differential-privacy wrapper around it). Two things differ: Flower
numbers rounds from 1 in every call, so a resumed run printed `[ROUND 1/2]` while it ran round
3 of 4, and it logs each stage's whole ConfigRecord, which here holds the experiment; the run's
config is logged once, briefly, by the server (`fed_a2v.federation.server`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

log = logging.getLogger(__name__)

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


def run_rounds(strategy: Strategy, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int,
               first_round: int, last_round: int, train_config: ConfigRecord | None = None,
               evaluate_config: ConfigRecord | None = None,
               evaluate_fn: EvaluateFn | None = None, timeout: float | None = None) -> Result:
    """`num_rounds` rounds; the strategy sees them as 1..`num_rounds` (as in Flower's `start`),
    the log as the run's rounds `first_round`..`last_round`."""
    train_config = train_config if train_config is not None else ConfigRecord()
    evaluate_config = evaluate_config if evaluate_config is not None else ConfigRecord()
    result = Result()
    started = time.time()
    if evaluate_fn:
        initial = evaluate_fn(0, initial_arrays)
        if initial is not None:
            result.evaluate_metrics_serverapp[0] = initial
    arrays = initial_arrays
    for current in range(1, num_rounds + 1):
        log.info("[round %d/%d]", first_round + current - 1, last_round)
        replies = grid.send_and_receive(
            strategy.configure_train(current, arrays, train_config, grid), timeout=timeout)
        new_arrays, train_metrics = strategy.aggregate_train(current, replies)
        if new_arrays is not None:
            result.arrays = arrays = new_arrays
        if train_metrics is not None:
            result.train_metrics_clientapp[current] = train_metrics
        replies = grid.send_and_receive(
            strategy.configure_evaluate(current, arrays, evaluate_config, grid), timeout=timeout)
        evaluate_metrics = strategy.aggregate_evaluate(current, replies)
        if evaluate_metrics is not None:
            result.evaluate_metrics_clientapp[current] = evaluate_metrics
        if evaluate_fn:
            metrics = evaluate_fn(current, arrays)
            if metrics is not None:
                result.evaluate_metrics_serverapp[current] = metrics
    log.info("rounds %d..%d took %.1f s", first_round, last_round, time.time() - started)
    return result
