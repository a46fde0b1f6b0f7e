"""A round's aggregate does not depend on the order in which the nodes' replies reach
`aggregate_train`: with 3 or more nodes the float sums would differ in their last bits, and
metrics.jsonl with them. (Updates streamed in by the RoundGrid are summed in arrival order in
float64; their fp32 mean then differs by at most 1 ulp: tests/test_streaming_and_transport.py.)"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from fed_a2v.encode.text_targets import Targets
from fed_a2v.federation.feda2v_strategy import FedA2VStrategy

from drills import server_identity, train_reply

REFERENCE = {"clip.w": np.zeros(3, np.float32), "t5.w": np.zeros(2, np.float32)}
# (node, value of every weight and of its loss, examples): summed in arrival order, the
# weighted mean loss comes out 0.2866666666666666 or ...667 depending on the order.
NODES = [(11, 0.1, 7), (12, 0.7, 3), (13, 0.3, 5)]


def aggregate(order: list[tuple[int, float, int]], stage: str) -> dict[str, object]:
    strategy = FedA2VStrategy(Targets(["a"], ["a"], {"clip": torch.zeros(1, 2),
                                                     "t5": torch.zeros(1, 1, 2)}),
                              lambda _: {"clip": 0.0, "t5": 0.0})
    strategy.global_state = REFERENCE
    with server_identity():
        replies = []
        for node, value, examples in order:
            reply = train_reply(node, {k: np.full_like(v, value) for k, v in REFERENCE.items()},
                                examples)
            reply.content["metrics"]["train_clip_loss" if stage == "train"
                                     else "eval_clip_mse"] = value
            replies.append(reply)
        if stage == "train":
            arrays, metrics = strategy.aggregate_train(1, replies)
            return {**dict(metrics), **{k: v.numpy().tobytes() for k, v in arrays.items()}}
        return dict(strategy.aggregate_evaluate(1, replies))


def test_train_and_evaluate_aggregates_ignore_arrival_order() -> None:
    for stage in ("train", "evaluate"):
        results = [aggregate(list(order), stage) for order in itertools.permutations(NODES)]
        assert all(r == results[0] for r in results), stage
