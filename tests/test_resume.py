"""A stopped server resumes from its last finished round: no round repeated, none lost, its
config kept, and the summary covering the whole run."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from flwr.app import Context, MessageType, RecordDict
from safetensors import safe_open

from fed_a2v.cli import EXIT_CONFIG, main
from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.load import load_config
from fed_a2v.config.schema import Config
from fed_a2v.federation.protocol import EVALUATE_ROUND
from fed_a2v.federation.server import lr_plan, run_federation
from fed_a2v.model.adapters import save_adapters
from fed_a2v.runs.node_records import read_nodes
from fed_a2v.runs.report import nodes_figure
from fed_a2v.runs.run_dir import RunRecorder, checkpoint_progress, last_round, run_to_resume

from drills import (
    LoopbackGrid,
    experiment_dict,
    run_in_process,
    server_identity,
    server_stopped_and_resumed,
)

ROUNDS = 5
APP_DIR = Path(__file__).resolve().parent.parent
STATE = {"clip.w": torch.ones(2), "t5.w": torch.zeros(3)}


def test_resume_point_ignores_torn_lines_and_orphan_checkpoints(tmp_path: Path) -> None:
    recorder = RunRecorder(tmp_path / "run", Config())
    assert recorder.resume_point() is None
    for r in (1, 2):
        recorder.end_round(r, {"clip_lr": 0.1 * r}, {k: v + r for k, v in STATE.items()})
    # A crash in round 3: its checkpoint written, its metrics line torn halfway.
    recorder.end_round(3, {}, STATE)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "run" / "metrics.jsonl").write_text("\n".join(lines[:2] + [lines[2][:9]]))
    last, restored, _ = RunRecorder(tmp_path / "run", Config(), resume=True).resume_point()
    assert last == 2
    assert torch.equal(restored["clip.w"], STATE["clip.w"] + 2)
    kept = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in kept] == [1, 2]


class Stopped(Exception):
    """The server process going away."""


class StoppingGrid(LoopbackGrid):
    """In-process nodes; the server stops as round `stop_at`'s train instructions go out."""

    def __init__(self, num_nodes: int, stop_at: int | None = None) -> None:
        super().__init__(num_nodes)
        self.stop_at = stop_at

    def push_messages(self, messages):
        messages = list(messages)
        if (messages and messages[0].metadata.message_type == MessageType.TRAIN
                and messages[0].content["config"]["server-round"] == self.stop_at):
            raise Stopped
        return super().push_messages(messages)


def test_a_resumed_one_stage_run_repeats_no_round_and_loses_no_metric(tmp_path: Path) -> None:
    """Stopped as round 3 goes out: round 2 is checkpointed, its line waits for its evaluation.
    The resumed run's first train instructions evaluate the checkpoint's adapters, and the run
    writes exactly the lines of a run never stopped."""
    experiment = experiment_dict(tmp_path, "held", federation={"global_rounds": 4,
                                                               "num_clients": 2,
                                                               "min_clients": 2})
    whole = run_in_process(experiment, tmp_path / "whole.json", LoopbackGrid(2))
    experiment["experiment"]["output_dir"] = str(tmp_path / "stopped")
    path = tmp_path / "stopped.json"
    with pytest.raises(Stopped):
        run_in_process(experiment, path, StoppingGrid(2, stop_at=3))
    (run_dir,) = (tmp_path / "stopped").glob("held-*")
    assert [r["round"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1]
    assert checkpoint_progress(run_dir, 2)["held"]["round"] == 2
    assert last_round(run_dir) == 2

    grid = StoppingGrid(2)
    with server_identity():
        run_federation(grid, Context(run_id=2, node_id=0, node_config={}, state=RecordDict(),
                                     run_config={"config": str(path), "resume": True,
                                                 "run-dir": str(run_dir)}), APP_DIR)
    trained = [(m.content["config"]["server-round"], m.content["config"].get(EVALUATE_ROUND))
               for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    assert trained == [(3, 2), (3, 2), (4, 3), (4, 3)]  # round 2 evaluated first, once
    lines = read_jsonl(run_dir / "metrics.jsonl")
    assert lines == read_jsonl(whole / "metrics.jsonl")
    assert all(r["eval_clip_top1"] is not None for r in lines)
    nodes = read_jsonl(run_dir / "nodes.jsonl")
    assert sorted((n["round"], n["node"]) for n in nodes if "eval_clip_mse" in n) == [
        (r, f"node {i}") for r in range(1, 5) for i in range(2)]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_without_a_run_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for value in ("", str(empty), str(tmp_path / "missing")):
        with pytest.raises(ConfigError, match="run-dir"):
            run_to_resume(value)
    with pytest.raises(ConfigError, match="no config.json"):
        RunRecorder(empty, Config(), resume=True)
    assert not list(empty.iterdir())  # nothing started in it
    # The ServerApp: `resume=true` with no run-dir fails before anything starts.
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config={"resume": True, "output-dir": str(tmp_path / "out")})
    with pytest.raises(ConfigError, match="resume needs run-dir"):
        run_federation(None, context, APP_DIR)
    assert not (tmp_path / "out").exists()
    # The CLI: an empty or missing directory is a config error, not a fresh run.
    handler = signal.getsignal(signal.SIGTERM)  # `simulate` sets its own
    try:
        for value in ("", str(empty)):
            assert main(["simulate", "--resume", value, "--output-dir",
                         str(tmp_path / "out")]) == EXIT_CONFIG
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert not (tmp_path / "out").exists() and not list(empty.iterdir())


def test_a_resumed_recorder_keeps_the_runs_config(tmp_path: Path) -> None:
    first = Config()
    first.experiment.name = "first"
    RunRecorder(tmp_path, first)
    written = (tmp_path / "config.json").read_text()
    other = Config()
    other.experiment.name = "other"
    RunRecorder(tmp_path, other, resume=True)
    assert (tmp_path / "config.json").read_text() == written
    assert json.loads(written)["experiment"]["name"] == "first"


def test_a_new_run_refuses_a_directory_holding_a_run(tmp_path: Path) -> None:
    RunRecorder(tmp_path, Config()).end_round(1, {}, STATE)
    with pytest.raises(ValueError, match="holds a run already"):
        RunRecorder(tmp_path, Config())


def test_the_summary_of_a_resumed_run_covers_the_whole_run(tmp_path: Path) -> None:
    """The stopped part left a round-1 checkpoint saying it had run 1000 s and counted clips."""
    recorder = RunRecorder(tmp_path, Config())
    recorder.end_round(1, {}, STATE, progress={"totals": {"encoded-clips": 7}})
    progress = {"totals": {"encoded-clips": 7}, "nodes": ["shard 0/2"], "wall_seconds": 1000.0}
    save_adapters(STATE, recorder.checkpoint(1),
                  {"round": "1", "progress": json.dumps(progress)})
    resumed = RunRecorder(tmp_path, Config(), resume=True)
    last, _, restored = resumed.resume_point()
    assert (last, restored) == (1, progress)
    resumed.end_round(2, {}, STATE, progress={"totals": {"encoded-clips": 7}})
    with safe_open(str(resumed.checkpoint(2)), "pt") as f:
        assert json.loads(f.metadata()["progress"])["wall_seconds"] >= 1000.0
    summary = resumed.finish(None, 0, 2, 1, {})
    assert summary["wall_seconds"] >= 1000.0


@pytest.mark.slow
def test_a_stopped_server_resumes_without_repeating_or_losing_rounds(tmp_path: Path) -> None:
    seen = server_stopped_and_resumed(tmp_path, rounds=ROUNDS)
    stopped_after = seen["stopped_after"]
    assert 2 <= stopped_after < ROUNDS, "the server was not stopped mid-run"
    assert not seen["stopped_with_summary"]
    done = seen["resumed"]
    assert done.returncode == 0, done.stderr[-4000:]
    run_dir = seen["run_dir"]
    assert Path(done.stdout.strip().splitlines()[-1]) == run_dir
    assert f"after round {stopped_after} of {ROUNDS}" in done.stderr
    assert [r["round"] for r in seen["rounds"]] == list(range(1, ROUNDS + 1))
    assert all(r["eval_clip_top1"] is not None for r in seen["rounds"])  # no metric lost
    assert seen["checkpoints"] == ROUNDS
    assert seen["config_kept"]
    # The schedule saw absolute round numbers after the resume: the cosine schedule gives every
    # round its own LR, so a count restarted at 1 would repeat the first rounds' values.
    plan = lr_plan(load_config(run_dir / "config.json"))
    expected = [plan(r)["clip"] for r in range(1, ROUNDS + 1)]
    assert len(set(expected)) == ROUNDS
    assert [r["clip_lr"] for r in seen["rounds"]] == pytest.approx(expected)
    # Counts and wall time add the stopped part to the resumed one.
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == ROUNDS and summary["num_nodes"] == 2
    before = checkpoint_progress(run_dir, stopped_after)
    clips = summary["encoded_clips"] + summary["cached_clips"]
    assert clips > sum(before["totals"].values()) > 0  # the resumed part read its clips too
    assert summary["wall_seconds"] > before["wall_seconds"] > 0
    # Each node once a round under its one name, though the resumed part's Flower node ids are
    # new; the report and the per-node plot name the same two nodes.
    nodes = [json.loads(x) for x in (run_dir / "nodes.jsonl").read_text().splitlines()]
    assert sorted((n["round"], n["node"]) for n in nodes) == [
        (r, f"node {i}") for r in range(1, ROUNDS + 1) for i in range(2)]
    assert all("flower_node_id" in n and "train_clip_loss" in n for n in nodes)
    report = (run_dir / "report.md").read_text()
    assert f"| node 0 | {ROUNDS} |" in report and f"| node 1 | {ROUNDS} |" in report
    figure = nodes_figure(read_nodes(run_dir / "nodes.jsonl"), ["train_clip_loss"])
    assert [line.get_label() for line in figure.axes[0].get_lines()] == ["node 0", "node 1"]
