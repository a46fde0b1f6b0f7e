"""What the strategy sends and notes, on real Flower Messages: the targets travel to a node until
it has answered once, and again after it answered with an error; nodes are counted by their
own key, so a restarted node (new Flower node id) is still one node."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import ErrorCode

from fed_a2v.encode.text_targets import Targets
from fed_a2v.federation.feda2v_strategy import FedA2VStrategy
from fed_a2v.federation.protocol import NODE, TARGET_NAMES, TARGETS

TARGET_TENSORS = {"clip": torch.arange(8.0).reshape(2, 4), "t5": torch.ones(2, 3, 4)}


def make_strategy(**kwargs) -> FedA2VStrategy:
    targets = Targets(["dog", "rain"], ["dog", "rain"], TARGET_TENSORS)
    return FedA2VStrategy(targets, lambda _: {"clip": 1e-3, "t5": 1e-3}, **kwargs)


def sent(strategy: FedA2VStrategy, server_round: int, nodes: list[int],
         kind: str = MessageType.EVALUATE) -> dict[int, Message]:
    """The instructions of one round, as FedAvg builds them, after the strategy finished them."""
    record = RecordDict({"arrays": ArrayRecord({"clip.w": Array(np.zeros(2, np.float32))}),
                         "config": ConfigRecord({"server-round": server_round})})
    messages = [Message(record, dst_node_id=n, message_type=kind) for n in nodes]
    return {m.metadata.dst_node_id: m for m in strategy._finish_messages(server_round, messages)}


def answer(instruction: Message, key: str | None = None) -> Message:
    records = {"metrics": MetricRecord({"num-examples": 2})}
    if key is not None:
        records[NODE] = ConfigRecord({"key": key})
    return Message(RecordDict(records), reply_to=instruction)


def failure(instruction: Message) -> Message:
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason="no targets here"),
                   reply_to=instruction)


def with_targets(messages: dict[int, Message]) -> dict[int, bool]:
    return {node: TARGETS in m.content for node, m in messages.items()}


def test_targets_travel_until_a_node_answers_and_again_after_an_error(task_identity) -> None:
    strategy = make_strategy()
    first = sent(strategy, 1, [5, 6])
    assert with_targets(first) == {5: True, 6: True}
    delivered = first[5].content
    restored = delivered[TARGETS].to_torch_state_dict()
    assert all(torch.equal(restored[k], v) for k, v in TARGET_TENSORS.items())
    assert "dog" in str(delivered[TARGET_NAMES]["names"])
    strategy.aggregate_evaluate(1, [answer(first[5]), answer(first[6])])
    second = sent(strategy, 2, [5, 6, 7])
    assert with_targets(second) == {5: False, 6: False, 7: True}  # 7: first contact
    # Node 6 fails: it may have lost what it was sent (a restarted ClientApp, a wiped cache).
    strategy.aggregate_evaluate(2, [answer(second[5]), failure(second[6]), answer(second[7])])
    third = sent(strategy, 3, [5, 6, 7])
    assert with_targets(third) == {5: False, 6: True, 7: False}
    strategy.aggregate_evaluate(3, [answer(m) for m in third.values()])
    assert with_targets(sent(strategy, 4, [5, 6, 7])) == {5: False, 6: False, 7: False}
    # The round's own config still travels every round; the failure is on record.
    assert all("config" in m.content for m in third.values())
    assert strategy.failed == [(2, MessageType.EVALUATE, 6, "no targets here", "node 6")]


def test_control_bytes_count_the_config_and_never_the_targets(task_identity) -> None:
    strategy = make_strategy()
    first = sent(strategy, 1, [5])
    strategy.aggregate_evaluate(1, [answer(first[5])])
    sent(strategy, 2, [5])
    assert strategy.targets_bytes > 0
    assert strategy.control_bytes[(1, 5)] == strategy.control_bytes[(2, 5)] \
        == first[5].content["config"].count_bytes()


def test_nodes_are_counted_by_their_key_over_restarts(task_identity) -> None:
    """Node key "shard 2/3" answers as Flower node 7, dies, and comes back as node 9."""
    strategy = make_strategy(min_train_nodes=1)
    state = {"clip.w": np.zeros(2, np.float32)}
    strategy.global_state = state
    for server_round, nodes in ((1, {5: "shard 0/3", 7: "shard 2/3"}),
                                (2, {5: "shard 0/3", 9: "shard 2/3"})):
        instructions = sent(strategy, server_round, list(nodes), MessageType.TRAIN)
        replies = [Message(RecordDict({
            "arrays": ArrayRecord({k: Array(v) for k, v in state.items()}),
            "metrics": MetricRecord({"num-examples": 2}),
            NODE: ConfigRecord({"key": key})}), reply_to=instructions[n])
            for n, key in nodes.items()]
        arrays, _ = strategy.aggregate_train(server_round, replies)
        assert arrays is not None
    assert strategy.nodes_seen == {"shard 0/3", "shard 2/3"}
    # What a resumed run goes on from keeps them.
    resumed = make_strategy()
    resumed.restore(strategy.progress())
    assert resumed.nodes_seen == strategy.nodes_seen
