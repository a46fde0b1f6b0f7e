"""One name per node: the same in its log lines, `nodes.jsonl`, report.md, the plots, TensorBoard
and W&B, after a resume of the run and after a restart of the node (a new Flower node id)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict

from fed_a2v.config.schema import Config
from fed_a2v.encode.text_targets import Targets
from fed_a2v.federation.feda2v_strategy import FedA2VStrategy
from fed_a2v.federation.node import identify
from fed_a2v.federation.protocol import NODE
from fed_a2v.runs.node_records import node_names, read_nodes
from fed_a2v.runs.report import SERIES, node_keys, nodes_figure, series_figure, write_report
from fed_a2v.runs.run_dir import RunRecorder

STATE = {"clip.w": torch.ones(2), "t5.w": torch.zeros(3)}


def context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                   run_config={})


def test_a_node_is_named_by_its_shard_else_its_json_file_else_its_flower_id(
        tmp_path: Path) -> None:
    split = tmp_path / "host-b.json"
    split.write_text(json.dumps({"node_split_id": 1, "num_nodes": 3}))
    whole = tmp_path / "node-2.json"
    whole.write_text("{}")
    idents = [identify(context(c), Config())
              for c in ({"partition-id": 2, "num-partitions": 3}, {"node-config": str(split)},
                        {"node-config": str(whole)}, {})]
    assert [i.name for i in idents] == ["node 2", "node 1", "node-2", "node 7"]
    # The keys, which seed each node's training, are what they always were.
    assert [i.key for i in idents] == ["shard 2/3", "shard 1/3", f"node-config {whole}",
                                       "flower node 7"]


def make_strategy() -> FedA2VStrategy:
    targets = Targets(["dog", "rain"], ["dog", "rain"],
                      {"clip": torch.arange(8.0).reshape(2, 4), "t5": torch.ones(2, 3, 4)})
    return FedA2VStrategy(targets, lambda _: {"clip": 1e-3, "t5": 1e-3})


def evaluated(strategy: FedA2VStrategy, server_round: int,
              nodes: dict[int, tuple[str, str]]) -> dict[str, dict[str, float]]:
    """One evaluate stage: Flower node id -> (node key, node name) answers; the per-node
    metrics the strategy noted for the round."""
    replies = []
    for flower_id, (key, name) in nodes.items():
        instruction = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}),
                              dst_node_id=flower_id, message_type=MessageType.EVALUATE)
        replies.append(Message(RecordDict({
            "metrics": MetricRecord({"num-examples": 2, "eval_clip_top1": flower_id / 100}),
            NODE: ConfigRecord({"key": key, "name": name})}), reply_to=instruction))
    strategy.aggregate_evaluate(server_round, replies)
    return strategy.node_metrics[server_round]


def test_a_restarted_node_and_a_resumed_run_keep_every_name(task_identity) -> None:
    strategy = make_strategy()
    zero, one = ("shard 0/2", "node 0"), ("shard 1/2", "node 1")
    first = evaluated(strategy, 1, {5: zero, 7: one})
    assert {n: m["flower_node_id"] for n, m in first.items()} == {"node 0": 5, "node 1": 7}
    # Node 1 restarts: a new Flower node id, the same key and name.
    second = evaluated(strategy, 2, {5: zero, 9: one})
    assert {n: m["flower_node_id"] for n, m in second.items()} == {"node 0": 5, "node 1": 9}
    assert second["node 1"]["eval_clip_top1"] == 0.09
    # A resumed run: every Flower node id is new, the names are not.
    resumed = make_strategy()
    resumed.restore(json.loads(json.dumps(strategy.progress())))  # as the checkpoint keeps it
    assert set(evaluated(resumed, 3, {21: one, 22: zero})) == {"node 0", "node 1"}


def test_two_nodes_with_one_name_are_told_apart_with_a_warning(
        task_identity, caplog: pytest.LogCaptureFixture) -> None:
    """Two hosts, each with a node JSON called node.json and no split keys."""
    a, b = ("node-config /a/node.json", "node"), ("node-config /b/node.json", "node")
    strategy = make_strategy()
    with caplog.at_level(logging.WARNING):
        first = evaluated(strategy, 1, {5: a, 6: b})
    assert {n: m["flower_node_id"] for n, m in first.items()} == {"node": 5, "node (2)": 6}
    assert "'node (2)'" in caplog.text and "/b/node.json" in caplog.text
    # Kept, whichever answers first, over restarts and a resume.
    assert set(evaluated(strategy, 2, {8: b})) == {"node (2)"}
    resumed = make_strategy()
    resumed.restore(strategy.progress())
    assert set(evaluated(resumed, 3, {9: b})) == {"node (2)"}
    assert set(evaluated(resumed, 4, {9: b, 10: a})) == {"node", "node (2)"}


def node_lines(server_round: int, ids: dict[str, int]) -> dict[str, dict[str, float]]:
    """What the strategy notes of each node in one round: its metrics and Flower node id."""
    return {name: {"flower_node_id": flower_id, "train_clip_loss": 1.0 / server_round + i,
                   "train_t5_loss": 2.0 / server_round + i,
                   **({"eval_clip_top1": 0.1 * server_round} if server_round % 2 else {})}
            for i, (name, flower_id) in enumerate(ids.items())}


@pytest.fixture
def resumed_run(tmp_path: Path) -> Path:
    """Rounds 1-2 with Flower node ids 101..103, stopped (a stray line of the unfinished round 3
    left in nodes.jsonl), resumed for rounds 3-5 with new ids 201..203."""
    run_dir = tmp_path / "run"
    recorder = RunRecorder(run_dir, Config())
    names = ["node 0", "node 1", "node 2"]
    for r in (1, 2):
        recorder.end_round(r, {"train_clip_loss": 1.0 / r}, STATE,
                           node_lines(r, dict(zip(names, (101, 102, 103), strict=True))))
    with open(run_dir / "nodes.jsonl", "a") as f:
        f.write(json.dumps({"round": 3, "node": "node 0", "flower_node_id": 101,
                            "train_clip_loss": 99.0}) + "\n")
    resumed = RunRecorder(run_dir, Config(), resume=True)
    assert resumed.resume_point()[0] == 2
    for r in (3, 4, 5):
        resumed.end_round(r, {"train_clip_loss": 1.0 / r}, STATE,
                          node_lines(r, dict(zip(names, (201, 202, 203), strict=True))))
    return run_dir


def test_a_resumed_run_records_each_node_once_under_its_name(resumed_run: Path) -> None:
    lines = [json.loads(x) for x in (resumed_run / "nodes.jsonl").read_text().splitlines()]
    assert sorted((n["round"], n["node"]) for n in lines) == [
        (r, f"node {i}") for r in range(1, 6) for i in range(3)]
    assert not any(n["train_clip_loss"] == 99.0 for n in lines)  # the stray line is gone
    assert {n["flower_node_id"] for n in lines if n["node"] == "node 1"} == {102, 202}
    assert read_nodes(resumed_run / "nodes.jsonl") == lines
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (resumed_run / "tb").glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {t for t in tags if t.startswith("node")} == {
        f"node {i}/{k}" for i in range(3)
        for k in ("train_clip_loss", "train_t5_loss", "eval_clip_top1")}


def test_the_report_and_the_node_plot_use_the_names_of_nodes_jsonl(resumed_run: Path) -> None:
    write_report(resumed_run)
    names = ["node 0", "node 1", "node 2"]
    report = (resumed_run / "report.md").read_text().splitlines()
    table = report[report.index("## Nodes"):]
    rows = table[table.index(next(x for x in table if x.startswith("|---"))) + 1:]
    rows = rows[:rows.index("")]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == names
    assert "| node 1 | 5 | 1.2 | 1.4 | 0.5 |" in rows  # 5 rounds trained; its last values
    nodes = read_nodes(resumed_run / "nodes.jsonl")
    figure = nodes_figure(nodes, node_keys(nodes))
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert sorted(ax.get_title() for ax in panels) == [
        "eval_clip_top1 per node", "train_clip_loss per node", "train_t5_loss per node"]
    for ax in panels:  # each node once, with all its rounds
        assert [line.get_label() for line in ax.get_lines()] == names
        rounds = [1, 3, 5] if ax.get_title().startswith("eval") else [1, 2, 3, 4, 5]
        assert all(list(line.get_xdata()) == rounds for line in ax.get_lines())
    assert [t.get_text() for t in panels[0].get_legend().get_texts()] == names


def integer_ticks(ax) -> bool:
    ticks = list(ax.get_xticks())
    return len(ticks) > 1 and all(float(t).is_integer() for t in ticks)


def test_round_axes_have_whole_number_ticks() -> None:
    """Two rounds: matplotlib's own ticks would be 1.0, 1.2, ... 2.0."""
    rounds = [{"round": r, "train_clip_loss": 1.0 / r, "clip_lr": 0.1} for r in (1, 2)]
    for title, keys in SERIES.values():
        (ax,) = series_figure(rounds, title, keys).axes
        assert ax.get_xlabel() == "round" and integer_ticks(ax), title
    nodes = read_nodes(Path("missing"))  # no file: no lines
    assert nodes == []
    few = [{"round": r, "node": f"node {i}", "train_clip_loss": 1.0} for r in (1, 2)
           for i in range(3)]
    assert all(integer_ticks(ax) for ax in nodes_figure(few, ["train_clip_loss"]).axes)


def test_many_nodes_make_a_heatmap_naming_each_node_once() -> None:
    nodes = [{"round": r, "node": f"node {i}", "train_clip_loss": r + i / 100}
             for r in range(1, 5) for i in range(30)]
    figure = nodes_figure(nodes, ["train_clip_loss"])
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"node {i}" for i in range(30)]
    assert len(ax.get_images()) == 1 and integer_ticks(ax)
    grid = ax.get_images()[0].get_array()
    assert grid.shape == (30, 4) and grid[12, 3] == pytest.approx(4.12)  # node 12, round 4


def test_read_nodes_keeps_the_later_line_and_names_old_flower_ids(tmp_path: Path) -> None:
    path = tmp_path / "nodes.jsonl"
    lines = [{"round": 1, "node": "node 10", "train_clip_loss": 1.0},
             {"round": 1, "node": "node 2", "train_clip_loss": 2.0},
             {"round": 1, "node": "node 10", "train_clip_loss": 3.0},  # recorded again
             {"round": 2, "node": 1234567890123456789, "train_clip_loss": 4.0}]  # an old run
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"round": 3, "no')
    nodes = read_nodes(path)
    assert [(n["round"], n["node"], n["train_clip_loss"]) for n in nodes] == [
        (1, "node 2", 2.0), (1, "node 10", 3.0), (2, "node 1234567890123456789", 4.0)]
    assert node_names(nodes) == ["node 2", "node 10", "node 1234567890123456789"]
