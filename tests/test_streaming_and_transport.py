"""Train updates are averaged as they arrive (one held at a time, a float64 running sum), and
travel back in `federation.transport_dtype` (fp32, fp16, bf16 or int8 deltas)."""

from __future__ import annotations

import itertools
import json
import uuid

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg

from fed_a2v.config.schema import TRANSPORT_DTYPES
from fed_a2v.encode.text_targets import Targets
from fed_a2v.federation.aggregation import RunningAverage
from fed_a2v.federation.feda2v_strategy import FedA2VStrategy
from fed_a2v.federation.protocol import TRANSPORT
from fed_a2v.federation.rounds import RoundGrid, RoundTimeout
from fed_a2v.federation.transport import (
    PACKED,
    WIRE_DTYPES,
    WireUpdate,
    decode_tensor,
    encode_update,
    flat_view,
    pack,
    unpack,
)

from drills import LoopbackGrid, NodesGrid, experiment_dict, run_in_process, train_reply

SHAPES = {"clip.w": (4, 3), "clip.b": (3,), "t5.w": (2, 5, 7)}


def states(n: int, seed: int = 0, spread: float = 0.1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    base = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    return [{k: (v + spread * rng.standard_normal(v.shape)).astype(np.float32)
             for k, v in base.items()} for _ in range(n)]


def make_strategy(reference: dict[str, np.ndarray], **kwargs) -> FedA2VStrategy:
    targets = Targets(["a"], ["a"], {"clip": torch.zeros(1, 2), "t5": torch.zeros(1, 1, 2)})
    strategy = FedA2VStrategy(targets, lambda _: {"clip": 1e-3, "t5": 1e-3},
                              min_train_nodes=1, **kwargs)
    strategy.global_state = reference
    strategy.train_round = 1
    return strategy


class ReplyGrid(NodesGrid):
    """Hands out prepared replies, one per answered instruction, and records at each pull how
    many replies it handed out earlier still hold their arrays (the server's live updates)."""

    def __init__(self, replies: dict[int, Message]) -> None:
        super().__init__(list(replies))
        self.replies = replies  # node id -> its reply
        self.out: list[Message] = []
        self.live_at_pull: list[int] = []
        self.pending: dict[str, Message] = {}

    def push_messages(self, messages) -> list[str]:
        ids = []
        for message in messages:
            mid = uuid.uuid4().hex
            reply = self.replies[message.metadata.dst_node_id]
            reply.metadata.__dict__["_reply_to_message_id"] = mid
            self.pending[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids) -> list[Message]:
        self.live_at_pull.append(sum(any(len(a) for a in m.content.array_records.values())
                                     for m in self.out))
        pulled = [self.pending.pop(i) for i in message_ids if i in self.pending]
        self.out.extend(pulled)
        return pulled


def stream_round(strategy: FedA2VStrategy, replies: dict[int, Message]
                 ) -> tuple[ArrayRecord | None, ReplyGrid]:
    """One train stage through the RoundGrid, as `strategy.start` runs it."""
    grid = ReplyGrid(replies)
    round_grid = RoundGrid(grid, RoundTimeout(60.0), on_train_reply=strategy.take_update)
    instructions = [Message(RecordDict({"config": ConfigRecord({"server-round": 1})}),
                            dst_node_id=node, message_type=MessageType.TRAIN)
                    for node in replies]
    received = round_grid.send_and_receive(instructions)
    arrays, _ = strategy.aggregate_train(1, received)
    return arrays, grid


def numpy_fedavg(updates: list[dict[str, np.ndarray]], weights: list[float]) -> dict:
    total = sum(weights)
    return {k: sum(u[k].astype(np.float64) * w for u, w in zip(updates, weights, strict=True))
            / total for k in updates[0]}


def test_streaming_equals_batch_fedavg_and_holds_one_update_at_a_time(task_identity) -> None:
    updates, weights = states(7, seed=1), [5, 9, 1, 12, 3, 3, 8]
    reference = states(1, seed=2)[0]
    replies = {10 + i: train_reply(10 + i, u, w)
               for i, (u, w) in enumerate(zip(updates, weights, strict=True))}
    arrays, grid = stream_round(make_strategy(reference), replies)
    streamed = {k: v.numpy() for k, v in arrays.items()}
    # Flower's own FedAvg, which collects every reply and then averages
    flower, _ = FedAvg().aggregate_train(1, [train_reply(10 + i, u, w) for i, (u, w) in
                                             enumerate(zip(updates, weights, strict=True))])
    exact = numpy_fedavg(updates, weights)
    for key in SHAPES:
        assert streamed[key].dtype == np.float32
        np.testing.assert_array_max_ulp(streamed[key], exact[key].astype(np.float32), maxulp=1)
        np.testing.assert_allclose(streamed[key], flower[key].numpy(), rtol=1e-6, atol=1e-7)
    assert len(grid.live_at_pull) >= len(replies)  # one pull per reply
    assert max(grid.live_at_pull) == 0  # each update was taken before the next one came in
    assert all(not len(a) for m in grid.out for a in m.content.array_records.values())


def test_stream_order_changes_the_average_by_at_most_one_ulp(task_identity) -> None:
    updates, weights = states(4, seed=3), [3, 1, 4, 1]
    results = []
    for order in itertools.permutations(range(4)):
        strategy = make_strategy(updates[0])
        for i in order:
            strategy.take_update(train_reply(20 + i, updates[i], weights[i]))
        results.append(strategy.average.result())
    for result in results[1:]:
        for key in SHAPES:
            np.testing.assert_array_max_ulp(result[key], results[0][key], maxulp=1)


def test_a_bad_update_mid_stream_leaves_the_sum_untouched(task_identity) -> None:
    good = states(3, seed=4)
    nan = {k: v.copy() for k, v in good[0].items()}
    nan["t5.w"][-1, -1, -1] = np.nan  # the last tensor: the others would already be summed
    misshapen = {**good[1], "t5.w": np.zeros((2, 5, 6), np.float32)}
    strategy = make_strategy(good[0], max_update_norm=50.0)
    far = {k: v + 100.0 for k, v in good[2].items()}
    order = [(31, good[0], 4), (32, nan, 4), (33, good[1], 2), (34, misshapen, 9),
             (35, far, 1), (36, good[2], 7)]
    replies = {node: train_reply(node, state, w) for node, state, w in order}
    arrays, _ = stream_round(strategy, replies)
    clean = make_strategy(good[0], max_update_norm=50.0)
    expected, _ = stream_round(clean, {n: train_reply(n, s, w) for n, s, w in
                                       (order[0], order[2], order[5])})
    for key in SHAPES:  # bit for bit: the refused updates never touched the sum
        assert arrays[key].numpy().tobytes() == expected[key].numpy().tobytes()
    assert [(node, why.split(" ")[0]) for _, node, why, _ in strategy.rejected] == [
        (32, "'t5.w'"), (34, "'t5.w'"), (35, "the")]
    assert "non-finite" in strategy.rejected[0][2] and "shape" in strategy.rejected[1][2]
    assert "max_update_norm" in strategy.rejected[2][2]


def test_running_average_refuses_before_it_adds() -> None:
    a, b = states(2, seed=5)
    average = RunningAverage(a)
    average.add(a, 2.0)
    before = {k: v.copy() for k, v in average.sums.items()}
    with pytest.raises(ValueError, match="shape"):
        average.add({**b, "t5.w": np.zeros((1, 1), np.float32)}, 1.0)
    with pytest.raises(ValueError, match="weight"):
        average.add(b, -1.0)
    with pytest.raises(ValueError, match="keys"):
        average.add({"clip.w": b["clip.w"]}, 1.0)
    assert all(np.array_equal(before[k], average.sums[k]) for k in before)
    assert average.count == 1 and average.total == 2.0


# (dtype, bytes relative to fp32, bound on |decoded - sent| as a function of (sent, scale))
BOUNDS = {
    "fp32": (1.0, lambda x, s: np.zeros_like(x)),
    "fp16": (0.5, lambda x, s: np.abs(x) * 2.0 ** -11 + 2.0 ** -24),
    "bf16": (0.5, lambda x, s: np.abs(x) * 2.0 ** -8),
    "int8": (0.25, lambda x, s: np.full_like(x, s / 2 * (1 + 1e-6))),
}


@pytest.mark.parametrize("dtype", TRANSPORT_DTYPES)
def test_each_transport_dtype_round_trips_within_its_documented_error(dtype: str) -> None:
    rng = np.random.default_rng(6)
    reference = {k: rng.standard_normal(s).astype(np.float32) * 3 for k, s in SHAPES.items()}
    reference["big"] = rng.standard_normal((64, 64)).astype(np.float32)
    sent = {k: (v + rng.standard_normal(v.shape).astype(np.float32) * 0.01 * (i + 1))
            for i, (k, v) in enumerate(reference.items())}
    arrays, meta = encode_update(sent, reference, dtype)
    assert meta["dtype"] == dtype
    # packed: one flat Array in the wire dtype, its index beside it
    assert list(arrays) == [PACKED] and json.loads(meta["names"]) == list(sent)
    assert arrays[PACKED].numpy().dtype == WIRE_DTYPES[dtype]
    ratio, bound = BOUNDS[dtype]
    assert arrays[PACKED].numpy().nbytes == sum(v.nbytes for v in sent.values()) * ratio
    update = WireUpdate(arrays, meta, reference, dtype)
    assert update.problem is None and list(update) == list(sent)
    for key, value in sent.items():
        assert update.shape_of(key) == value.shape
        decoded = update[key]
        assert decoded.dtype == np.float32 and decoded.shape == value.shape
        scale = meta.get(f"scale.{key}", 0.0)
        assert np.all(np.abs(decoded.astype(np.float64) - value) <= bound(value, scale)), key
    if dtype == "int8":  # the error follows how far the node moved, not the weights' size
        assert meta["scale.big"] < 0.01 * np.abs(reference["big"]).max()


def test_bf16_rounds_to_nearest_even() -> None:
    value = np.array([1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, -2.5], np.float32)
    bits = encode_update({"w": value}, {}, "bf16")[0][PACKED].numpy()
    decoded = decode_tensor(bits, value, "bf16", None)
    assert decoded.tolist() == [1.0, 1.0 + 2.0 ** -6, -2.5]  # ties go to the even mantissa


def test_the_server_reads_a_packed_update_in_place() -> None:
    flat = np.arange(12, dtype=np.float32)
    view = flat_view(Array(flat))
    assert np.array_equal(view, flat) and not view.flags.owndata and not view.flags.writeable
    packed, index = pack({"a": flat[:4].reshape(2, 2), "b": flat[4:]})
    update = WireUpdate(packed, {"dtype": "fp32", **index},
                        {"a": np.zeros((2, 2), np.float32), "b": np.zeros(8, np.float32)},
                        "fp32")
    assert update.problem is None and np.array_equal(update["a"], [[0, 1], [2, 3]])
    assert update["b"].flags.writeable  # a copy of that tensor alone, not of the buffer
    assert unpack(packed, index)["b"].tolist() == list(range(4, 12))
    with pytest.raises(ValueError, match="one dtype"):
        pack({"a": flat, "b": flat.astype(np.float16)})


@pytest.mark.parametrize("change,why", [
    (lambda arrays, meta: (arrays, {**meta, "shapes": json.dumps([[4, 3], [3]])}),
     "do not pair up"),
    (lambda arrays, meta: (arrays, {**meta, "shapes": json.dumps([[4, 3], [3], [2, 5, 8]])}),
     "its index holds 95 values, its buffer 85"),
    (lambda arrays, meta: (arrays, {**meta, "names": "not json"}), "cannot be read"),
    (lambda arrays, meta: (ArrayRecord({**arrays, "extra": Array(np.zeros(1, np.float32))}),
                           meta), "expected its one array and its index"),
])
def test_a_malformed_packed_update_is_refused_with_the_node_named(task_identity, change,
                                                                  why: str, caplog) -> None:
    a, b = states(2, seed=9)
    strategy = make_strategy(a)
    arrays, meta = change(*encode_update(b, a, "fp32"))
    reply = Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 3}),
                                TRANSPORT: ConfigRecord(dict(meta))}),
                    reply_to=wrong_instruction(44))
    strategy.take_update(reply)
    ((_, node, reason, name),) = strategy.rejected
    assert node == 44 and "malformed packed update" in reason and why in reason
    assert f"dropped the update of {name}: malformed packed update" in caplog.text
    assert strategy.average is None  # nothing was added


def test_an_update_in_another_dtype_or_without_scales_is_refused(task_identity) -> None:
    a, b = states(2, seed=7)
    strategy = make_strategy(a, transport_dtype="int8")
    wrong = train_reply(41, b, 3)  # fp32 arrays, no transport record
    strategy.take_update(wrong)
    arrays, meta = encode_update(b, a, "int8")
    unscaled = Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 3}),
                                   TRANSPORT: ConfigRecord({k: v for k, v in meta.items()
                                                            if not k.startswith("scale.")})}),
                       reply_to=wrong_instruction(42))
    strategy.take_update(unscaled)
    mislabelled = Message(RecordDict({
        "arrays": ArrayRecord({k: Array(v.astype(np.float16)) for k, v in b.items()}),
        "metrics": MetricRecord({"num-examples": 3}), TRANSPORT: ConfigRecord(dict(meta))}),
        reply_to=wrong_instruction(43))
    strategy.take_update(mislabelled)
    why = {node: reason for _, node, reason, _ in strategy.rejected}
    assert "travels as 'fp32'" in why[41] and "'int8'" in why[41]
    assert "int8 scale" in why[42]
    assert "float16" in why[43]
    assert strategy.average is None  # nothing was added


def wrong_instruction(node: int) -> Message:
    return Message(RecordDict({"config": ConfigRecord({"server-round": 1})}),
                   dst_node_id=node, message_type=MessageType.TRAIN)


def test_nodes_send_int8_updates_a_quarter_of_fp32(tmp_path) -> None:
    """Real node code in process: the summary records the bytes each round's updates took."""
    summaries = {}
    for dtype in ("fp32", "int8"):
        experiment = experiment_dict(tmp_path, f"transport-{dtype}",
                                     federation={"global_rounds": 2, "transport_dtype": dtype})
        run_dir = run_in_process(experiment, tmp_path / f"{dtype}.json", LoopbackGrid(3))
        summaries[dtype] = json.loads((run_dir / "summary.json").read_text())
    fp32, int8 = (summaries[d]["update_bytes_received_per_round"] for d in ("fp32", "int8"))
    assert summaries["int8"]["transport_dtype"] == "int8" and len(int8) == 2
    assert all(0 < q <= 0.26 * f for q, f in zip(int8, fp32, strict=True))
    # the server still averages fp32 adapters, whatever came in
    assert summaries["int8"]["adapter_bytes_sent_per_round"] == \
        summaries["fp32"]["adapter_bytes_sent_per_round"]
