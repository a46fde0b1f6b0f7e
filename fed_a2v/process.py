"""Per-process setup for the apps and the CLI: library log lines, torch threads."""

from __future__ import annotations

import logging
import os

import torch


def setup_process(level: int = logging.INFO) -> None:
    """Show `fed_a2v` INFO lines on stderr; one torch thread unless FEDA2V_TORCH_THREADS says."""
    logger = logging.getLogger("fed_a2v")
    if logger.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    # Simulated nodes share the machine's cores; one intra-op thread each avoids thrashing.
    torch.set_num_threads(int(os.environ.get("FEDA2V_TORCH_THREADS", "1")))
