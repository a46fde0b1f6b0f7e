"""Standalone nodes (`feda2v.adapter_aggregation_mode` "none", upstream's `*_sa` experiments):
each node trains its own adapters, which never leave it.

A SuperExec starts a fresh process for every message, so a node keeps its adapters between
rounds on its own disk, one file per run and node:
`<node cache root>/standalone/<run id>/<sha256 of the node key>.safetensors`. A node without
that file starts from the adapters every node (and the server) builds from the experiment seed.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file

from fed_a2v.model.adapters import Adapter, adapters_state, load_adapters_state, save_adapters

log = logging.getLogger(__name__)


def own_adapters_path(cache_root: Path, run_id: int, node_key: str) -> Path:
    digest = hashlib.sha256(node_key.encode()).hexdigest()[:32]
    return Path(cache_root) / "standalone" / str(run_id) / f"{digest}.safetensors"


def load_own_adapters(adapters: dict[str, Adapter], path: Path, name: str) -> int:
    """Load this node's adapters from `path` into `adapters`; returns the rounds they were
    trained for (0: no file yet, `adapters` left as built)."""
    if not path.exists():
        return 0
    with safe_open(str(path), "pt") as f:
        rounds = int((f.metadata() or {}).get("rounds", "0"))
    load_adapters_state(adapters, load_file(str(path)))
    log.info("%s: own adapters of %d rounds from %s", name, rounds, path)
    return rounds


def save_own_adapters(adapters: dict[str, Adapter], path: Path, rounds: int) -> None:
    """Write this node's adapters (trained for `rounds` rounds) whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in adapters_state(adapters).items()}
    save_adapters(state, path, {"rounds": str(rounds)})
