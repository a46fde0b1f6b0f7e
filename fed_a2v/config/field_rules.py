"""What a config field may hold, below the schema's sections: the error a bad file or value
raises (`ConfigError`), the close-name hint in its messages (`suggest`), and each field's metadata
(`rule`): its meaning and what fed_a2v.config.parse checks of a value."""

from __future__ import annotations

import difflib
from typing import Any


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message says where and why."""


def suggest(name: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def rule(doc: str, *, shown_default: str | None = None, keys: tuple[str, ...] | None = None,
         **checks: Any) -> dict[str, Any]:
    """A field's metadata. `doc`: its meaning (docs/configuration.md, the JSON Schemas);
    `shown_default`: how the reference shows a default that is None in the dataclass and worked
    out when the config loads; `keys`: the keys a mapping may have (fed_a2v.config.validate
    checks them); `checks`: what fed_a2v.config.parse checks of a value (choices, min, max,
    min_exclusive, pattern with `shown`, the pattern in words), kept as the metadata's "rule"."""
    meta: dict[str, Any] = {"doc": doc, "rule": checks}
    if shown_default is not None:
        meta["shown_default"] = shown_default
    if keys is not None:
        meta["keys"] = keys
    return meta

