"""The fault drill's bad-update rows: the real strategy meets real Flower Messages, and what
must come out is written down before (here, by hand)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from drills import updates_aggregated

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "fault_drill.py"
REFERENCE = {"clip.w": np.zeros((2, 3), np.float32), "t5.w": np.zeros(4, np.float32)}
ONES = {k: np.ones_like(v) for k, v in REFERENCE.items()}
THREES = {k: np.full_like(v, 3.0) for k, v in REFERENCE.items()}


@pytest.fixture(scope="module")
def drill():
    spec = importlib.util.spec_from_file_location("fault_drill", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_update_row_observes_what_it_expects(drill) -> None:
    rows = drill.update_rows()
    assert [fault for fault, _, _ in rows] == [
        "update: NaN in an update", "update: wrong shape", "update: wrong dtype",
        "update: missing key", "update: norm above the bound",
        "update: every update of a round bad"]
    for fault, expected, observed in rows:
        assert observed == expected, fault


@pytest.mark.parametrize("bad,why", [
    ({"clip.w": ONES["clip.w"]}, "keys differ"),  # Flower's own check would fail the round
    ({**ONES, "t5.extra": np.ones(2, np.float32)}, "keys differ"),
    ({**ONES, "t5.w": np.full(4, np.inf, np.float32)}, "non-finite"),
])
def test_one_bad_reply_is_dropped_and_the_others_averaged(bad: dict, why: str) -> None:
    seen = updates_aggregated(REFERENCE, [(11, ONES, 1), (12, bad, 50), (13, THREES, 3)],
                              max_update_norm=None)
    assert [node for node, _ in seen["dropped"]] == [12] and why in seen["dropped"][0][1]
    assert seen["global"].keys() == REFERENCE.keys()
    for value in seen["global"].values():
        np.testing.assert_array_equal(value, 2.5)  # (1 * 1 + 3 * 3) / 4, by hand


def test_a_round_of_only_bad_replies_keeps_the_global_adapters_and_is_run_again() -> None:
    seen = updates_aggregated(REFERENCE, [(12, {"clip.w": ONES["clip.w"]}, 5)], None)
    assert seen["global"] is None and [n for n, _ in seen["dropped"]] == [12]
    # not counted: the round is run again, and the reason names the node and why
    assert "0 usable updates, fewer than the 2" in seen["short"]
    assert "node 12 (" in seen["short"] and "keys differ" in seen["short"]


def test_a_reply_without_its_records_is_named(task_identity) -> None:
    from fed_a2v.encode.text_targets import Targets
    from fed_a2v.federation.feda2v_strategy import FedA2VStrategy

    strategy = FedA2VStrategy(Targets(["a"], ["a"], {}), lambda _: {})
    strategy.global_state = REFERENCE
    instruction = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}),
                          dst_node_id=12, message_type=MessageType.TRAIN)
    strategy.take_update(Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}),
                                 reply_to=instruction))
    assert [why for _, _, why, _ in strategy.rejected] == [
        "expected one ArrayRecord and one MetricRecord with 'num-examples'"]
    assert strategy.average is None
