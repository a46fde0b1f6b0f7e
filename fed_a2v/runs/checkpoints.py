"""Adapter checkpoints outside the run directory (`feda2v.adapter_checkpoint_*`).

With `adapter_save_checkpoint` the server writes the global adapters after every round `r` with
`r % adapter_checkpoint_frequency == 0` and after the last round, as safetensors with metadata,
under `adapter_checkpoint_dir`: one file per adapter, `<base>_<adapter>_round<r>.safetensors`
(`adapter_checkpoint_per_type`), else one file, `<base>_round<r>.safetensors`. With
`adapter_load_checkpoint` a new run starts from the latest round found there (either layout).

How this differs from upstream: upstream's nodes saved their own adapters as `.pt` pickles
(another architecture: a T5 projection 4096 wide, which FedA2V's adapters do not have) and, when
loading, skipped training altogether (generation only). FedA2V saves the server's global adapters
and, when loading, trains on from them for `federation.global_rounds` more rounds (numbered from
1 again): set `global_rounds` to how many more rounds you want. A resumed run (`resume`) goes on
from its own run directory instead. Standalone runs (`adapter_aggregation_mode` "none") have no
global adapters, so they save none.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.schema import Config
from fed_a2v.model.adapters import save_adapters

log = logging.getLogger(__name__)

FORMAT = "fed-a2v adapter checkpoint"
DIR_KEY = "'feda2v.adapter_checkpoint_dir'"


def adapter_of(key: str) -> str:
    """`clip.pool.latents` -> `clip`: flat state keys start with their adapter's name."""
    return key.split(".", 1)[0]


class AdapterCheckpoints:
    """Saves and loads global adapters under `feda2v.adapter_checkpoint_dir`."""

    def __init__(self, config: Config, run_dir: Path, dims: dict[str, int]) -> None:
        f = config.feda2v
        self.dir = Path(f.adapter_checkpoint_dir)
        self.base = f.adapter_checkpoint_base_name
        self.per_type = f.adapter_checkpoint_per_type
        self.frequency = f.adapter_checkpoint_frequency
        self.last_round = config.federation.global_rounds
        self.standalone = f.adapter_aggregation_mode == "none"
        self.save = f.adapter_save_checkpoint and not self.standalone
        self.metadata = {"format": FORMAT, "run_dir": str(run_dir),
                         "diffusion_type": f.diffusion_type, "audio_model": f.audio_model_name,
                         "dims": json.dumps(dims)}
        if f.adapter_save_checkpoint and self.standalone:
            log.warning("'feda2v.adapter_save_checkpoint' is ignored: a standalone run "
                        "(adapter_aggregation_mode \"none\") has no global adapters to save; "
                        "each node keeps its own")

    def due(self, server_round: int) -> bool:
        return self.save and (server_round % self.frequency == 0
                              or server_round == self.last_round)

    def path(self, server_round: int, adapter: str | None = None) -> Path:
        middle = f"_{adapter}" if adapter else ""
        return self.dir / f"{self.base}{middle}_round{server_round}.safetensors"

    def save_if_due(self, server_round: int, state: dict[str, torch.Tensor]) -> list[Path]:
        """Write round `server_round`'s global adapters if the frequency (or the last round)
        asks for it; returns the files written."""
        if not self.due(server_round):
            return []
        names = list(dict.fromkeys(adapter_of(k) for k in state))
        meta = {**self.metadata, "round": str(server_round), "adapters": ",".join(names)}
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.per_type:
            written = {self.path(server_round): (state, meta)}
        else:
            written = {self.path(server_round, name): (
                {k[len(name) + 1:]: v for k, v in state.items() if adapter_of(k) == name},
                {**meta, "adapter": name}) for name in names}
        for path, (tensors, metadata) in written.items():
            save_adapters(tensors, path, metadata)
        log.info("adapter checkpoint, round %d: %s", server_round,
                 ", ".join(str(p) for p in written))
        return list(written)

    def rounds_found(self) -> dict[int, dict[Path, str | None]]:
        """Round -> its checkpoint files in the directory, each with its adapter's name (None:
        a file holding every adapter)."""
        pattern = re.compile(rf"{re.escape(self.base)}(?:_(?P<adapter>.+))?_round(?P<r>\d+)"
                             r"\.safetensors")
        found: dict[int, dict[Path, str | None]] = {}
        for path in sorted(self.dir.glob("*.safetensors")) if self.dir.is_dir() else []:
            match = pattern.fullmatch(path.name)
            if match:
                found.setdefault(int(match["r"]), {})[path] = match["adapter"]
        return found

    def load_latest(self, expected: dict[str, torch.Tensor]
                    ) -> tuple[int, dict[str, torch.Tensor], list[Path]]:
        """The latest round, its adapters and files, checked against the run's own adapters
        (`expected`: names and shapes); a ConfigError saying what is missing or does not fit."""
        found = self.rounds_found()
        if not found:
            upstream = sorted(self.dir.glob("*.pt")) if self.dir.is_dir() else []
            if upstream:
                raise ConfigError(
                    f"'feda2v.adapter_load_checkpoint': {self.dir} ({DIR_KEY}) holds upstream "
                    f"checkpoints such as {upstream[0].name}: upstream's adapters have a "
                    "different architecture (a MAP block over a 4096-wide T5 projection, pickled "
                    "per node) and cannot be loaded into FedA2V's adapters; train FedA2V "
                    "adapters with 'feda2v.adapter_save_checkpoint' and load those")
            raise ConfigError(
                f"'feda2v.adapter_load_checkpoint' is true but {self.dir} ({DIR_KEY}) holds no "
                f"adapter checkpoint: {self.base}_round<N>.safetensors or "
                f"{self.base}_<adapter>_round<N>.safetensors ('feda2v.adapter_checkpoint_"
                "base_name' is " f"{json.dumps(self.base)})")
        last = max(found)
        state: dict[str, torch.Tensor] = {}
        for path, adapter in found[last].items():
            tensors = load_file(str(path))
            state.update({f"{adapter}.{k}": v for k, v in tensors.items()} if adapter
                         else tensors)
        self.check(state, expected, list(found[last]))
        log.info("starting from the adapters of round %d in %s", last,
                 ", ".join(str(p) for p in found[last]))
        return last, state, list(found[last])

    def check(self, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
              files: list[Path]) -> None:
        where = f"'feda2v.adapter_load_checkpoint': {', '.join(str(p) for p in files)}"
        for key, tensor in expected.items():
            if key not in state:
                raise ConfigError(f"{where}: no tensor {key!r}, which this run's adapters have "
                                  f"(a different diffusion_type, or files missing?)")
            if state[key].shape != tensor.shape:
                raise ConfigError(
                    f"{where}: tensor {key!r} has shape {tuple(state[key].shape)} but this "
                    f"run's adapters need {tuple(tensor.shape)} (other adapter_* widths, "
                    "target model or diffusion_type than the saved run)")
        extra = sorted(set(state) - set(expected))
        if extra:
            raise ConfigError(f"{where}: tensor {extra[0]!r} (and {len(extra) - 1} more) has "
                              "no place in this run's adapters (a different diffusion_type?)")
