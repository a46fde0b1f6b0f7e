"""A node's encoded data: frozen-encoder tokens of its clips with their class and target rows."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from fed_a2v.encode.cache import TokenStore


@dataclass
class EncodedSet:
    """Frozen-encoder tokens of N clips, their class ids `(N,)` (for batching and the
    per-class loss) and target ids `(N,)` (rows of the target table: the class's prompt, or
    the clip's own caption). Without `target_ids` the class id is the target row."""

    tokens: TokenStore | torch.Tensor
    labels: torch.Tensor
    target_ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if isinstance(self.tokens, torch.Tensor):
            self.tokens = TokenStore.from_tensor(self.tokens)
        if self.target_ids is None:
            self.target_ids = self.labels
        if not len(self.tokens) == len(self.labels) == len(self.target_ids):
            raise ValueError(f"{len(self.tokens)} token sets, {len(self.labels)} labels and "
                             f"{len(self.target_ids)} target ids differ")

    def __len__(self) -> int:
        return len(self.labels)

    def first_tokens(self, n: int) -> EncodedSet:
        """The same clips whose batches hold only each clip's first `n` tokens."""
        return EncodedSet(self.tokens.first_tokens(n), self.labels, self.target_ids)

    def digest(self) -> str:
        """A hash of every clip's tokens, class id and target row, in order: equal digests
        mean the same training or held-out data."""
        h = hashlib.sha256()
        for values in (self.labels, self.target_ids):
            h.update(values.cpu().numpy().astype("<i8").tobytes())
        if self.tokens.keep_tokens is not None:
            h.update(f"first {self.tokens.keep_tokens} tokens".encode())
        for array in self.tokens.arrays:
            h.update(str((array.shape, array.dtype.str)).encode())
            h.update(array.tobytes())
        return h.hexdigest()
