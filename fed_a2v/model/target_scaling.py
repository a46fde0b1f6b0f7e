"""Target normalisation: an adapter predicts its targets standardised over the target table.

Where the target rows share most of their values (T5 prompts that differ in one word, padded
to one length), a raw MSE spends the adapter's capacity and its first hundreds of steps on
the values every row holds, and learns last the few that tell the rows apart. Standardised
over the table, the shared values are the mean row (given, not learned) and every value that
differs between rows has unit spread. The mean and scale come from the target table, which the
server delivers to every node, so every node and the server compute the same ones; they are
not trained, not sent and not saved (non-persistent buffers): whoever builds the adapters has
the table.
"""

from __future__ import annotations

import torch
from torch import nn

# A value whose spread over the rows is below this share of the typical spread is scaled as
# if it had this spread: values (nearly) equal in every row are not blown up to unit spread.
SCALE_FLOOR = 0.1


def table_scaling(table: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`(K, ...)` target table -> the mean and scale (`...` shaped) that `mode` standardises by.
    `standardize`: the mean row, and each value's standard deviation over the rows (at least
    `SCALE_FLOOR` x their root mean square); `center`: the mean row, and one scale (the root
    mean square of those deviations); `none`: 0 and 1."""
    table = table.detach().float()
    if mode == "none" or table.shape[0] < 2:
        return torch.zeros(table.shape[1:]), torch.ones(table.shape[1:])
    mean = table.mean(0)
    spread = table.std(0, correction=0)
    typical = spread.pow(2).mean().sqrt().clamp_min(torch.finfo(torch.float32).tiny)
    if mode == "center":
        return mean, typical.expand_as(mean).clone()
    if mode == "standardize":
        return mean, spread.clamp_min(SCALE_FLOOR * typical)
    raise ValueError(f"unknown target normalization {mode!r}")


class TargetScaling(nn.Module):
    """`forward(x)`: a standardised prediction back to the target space, `mean + scale * x`;
    `normalize(target)`: the inverse."""

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("scale", scale, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean + self.scale * x

    def normalize(self, target: torch.Tensor) -> torch.Tensor:
        return (target - self.mean) / self.scale


class SpanBasis(nn.Module):
    """The affine span of a target table's rows: `forward(z)` maps whitened coordinates
    `(B, r)` to `mean + z * spread @ directions`, target shaped; `normalize(target)` the
    inverse for targets in the span. `directions` `(r, D)`: the principal directions of the
    rows minus their mean row; `spread` `(r,)`: the rows' spread along each. Buffers, not
    weights: from the table, like `TargetScaling`."""

    def __init__(self, shape: tuple[int, ...], rank: int) -> None:
        super().__init__()
        self.shape = shape
        width = int(torch.tensor(shape).prod())
        self.register_buffer("mean", torch.zeros(shape), persistent=False)
        self.register_buffer("directions", torch.eye(rank, width), persistent=False)
        self.register_buffer("spread", torch.ones(rank), persistent=False)

    def set_table(self, table: torch.Tensor) -> None:
        rows = table.detach().flatten(1).double()
        mean = rows.mean(0)
        _, s, vh = torch.linalg.svd(rows - mean, full_matrices=False)
        rank = self.spread.numel()
        spread = s[:rank] / len(rows) ** 0.5
        # directions along which the rows do not differ (repeated rows) stay at spread ~0
        self.mean.copy_(mean.reshape(self.shape))
        self.directions.copy_(vh[:rank])
        self.spread.copy_(spread.clamp_min(spread.max() * 1e-6))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mean + ((z * self.spread) @ self.directions).reshape(-1, *self.shape)

    def normalize(self, target: torch.Tensor) -> torch.Tensor:
        return ((target - self.mean).flatten(1) @ self.directions.T) / self.spread
