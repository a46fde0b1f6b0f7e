"""Bad input is reported and skipped, never silently used: broken audio, bad node updates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fed_a2v.data.audio import AudioError, load_audio
from fed_a2v.encode.text_targets import Targets
from fed_a2v.federation.aggregation import update_problem
from fed_a2v.federation.feda2v_strategy import FedA2VStrategy
from fed_a2v.federation.rounds import ShortRound

from drills import DECODABLE, UNUSABLE, train_reply, write_audio_cases


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Path]:
    return write_audio_cases(tmp_path_factory.mktemp("audio"))


@pytest.mark.parametrize("name", DECODABLE)
def test_decodable_files_become_16k_mono_clips(cases, name: str) -> None:
    wave = load_audio(cases[name], 16000, 1.0)
    assert wave.shape == (16000,) and bool(wave.isfinite().all())
    assert float(wave.abs().max()) > 0.05


@pytest.mark.parametrize("name", sorted(UNUSABLE))
def test_unusable_files_raise_with_the_reason(cases, name: str) -> None:
    with pytest.raises(AudioError, match=UNUSABLE[name]):
        load_audio(cases[name], 16000, 1.0)


# --- updates -----------------------------------------------------------------------------------

REFERENCE = {"clip.w": np.zeros((2, 3), np.float32), "t5.w": np.zeros(4, np.float32)}


@pytest.mark.parametrize("update,why", [
    ({"clip.w": np.zeros((2, 3), np.float32)}, "keys differ"),
    ({**REFERENCE, "t5.extra": np.zeros(1, np.float32)}, "keys differ"),
    ({**REFERENCE, "t5.w": np.zeros(5, np.float32)}, "shape"),
    ({**REFERENCE, "t5.w": np.zeros(4, np.float64)}, "dtype"),
    ({**REFERENCE, "clip.w": np.full((2, 3), np.inf, np.float32)}, "non-finite"),
    ({**REFERENCE, "t5.w": np.array([0, np.nan, 0, 0], np.float32)}, "non-finite"),
    ({**REFERENCE, "t5.w": np.full(4, 10.0, np.float32)}, "t5 adapter moved 20"),
])
def test_update_problems_are_named(update: dict, why: str) -> None:
    problem = update_problem(update, REFERENCE, max_norm=5.0)
    assert problem is not None and why in problem


def test_a_good_update_passes_and_the_bound_is_optional() -> None:
    update = {"clip.w": np.ones((2, 3), np.float32), "t5.w": np.full(4, 2.0, np.float32)}
    assert update_problem(update, REFERENCE, max_norm=5.0) is None  # moved 2.45 and 4.0
    assert update_problem({**update, "t5.w": np.full(4, 1e6, np.float32)}, REFERENCE,
                          None) is None


def test_strategy_drops_bad_updates_and_averages_the_rest(task_identity) -> None:
    import torch

    targets = Targets(["a"], ["a"], {"clip": torch.zeros(1, 2), "t5": torch.zeros(1, 1, 2)})
    strategy = FedA2VStrategy(targets, lambda r: {"clip": 1e-3, "t5": 1e-3},
                              max_update_norm=100.0)
    strategy.global_state = REFERENCE
    good_a = {"clip.w": np.ones((2, 3), np.float32), "t5.w": np.ones(4, np.float32)}
    good_b = {"clip.w": np.full((2, 3), 3.0, np.float32), "t5.w": np.full(4, 3.0, np.float32)}
    poisoned = {**good_a, "t5.w": np.array([np.nan, 0, 0, 0], np.float32)}
    huge = {k: v * 1e6 for k, v in good_a.items()}
    replies = [train_reply(11, good_a, 1), train_reply(12, poisoned, 50),
               train_reply(13, good_b, 3), train_reply(14, huge, 50)]
    arrays, _ = strategy.aggregate_train(3, replies)
    averaged = {k: v.numpy() for k, v in arrays.items()}
    np.testing.assert_allclose(averaged["clip.w"], 2.5)  # (1*1 + 3*3) / 4
    assert all(np.isfinite(v).all() for v in averaged.values())
    assert [(r, n, name) for r, n, _, name in strategy.rejected] == \
        [(3, 12, "node 12"), (3, 14, "node 14")]  # replies without a name: their Flower id
    assert "non-finite" in strategy.rejected[0][2] and "max_update_norm" in strategy.rejected[1][2]
    assert strategy.nodes_seen == {"flower node 11", "flower node 13"}  # replies without a key
    # A round where every update is bad leaves the global adapters as they were, uncounted.
    with pytest.raises(ShortRound, match="non-finite"):
        strategy.aggregate_train(4, [train_reply(12, poisoned, 5)])
