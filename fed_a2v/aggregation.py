"""FedAvg, one adapter at a time: weighted by examples or not."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fedavg(states: Sequence[dict[str, np.ndarray]],
           weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Weighted mean of same-keyed, same-shaped state dicts; weights are example counts."""
    if not states or len(states) != len(weights):
        raise ValueError("fedavg needs one weight per state and at least one state")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"fedavg weights must be >= 0 and sum to > 0, got {list(weights)}")
    total = float(sum(weights))
    keys = states[0].keys()
    for i, state in enumerate(states[1:], start=1):
        if state.keys() != keys:
            raise ValueError(f"state {i} has keys {sorted(set(state) ^ set(keys))} that "
                             "state 0 has not, or lacks them")
        for key in keys:
            if state[key].shape != states[0][key].shape:
                raise ValueError(f"state {i}: '{key}' has shape {state[key].shape}, "
                                 f"state 0 has {states[0][key].shape}")
    out = {}
    for key in keys:
        acc = np.zeros_like(states[0][key], dtype=np.float64)
        for state, w in zip(states, weights, strict=True):
            acc += state[key].astype(np.float64) * (w / total)
        out[key] = acc.astype(states[0][key].dtype)
    return out


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


def update_problem(update: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                   max_norm: float | None) -> str | None:
    """Why a node's adapters cannot be averaged into the global ones, or None if they can.

    Checks keys, shapes and dtypes against the global adapters, that every value is finite, and,
    with `max_norm`, that each adapter moved at most that far (L2 over its parameters).
    """
    missing, extra = sorted(reference.keys() - update.keys()), sorted(update.keys() - reference)
    if missing or extra:
        return f"keys differ (missing {missing[:3]}, unexpected {extra[:3]})"
    for key, ref in reference.items():
        value = update[key]
        if value.shape != ref.shape:
            return f"'{key}' has shape {value.shape}, expected {ref.shape}"
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
