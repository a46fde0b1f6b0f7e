"""A stopped server resumes from its last finished round: no round repeated, none lost."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from fed_a2v.config import Config
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


def wait_for_rounds(path: Path, rounds: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= rounds:
            return
        assert process.poll() is None, "the run ended before it could be stopped"
        time.sleep(0.1)
    raise TimeoutError(f"{path} did not reach {rounds} rounds")


def test_a_killed_server_resumes_without_repeating_or_losing_rounds(tmp_path: Path) -> None:
    experiment = {
        "experiment": {"name": "resume", "seed": 2, "output_dir": str(tmp_path / "runs")},
        "federation": {"global_rounds": ROUNDS, "num_clients": 2, "local_epochs": 15,
                       "min_clients": 2},
        "training": {"batch_size": 4, "learning_rate": 0.003},
        "dataset": {"name": "synthetic", "path": str(tmp_path / "data"), "clip_seconds": 0.5,
                    "num_classes": 3, "clips_per_class": 20, "sample_rate": 16000},
    }
    config = tmp_path / "experiment.json"
    config.write_text(json.dumps(experiment))
    command = [sys.executable, "-m", "fed_a2v.cli", "simulate", "--config", str(config)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "runs").glob("resume-*/metrics.jsonl")):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.1)
        (metrics,) = (tmp_path / "runs").glob("resume-*/metrics.jsonl")
        wait_for_rounds(metrics, 2, first, timeout=300)
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
    run_dir = metrics.parent
    stopped_after = len(metrics.read_text().splitlines())
    assert 2 <= stopped_after < ROUNDS, "the server was not stopped mid-run"
    assert not (run_dir / "summary.json").exists()

    done = subprocess.run([sys.executable, "-m", "fed_a2v.cli", "simulate", "--resume",
                           str(run_dir)], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    assert Path(done.stdout.strip().splitlines()[-1]) == run_dir
    assert f"after round {stopped_after} of {ROUNDS}" in done.stderr
    rounds = [json.loads(x)["round"] for x in metrics.read_text().splitlines()]
    assert rounds == list(range(1, ROUNDS + 1))
    assert len(list((run_dir / "checkpoints").glob("round-*.safetensors"))) == ROUNDS
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == ROUNDS
    # The schedule and the nodes saw absolute round numbers after the resume.
    lrs = [json.loads(x)["clip_lr"] for x in metrics.read_text().splitlines()]
    assert len(set(lrs)) == 1  # constant schedule: same LR, no restart of a warmup
