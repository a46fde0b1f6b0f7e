"""The batch-size study's bookkeeping and the run report's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fed_a2v.config import Config
from fed_a2v.study import Arm, default_arms, effect, run_study, write_study


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("study")
    config = Config()
    config.dataset.path = str(root / "data")
    config.dataset.num_classes, config.dataset.clips_per_class = 3, 10
    config.dataset.clip_seconds, config.dataset.sample_rate = 0.3, 16000
    config.experiment.cache_dir = str(root / "cache")
    arms = [Arm(2, False, False), Arm(2, True, True), Arm(4, False, False, grad_accum_steps=2)]
    result = run_study(config, arms, seeds=[0, 1], epochs=3)
    return result, write_study(result, root / "out").parent


def test_default_arms_cover_the_grid_and_accumulation() -> None:
    arms = default_arms()
    assert len(arms) == 4 * 2 * 2 + 1
    assert {a.batch_size for a in arms if a.grad_accum_steps == 1} == {1, 8, 16, 32}
    assert any(a.grad_accum_steps > 1 for a in arms)
    assert len({a.name for a in arms}) == len(arms)


def test_every_arm_had_the_same_budget_and_clips(study) -> None:
    result, _ = study
    assert len(result["arms"]) == 3
    assert len({a["split"] for a in result["arms"]}) == 1
    assert {a["train_clips"] for a in result["arms"]} == {result["train_clips"]}
    for arm in result["arms"]:
        assert [r["seed"] for r in arm["runs"]] == [0, 1]
        for run in arm["runs"]:
            for key in ("train_clip_loss", "train_t5_loss", "eval_clip_top1", "eval_t5_top1"):
                assert len(run[key]) == 3, (arm["name"], key)
        final = arm["final"]["eval_clip_top1"]
        values = [r["eval_clip_top1"][-1] for r in arm["runs"]]
        assert final["mean"] == pytest.approx(sum(values) / 2)


def test_study_files(study) -> None:
    result, out = study
    assert json.loads((out / "study.json").read_text()) == json.loads(json.dumps(result))
    md = (out / "study.md").read_text()
    for arm in result["arms"]:
        assert f"| {arm['name']} |" in md
    assert "±" in md and "## Reading" in md
    for png in ("study_loss.png", "study_accuracy.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_effect_of_a_factor_against_a_hand_computation() -> None:
    def arm(strat: bool, bs: int, top1: float) -> dict:
        stat = {"mean": top1, "std": 0.0}
        return {"arm": {"batch_size": bs, "stratified": strat, "per_class_loss": False,
                        "grad_accum_steps": 1},
                "final": {k: stat for k in ("train_clip_loss", "train_t5_loss",
                                            "eval_clip_top1", "eval_t5_top1")}}
    study = {"arms": [arm(False, 8, 0.5), arm(True, 8, 0.7), arm(False, 16, 0.4),
                      arm(True, 16, 0.3)]}
    assert effect(study, "stratified")["eval_clip_top1"] == pytest.approx((0.2 - 0.1) / 2)
