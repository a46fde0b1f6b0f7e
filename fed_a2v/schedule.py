"""Per-adapter learning rate across federated rounds, computed by the server."""

from __future__ import annotations

import math


def round_lr(base_lr: float, schedule: str, server_round: int, num_rounds: int,
             warmup_rounds: int = 1, min_ratio: float = 0.1) -> float:
    """LR for round `server_round` (1-based) of `num_rounds`.

    `constant`: `base_lr` every round. `cosine`: linear warmup over `warmup_rounds` up to
    `base_lr`, then a cosine decay that reaches `min_ratio * base_lr` in the last round.
    """
    if not 1 <= server_round <= num_rounds:
        raise ValueError(f"round {server_round} is outside 1..{num_rounds}")
    if schedule == "constant":
        return base_lr
    if schedule != "cosine":
        raise ValueError(f"unknown schedule '{schedule}'; use 'constant' or 'cosine'")
    warmup = min(warmup_rounds, num_rounds - 1)
    if server_round <= warmup:
        return base_lr * server_round / (warmup + 1)
    decay_rounds = num_rounds - warmup
    progress = (server_round - warmup - 1) / max(decay_rounds - 1, 1)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
