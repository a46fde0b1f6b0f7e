"""Rounds do not wait for nodes gone away: `RoundGrid` and the strategy's sampling on Flower's own
in-memory LinkState (the SuperLink's state), with nodes whose heartbeats we control."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import NOOP_ACCOUNT_NAME, NOOP_FLWR_AID, SUPERLINK_NODE_ID, ErrorCode
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from fed_a2v.encode.text_targets import Targets
from fed_a2v.federation.feda2v_strategy import FedA2VStrategy
from fed_a2v.federation.rounds import (
    FIRST_ROUND_TIMEOUT,
    MIN_ROUND_TIMEOUT,
    TIMEOUT_FACTOR,
    QuorumError,
    RoundGrid,
    RoundTimeout,
    connected_nodes,
    missing_nodes,
)

RUN = 7
ALIVE = 3600.0  # heartbeat interval of a node that stays online through a test
DYING = 0.3  # one that goes offline 2 x DYING s after it was activated


class Link:
    """Flower's in-memory LinkState with one run, and the Grid a ServerApp would get."""

    def __init__(self) -> None:
        factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(),
                                   ObjectStoreFactory())
        self.state = factory.state()
        run = Run.create_empty(run_id=RUN)
        run.primary_task_id, run.federation_id = 1, NOOP_FEDERATION_ID
        self.state.run_ids[RUN] = RunRecord(run=run)
        self.state.task_store[1] = Task(task_id=1, run_id=RUN)
        self.grid = InMemoryGrid(state_factory=factory)
        self.grid.set_run(run)

    def node(self, heartbeat_interval: float) -> int:
        """A SuperNode that registered and activated, as `flower-supernode` does."""
        node_id = self.state.create_node(NOOP_FLWR_AID, NOOP_ACCOUNT_NAME,
                                         secrets.token_bytes(32), heartbeat_interval)
        self.state.activate_node(node_id, heartbeat_interval)
        return node_id

    def answer(self, node_id: int) -> threading.Thread:
        """The node pulls its next instruction and replies, as a SuperNode's ClientApp would."""
        def serve() -> None:
            while not (found := self.state.get_message_ins(node_id=node_id, limit=1)):
                time.sleep(0.02)
            reply = Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}),
                            reply_to=found[0])
            reply.metadata.__dict__["_message_id"] = reply.object_id
            assert self.state.store_message_res(reply)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        return thread


@pytest.fixture
def link(task_identity) -> Iterator[Link]:
    TaskIdentity.run_id, TaskIdentity.node_id = RUN, SUPERLINK_NODE_ID  # a ServerApp's own
    yield Link()


def instructions(nodes: list[int]) -> list[Message]:
    return [Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=n,
                    message_type=MessageType.TRAIN) for n in nodes]


def test_a_dead_node_is_not_waited_for(link: Link) -> None:
    """Node `dead` stops its heartbeats: the SuperLink's NODE_UNAVAILABLE ends the stage, long
    before the explicit hour of timeout, as an error reply in that node's name."""
    alive, dead = link.node(ALIVE), link.node(DYING)
    link.answer(alive)
    timeouts = RoundTimeout(3600.0)
    replies = RoundGrid(link.grid, timeouts).send_and_receive(instructions([alive, dead]))
    by_node = {r.metadata.src_node_id: r for r in replies}
    assert set(by_node) == {alive, dead}
    assert not by_node[alive].has_error()
    assert by_node[dead].error.code == ErrorCode.NODE_UNAVAILABLE
    assert "heartbeat" in by_node[dead].error.reason
    assert "train" in timeouts.slowest  # the stage's time was observed from the good reply


def test_a_connected_node_that_does_not_answer_gets_a_timeout_error(link: Link) -> None:
    silent, alive = link.node(ALIVE), link.node(ALIVE)
    link.answer(alive)
    replies = RoundGrid(link.grid, RoundTimeout(0.5)).send_and_receive(
        instructions([silent, alive]))
    by_node = {r.metadata.src_node_id: r for r in replies}
    assert not by_node[alive].has_error()
    assert by_node[silent].error.code == ErrorCode.REPLY_MESSAGE_UNAVAILABLE
    assert "no reply within the round timeout" in by_node[silent].error.reason


def test_waiting_for_nodes_ends_when_they_connect_or_after_the_timeout(link: Link) -> None:
    first = link.node(ALIVE)
    # Fewer than wanted and none coming: the connected ones, after the (short) timeout.
    assert connected_nodes(link.grid, 2, 0.3) == [first]
    # A node connecting while the wait goes on ends it, however long the timeout.
    later: list[int] = []
    joining = threading.Thread(target=lambda: later.append(link.node(ALIVE)))
    joining.start()
    assert sorted(connected_nodes(link.grid, 2, 3600.0)) == sorted([first, *later])
    joining.join()


def _strategy_after_one_round(nodes: list[int], min_clients: int) -> FedA2VStrategy:
    """A strategy whose nodes answered as "node 0".. (the names it learns from replies)."""
    targets = Targets(["a"], ["a"], {"clip": torch.zeros(1, 2), "t5": torch.zeros(1, 1, 2)})
    strategy = FedA2VStrategy(targets, lambda _: {"clip": 1e-3, "t5": 1e-3},
                              min_train_nodes=min_clients, min_evaluate_nodes=min_clients,
                              min_available_nodes=min_clients, quorum_timeout=0.5)
    strategy.names.by_id = {node: f"node {i}" for i, node in enumerate(nodes)}
    return strategy


@pytest.mark.parametrize("kind", ["train", "evaluate"])
def test_no_stage_goes_out_without_its_quorum(link: Link, kind: str) -> None:
    """Three nodes, min_clients 3, one dies: the next stage is not sent to the two left; after
    `quorum_timeout` the run stops, naming the missing node and the settings."""
    nodes = [link.node(ALIVE), link.node(ALIVE), link.node(DYING)]
    strategy = _strategy_after_one_round(nodes, 3)
    strategy.last_round = 2
    while len(list(link.grid.get_node_ids())) == 3:  # the SuperLink notices the dead node
        time.sleep(0.05)
    configure = strategy.configure_train if kind == "train" else strategy.configure_evaluate
    with pytest.raises(QuorumError) as stopped:
        configure(2, ArrayRecord({"clip.w": torch.zeros(2)}), ConfigRecord(), link.grid)
    message = str(stopped.value)
    assert f"round 2's {kind} stage" in message and "missing: node 2" in message
    assert "federation.min_clients" in message and "federation.quorum_timeout" in message


def test_a_stage_goes_out_to_the_nodes_left_when_they_are_the_quorum(link: Link) -> None:
    nodes = [link.node(ALIVE), link.node(ALIVE), link.node(DYING)]
    strategy = _strategy_after_one_round(nodes, 2)
    while len(list(link.grid.get_node_ids())) == 3:
        time.sleep(0.05)
    sent = strategy.configure_train(2, ArrayRecord({"clip.w": torch.zeros(2)}),
                                    ConfigRecord(), link.grid)
    assert sorted(m.metadata.dst_node_id for m in sent) == sorted(nodes[:2])
    assert all(m.content["config"]["server-round"] == 2 for m in sent)


def test_missing_nodes_are_those_that_answered_and_are_gone() -> None:
    names = {11: "node 0", 12: "node 1", 13: "node 2"}
    assert missing_nodes(names, [11, 12]) == "node 2"
    assert missing_nodes(names, [11, 12, 14]) == "node 2"  # 14 has not answered yet
    names[14] = "node 2"  # node 2 came back under a new Flower id
    assert "node 2" not in missing_nodes(names, [11, 12, 14])
    assert missing_nodes({}, []) == "no node has answered yet"


def test_the_default_timeout_follows_the_rounds_observed() -> None:
    timeouts = RoundTimeout()
    assert timeouts.seconds("train") == FIRST_ROUND_TIMEOUT
    timeouts.observe("train", 200.0)
    timeouts.observe("train", 20.0)
    assert timeouts.seconds("train") == TIMEOUT_FACTOR * 200.0  # the slowest so far
    assert timeouts.seconds("evaluate") == FIRST_ROUND_TIMEOUT  # each stage its own
    timeouts.observe("evaluate", 1.0)
    assert timeouts.seconds("evaluate") == MIN_ROUND_TIMEOUT
    explicit = RoundTimeout(42.0)
    explicit.observe("train", 1000.0)
    assert explicit.seconds("train") == 42.0  # an explicit federation.round_timeout wins
