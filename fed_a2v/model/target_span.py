"""The span of a target table's rows: where a span adapter's predictions live.

A class's T5 target is its prompt's token embeddings; where prompts differ in a word or two,
the rows share most of their values, and a regression onto every value spends most of its loss,
and its first hundreds of steps, on what every row holds. Top-1 by cosine is decided by a
prediction's component in the span of the rows alone. A span adapter predicts the mean row
plus coordinates along the directions in which the rows differ (their principal directions), so
the shared values are given and every trained output tells rows apart. The basis comes from
the target table, which the server delivers to every node, so every node and the server build
the same one; it is not trained, not sent and not saved (non-persistent buffers).
"""

from __future__ import annotations

import math

import torch
from torch import nn

# The most directions a span keeps: a table of many captions keeps its leading ones.
MAX_RANK = 1024


def span_rank(rows: int, width: int) -> int:
    """How many directions the span of a table of `rows` rows, each `width` values flattened,
    gets: rows - 1, at most `width` and `MAX_RANK`, at least 1."""
    return max(min(rows - 1, width, MAX_RANK), 1)


class SpanBasis(nn.Module):
    """`forward(z)`: coordinates `(B, rank)` to `mean + scale * z @ directions`, target
    shaped; `normalize(target)`: the coordinates of a target's component in the span (its
    inverse for rows of the table). `directions` `(rank, D)`: the leading principal directions
    of the rows minus their mean row; `scale`: the rows' root mean square spread along them, one
    number, so coordinates are of unit size and keep the table's proportions."""

    def __init__(self, shape: tuple[int, ...], rank: int) -> None:
        super().__init__()
        self.shape = shape
        width = math.prod(shape)
        self.register_buffer("mean", torch.zeros(shape), persistent=False)
        self.register_buffer("directions", torch.eye(rank, width), persistent=False)
        self.register_buffer("scale", torch.ones(()), persistent=False)

    def set_table(self, table: torch.Tensor) -> None:
        """Take the span of `table`'s rows `(K, *shape)`."""
        rows = table.detach().flatten(1).double()
        mean = rows.mean(0)
        _, s, vh = torch.linalg.svd(rows - mean, full_matrices=False)
        # directions along which no two rows differ (repeated rows, fewer distinct rows than
        # `rank`) stay zero: an arbitrary vector there would move values every row shares
        kept = int((s[:self.directions.shape[0]] > s.max() * 1e-6).sum()) if s.numel() else 0
        spread = s[:kept].pow(2).mean().sqrt() / len(rows) ** 0.5 if kept else torch.zeros(())
        self.mean.copy_(mean.reshape(self.shape))
        self.directions.zero_()
        self.directions[:kept] = vh[:kept].to(self.directions.dtype)
        self.scale.fill_(max(float(spread), torch.finfo(torch.float32).tiny))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mean + (self.scale * z @ self.directions).reshape(-1, *self.shape)

    def normalize(self, target: torch.Tensor) -> torch.Tensor:
        return (target - self.mean).flatten(1) @ self.directions.T / self.scale
