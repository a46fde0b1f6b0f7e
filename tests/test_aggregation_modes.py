"""`feda2v.adapter_aggregation_mode` (weighted_average, avg, none = standalone nodes),
`federation.eval_gap`, and the val metrics nodes report beside the held-out ones."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from safetensors import safe_open
from safetensors.torch import load_file

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.validate import config_from_dict
from fed_a2v.encode.encoders import BUILTIN_CLIP_WIDTH, BUILTIN_T5_WIDTH, describe_audio_encoder
from fed_a2v.encode.text_targets import Targets
from fed_a2v.federation.aggregation import aggregate_adapters, fedavg_per_adapter
from fed_a2v.federation.feda2v_strategy import FedA2VStrategy
from fed_a2v.federation.protocol import DIGESTS_REQUEST, EVALUATE_ROUND, NODE, VAL_EXAMPLES
from fed_a2v.federation.rounds import ShortRound
from fed_a2v.federation.transport import pack
from fed_a2v.model.adapters import adapters_state, build_adapters
from fed_a2v.model.pretrained import FedA2VAdapters

from drills import (
    LoopbackGrid,
    evaluated_rounds,
    experiment_dict,
    run_in_process,
    small_experiment,
    train_reply,
)

REFERENCE = {"clip.w": np.zeros((2, 2), np.float32), "t5.w": np.zeros(3, np.float32)}


def make_strategy(mode: str = "weighted_average", **kwargs) -> FedA2VStrategy:
    targets = Targets(["a"], ["a"], {"clip": torch.zeros(1, 2), "t5": torch.zeros(1, 1, 2)})
    strategy = FedA2VStrategy(targets, lambda _: {"clip": 1e-3, "t5": 1e-3},
                              aggregation_mode=mode, min_train_nodes=1, **kwargs)
    strategy.global_state = REFERENCE
    return strategy


def filled(value: float) -> dict[str, np.ndarray]:
    return {k: np.full_like(v, value) for k, v in REFERENCE.items()}


@pytest.mark.parametrize("mode,expected", [("avg", 3.0), ("weighted_average", 4.0)])
def test_avg_is_the_unweighted_mean_weighted_average_weighs_by_examples(
        task_identity, mode: str, expected: float) -> None:
    """Node 11: every weight 1.0, 1 example; node 12: 5.0, 3 examples. avg: (1 + 5) / 2 = 3;
    weighted_average: 1/4 * 1 + 3/4 * 5 = 4."""
    arrays, _ = make_strategy(mode).aggregate_train(
        1, [train_reply(11, filled(1.0), 1), train_reply(12, filled(5.0), 3)])
    for key, value in arrays.items():
        np.testing.assert_array_equal(value.numpy(), np.full_like(REFERENCE[key], expected))


def test_weighted_average_is_todays_fedavg_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    states = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in REFERENCE.items()}
              for _ in range(3)]
    weights = [7.0, 3.0, 5.0]
    new, old = aggregate_adapters(states, weights, "weighted_average"), fedavg_per_adapter(
        states, weights)
    assert all(new[k].tobytes() == old[k].tobytes() for k in old)
    unweighted = aggregate_adapters(states, weights, "avg")
    for key in REFERENCE:
        np.testing.assert_allclose(unweighted[key], sum(s[key] for s in states) / 3, rtol=1e-6)
    with pytest.raises(ValueError, match="standalone"):
        aggregate_adapters(states, weights, "none")


def test_only_a_standalone_server_takes_replies_without_adapters(task_identity) -> None:
    empty = train_reply(11, {}, 4)
    federated = make_strategy("avg")
    with pytest.raises(ShortRound, match="no adapters"):  # not counted: run again
        federated.aggregate_train(1, [empty])
    assert "no adapters" in federated.rejected[0][2]

    standalone = make_strategy("none")
    arrays, metrics = standalone.aggregate_train(1, [train_reply(11, {}, 4),
                                                     train_reply(12, filled(1.0), 2)])
    assert arrays is not None and len(arrays) == 0  # nothing to average, nothing to send
    assert metrics is not None and standalone.round_metrics[1]["train_nodes"] == 1
    assert [(node, "sent 2 arrays" in why)
            for _, node, why, _ in standalone.rejected] == [(12, True)]


@pytest.mark.parametrize("mode", ["weighted_average", "none"])
def test_adapter_bytes_sent_and_the_overlap_request(task_identity, mode: str) -> None:
    strategy = make_strategy(mode)
    arrays = ArrayRecord({k: torch.from_numpy(v) for k, v in REFERENCE.items()})
    sent = list(strategy.configure_train(1, arrays, ConfigRecord(), LoopbackGrid(2)))
    assert len(sent) == 2
    payload = pack(REFERENCE)[0].count_bytes()  # the adapters travel packed, in one Array
    assert payload >= sum(v.nbytes for v in REFERENCE.values())
    if mode == "none":
        assert all(len(m.content["arrays"]) == 0 for m in sent)
        assert strategy.adapter_bytes_per_round(1) == [0]
        assert not any(DIGESTS_REQUEST in m.content for m in sent)  # no overlap check
    else:
        assert strategy.adapter_bytes_per_round(2) == [2 * payload, 0]
        assert all(DIGESTS_REQUEST in m.content for m in sent)


@pytest.mark.parametrize("protocol", ["one_stage", "two_stage"])
def test_nodes_evaluate_every_eval_gap_rounds_and_after_the_last(task_identity,
                                                                 protocol: str) -> None:
    strategy = make_strategy(eval_gap=3, round_protocol=protocol)
    strategy.last_round = 7
    assert [r for r in range(1, 8) if strategy.evaluates(r)] == [3, 6, 7]

    def evaluate_stage(server_round: int) -> int:
        return len(list(strategy.configure_evaluate(server_round, ArrayRecord(),
                                                    ConfigRecord(), LoopbackGrid(2))))

    def asks_to_evaluate(server_round: int) -> set:
        """The round whose adapters `server_round`'s train instructions have evaluated."""
        arrays = ArrayRecord({k: torch.from_numpy(v) for k, v in REFERENCE.items()})
        sent = strategy.configure_train(server_round, arrays, ConfigRecord(), LoopbackGrid(2))
        asked = {m.content["config"].get(EVALUATE_ROUND) for m in sent}
        strategy.aggregate_train(server_round, [train_reply(11, filled(1.0), 1)])
        return asked

    asked = [asks_to_evaluate(r) for r in range(1, 8)]
    if protocol == "two_stage":
        assert [evaluate_stage(r) for r in range(1, 8)] == [0, 0, 2, 0, 0, 2, 2]
        assert asked == [{None}] * 7
    else:  # rounds 3 and 6 in the next round's train instructions, the last in its own stage
        assert [evaluate_stage(r) for r in range(1, 8)] == [0, 0, 0, 0, 0, 0, 2]
        assert asked == [{None}, {None}, {None}, {3}, {None}, {None}, {6}]


def eval_answer(node: int, key: str, metrics: dict[str, float]) -> Message:
    instruction = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}),
                          dst_node_id=node, message_type=MessageType.EVALUATE)
    return Message(RecordDict({"metrics": MetricRecord(metrics),
                               NODE: ConfigRecord({"key": key})}), reply_to=instruction)


def test_val_metrics_are_weighted_by_val_clips_and_a_node_without_them_adds_none(
        task_identity) -> None:
    strategy = make_strategy()
    with_val = eval_answer(11, "a", {"num-examples": 2, "eval_clip_mse": 1.0,
                                     VAL_EXAMPLES: 3, "val_clip_mse": 1.0})
    other_val = eval_answer(12, "b", {"num-examples": 6, "eval_clip_mse": 3.0,
                                      VAL_EXAMPLES: 1, "val_clip_mse": 5.0})
    without = eval_answer(13, "c", {"num-examples": 8, "eval_clip_mse": 2.0})
    metrics = strategy.aggregate_evaluate(1, [with_val, other_val, without])
    assert metrics["eval_clip_mse"] == pytest.approx((2 * 1 + 6 * 3 + 8 * 2) / 16)
    assert metrics["val_clip_mse"] == pytest.approx((3 * 1 + 1 * 5) / 4)
    assert VAL_EXAMPLES not in metrics and "num-examples" not in metrics
    nodes = strategy.node_metrics[1]
    # Replies without a name: "node <Flower node id>"
    assert nodes["node 11"]["val_clip_mse"] == 1.0 and "val_clip_mse" not in nodes["node 13"]
    assert nodes["node 11"]["flower_node_id"] == 11


class SnapshotGrid(LoopbackGrid):
    """Keeps, after each train stage, the digest of every standalone adapters file."""

    def __init__(self, num_nodes: int, cache: Path) -> None:
        super().__init__(num_nodes)
        self.cache = cache
        self.files: list[dict[str, str]] = []  # after each train stage: file name -> digest

    def push_messages(self, messages) -> list[str]:
        messages = list(messages)
        ids = super().push_messages(messages)  # the nodes have answered
        if messages and messages[0].metadata.message_type == MessageType.TRAIN:
            self.files.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                               for p in self.cache.glob("standalone/*/*.safetensors")})
        return ids


def test_standalone_nodes_with_eval_gap_and_val_clips_in_process(tmp_path: Path) -> None:
    """The ServerApp's code and the nodes' in one process: 3 standalone rounds, evaluation after
    rounds 2 and 3 only (eval_gap 2), fold 4 as the nodes' val clips."""
    experiment = experiment_dict(
        tmp_path, "modes", output_dir=tmp_path / "runs",
        federation={"global_rounds": 3, "num_clients": 2, "min_clients": 2, "eval_gap": 2},
        dataset={"val_folds": [4], "clips_per_class": 10},
        feda2v={"adapter_aggregation_mode": "none"})
    experiment["experiment"]["cache_dir"] = str(tmp_path / "cache")
    grid = SnapshotGrid(2, tmp_path / "cache")
    run_dir = run_in_process(experiment, tmp_path / "modes.json", grid)

    assert evaluated_rounds(grid.sent) == [2, 3]
    assert all(len(m.content["arrays"]) == 0 for m in grid.sent)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["adapter_bytes_sent_per_round"] == [0, 0, 0]
    assert summary["adapter_aggregation_mode"] == "none"
    assert summary["standalone"]["overlap_check"].startswith("skipped")
    assert not (run_dir / "final").exists()  # no global adapters exist
    with pytest.raises(ConfigError, match="standalone run"):
        FedA2VAdapters.from_pretrained(run_dir)

    # Each node's own file, rewritten by every round's training.
    own = summary["standalone"]["node_adapters"]
    assert sorted(own) == ["node 0", "node 1"]
    assert all(o["rounds"] == 3 and Path(o["path"]).is_file() for o in own.values())
    assert [len(files) for files in grid.files] == [2, 2, 2]
    for name in grid.files[0]:
        assert len({files[name] for files in grid.files}) == 3, name
    for o in own.values():
        with safe_open(o["path"], "pt") as f:
            assert f.metadata()["rounds"] == "3"

    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r["round"] for r in rounds if r["eval_clip_mse"] is not None]
    assert evaluated == [2, 3]
    assert [r["round"] for r in rounds if r["val_t5_top1"] is not None] == [2, 3]
    assert summary["val_clip_mse"] == rounds[-1]["val_clip_mse"] is not None
    nodes = [json.loads(x) for x in (run_dir / "nodes.jsonl").read_text().splitlines()]
    for r in (2, 3):
        per_node = [n for n in nodes if n["round"] == r]
        assert len(per_node) == 2 and all("val_clip_cosine" in n for n in per_node)
        assert per_node[0]["eval_clip_mse"] != per_node[1]["eval_clip_mse"]
    assert not any("eval_clip_mse" in n for n in nodes if n["round"] == 1)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (run_dir / "tb").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    for tag in ("eval/clip_mse", "val/t5_top1"):
        assert [e.step for e in accumulator.Scalars(tag)] == [2, 3], tag
    assert [e.step for e in accumulator.Scalars("train/clip_loss")] == [1, 2, 3]
    report = (run_dir / "report.md").read_text()
    assert "Standalone run" in report and "| val_clip_mse |" in report


@pytest.mark.slow
def test_a_standalone_federation_on_the_simulation_engine(tmp_path: Path) -> None:
    """Two standalone rounds on Flower's simulation engine (Ray, `fed-a2v simulate`): no
    adapter byte leaves the server, every node evaluates its own adapters, which it keeps on
    its disk, trained away from the shared init."""
    experiment = small_experiment(tmp_path, "standalone",
                                  feda2v={"adapter_aggregation_mode": "none"},
                                  global_rounds=2, num_clients=2, min_clients=2)
    done = subprocess.run([sys.executable, "-m", "fed_a2v.cli", "simulate", "--config",
                           str(experiment)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["adapter_bytes_sent_per_round"] == [0, 0]
    assert summary["adapter_bytes_per_round"] == 0

    nodes = [json.loads(x) for x in (run_dir / "nodes.jsonl").read_text().splitlines()]
    for r in (1, 2):
        evaluated = [n for n in nodes if n["round"] == r and "eval_clip_mse" in n]
        assert len(evaluated) == 2, nodes
        assert evaluated[0]["eval_clip_mse"] != evaluated[1]["eval_clip_mse"]

    config = config_from_dict(json.loads((run_dir / "config.json").read_text()))
    d_audio = describe_audio_encoder(config.feda2v.audio_model_name)[0].hidden_size
    init = adapters_state(build_adapters(d_audio, BUILTIN_CLIP_WIDTH, BUILTIN_T5_WIDTH,
                                         config.feda2v, seed=config.experiment.seed,
                                         target_rows=config.dataset.num_classes))
    own = summary["standalone"]["node_adapters"]
    assert len(own) == 2
    states = []
    for node in own.values():
        with safe_open(node["path"], "pt") as f:
            assert f.metadata()["rounds"] == "2" and node["rounds"] == 2
        states.append(load_file(node["path"]))
        assert states[-1].keys() == init.keys()
        assert not all(torch.equal(states[-1][k], init[k]) for k in init)
    assert not all(torch.equal(states[0][k], states[1][k]) for k in init)
