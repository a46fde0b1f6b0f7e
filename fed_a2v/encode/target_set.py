"""`Targets`: the text targets as tensors with their names, saved, loaded and keyed without any
text encoder (nodes receive them; `fed_a2v.encode.text_targets` makes them)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.files import atomic_write


@dataclass
class Targets:
    names: list[str]  # what a clip looks its row up by: its class, or its caption
    prompts: list[str]
    # flux: "clip" (N, d_clip), "t5" (N, t5_max_length, d_t5); sd: "clip" (N, clip_max_length,
    # d_clip)
    tensors: dict[str, torch.Tensor]
    source: str = "computed"

    @cached_property
    def key(self) -> str:
        """A digest of the names and the values: equal keys mean equal targets."""
        h = hashlib.sha256(json.dumps(self.names).encode())
        for name in sorted(self.tensors):
            h.update(name.encode())
            h.update(self.tensors[name].float().contiguous().numpy().tobytes())
        return h.hexdigest()[:24]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: save_file(
            {k: v.contiguous() for k, v in self.tensors.items()}, str(tmp),
            metadata={"names": json.dumps(self.names), "prompts": json.dumps(self.prompts)}))

    @classmethod
    def load(cls, path: Path, source: str) -> Targets:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if "names" not in meta:
            raise ConfigError(f"{path}: not a targets file (written by `fed-a2v targets`)")
        return cls(json.loads(meta["names"]), json.loads(meta["prompts"]), load_file(str(path)),
                   source)
