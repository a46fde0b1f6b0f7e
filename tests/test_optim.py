"""fed_a2v's AdamW against torch.optim.AdamW: the same updates, bit for bit, on CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fed_a2v.model.optim import AdamW


def model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.GroupNorm(4, 16), nn.GELU(), nn.Linear(16, 5),
                         nn.Linear(3, 3))  # the last layer is never used: no gradient


@pytest.mark.parametrize("lr,weight_decay", [(3e-3, 1e-4), (1e-3, 0.0), (5e-2, 0.1)])
def test_same_updates_as_torch(lr: float, weight_decay: float) -> None:
    ours, theirs = model(0), model(0)
    opt_ours = AdamW(ours.parameters(), lr=lr, weight_decay=weight_decay)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(1)
    for _ in range(25):
        x, y = torch.randn(8, 12, generator=gen), torch.randn(8, 5, generator=gen)
        for net, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            (net[:4](x) - y).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
    moved = [not torch.equal(a, b) for a, b in zip(ours.parameters(), model(0).parameters(),
                                                   strict=True)]
    assert moved == [True] * 6 + [False] * 2  # the unused layer keeps its weights
    assert all(p.grad is None for p in ours.parameters())


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="empty parameter list"):
        AdamW([])
    with pytest.raises(ValueError, match="invalid"):
        AdamW(model(0).parameters(), betas=(0.9, 1.0))
