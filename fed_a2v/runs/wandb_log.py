"""Weights & Biases logging beside TensorBoard (the `wandb` section).

The run recorder hands this the same scalars it writes to TensorBoard, under the same names,
with the round as W&B's step. `wandb` is imported only when logging is enabled, so it stays an
optional extra (`pip install 'fed-a2v[wandb]'`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.schema import Config
from fed_a2v.extras import install_command

log = logging.getLogger(__name__)

INSTALL = install_command("wandb")


def require_wandb(config: Config) -> ModuleType | None:
    """The `wandb` module when the config asks for it, else None; an error if it is asked for
    but not installed (checked when a run starts, before any work)."""
    if config.wandb.disabled:
        return None
    try:
        # Deferred: wandb is the `wandb` extra's, imported only by a run that logs to W&B.
        import wandb
    except ImportError as err:
        raise ConfigError(
            "'wandb.disabled' is false, but wandb is not installed: it needs the `wandb` "
            f"extra: {INSTALL} (or set 'wandb.disabled' to true)") from err
    return wandb


class WandbRun:
    """One W&B run for one server process. A resumed FedA2V run starts a new W&B run in the
    same group (the run directory's name), going on from the round it resumes after."""

    def __init__(self, wandb: ModuleType, config: Config, run_dir: Path, resume: bool) -> None:
        settings = config.wandb
        if wandb.run is not None:  # an earlier run in this process stopped without finishing
            log.warning("wandb: closing run %s, left unfinished in this process", wandb.run.id)
            wandb.run.finish(exit_code=1)
        mode = settings.mode or os.environ.get("WANDB_MODE")
        try:
            self.run = wandb.init(
                project=settings.project, entity=settings.entity, mode=mode,
                name=run_dir.name, group=run_dir.name, config=config.to_dict(),
                job_type="resume" if resume else "train",
                # Beside the run's other files unless the user chose a place ($WANDB_DIR,
                # read here: wandb reads it once per process).
                dir=os.environ.get("WANDB_DIR") or str(run_dir),
            )
        except wandb.errors.UsageError as err:  # e.g. online without credentials
            raise ConfigError(
                f"wandb could not start a run ({err}): log in (`wandb login` or "
                "$WANDB_API_KEY), or set 'wandb.mode' to \"offline\" (upload later with "
                "`wandb sync`), or set 'wandb.disabled' to true") from err
        log.info("wandb: run %s (%s), files in %s", self.run.id, self.run.settings.mode,
                 self.run.dir)

    def log(self, values: dict[str, float], server_round: int) -> None:
        self.run.log(values, step=server_round)

    def finish(self, summary: dict[str, Any] | None = None, exit_code: int = 0) -> None:
        """Close the run; numbers from `summary` become its W&B summary."""
        if summary:
            self.run.summary.update({k: v for k, v in summary.items()
                                     if isinstance(v, (int, float)) and not isinstance(v, bool)})
        self.run.finish(exit_code=exit_code)


def start_wandb(config: Config, run_dir: Path, resume: bool) -> WandbRun | None:
    """A W&B run for this server, or None when `wandb.disabled`."""
    wandb = require_wandb(config)
    return None if wandb is None else WandbRun(wandb, config, run_dir, resume)
