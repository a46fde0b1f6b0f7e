"""Nodes sharing clips (train-train, or one's held-out clip in another's training set) are found
from salted content digests, before a simulation (all shares visible) and by the server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fed_a2v.cli import main
from fed_a2v.data.builtin.synthetic import ensure_synthetic_corpus
from fed_a2v.data.overlap import OverlapError
from fed_a2v.encode.text_targets import Targets
from fed_a2v.federation.feda2v_strategy import FedA2VStrategy
from fed_a2v.federation.overlap_check import digests_record
from fed_a2v.federation.protocol import DIGESTS, DIGESTS_REQUEST

# ---------------------------------------------------------------------------------------------
# Before the run: `fed-a2v validate` (and `simulate`, which calls the same check)


def _experiment(tmp_path: Path, nodes: dict, **federation) -> Path:
    data = ensure_synthetic_corpus(tmp_path / "data", 0, 3, 10, 0.3, 16000)
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"federation": {"num_clients": len(nodes), "min_clients": 1,
                                               **federation},
                                "dataset": {"path": str(data)}, "nodes": nodes}))
    return path


def test_crossed_fold_lists_are_reported(tmp_path: Path, capsys) -> None:
    """Each node holds the whole corpus; node 1 tests on a fold node 0 trains on, and back."""
    whole = {"node_split_id": 0, "num_nodes": 1}
    experiment = _experiment(tmp_path, {
        "0": {**whole, "train_folds": [1, 2], "test_folds": [3]},
        "1": {**whole, "train_folds": [3, 4], "test_folds": [1]}})
    assert main(["validate", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert "'nodes.0'" in err and "'nodes.1'" in err and "allow_overlap" in err
    # 3 classes x 2 clips per fold: node 0's fold 3 and node 1's fold 1, 6 clips each.
    assert "6 of" in err and "held-out clips are in" in err
    assert "training clips are in both" not in err


def test_shared_training_clips_are_reported_unless_allowed(tmp_path: Path, capsys) -> None:
    same = {"node_split_id": 0, "num_nodes": 2}  # two nodes, one shard
    experiment = _experiment(tmp_path, {"0": same, "1": same})
    assert main(["validate", str(experiment)]) == 2
    assert "12 training clips are in both" in capsys.readouterr().err
    allowed = _experiment(tmp_path, {"0": same, "1": same}, allow_overlap=True)
    assert main(["validate", str(allowed)]) == 0


def test_copies_of_one_corpus_are_the_same_clips(tmp_path: Path, capsys) -> None:
    """Digests follow content: two nodes with their own copy of the same files overlap."""
    copy = ensure_synthetic_corpus(tmp_path / "copy", 0, 3, 10, 0.3, 16000)
    whole = {"node_split_id": 0, "num_nodes": 1}
    experiment = _experiment(tmp_path, {"0": whole, "1": {**whole, "dataset_path": str(copy)}})
    assert main(["validate", str(experiment)]) == 2
    assert "24 training clips are in both" in capsys.readouterr().err
    disjoint = _experiment(tmp_path, {"0": {}, "1": {}})  # shards 0 and 1 of one corpus
    assert main(["validate", str(disjoint)]) == 0


# ---------------------------------------------------------------------------------------------
# During the run: the server compares what the nodes send


def _strategy(allow: bool = False) -> FedA2VStrategy:
    targets = Targets(["a"], ["a"], {"clip": torch.zeros(1, 2), "t5": torch.zeros(1, 1, 2)})
    return FedA2VStrategy(targets, lambda r: {"clip": 1e-3, "t5": 1e-3}, allow_overlap=allow)


def _reply(strategy: FedA2VStrategy, node: int, key: str, train: list[str],
           test: list[str]) -> Message:
    """An evaluate reply as `node` sends it, with the digests of its clips' content digests."""
    record = digests_record(strategy.overlap.salt, key, f"node-{key}.json", train, test)
    message = Message(RecordDict({"metrics": MetricRecord({"num-examples": 1, "eval_loss": 1.0}),
                                  DIGESTS: record}), dst_node_id=0, message_type="evaluate")
    message.metadata.__dict__["_src_node_id"] = node  # as a reply from that node carries
    return message


def test_server_asks_once_and_fails_the_run_on_overlap(task_identity) -> None:
    strategy = _strategy()
    instruction = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=11,
                          message_type="evaluate")
    (sent,) = strategy._finish_messages(1, [instruction])
    assert sent.content[DIGESTS_REQUEST]["salt"] == strategy.overlap.salt
    strategy.aggregate_evaluate(1, [_reply(strategy, 11, "a", ["x1", "x2"], ["y1"]),
                                    _reply(strategy, 12, "b", ["x3"], ["y2"])])
    (sent,) = strategy._finish_messages(2, [instruction])
    assert DIGESTS_REQUEST not in sent.content  # node 11 answered: no second request
    with pytest.raises(OverlapError) as info:
        strategy.aggregate_evaluate(2, [_reply(strategy, 13, "c", ["x9"], ["x1", "x2", "y9"])])
    message = str(info.value)
    assert "node-c.json (node 13)" in message and "node-a.json (node 11)" in message
    assert "2 of node-c.json (node 13)'s 3 held-out clips" in message


def test_salted_digests_hide_the_content_digests(task_identity) -> None:
    strategy = _strategy()
    reply = _reply(strategy, 11, "a", ["x1"], [])
    assert "x1" not in str(reply.content[DIGESTS]["train"])
    other_run = digests_record("another salt", "a", "n", ["x1"], [])
    assert other_run["train"] != reply.content[DIGESTS]["train"]


def test_allowed_overlap_and_a_restarted_node_do_not_fail(task_identity) -> None:
    allowed = _strategy(allow=True)
    allowed.aggregate_evaluate(1, [_reply(allowed, 11, "a", ["x1"], []),
                                   _reply(allowed, 12, "b", ["x1"], [])])
    strategy = _strategy()
    strategy.aggregate_evaluate(1, [_reply(strategy, 11, "a", ["x1"], ["y1"])])
    # Node 11 died; the same node (same key) is back as node 21 and its old self is gone.
    strategy.aggregate_evaluate(3, [_reply(strategy, 21, "a", ["x1"], ["y1"])])
    assert set(strategy.overlap.nodes) == {21}
    # Two live nodes under one key with the same clips are two nodes sharing them.
    with pytest.raises(OverlapError, match="1 training clips are in both"):
        strategy.aggregate_evaluate(4, [_reply(strategy, 22, "a", ["x1"], ["y1"]),
                                        _reply(strategy, 21, "a", ["x1"], ["y1"])])


@pytest.mark.slow
def test_deployed_nodes_holding_the_same_clips_fail_the_run(tmp_path: Path) -> None:
    """Two SuperNodes, each with its own copy of the same corpus and no split keys (so each
    uses all of it): the server finds the overlap from their first replies and fails the run."""
    from fed_a2v.launch.host import COMPLETED

    from drills import Federation, small_experiment

    experiment = small_experiment(tmp_path, "overlap", global_rounds=2, num_clients=2,
                                  min_clients=2)
    with Federation(tmp_path) as federation:
        for i in range(2):
            node = tmp_path / f"node-{i}.json"
            node.write_text(json.dumps({"dataset_path": str(tmp_path / f"node-{i}" / "data"),
                                        "cache_dir": str(tmp_path / f"node-{i}" / "cache")}))
            federation.supernode(node)
        entry = federation.run({"config": str(experiment)})
        log = subprocess.run(["flwr", "log", str(entry["run-id"]), "fed", "--show"],
                             env=federation.user_env, capture_output=True, text=True,
                             timeout=120).stdout  # the ServerApp's log
    assert entry["status"] != COMPLETED
    # 3 classes x 15 clips, folds 1-4 of 5 for training: 36 clips, in both nodes' copies.
    assert "nodes share clips" in log and "36 training clips are in both" in log, log
    assert "node-0.json" in log and "node-1.json" in log
    assert not list((tmp_path / "outputs").glob("overlap-*/summary.json"))
