"""`fed-a2v convert`: an experiment file (upstream's format or FedA2V's) written in FedA2V's own
format, and notes on what was mapped, dropped or not supported."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fed_a2v.config.load import resolve
from fed_a2v.config.schema import Config
from fed_a2v.config.translation import Change, Translation
from fed_a2v.config.upstream_defaults import DERIVED, UPSTREAM_DEFAULTS
from fed_a2v.config.upstream_keys import REASONS


def native_dict(config: Config, t: Translation) -> dict[str, Any]:
    """The config in FedA2V's own format: keys at FedA2V's default are left out, except those
    whose default differs between the two formats."""
    keep = set(UPSTREAM_DEFAULTS) | set(DERIVED) if t.upstream else set()
    defaults = Config().to_dict()
    out: dict[str, Any] = {}
    for section, values in config.to_dict().items():
        if section == "nodes":
            out["nodes"] = {k: {n: v for n, v in node.items() if v is not None}
                            for k, node in values.items()}
            continue
        kept = {k: v for k, v in values.items()
                if v != defaults[section].get(k) or f"{section}.{k}" in keep}
        if kept:
            out[section] = kept
    if not out.get("nodes"):
        out.pop("nodes", None)
    return out


def change_line(c: Change) -> str:
    """`- key = value -> what FedA2V uses: why`."""
    used = ("nothing" if not c.to else json.dumps(c.result) if c.to == c.key
            else f"`{c.to}` = {json.dumps(c.result)}")
    return f"- `{c.key}` = {json.dumps(c.value)} -> {used}" + (f": {c.why}" if c.why else "")


def notes(t: Translation, out_name: str) -> str:
    """What `convert` did to this file, for the side file: one line per key the file has that
    FedA2V changed, ignores or drops, and per key it sets for the file, each with the file's
    value, what FedA2V uses and why."""
    lines = [f"# {t.source} -> {out_name}", "",
             "Read as " + ("upstream's format (it has federation.algorithm or a model section)."
                           if t.upstream else "FedA2V's own format."), ""]

    def section(title: str, rows: list[str]) -> None:
        if rows:
            lines.extend([f"## {title}", "", *rows, ""])

    section("Warnings", [f"- {w}" for w in t.warnings])
    section("Changed (the file's key = its value -> what FedA2V uses: why)",
            [change_line(c) for c in t.mapped])
    section("Not supported (ignored; the run names them in its warning)",
            [f"- `{k}` = {json.dumps(v)}: {REASONS[why][1]}" for k, v, why in t.unsupported])
    section("Dropped (they ask for nothing in FedA2V)",
            [f"- `{k}` = {json.dumps(v)}: {why}" for k, v, why in t.dropped])
    section("Not set by the file, set for it (key -> value: why)",
            [f"- `{k}` -> {json.dumps(v)}: {why}" for k, v, why in t.defaults])
    if not (t.warnings or t.mapped or t.unsupported or t.dropped or t.defaults):
        lines.extend(["Every key is FedA2V's own; nothing was changed.", ""])
    if t.metadata:
        lines.extend([f"{t.metadata} comment and description keys were left out.", ""])
    return "\n".join(lines)


def convert(path: str | Path, overrides: Iterable[str] = ()) -> tuple[dict[str, Any],
                                                                        Translation]:
    config, t = resolve(path, overrides, quiet=True)
    return native_dict(config, t), t
