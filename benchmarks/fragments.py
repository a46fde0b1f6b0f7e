"""One benchmark's results as a JSON fragment, which `benchmarks/collect.py` merges into
`benchmarks/results.json` and `benchmarks/RESULTS.md`, and as a table printed on the terminal.

A fragment: {"section": title, "command": how to rerun it, "rows": [row, ...], "notes": [...]},
a row: {"what": str, "value": number | str | None, "unit": str, "ratio": str (optional)}.
`value` None means not measured on this machine (the note says why)."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch

OUT_DIR = Path(__file__).resolve().parent / "out"
# Target rows of the benchmarks' real-width adapters (ESC-50's classes): a span adapter's
# width follows its table's rows (fed_a2v.model.target_span).
ESC50_CLASSES = 50


def row(what: str, value: float | int | str | None, unit: str = "",
        ratio: str | None = None) -> dict[str, Any]:
    """One table row; `ratio` says what the value is compared with, e.g. '0.21x fp32'."""
    out: dict[str, Any] = {"what": what, "value": value, "unit": unit}
    if ratio is not None:
        out["ratio"] = ratio
    return out


def machine() -> dict[str, Any]:
    """Where a fragment was measured."""
    return {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def format_value(value: Any) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| what | value | compared |", "|---|---|---|"]
    for r in rows:
        value = format_value(r["value"]) + (f" {r['unit']}" if r.get("unit") and
                                            r["value"] is not None else "")
        lines.append(f"| {r['what']} | {value} | {r.get('ratio', '')} |")
    return "\n".join(lines)


def write_fragment(name: str, section: str, command: str, rows: list[dict[str, Any]],
                   notes: list[str] = (), out_dir: Path = OUT_DIR) -> Path:
    """Write `out_dir/<name>.json` and print the table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    fragment = {"section": section, "command": command, "rows": rows, "notes": list(notes),
                "machine": machine()}
    path.write_text(json.dumps(fragment, indent=2) + "\n")
    print(f"## {section}\n`{command}`\n\n{markdown_table(rows)}\n")
    for note in notes:
        print(f"- {note}")
    return path
