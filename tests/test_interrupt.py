"""Ctrl-C during `fed-a2v simulate`: exit 130, the resume hint, nothing of Flower or Ray left;
the resumed run prints the run's own round numbers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fed_a2v.launch.host import descendants
from fed_a2v.runs.run_dir import finished_rounds, last_round

from drills import HANG

ROOT = Path(__file__).resolve().parents[1]


def fed_a2v(*args: str) -> list[str]:
    return [sys.executable, "-m", "fed_a2v.cli", *args]


def rounds_done(run_dir: Path) -> list[int]:
    return [record["round"] for record in finished_rounds(run_dir)]


def processes_with(marker: str) -> list[int]:
    """Live processes whose environment mentions `marker` (zombies are dead)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            state = next(line for line in (proc / "status").read_text().splitlines()
                         if line.startswith("State:"))
            if marker.encode() in (proc / "environ").read_bytes() and "Z" not in state:
                found.append(int(proc.name))
        except (OSError, StopIteration):
            continue
    return found


@pytest.mark.slow
def test_ctrl_c_stops_with_the_resume_hint_and_the_resume_numbers_its_rounds(
        tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    marker = f"FEDA2V_TEST_RUN={uuid.uuid4().hex}"  # every process it starts inherits it
    env = {**os.environ, "FEDA2V_TEST_RUN": marker.split("=")[1]}
    log = (tmp_path / "simulate.log").open("w")
    proc = subprocess.Popen(fed_a2v("simulate", "--config", "configs/quickstart.json",
                                    "--rounds", "4", "--output-dir", str(runs),
                                    "--set", "federation.local_epochs=1"),
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + HANG
    run_dirs: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        run_dirs = list(runs.glob("quickstart-*"))
        if run_dirs and rounds_done(run_dirs[0]):
            break
        time.sleep(0.5)
    assert proc.poll() is None and run_dirs, (tmp_path / "simulate.log").read_text()
    family = descendants(proc.pid)
    assert family and processes_with(marker)  # the SuperLink, its simulation, Ray

    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=HANG) == 130
    output = (tmp_path / "simulate.log").read_text()
    (run_dir,) = run_dirs
    # the last checkpoint a resume goes on from (one-stage: its line may wait in it)
    assert f"stopped after round {last_round(run_dir)} of 4; resume with: fed-a2v simulate " \
           f"--resume {run_dir}" in output, output
    assert last_round(run_dir) in (rounds_done(run_dir)[-1], rounds_done(run_dir)[-1] + 1)
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert not processes_with(marker), "Flower or Ray processes left behind"
    for pid in family:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue  # gone
        assert "State:\tZ" in status, f"process {pid} outlived the interrupted simulate"

    resumed = subprocess.run(fed_a2v("simulate", "--resume", str(run_dir)), cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=HANG)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert rounds_done(run_dir) == [1, 2, 3, 4]
    assert "[round 4/4]" in resumed.stderr and "[round 1/" not in resumed.stderr
    assert "ConfigRecord" not in resumed.stderr  # the config is logged once, briefly
