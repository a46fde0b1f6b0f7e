"""`fed-a2v study federation`: real in-process federations per arm, all scored on the same
held-out clips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fed_a2v.cli import EXIT_CONFIG, main

from drills import experiment_dict


def test_federation_study_writes_comparable_arms(tmp_path: Path):
    experiment = experiment_dict(tmp_path, "tiny", federation={"local_epochs": 1},
                                 dataset={"clips_per_class": 10})
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(experiment))
    out = tmp_path / "study"
    assert main(["study", "federation", "--config", str(config), "--out", str(out),
                 "--seeds", "1", "--rounds", "2", "--arms", "fedavg-classes",
                 "local-only"]) == 0
    assert {p.name for p in out.iterdir()} >= {"study.md", "study.json", "study_top1.png"}
    study = json.loads((out / "study.json").read_text())
    fedavg, local = study["arms"]
    assert [fedavg["name"], local["name"]] == ["fedavg-classes", "local-only"]
    assert fedavg["split"] == local["split"]  # same training and held-out clips, by digest
    held_out = study["per_seed"]["0"]["held_out_clips"]
    assert held_out == 3 * 2  # 3 classes, fold 5 of 10 clips per class
    for arm in (fedavg, local):
        (run,) = arm["runs"]
        assert run["rounds"] == [1, 2]
        assert run["baselines"]["held_out_clips"] == held_out  # the nodes cover every clip
    # One global model: scored on every held-out clip, it is what the nodes report together.
    run = fedavg["runs"][0]
    for key, curve in run["all_held_out"].items():
        assert curve == pytest.approx(run["node_side"][key], abs=1e-9)
    assert len(run["final_per_model"]) == 1
    # Local-only: each of the 3 nodes' own adapters, scored on every held-out clip.
    assert len(local["runs"][0]["final_per_model"]) == 3
    md = (out / "study.md").read_text()
    assert "| fedavg-classes | 3 |" in md and "| local-only | 3 |" in md
    assert "centralized ridge" in md


def test_unknown_arm_is_refused_with_the_valid_ones(tmp_path: Path, capsys):
    assert main(["study", "federation", "--arms", "fedavg-iid", "fedsgd",
                 "--out", str(tmp_path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "fedsgd" in err
    assert "centralized, fedavg-iid, fedavg-classes" in err and "local-only" in err
    assert not any(tmp_path.iterdir())
