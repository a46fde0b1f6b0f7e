"""FedAvg, one adapter at a time and one update at a time: weighted by examples or not."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np


def shape_of(update: Mapping[str, np.ndarray], key: str) -> tuple[int, ...]:
    """A tensor's shape without decoding it where the update can tell (`WireUpdate`)."""
    shape_fn = getattr(update, "shape_of", None)
    return shape_fn(key) if shape_fn else tuple(np.shape(update[key]))


def check_weight(weight: float) -> None:
    if weight < 0 or not np.isfinite(weight):
        raise ValueError(f"an update's weight must be finite and >= 0, got {weight}")


CHUNK = 1 << 18  # values added at a time: bounds the float64 temporaries of a large tensor


class RunningAverage:
    """A weighted mean of same-keyed updates taken one at a time: a running weighted sum in
    float64 per tensor, divided by the total weight at the end, so only one update at a time
    need be in memory. `add` checks keys and shapes before it touches the sum."""

    def __init__(self, reference: Mapping[str, np.ndarray]) -> None:
        self.dtypes = {k: np.asarray(v).dtype for k, v in reference.items()}
        self.shapes = {k: tuple(np.shape(v)) for k, v in reference.items()}
        self.sums: dict[str, np.ndarray] = {}
        self.total = 0.0
        self.count = 0

    def problem(self, update: Mapping[str, np.ndarray]) -> str | None:
        if update.keys() != self.shapes.keys():
            return (f"keys {sorted(set(update) ^ set(self.shapes))[:3]} are in the update or "
                    "the reference, not both")
        for key, shape in self.shapes.items():
            if shape_of(update, key) != shape:
                return f"'{key}' has shape {shape_of(update, key)}, expected {shape}"
        return None

    def add(self, update: Mapping[str, np.ndarray], weight: float) -> None:
        check_weight(weight)
        problem = self.problem(update)
        if problem:
            raise ValueError(problem)
        for key, shape in self.shapes.items():
            if key not in self.sums:
                self.sums[key] = np.zeros(shape, np.float64)
            total = self.sums[key].reshape(-1)
            value = np.asarray(update[key]).reshape(-1)
            for start in range(0, value.size, CHUNK):  # float64 temporaries of CHUNK values
                part = value[start:start + CHUNK].astype(np.float64)
                part *= weight
                total[start:start + CHUNK] += part
        self.total += weight
        self.count += 1

    def result(self) -> dict[str, np.ndarray]:
        """The mean of every update added, in the reference's dtypes (it empties the sums)."""
        return dict(self.pop_result())

    def pop_result(self) -> Iterator[tuple[str, np.ndarray]]:
        """The mean, one tensor at a time, each sum freed once its mean is out (the whole
        average is never held twice)."""
        if not self.count or self.total <= 0:
            raise ValueError(f"no weight to average by: {self.count} updates, total weight "
                             f"{self.total}")
        for key in sorted(self.sums, key=lambda k: -self.sums[k].size):  # largest first
            mean = self.sums.pop(key)
            mean /= self.total
            yield key, mean.astype(self.dtypes[key])


def fedavg(states: Sequence[Mapping[str, np.ndarray]],
           weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Weighted mean of same-keyed, same-shaped state dicts; weights are example counts."""
    if not states or len(states) != len(weights):
        raise ValueError("fedavg needs one weight per state and at least one state")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"fedavg weights must be >= 0 and sum to > 0, got {list(weights)}")
    average = RunningAverage(states[0])
    for i, (state, weight) in enumerate(zip(states, weights, strict=True)):
        problem = average.problem(state)
        if problem:
            raise ValueError(f"state {i}: {problem} (state 0 sets them)")
        average.add(state, float(weight))
    return average.result()


def split_by_adapter(state: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """`{"clip.x": a, "t5.y": b}` -> `{"clip": {"clip.x": a}, "t5": {"t5.y": b}}`."""
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        groups.setdefault(key.split(".", 1)[0], {})[key] = value
    return groups


def fedavg_per_adapter(states: Sequence[dict[str, np.ndarray]],
                       weights: Sequence[float]) -> dict[str, np.ndarray]:
    """FedAvg of each adapter's parameters on its own, weighted by the nodes' example counts."""
    per_node = [split_by_adapter(s) for s in states]
    out: dict[str, np.ndarray] = {}
    for adapter in per_node[0]:
        out |= fedavg([groups[adapter] for groups in per_node], weights)
    return out


def aggregate_adapters(states: Sequence[dict[str, np.ndarray]], examples: Sequence[float],
                       mode: str) -> dict[str, np.ndarray]:
    """`feda2v.adapter_aggregation_mode` for train updates: `weighted_average` weights each
    node by its example count, `avg` gives every node the same weight (upstream's mean)."""
    if mode == "weighted_average":
        return fedavg_per_adapter(states, examples)
    if mode == "avg":
        return fedavg_per_adapter(states, [1.0] * len(states))
    raise ValueError(f"adapter aggregation mode '{mode}' averages nothing (standalone nodes "
                     "keep their own adapters)")


def update_problem(update: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                   max_norm: float | None) -> str | None:
    """Why a node's adapters cannot be averaged into the global ones, or None if they can.

    Checks keys, shapes and dtypes against the global adapters, that every value is finite, and,
    with `max_norm`, that each adapter moved at most that far (L2 over its parameters).
    """
    missing, extra = sorted(reference.keys() - update.keys()), sorted(update.keys() - reference)
    if missing or extra:
        return f"keys differ (missing {missing[:3]}, unexpected {extra[:3]})"
    for key, ref in reference.items():
        if shape_of(update, key) != ref.shape:
            return f"'{key}' has shape {shape_of(update, key)}, expected {ref.shape}"
        value = update[key]
        if value.dtype != ref.dtype:
            return f"'{key}' has dtype {value.dtype}, expected {ref.dtype}"
        if not np.isfinite(value).all():
            return f"'{key}' holds non-finite values"
    if max_norm is not None:
        for adapter, keys in split_by_adapter(reference).items():
            norm = float(np.sqrt(sum(np.sum((update[k].astype(np.float64) - ref) ** 2)
                                     for k, ref in keys.items())))
            if norm > max_norm:
                return f"the {adapter} adapter moved {norm:.3g}, above max_update_norm {max_norm}"
    return None
