"""The key paths of a raw config file, before any translation: which keys are FedA2V's own
(`is_native`), which are comments (`is_metadata`), a node entry's `nodes.*` spelling
(`pattern_of`), the unknown-key message with its close spellings (`unknown_key`), a dataset kind
in any case (`dataset_kind`) and the value at a dotted path (`value_at`)."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import typing
from typing import Any

from fed_a2v.config.field_rules import ConfigError, suggest
from fed_a2v.config.schema import DATASETS, SCHEMA_KEY, Config
from fed_a2v.config.upstream_keys import METADATA_KEYS, TABLE

# Every `dataset.name`; upstream spells them ESC50, VEGAS, VGGSound, MIXED (any case).
DATASET_KINDS = (*DATASETS, "mixed")


def is_metadata(key: str) -> bool:
    return any(fnmatch.fnmatchcase(str(key), k.path) for k in METADATA_KEYS)


def node_file_entry(raw: Any) -> Any:
    """A node's own JSON as a `nodes` entry reads: comments and `$schema` left out, `dataset`
    in any case."""
    if not isinstance(raw, dict):
        return raw
    entry = {k: v for k, v in raw.items() if not is_metadata(k) and k != SCHEMA_KEY}
    if dataset_kind(entry.get("dataset")):
        entry["dataset"] = dataset_kind(entry["dataset"])
    return entry


def pattern_of(path: str) -> str:
    """`nodes.3.dataset` -> `nodes.*.dataset`, the table's spelling."""
    return re.sub(r"^nodes\.[^.]+\.", "nodes.*.", path)


def native_fields(parts: list[str]) -> list[str] | None:
    """The native keys allowed beside `parts[-1]`, or None when its parent is no section."""
    tp: Any = Config
    for part in parts[:-1]:
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            if part not in hints:
                return None
            tp = hints[part]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
    if dataclasses.is_dataclass(tp):
        return [f.name for f in dataclasses.fields(tp)]
    return [] if typing.get_origin(tp) is dict else None


def is_native(path: str) -> bool:
    parts = path.split(".")
    allowed = native_fields(parts)
    if allowed is None:
        return False
    return parts[-1] in allowed or (allowed == [] and len(parts) > 1)


def unknown_key(path: str, where: str) -> ConfigError:
    """Today's unknown-key message; close spellings come from native and upstream keys."""
    parts = path.split(".")
    allowed = native_fields(parts) or []
    prefix = pattern_of(path).rsplit(".", 1)[0] + "." if len(parts) > 1 else ""
    upstream = [p[len(prefix):] for p in TABLE if p.startswith(prefix) and "." not in
                p[len(prefix):]] if prefix else sorted({p.split(".")[0] for p in TABLE})
    hint = suggest(parts[-1], [*allowed, *upstream])
    return ConfigError(f"{where}: unknown key '{path}'{hint}; allowed keys here: "
                       f"{', '.join(allowed)} (and upstream's, docs/upstream-config.md)")


def dataset_kind(value: Any) -> str | None:
    """`ESC50` -> `esc50`: a dataset name in any case, or None."""
    name = str(value).lower()
    return name if isinstance(value, str) and name in DATASET_KINDS else None


def value_at(raw: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(raw, dict) or part not in raw:
            return None
        raw = raw[part]
    return raw
