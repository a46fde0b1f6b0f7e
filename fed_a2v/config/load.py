"""Reading an experiment or node file from disk, in FedA2V's format or upstream's."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fed_a2v.config.parse import build, read_json
from fed_a2v.config.schema import Config, NodeConfig
from fed_a2v.config.upstream import node_file_entry, resolve


def load_config(path: str | Path, overrides: Iterable[str] = (), strict: bool = False) -> Config:
    """Read an experiment JSON file (FedA2V's format or upstream's), apply `--set KEY=VALUE`
    overrides, translate and validate it; one warning names what is not supported (`strict`:
    an error). See docs/upstream-config.md."""
    return resolve(path, overrides, strict)[0]


def load_node_config(path: str | Path) -> NodeConfig:
    """Read and validate a node's own JSON file (the shape of one `nodes` entry; comment keys
    and upstream's dataset spellings are read as in an experiment file)."""
    return build(NodeConfig, node_file_entry(read_json(Path(path))), "", str(path))
