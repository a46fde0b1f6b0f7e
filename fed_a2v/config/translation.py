"""What translating a config did: the keys changed (and why), dropped, set by default and not
supported; `fed_a2v.config.upstream` fills it, `fed_a2v.config.convert` writes its notes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fed_a2v.config.upstream_keys import REASONS


@dataclass(frozen=True)
class Change:
    """A key of the file whose name or value FedA2V changed, and why (for `convert`'s notes)."""

    key: str  # the file's key
    value: Any  # the file's value (after --set)
    to: str  # the FedA2V key it became; "" for none
    result: Any = None  # the value FedA2V uses
    why: str = ""


@dataclass
class Translation:
    """A raw config turned native, with what was changed, dropped and not supported."""

    source: str
    upstream: bool
    native: dict[str, Any] = field(default_factory=dict)
    mapped: list[Change] = field(default_factory=list)
    unsupported: list[tuple[str, Any, str]] = field(default_factory=list)  # (key, value, why)
    dropped: list[tuple[str, Any, str]] = field(default_factory=list)  # (key, value, why)
    # Keys the file does not set that FedA2V sets for it: (key, value, why).
    defaults: list[tuple[str, Any, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    metadata: int = 0

    def warning_line(self) -> str:
        """The single line naming every key asked for that FedA2V does not do, by reason."""
        groups: dict[str, list[str]] = {}
        for key, value, reason in self.unsupported:
            shown = key if isinstance(value, (bool, dict, list)) else f"{key}={value}"
            groups.setdefault(reason, []).append(shown)
        parts = []
        for reason, keys in groups.items():
            label, text = REASONS[reason]
            parts.append(f"{', '.join(keys)} ({text})" if len(keys) <= 3
                         else f"{label} ({len(keys)} keys: {', '.join(keys)}; {text})")
        return (f"{self.source}: not supported, ignored (docs/upstream-config.md): "
                + "; ".join(parts))
