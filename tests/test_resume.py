"""A stopped server resumes from its last finished round: no round repeated, none lost."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fed_a2v.config import Config
from fed_a2v.drills import server_stopped_and_resumed
from fed_a2v.run_dir import RunRecorder

ROUNDS = 5


def test_resume_point_ignores_torn_lines_and_orphan_checkpoints(tmp_path: Path) -> None:
    recorder = RunRecorder(tmp_path / "run", Config())
    state = {"clip.w": torch.ones(2), "t5.w": torch.zeros(3)}
    assert recorder.resume_point() is None
    for r in (1, 2):
        recorder.end_round(r, {"clip_lr": 0.1 * r}, {k: v + r for k, v in state.items()})
    # A crash in round 3: its checkpoint written, its metrics line torn halfway.
    recorder.end_round(3, {}, state)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "run" / "metrics.jsonl").write_text("\n".join(lines[:2] + [lines[2][:9]]))
    last, restored = RunRecorder(tmp_path / "run", Config()).resume_point()
    assert last == 2
    assert torch.equal(restored["clip.w"], state["clip.w"] + 2)
    kept = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in kept] == [1, 2]


def test_a_stopped_server_resumes_without_repeating_or_losing_rounds(tmp_path: Path) -> None:
    seen = server_stopped_and_resumed(tmp_path, rounds=ROUNDS)
    stopped_after = seen["stopped_after"]
    assert 2 <= stopped_after < ROUNDS, "the server was not stopped mid-run"
    assert not seen["stopped_with_summary"]
    done = seen["resumed"]
    assert done.returncode == 0, done.stderr[-4000:]
    assert Path(done.stdout.strip().splitlines()[-1]) == seen["run_dir"]
    assert f"after round {stopped_after} of {ROUNDS}" in done.stderr
    assert [r["round"] for r in seen["rounds"]] == list(range(1, ROUNDS + 1))
    assert seen["checkpoints"] == ROUNDS
    summary = json.loads((seen["run_dir"] / "summary.json").read_text())
    assert summary["rounds"] == ROUNDS
    # The nodes and the schedule saw absolute round numbers after the resume.
    assert len({r["clip_lr"] for r in seen["rounds"]}) == 1  # constant: no warmup restart
