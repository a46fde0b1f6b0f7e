"""Reading an experiment or node file from disk, in FedA2V's format or upstream's."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.key_paths import node_file_entry
from fed_a2v.config.overrides import apply_overrides
from fed_a2v.config.parse import build, read_json
from fed_a2v.config.schema import Config, NodeConfig
from fed_a2v.config.translation import Translation
from fed_a2v.config.upstream import is_upstream, translate
from fed_a2v.config.validate import config_from_dict

log = logging.getLogger("fed_a2v.config")


def load_config(path: str | Path, overrides: Iterable[str] = (), strict: bool = False) -> Config:
    """Read an experiment JSON file (FedA2V's format or upstream's), apply `--set KEY=VALUE`
    overrides, translate and validate it; one warning names what is not supported (`strict`:
    an error). See docs/upstream-config.md."""
    return resolve(path, overrides, strict)[0]


def load_node_config(path: str | Path) -> NodeConfig:
    """Read and validate a node's own JSON file (the shape of one `nodes` entry; comment keys
    and upstream's dataset spellings are read as in an experiment file)."""
    return build(NodeConfig, node_file_entry(read_json(Path(path))), "", str(path))


def resolve(path: str | Path, overrides: Iterable[str] = (), strict: bool = False,
            quiet: bool = False) -> tuple[Config, Translation]:
    """Read, override, translate and build a config; log (or with `strict` raise) what is not
    supported. `quiet`: log nothing (the caller reports)."""
    raw = read_json(Path(path))
    upstream = is_upstream(raw)
    if isinstance(raw, dict):
        apply_overrides(raw, overrides)
    elif overrides:
        raise ConfigError(f"{path}: --set needs a JSON object in the file")
    t = translate(raw, str(path), upstream)
    config = config_from_dict(t.native, str(path))
    if t.unsupported and strict:
        raise ConfigError(t.warning_line().replace(": not supported, ignored", ": --strict: "
                                                   "not supported", 1))
    if not quiet:
        for line in t.warnings + ([t.warning_line()] if t.unsupported else []):
            log.warning("%s", line)
    return config, t


def describe(config: Config) -> str:
    """The experiment in one line: name, nodes, rounds, epochs, batch, corpus."""
    fed = config.federation
    return (f"'{config.experiment.name}', {fed.num_clients} nodes x {fed.global_rounds} rounds x "
            f"{fed.local_epochs} local epochs, batch {config.training.batch_size}, dataset "
            f"{config.dataset.name} at {config.dataset_path()}")
