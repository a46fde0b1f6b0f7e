"""The rounds of a run: Flower's `Strategy.start` sequence, numbered and logged as the run's.

Each round is what Flower's `start` does: the train stage (`configure_train`, the grid's
`send_and_receive`, `aggregate_train`), the evaluate stage (the same with `configure_evaluate`
and `aggregate_evaluate`), then the server's end of round (`evaluate_fn`), on any Flower
strategy (FedA2V's, or a differential-privacy wrapper around it). Two things differ: Flower
numbers rounds from 1 in every call, so a resumed run printed `[ROUND 1/2]` while it ran round
3 of 4, and it logs each stage's whole ConfigRecord, which here holds the experiment; the run's
config is logged once, briefly, by the server (`fed_a2v.federation.server`).

A round whose train stage got fewer usable updates than the quorum (`ShortRound`) is not
counted: it is run again, once, when the quorum is connected; a second short attempt stops the
run. How many stages a round has is the strategy's: `FedA2VStrategy` in one-stage rounds sends
no evaluate instruction but in the last round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fed_a2v.federation.rounds import ShortRound

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
        new_arrays, train_metrics = train_stage(strategy, grid, current, arrays, train_config,
                                                timeout)
        if new_arrays is not None:
            result.arrays = arrays = new_arrays
        if train_metrics is not None:
            result.train_metrics_clientapp[current] = train_metrics
        instructions = list(strategy.configure_evaluate(current, arrays, evaluate_config, grid))
        if instructions:  # none in a round without an evaluate stage
            replies = grid.send_and_receive(instructions, timeout=timeout)
            evaluate_metrics = strategy.aggregate_evaluate(current, replies)
            if evaluate_metrics is not None:
                result.evaluate_metrics_clientapp[current] = evaluate_metrics
        if evaluate_fn:
            metrics = evaluate_fn(current, arrays)
            if metrics is not None:
                result.evaluate_metrics_serverapp[current] = metrics
    log.info("rounds %d..%d took %.1f s", first_round, last_round, time.time() - started)
    return result


def train_stage(strategy: Strategy, grid: Grid, current: int, arrays: ArrayRecord,
                config: ConfigRecord, timeout: float | None
                ) -> tuple[ArrayRecord | None, MetricRecord | None]:
    """One round's train stage; run again, once, if it got fewer usable updates than the
    quorum (the strategy's `configure_train` waits for the quorum to be connected first)."""
    retried = False
    while True:
        replies = grid.send_and_receive(strategy.configure_train(current, arrays, config, grid),
                                        timeout=timeout)
        try:
            return strategy.aggregate_train(current, replies)
        except ShortRound as short:
            if retried:
                raise ShortRound(f"{short}; the round was tried twice") from None
            retried = True
            log.warning("%s: the round is not counted; it is run again once min_clients nodes "
                        "are connected", short)
