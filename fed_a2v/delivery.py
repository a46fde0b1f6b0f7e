"""How long an instruction took to reach FedA2V's node code, for the nodes' `*_seconds`
metrics: from the server creating it to this process starting (the engine's delivery: polls,
scheduling) and from the process start to the handler (interpreter start, imports). Linux
only (it reads /proc); the clocks of server and node are assumed to agree."""

from __future__ import annotations

import os
import time
from pathlib import Path


def process_age() -> float | None:
    """Seconds since this process started, to 10 ms, or None where /proc cannot tell."""
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start, in ticks
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None


def delivery_seconds(created_at: float, prefix: str) -> dict[str, float]:
    """`<prefix>_delivery_seconds` and, for a process started for this message,
    `<prefix>_startup_seconds`. A process older than the message (a simulation's long-lived
    worker) counts all of the wait as delivery."""
    now = time.time()
    age = process_age()
    if age is None or now - age < created_at:
        return {f"{prefix}_delivery_seconds": max(0.0, now - created_at)}
    return {f"{prefix}_delivery_seconds": now - age - created_at,
            f"{prefix}_startup_seconds": age}
