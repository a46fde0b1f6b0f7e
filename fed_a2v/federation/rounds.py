"""How long a round waits, and for which nodes.

Flower's `Grid.send_and_receive` waits for every reply up to one fixed timeout, and FedAvg's
sampling waits without end until `min_available_nodes` are connected. A node that went away
needs neither: the SuperLink marks a SuperNode offline once it missed its heartbeats (Flower
1.42: a beat every ~20 s, offline 2 x 30 s after the last one) and from then on answers every
instruction still addressed to it with an error reply (`NODE_UNAVAILABLE`). `RoundGrid` pulls
replies as they arrive and hands such errors on in the dead node's name, so a round goes on
about a heartbeat after a node's death. The round timeout is left for nodes that stay
connected but do not answer; unless set explicitly, it follows the rounds observed so far.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping

from flwr.app import Error, Message, MessageType
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

log = logging.getLogger(__name__)

FIRST_ROUND_TIMEOUT = 3600.0  # a node's first round also encodes its whole corpus
MIN_ROUND_TIMEOUT = 300.0
TIMEOUT_FACTOR = 4.0  # times the slowest round of the same kind so far
POLL_SECONDS = 0.5
# Replies are polled every FIRST_POLL_SECONDS after one came in, backing off (x2) to
# POLL_SECONDS while none does: a round's last reply is seen quickly, an idle wait stays cheap.
FIRST_POLL_SECONDS = 0.05


class RoundTimeout:
    """Seconds one stage of a round (`train`, `evaluate`) waits: `explicit` when given, else
    FIRST_ROUND_TIMEOUT until a stage of that kind was observed, then TIMEOUT_FACTOR times the
    slowest one so far (the time its last good reply took), at least MIN_ROUND_TIMEOUT."""

    def __init__(self, explicit: float | None = None) -> None:
        self.explicit = explicit
        self.slowest: dict[str, float] = {}

    def seconds(self, kind: str) -> float:
        if self.explicit is not None:
            return self.explicit
        if kind not in self.slowest:
            return FIRST_ROUND_TIMEOUT
        return max(MIN_ROUND_TIMEOUT, TIMEOUT_FACTOR * self.slowest[kind])

    def observe(self, kind: str, seconds: float) -> None:
        self.slowest[kind] = max(seconds, self.slowest.get(kind, 0.0))


class QuorumError(RuntimeError):
    """The run stops: a round could not have `min_clients` nodes (connected, or with usable
    replies); the message names the missing nodes and the settings."""


class ShortRound(QuorumError):
    """A round got fewer usable updates than `min_clients`: its adapters are not averaged, and
    the round is run again once (`fed_a2v.federation.round_loop`)."""


def missing_nodes(names: Mapping[int, str], connected: Iterable[int]) -> str:
    """The names of the nodes that answered before (`names`: Flower node id -> name) and are
    not connected now; a node back under a new Flower id is not missing."""
    connected = set(connected)
    here = {names[n] for n in connected if n in names}
    gone = sorted({name for node, name in names.items()
                   if node not in connected and name not in here})
    if gone:
        return ", ".join(gone)
    return "none of the nodes that answered before" if names else "no node has answered yet"


def quorum_nodes(grid: Grid, wanted: int, seconds: float, names: Mapping[int, str],
                 what: str) -> list[int]:
    """The connected nodes, once `wanted` of them are; a QuorumError naming the missing ones
    if they are not within `seconds`. The wait is logged with who is missing."""
    nodes = connected_nodes(grid, wanted, seconds, names)
    if len(nodes) < wanted:
        raise QuorumError(
            f"{what}: {len(nodes)} of the {wanted} nodes it needs (federation.min_clients) "
            f"were connected after {seconds:.0f} s (federation.quorum_timeout); missing: "
            f"{missing_nodes(names, nodes)}")
    return nodes


def connected_nodes(grid: Grid, wanted: int, seconds: float,
                    names: Mapping[int, str] | None = None) -> list[int]:
    """The connected nodes, once `wanted` are connected or after `seconds`, whichever first.
    A wait is logged, with the nodes missing (`missing_nodes`) when their `names` are given."""
    deadline = time.monotonic() + seconds
    nodes = list(grid.get_node_ids())
    if len(nodes) < wanted:
        missing = "" if names is None else f"; missing: {missing_nodes(names, nodes)}"
        log.warning("%d of the %d nodes wanted are connected: waiting for more, at most %.0f s%s",
                    len(nodes), wanted, seconds, missing)
    while len(nodes) < wanted and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        nodes = list(grid.get_node_ids())
    return nodes


def check_simulated_federation(grid: Grid, num_clients: int, min_clients: int) -> None:
    """In Flower's simulation engine the SuperNodes are all there from the start, so a
    federation smaller than the experiment's quorum would wait a whole round timeout for nodes
    that never come: raise at once, naming the setting. Deployments are not checked (their
    nodes may connect later); the rounds wait for them."""
    # the grid of Flower's simulation engine; imported here, as it imports the SuperLink's
    # state (0.7 s), which a process that wants only the rounds' helpers need not pay (the
    # ClientApp of benchmarks/flower_floor shares its module with its ServerApp)
    from flwr.superlink.grid import InMemoryGrid

    if not isinstance(grid, InMemoryGrid):
        return
    # The engine registers its SuperNodes right after starting the ServerApp, in one loop.
    deadline = time.monotonic() + 60.0
    while not list(grid.get_node_ids()) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    time.sleep(POLL_SECONDS)
    count = len(list(grid.get_node_ids()))
    if count < min_clients:
        raise RuntimeError(
            f"this simulated federation has {count} SuperNodes and the experiment needs "
            f"{num_clients} (federation.num_clients {num_clients}, min_clients {min_clients}): "
            f"run `flwr run . --federation-config \"num-supernodes={num_clients}\"`, or "
            f"`fed-a2v simulate`, which sizes the federation from the experiment")
    if count != num_clients:
        log.warning("this simulated federation has %d SuperNodes and the experiment %d "
                    "(federation.num_clients); simulated node i takes the experiment's "
                    "'nodes.i' entry", count, num_clients)


def sample_nodes(nodes: list[int], fraction: float, minimum: int) -> list[int]:
    """`fraction` of the connected `nodes`, at least `minimum` of them."""
    return random.sample(nodes, min(len(nodes), max(int(len(nodes) * fraction), minimum)))


class RoundGrid(Grid):
    """A Grid whose `send_and_receive` ends a stage when every instruction is answered, by its
    node or, for a node that went offline, by the SuperLink (handed on in the node's name), or
    when the stage's timeout is spent (each unanswered node then gets an error reply).

    With `on_train_reply`, train replies are pulled one at a time and each is handed to it as
    soon as it arrives (it returns what to keep of the reply: the strategy adds the update to
    a running sum and keeps only the metrics), so a stage never holds every node's update."""

    def __init__(self, grid: Grid, timeout: RoundTimeout,
                 on_train_reply: Callable[[Message], Message] | None = None,
                 name_of: Callable[[int], str] = lambda node_id: f"node {node_id}") -> None:
        self.grid = grid
        self.timeout = timeout
        self.on_train_reply = on_train_reply
        self.name_of = name_of  # a Flower node id's name in the run's logs

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, *args, **kwargs) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self):
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if not messages:
            return []
        kind = messages[0].metadata.message_type
        limit = timeout if timeout is not None else self.timeout.seconds(kind)
        started = time.monotonic()
        ids = list(self.grid.push_messages(messages))
        pending = {mid: msg for mid, msg in zip(ids, messages, strict=True) if mid}
        replies = [_error_reply(msg, ErrorCode.MESSAGE_UNAVAILABLE, "the SuperLink refused it")
                   for mid, msg in zip(ids, messages, strict=True) if not mid]
        consume = self.on_train_reply if kind == MessageType.TRAIN else None
        answered_at = None
        poll = FIRST_POLL_SECONDS
        while pending:
            waiting = len(pending)
            # One id per pull when streaming: a pull returns every reply it asks for at once.
            for ids_now in ([[mid] for mid in pending] if consume else [list(pending)]):
                for reply in self.grid.pull_messages(ids_now):
                    instruction = pending.pop(reply.metadata.reply_to_message_id, None)
                    if instruction is None:
                        continue
                    node = instruction.metadata.dst_node_id
                    if not reply.has_error():
                        answered_at = time.monotonic()
                        reply = consume(reply) if consume else reply
                    elif reply.metadata.src_node_id != node:  # made by the SuperLink
                        log.warning("%s: no %s reply: %s; going on without it",
                                    self.name_of(node), kind, reply.error.reason)
                        reply = _error_reply(instruction, reply.error.code, reply.error.reason)
                    replies.append(reply)
            if not pending or time.monotonic() - started >= limit:
                break
            poll = FIRST_POLL_SECONDS if len(pending) < waiting else min(2 * poll, POLL_SECONDS)
            time.sleep(poll)
        for instruction in pending.values():
            reason = f"no reply within the round timeout ({limit:.0f} s)"
            log.warning("%s: %s to its %s instruction; going on without it",
                        self.name_of(instruction.metadata.dst_node_id), reason, kind)
            replies.append(_error_reply(instruction, ErrorCode.REPLY_MESSAGE_UNAVAILABLE, reason))
        if answered_at is not None:
            self.timeout.observe(kind, answered_at - started)
        return replies


def _error_reply(instruction: Message, code: int, reason: str) -> Message:
    """An error reply from the instruction's node, as its own would look."""
    return Message(Error(code=code, reason=reason), reply_to=instruction)
