"""A ServerApp and a ClientApp that do no work: each round sends `stages` messages (train, then
evaluate) to every node and waits for the replies, which the nodes send at once, importing
nothing beyond Flower. Replies are polled as FedA2V's server polls them
(`fed_a2v.federation.rounds`), not every 3 s as Flower's own `send_and_receive`. The rounds'
wall times are what the engine costs.

Optional run config (benchmarks/message_objects.py): with `arrays` > 0 every instruction carries
an ArrayRecord of `arrays` float32 arrays, about `array-bytes` in all (fresh values each round,
the same for every node, as a server's global adapters), and each train reply carries as many
arrays of the same sizes back (the node's own values, as an update); with `timings` a path, the
server writes there, per round and stage, how long `send_and_receive`, its push and each of its
pulls took. Left at their defaults (0, 0, ""), the messages and `out` are what they always were."""

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fed_a2v.federation.rounds import RoundGrid, RoundTimeout, connected_nodes

server = ServerApp()
client = ClientApp()


def _reply(msg: Message, context: Context, arrays: bool = False) -> Message:
    content = RecordDict({"metrics": MetricRecord({"num-examples": 1})})
    if arrays and "arrays" in msg.content:
        # The node's own values, distinct from every other node's, so that no object of one
        # reply is already in the SuperLink's store when the next node pushes its own.
        shift = np.float32(1 + context.node_id % 9973)
        content["arrays"] = ArrayRecord({name: Array(a.numpy() + shift)
                                         for name, a in msg.content["arrays"].items()})
    return Message(content, reply_to=msg)


@client.train()
def train(msg: Message, context: Context) -> Message:
    return _reply(msg, context, arrays=True)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _reply(msg, context)


def _instruction(arrays: int, total_bytes: int, server_round: int) -> RecordDict:
    """`arrays` float32 arrays of about `total_bytes` in all, drawn afresh for the round (no
    two arrays alike: equal objects travel once)."""
    size = max(1, total_bytes // 4 // arrays)
    rng = np.random.default_rng(server_round)
    return RecordDict({"arrays": ArrayRecord({
        f"array-{i:03d}": Array(rng.standard_normal(size, dtype=np.float32))
        for i in range(arrays)})})


class TimedGrid:
    """The grid RoundGrid drives, timing its pushes and its pulls that brought replies (Unix
    seconds, to line them up with the nodes' logs)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.pushed_at, self.push, self.empty_pulls = 0.0, 0.0, 0
        self.pulls: list[dict] = []

    def __getattr__(self, name: str):
        return getattr(self.grid, name)

    def push_messages(self, messages):
        self.pushed_at = time.time()
        ids = self.grid.push_messages(messages)
        self.push = time.time() - self.pushed_at
        return ids

    def pull_messages(self, message_ids):
        start = time.time()
        replies = list(self.grid.pull_messages(message_ids))
        if replies:
            self.pulls.append({"start": start, "seconds": time.time() - start,
                               "nodes": [r.metadata.src_node_id for r in replies]})
        else:
            self.empty_pulls += 1
        return replies

    def take(self) -> dict:
        """What was timed since the last take, and a fresh start."""
        out = {"pushed_at": self.pushed_at, "push": self.push, "pulls": self.pulls,
               "empty_pulls": self.empty_pulls}
        self.pushed_at, self.push, self.pulls, self.empty_pulls = 0.0, 0.0, [], 0
        return out


@server.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    timings_path = str(cfg.get("timings", ""))
    timed = TimedGrid(grid) if timings_path else None
    grid = RoundGrid(grid if timed is None else timed, RoundTimeout())
    wanted = int(cfg["nodes"])
    nodes = connected_nodes(grid, wanted, seconds=600)
    if len(nodes) < wanted:
        raise RuntimeError(f"{len(nodes)} of {wanted} nodes connected in 600 s")
    kinds = [MessageType.TRAIN, MessageType.EVALUATE][: int(cfg["stages"])]
    arrays, total_bytes = int(cfg.get("arrays", 0)), int(cfg.get("array-bytes", 0))
    ends = [time.time()]
    stages: list[list[dict]] = []
    for server_round in range(1, int(cfg["rounds"]) + 1):
        stages.append([])
        for kind in kinds:
            content = _instruction(arrays, total_bytes, server_round) if arrays > 0 else None
            messages = [grid.create_message(RecordDict() if content is None else content,
                                            kind, node, "")
                        for node in nodes]
            started = time.monotonic()
            grid.send_and_receive(messages)
            if timed is not None:
                stages[-1].append({"kind": kind, "seconds": time.monotonic() - started,
                                   **timed.take()})
        ends.append(time.time())
    Path(str(cfg["out"])).write_text(json.dumps(ends))
    if timings_path:
        Path(timings_path).write_text(json.dumps(stages))
