"""Central differential privacy at node level, with Flower's own pieces (`privacy` section).

Each node clips its update (its adapters after local training minus the global adapters it
received, all adapters as one vector) to L2 norm `clipping_norm` with Flower's ClientApp mod
(`fixedclipping_mod` / `adaptiveclipping_mod`, run by `fed_a2v.federation.clipping`); the
server averages the clipped updates (`adapter_aggregation_mode` avg) and Flower's strategy
wrapper (`DifferentialPrivacyClientSide{Fixed,Adaptive}Clipping`) adds Gaussian noise of stdev
`noise_multiplier` x `clipping_norm` / (updates averaged) to the mean. Flower's RDP accountant
(`flwr.serverapp.RdpAccountant`, `flwr[dp]`) composes the rounds into (ε, δ).

The guarantee is about one node's participation (all its clips at once) in the global
adapters the server releases. It does not cover what else a node reports: its metrics, its
clip counts, the evaluation it runs, the clip digests of the overlap check.

Accounting: each round that releases new adapters is a Gaussian mechanism on the sum of the
clipped updates (sensitivity `clipping_norm` for adding or removing a node), subsampled with
q = the nodes sampled / the nodes connected. With `federation.join_ratio` 1 every connected
node trains every round, q = 1 and the bound is plain Gaussian composition. Below 1, FedA2V
draws a fixed-size sample without replacement; the accountant credits it as Poisson sampling
with that q, the usual approximation (McMahan et al. 2018) but not a proof for fixed-size
samples: set `join_ratio` 1 for a bound that claims no amplification.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import (
    GaussianPrivacyEvent,
    Grid,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    Result,
    Strategy,
)
from flwr.supercore.differential_privacy import KEY_NORM_BIT

from fed_a2v.config.schema import Config
from fed_a2v.config.validate import sampled_nodes
from fed_a2v.federation.clipping import ADAPTIVE, FIXED
from fed_a2v.federation.round_loop import run_rounds

if TYPE_CHECKING:
    from fed_a2v.federation.feda2v_strategy import FedA2VStrategy

log = logging.getLogger(__name__)



class NodeAccountant:
    """(ε, δ) of the node-level releases so far: Flower's RDP accountant over rounds, each a
    Gaussian mechanism of `noise_multiplier` subsampled with q = sampled / connected (as Poisson
    sampling of `population` nodes). With noise_multiplier 0 there is no guarantee: ε is None
    once a round was released."""

    def __init__(self, noise_multiplier: float, population: int, delta: float) -> None:
        from flwr.serverapp import RdpAccountant  # needs flwr[dp] (dp-accounting)

        self.noise_multiplier, self.population, self.delta = noise_multiplier, population, delta
        self.releases = 0
        self.rdp = RdpAccountant(PrivacyConfig(
            target_delta=delta, population_size=population,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.POISSON)) if noise_multiplier > 0 else None

    def release(self, sampled: int, connected: int) -> None:
        """One round's noisy mean was released: `sampled` of `connected` nodes were asked.
        The event's sample size is rounded up, so its q is at least sampled / connected."""
        self.releases += 1
        if self.rdp is not None:
            size = min(self.population,
                       math.ceil(sampled * self.population / max(connected, sampled, 1)))
            event = GaussianPrivacyEvent(noise_multiplier=self.noise_multiplier,
                                         sample_size=max(size, 1),
                                         population_size=self.population)
            # dp-accounting logs a warning for each low fractional order its series does not
            # converge at with q < 1 (it leaves those orders out): one per order and round
            absl = logging.getLogger("absl")
            level = absl.level
            absl.setLevel(logging.ERROR)
            try:
                self.rdp.compose(event)
            finally:
                absl.setLevel(level)

    @property
    def epsilon(self) -> float | None:
        if not self.releases:
            return 0.0
        if self.rdp is None:
            return None
        return self.rdp.get_privacy_spent().epsilon

    def state_dict(self) -> dict[str, Any]:
        return {"releases": self.releases,
                **({"rdp": self.rdp.state_dict()} if self.rdp is not None else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.releases = int(state.get("releases", 0))
        if self.rdp is not None and "rdp" in state:
            self.rdp.load_state_dict(state["rdp"])


class PrivateRounds:
    """FedA2V's side of a Flower client-side DP wrapper (mixed in before it): the rounds run
    on the wrapped strategy's `RoundGrid` (its timeouts and streaming aggregation), the noise
    follows the number of updates actually averaged (a node may fail or be screened out), a
    round whose adapters are released is accounted, and the round's `dp_epsilon` (cumulative)
    and `dp_clipping_norm` join its metrics.

    Flower's own `aggregate_train` is not used: it skips a round in which any node failed
    (FedA2V's rounds go on without it), and its adaptive variant adds the noise after moving
    the clipping norm (so the noise would follow the next round's norm, not the one the nodes
    clipped to) and moves it the wrong way (`_next_clipping_norm`)."""

    strategy: FedA2VStrategy
    clipping_norm: float
    num_sampled_clients: int

    def _set_up(self, config: Config) -> None:
        dp = config.privacy
        self.mechanism = dp.mechanism
        self.configured_noise = dp.noise_multiplier  # adaptive: Flower's own is the update part
        self.ledger = NodeAccountant(dp.noise_multiplier, config.federation.num_clients,
                                     dp.delta)
        self.sampled = self.connected = 0
        self.norm_used = dp.clipping_norm  # by the nodes in the last round

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float | None = None, **kwargs: Any) -> Result:
        """The rounds (`run_rounds`) on the wrapped strategy's `round_grid`; a resumed run goes
        on from the privacy spent before."""
        if self.strategy.privacy:
            self.ledger.load_state_dict(self.strategy.privacy["accountant"])
            self.clipping_norm = float(self.strategy.privacy["clipping_norm"])
        rounds_grid = self.strategy.round_grid(grid, num_rounds, timeout)
        return run_rounds(self, rounds_grid, initial_arrays, num_rounds,
                          self.strategy.round_offset + 1, self.strategy.last_round, **kwargs)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.sampled, self.connected = len(messages), len(list(grid.get_node_ids()))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        answered = [r for r in replies if not r.has_error()]
        if self.mechanism == ADAPTIVE:
            for reply in answered:
                if not any(KEY_NORM_BIT in m for m in reply.content.metric_records.values()):
                    raise AggregationError(
                        f"{self.strategy.node_name(reply)} sent no '{KEY_NORM_BIT}': it did "
                        "not clip its update (its ClientApp lacks "
                        "fed_a2v.federation.clipping.clipping_mod)")
        inner = self.strategy
        arrays, metrics = inner.aggregate_train(server_round, replies)
        round_metrics = inner.round_metrics.setdefault(inner.train_round, {})
        round_metrics["dp_clipping_norm"] = self.norm_used = self.clipping_norm
        if arrays is not None and len(arrays):
            self.num_sampled_clients = int(round_metrics["train_nodes"])  # Flower's divisor
            arrays = self._add_noise_to_aggregated_arrays(arrays)
            self.ledger.release(self.sampled, self.connected)
            if self.mechanism == ADAPTIVE:
                self._next_clipping_norm(answered)
        round_metrics["dp_epsilon"] = self.ledger.epsilon
        inner.privacy = {"accountant": self.ledger.state_dict(),
                         "clipping_norm": self.clipping_norm}
        return arrays, metrics

    def _next_clipping_norm(self, replies: list[Message]) -> None:
        """Adaptive clipping (Andrew et al. 2021): the norm grows while more than
        `target_clipped_quantile` of the updates are clipped (by the noisy count) and shrinks
        while fewer are: C <- C exp(clip_norm_lr (clipped fraction - target)). Flower 1.42's
        own update has the sign the other way round (its norm bit marks a clipped update, the
        paper's an unclipped one), so a norm that clips every update would keep shrinking."""
        clipped = sum(int(next(iter(r.content.metric_records.values()))[KEY_NORM_BIT])
                      for r in replies)
        fraction = self._noisy_fraction(clipped, len(replies))
        self.clipping_norm *= math.exp(self.clip_norm_lr
                                       * (fraction - self.target_clipped_quantile))

    def privacy_record(self) -> dict[str, Any]:
        """What `summary.json` says of the privacy spent (`privacy`)."""
        return {"mechanism": self.mechanism, "noise_multiplier": self.configured_noise,
                "clipping_norm": self.norm_used, "delta": self.ledger.delta,
                "epsilon": self.ledger.epsilon, "rounds": self.ledger.releases,
                "accounting": "RDP (Flower's RdpAccountant), node-level, add/remove one node, "
                              "Poisson-subsampled Gaussian with q = sampled / connected nodes",
                "covers": "the global adapters released each round; not the metrics, clip "
                          "counts or evaluations the nodes report"}


class FixedClipping(PrivateRounds, DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed-clipping wrapper, on FedA2V's rounds."""


class AdaptiveClipping(PrivateRounds, DifferentialPrivacyClientSideAdaptiveClipping):
    """Flower's client-side adaptive-clipping wrapper, on FedA2V's rounds."""


def with_privacy(strategy: FedA2VStrategy, config: Config) -> Strategy:
    """`strategy` wrapped in the Flower DP wrapper `privacy.mechanism` names; itself for
    "none". Start the rounds with the returned strategy's `start`."""
    dp = config.privacy
    if dp.mechanism == "none":
        return strategy
    sampled = sampled_nodes(config)
    if dp.mechanism == FIXED:
        wrapper: PrivateRounds = FixedClipping(strategy, dp.noise_multiplier, dp.clipping_norm,
                                               sampled)
    else:
        wrapper = AdaptiveClipping(strategy, dp.noise_multiplier, sampled, dp.clipping_norm,
                                   dp.target_clipped_quantile, dp.clip_norm_lr,
                                   dp.clipped_count_stddev)
    wrapper._set_up(config)
    log.info("differential privacy: %s, noise multiplier %g, clipping norm %g, δ %g",
             dp.mechanism, dp.noise_multiplier, dp.clipping_norm, dp.delta)
    return wrapper


def privacy_record(strategy: Strategy) -> dict[str, Any]:
    """`summary.json`'s `privacy`: the mechanism, its settings and the (ε, δ) spent."""
    if isinstance(strategy, PrivateRounds):
        return strategy.privacy_record()
    return {"mechanism": "none"}
