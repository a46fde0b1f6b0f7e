"""The batch-size study's bookkeeping and the run report's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fed_a2v.config.schema import Config, NodeConfig
from fed_a2v.data.node_corpora import open_corpus
from fed_a2v.encode.cache import TokenStore
from fed_a2v.encode.encoded_set import EncodedSet
from fed_a2v.encode.node_data import NodeIdentity, node_data
from fed_a2v.encode.text_targets import targets_for
from fed_a2v.studies.batch_size import (
    Arm,
    check_same_split,
    default_arms,
    effect,
    one_class_pairs,
    run_arm,
    run_study,
    write_study,
)

ARMS = [Arm(2, False, False), Arm(2, True, False), Arm(2, True, True),
        Arm(4, False, False, grad_accum_steps=2)]


def small_config(root: Path) -> Config:
    config = Config()
    config.dataset.path = str(root / "data")
    config.dataset.num_classes, config.dataset.clips_per_class = 3, 10
    config.dataset.clip_seconds, config.dataset.sample_rate = 0.3, 16000
    config.experiment.cache_dir = str(root / "cache")
    return config


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[dict, Path, Config]:
    root = tmp_path_factory.mktemp("study")
    config = small_config(root)
    result = run_study(config, ARMS, seeds=[0, 1], epochs=3)
    return result, write_study(result, root / "out").parent, config


def test_default_arms_cover_the_grid_and_accumulation() -> None:
    arms = default_arms()
    assert len(arms) == 4 * 2 * 2 + 1
    assert {a.batch_size for a in arms if a.grad_accum_steps == 1} == {1, 8, 16, 32}
    assert any(a.grad_accum_steps > 1 for a in arms)
    assert len({a.name for a in arms}) == len(arms)


@pytest.mark.slow  # trains every arm of a small study
def test_every_arm_had_the_same_budget_and_clips(study) -> None:
    result, *_ = study
    assert len(result["arms"]) == len(ARMS)
    check_same_split(result["arms"])
    assert {a["train_clips"] for a in result["arms"]} == {result["train_clips"]}
    for arm in result["arms"]:
        assert [r["seed"] for r in arm["runs"]] == [0, 1]
        for run in arm["runs"]:
            for key in ("train_clip_loss", "train_t5_loss", "eval_clip_top1", "eval_t5_top1"):
                assert len(run[key]) == 3, (arm["name"], key)
        final = arm["final"]["eval_clip_top1"]
        values = [r["eval_clip_top1"][-1] for r in arm["runs"]]
        assert final["mean"] == pytest.approx(sum(values) / 2)


def _subset(data: EncodedSet, keep: list[int]) -> EncodedSet:
    return EncodedSet(TokenStore([data.tokens.arrays[i] for i in keep]), data.labels[keep],
                      data.target_ids[keep])


@pytest.mark.slow  # trains every arm of a small study
def test_an_arm_trained_on_other_clips_is_caught(study) -> None:
    """Each arm's split is the digest of the data it trained on: an arm run on a changed
    split (one clip fewer, or one clip swapped for another) does not pass as the same."""
    result, _, config = study
    targets = targets_for(config, open_corpus(config))
    data, _ = node_data(config, NodeIdentity(NodeConfig(), 0, 1, "study"), targets)
    every = list(range(len(data.train)))
    assert data.train.digest() == result["arms"][0]["split"]["train"]
    assert data.test.digest() == result["arms"][0]["split"]["test"]
    for keep in (every[1:], [*every[:-1], 0]):
        changed = run_arm(ARMS[0], config, _subset(data.train, keep), data.test, targets,
                          seeds=[0], epochs=1, lr={"clip": 1e-3, "t5": 1e-3})
        assert changed["split"]["test"] == result["arms"][0]["split"]["test"]
        assert changed["split"]["train"] != result["arms"][0]["split"]["train"]
        with pytest.raises(ValueError, match="the changed arm"):
            check_same_split([*result["arms"], {**changed, "name": "the changed arm"}])


@pytest.mark.slow  # trains every arm of a small study
def test_one_class_batches_make_mean_and_per_class_arms_identical(study) -> None:
    result, out, _ = study
    assert one_class_pairs(result) == [("bs2 stratified mean", "bs2 stratified per-class",
                                        True)]
    md = (out / "study.md").read_text()
    assert "bs2 stratified mean and bs2 stratified per-class" in md
    assert "identical, run for run" in md and "NOT IDENTICAL" not in md


@pytest.mark.slow  # trains every arm of a small study
def test_study_files(study) -> None:
    result, out, _ = study
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
