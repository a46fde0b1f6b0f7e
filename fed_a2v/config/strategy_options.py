"""Which of Flower's strategies an experiment may name, and the keyword options of each
(`federation.strategy`, `federation.strategy_options`).

The table holds what the signatures of Flower 1.42's classes say, less the keywords FedA2V sets
itself, so a config is checked without importing Flower; `tests/test_strategies.py` compares it
with the signatures of the Flower installed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fed_a2v.config.field_rules import ConfigError

_SERVER_OPT = {"eta": float, "beta_1": float, "beta_2": float, "tau": float}
STRATEGY_OPTIONS: dict[str, dict[str, type]] = {
    "FedAvg": {},
    "FedProx": {"proximal_mu": float},
    "FedAvgM": {"server_learning_rate": float, "server_momentum": float},
    "FedAdam": _SERVER_OPT,
    "FedYogi": _SERVER_OPT,
    "FedAdagrad": {"eta": float, "tau": float},
    "FedTrimmedAvg": {"beta": float},
    "FedMedian": {},
    "Krum": {"num_malicious_nodes": int},
    "MultiKrum": {"num_malicious_nodes": int, "num_nodes_to_select": int},
    "Bulyan": {"num_malicious_nodes": int},
}

# Keyword arguments of Flower's classes that FedA2V sets itself, and where.
SET_BY_FEDA2V = {
    "fraction_train": "'federation.join_ratio' sets it",
    "fraction_evaluate": "every node evaluates ('federation.eval_gap' says when)",
    "min_train_nodes": "'federation.min_clients' sets it",
    "min_evaluate_nodes": "'federation.min_clients' sets it",
    "min_available_nodes": "'federation.min_clients' sets it",
    "weighted_by_key": "'feda2v.adapter_aggregation_mode' sets the weights",
    "arrayrecord_key": "FedA2V's messages fix it",
    "configrecord_key": "FedA2V's messages fix it",
    "train_metrics_aggr_fn": "FedA2V aggregates the metrics",
    "evaluate_metrics_aggr_fn": "FedA2V aggregates the metrics",
    "eta_l": "Flower keeps it but never uses it: the nodes' learning rates are FedA2V's, per "
             "adapter ('feda2v.*_adapter_learning_rate' and its schedule)",
    "selection_rule": "a Python function, not a JSON value: Bulyan selects with Flower's "
                      "default, Multi-Krum",
}


# Options below these are meant (Flower checks only FedTrimmedAvg's beta itself).
BELOW = {"beta": 0.5, "beta_1": 1.0, "beta_2": 1.0, "server_momentum": 1.0}


def options_problem(name: str, options: Mapping[str, Any],
                    min_clients: int) -> tuple[str, str] | None:
    """What is wrong with `options` for strategy `name` with quorum `min_clients`: the key
    (below `federation.`) and why; None if they can be used."""
    allowed = STRATEGY_OPTIONS[name]
    for key, value in options.items():
        where = f"strategy_options.{key}"
        if key in SET_BY_FEDA2V:
            return where, f"{name}'s '{key}' is not an option here: {SET_BY_FEDA2V[key]}"
        if key not in allowed:
            return where, (f"{name} has no option '{key}'; its options: "
                           f"{', '.join(allowed) or 'none'}")
        wanted = allowed[key]
        if isinstance(value, bool) or not isinstance(value, int if wanted is int else
                                                     (int, float)):
            return where, f"must be {'an integer' if wanted is int else 'a number'}, got {value!r}"
        if not math.isfinite(value) or value < 0:
            return where, f"must be a finite number >= 0, got {value}"
        if key in BELOW and value >= BELOW[key]:
            return where, f"must be below {BELOW[key]}, got {value}"
    f = int(options.get("num_malicious_nodes", 0))
    needed = {"Krum": 2 * f + 3, "MultiKrum": 2 * f + 3, "Bulyan": 4 * f + 3}.get(name, 0)
    if min_clients < needed:
        return "min_clients", (
            f"{name} with num_malicious_nodes {f} needs at least {needed} updates a round "
            f"(n >= {'4' if name == 'Bulyan' else '2'}f+3), but 'federation.min_clients' is "
            f"{min_clients}: raise min_clients (and num_clients) or lower num_malicious_nodes")
    if name == "MultiKrum" and options.get("num_nodes_to_select", 1) < 1:
        return "strategy_options.num_nodes_to_select", "must be at least 1"
    return None


def check_strategy(name: str, options: Mapping[str, Any], min_clients: int,
                   aggregation_mode: str, source: str = "<config>") -> None:
    """ConfigError if strategy `name` cannot run with these settings."""
    if name not in STRATEGY_OPTIONS:
        raise ConfigError(f"{source}: 'federation.strategy': no strategy '{name}'; use one of "
                          f"{', '.join(STRATEGY_OPTIONS)}")
    if aggregation_mode == "none" and name != "FedAvg":
        raise ConfigError(
            f"{source}: 'federation.strategy' {name} aggregates the nodes' adapters, but "
            "'feda2v.adapter_aggregation_mode' is \"none\" (standalone nodes keep theirs): use "
            "FedAvg, or \"weighted_average\" / \"avg\"")
    problem = options_problem(name, options, min_clients)
    if problem:
        raise ConfigError(f"{source}: 'federation.{problem[0]}': {problem[1]}")
