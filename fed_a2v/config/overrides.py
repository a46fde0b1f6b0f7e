"""`--set KEY=VALUE` overrides of an experiment file, written into its JSON before it is read
(any key the loader knows, in FedA2V's format or upstream's)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.key_paths import (
    is_metadata,
    is_native,
    native_fields,
    pattern_of,
    unknown_key,
)
from fed_a2v.config.upstream_keys import TABLE


def parse_override(item: str) -> tuple[str, Any]:
    """`federation.global_rounds=3` -> ("federation.global_rounds", 3): JSON when it parses,
    else the text as a string."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. "
                          "--set federation.global_rounds=3")
    try:
        return key, json.loads(text)
    except json.JSONDecodeError:
        return key, text


def apply_overrides(raw: dict[str, Any], items: Iterable[str]) -> dict[str, Any]:
    """`raw` with each `--set KEY=VALUE` written in (sections created as needed)."""
    for item in items:
        path, value = parse_override(item)
        parts = path.split(".")
        known = (any(is_metadata(p) for p in parts) or pattern_of(path) in TABLE
                 or is_native(path) or native_fields([*parts, ""]) is not None
                 or path in {p.split(".")[0] for p in TABLE})
        if not known:
            raise unknown_key(path, f"--set {item}")
        node = raw
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return raw
