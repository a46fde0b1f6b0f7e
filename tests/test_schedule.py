"""Per-adapter learning rate across rounds."""

from __future__ import annotations

import pytest

from fed_a2v.federation.server import round_lr


def test_constant_is_constant():
    assert [round_lr(0.01, "constant", r, 6) for r in range(1, 7)] == [0.01] * 6


def test_cosine_warmup_peak_and_floor():
    base, n = 0.02, 8
    lrs = [round_lr(base, "cosine", r, n, warmup_rounds=1, min_ratio=0.1) for r in range(1, n + 1)]
    assert lrs[0] == pytest.approx(base / 2)
    assert lrs[1] == pytest.approx(base)
    assert lrs[-1] == pytest.approx(0.1 * base)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))
    assert all(0.1 * base - 1e-12 <= lr <= base + 1e-12 for lr in lrs)


@pytest.mark.parametrize("num_rounds,warmup",
                         [(n, w) for n in (3, 4, 7, 12) for w in (0, 1, 2) if n - w >= 2])
def test_cosine_shape_for_several_lengths(num_rounds, warmup):
    base, ratio = 1.0, 0.25
    lrs = [round_lr(base, "cosine", r, num_rounds, warmup, ratio)
           for r in range(1, num_rounds + 1)]
    for r in range(1, warmup + 1):  # linear warmup towards base
        assert lrs[r - 1] == pytest.approx(base * r / (warmup + 1))
    assert lrs[warmup] == pytest.approx(base)
    assert lrs[-1] == pytest.approx(ratio * base)
    after = lrs[warmup:]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup + 1], strict=False))


def test_cosine_midpoint():
    # warmup 0, 3 rounds: progress 0, 0.5, 1 -> base, (1 + ratio) / 2 * base, ratio * base
    assert round_lr(1.0, "cosine", 2, 3, 0, 0.2) == pytest.approx(0.6)


def test_single_round_returns_base():
    assert round_lr(0.003, "cosine", 1, 1, warmup_rounds=1) == pytest.approx(0.003)
    assert round_lr(0.003, "cosine", 1, 1, warmup_rounds=5) == pytest.approx(0.003)
    assert round_lr(0.003, "constant", 1, 1) == 0.003


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
@pytest.mark.parametrize("server_round", [0, -1, 6])
def test_round_outside_range_raises(schedule, server_round):
    with pytest.raises(ValueError, match="outside"):
        round_lr(0.01, schedule, server_round, 5)


def test_unknown_schedule_raises():
    with pytest.raises(ValueError, match="unknown schedule"):
        round_lr(0.01, "linear", 1, 5)
