"""On-disk caches: frozen-encoder tokens per clip, and text targets per prompt set.

Token entries are keyed by the audio file's content, the encoder's identity and the feature
settings, stored as fp16 `.npy` and memory-mapped when read, so a clip is encoded once and
later epochs, rounds and runs only read it. A changed file, encoder or setting is a new key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fed_a2v.files import atomic_write, file_digest

DEFAULT_CACHE = Path("~/.cache/fed_a2v")


def cache_root(configured: str | None) -> Path:
    """The configured folder, else $FEDA2V_CACHE_DIR, else ~/.cache/fed_a2v."""
    value = configured or os.environ.get("FEDA2V_CACHE_DIR") or str(DEFAULT_CACHE)
    return Path(value).expanduser().resolve()


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


STAMP_BYTES = 1 << 20


def file_stamp(path: Path) -> list:
    """Size, mtime_ns and a SHA-256 of the first and last MiB: cheap for multi-GB weight files,
    and any rewrite (`save_pretrained`, a copy) changes the mtime. A change that kept the size,
    the mtime and both ends of the file would go unseen."""
    stat = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(STAMP_BYTES))
        if stat.st_size > 2 * STAMP_BYTES:
            f.seek(-STAMP_BYTES, os.SEEK_END)
        h.update(f.read())
    return [stat.st_size, stat.st_mtime_ns, h.hexdigest()[:24]]


class TokenCache:
    """`root/tokens/<encoder key>/<file digest>.npy`, one fp16 `(tokens, hidden)` array each."""

    def __init__(self, root: Path, encoder_key: str) -> None:
        self.dir = root / "tokens" / encoder_key
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, audio_path: Path) -> Path:
        return self.dir / f"{file_digest(audio_path)}.npy"

    def get(self, entry: Path) -> np.ndarray | None:
        try:
            return np.load(entry, mmap_mode="r")
        except (OSError, ValueError):
            return None  # absent, or left half-written by a crash: encode again

    def put(self, entry: Path, tokens: torch.Tensor) -> np.ndarray:
        array = tokens.to(torch.float16).numpy()

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a path
                np.save(f, array)

        atomic_write(entry, write)
        return np.load(entry, mmap_mode="r")


class TokenStore:
    """A node's encoded clips: memory-mapped arrays, gathered into float32 batches on demand."""

    def __init__(self, arrays: list[np.ndarray], keep_tokens: int | None = None) -> None:
        self.arrays = arrays
        self.keep_tokens = keep_tokens  # None: every token; n: each clip's first n

    def __len__(self) -> int:
        return len(self.arrays)

    def batch(self, indices: list[int] | torch.Tensor) -> torch.Tensor:
        idx = indices.tolist() if isinstance(indices, torch.Tensor) else indices
        # Slicing a memory map reads only the rows kept.
        return torch.from_numpy(np.stack([self.arrays[i][:self.keep_tokens]
                                          for i in idx])).float()

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        """Every clip in order, `size` clips (one `batch`) at a time."""
        for start in range(0, len(self), size):
            yield self.batch(list(range(start, min(start + size, len(self)))))

    def first_tokens(self, n: int) -> TokenStore:
        """The same arrays, batched to each clip's first `n` tokens."""
        return TokenStore(self.arrays, n)

    @classmethod
    def from_tensor(cls, tokens: torch.Tensor) -> TokenStore:
        return cls([t.numpy() for t in tokens])
