"""A whole federation in one process: the ServerApp's code (`fed_a2v.federation.server`) on a grid
whose nodes are FedA2V's node code (`fed_a2v.federation.node`), no SuperLink, no Ray. Studies and
benchmarks compare settings with it, and tests drive the server with real Messages."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fed_a2v.federation.node import evaluate_reply, train_reply
from fed_a2v.federation.server import run_federation
from fed_a2v.launch.app_dir import app_files


@contextmanager
def server_identity() -> Iterator[None]:
    """The run and task ids a ServerApp process has (Flower Messages read them), restored
    after: lets a strategy meet real Messages outside a running federation."""
    saved = TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # 0: SuperLink
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


class LoopbackGrid(Grid):
    """A whole federation in this process: each node is FedA2V's ClientApp code
    (`fed_a2v.federation.node`) with a simulated node's Context (partition `i` of
    `num_nodes`), answering as soon as its instruction is pushed. Every message pushed is kept
    in `sent`. Use it inside `server_identity()`."""

    def __init__(self, num_nodes: int) -> None:
        self.contexts = {i + 1: Context(run_id=1, node_id=i + 1, state=RecordDict(),
                                        node_config={"partition-id": i,
                                                     "num-partitions": num_nodes},
                                        run_config={}) for i in range(num_nodes)}
        self.sent: list[Message] = []
        self.replies: dict[str, Message] = {}

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, *args, **kwargs) -> Message:
        raise NotImplementedError("the strategy builds its own messages")

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def answer(self, message: Message, context: Context) -> Message:
        """The node's reply (FedA2V's node code, without the ClientApp's mods)."""
        answer = (train_reply if message.metadata.message_type == MessageType.TRAIN
                  else evaluate_reply)
        return answer(message, context)

    def push_messages(self, messages) -> list[str]:
        ids = []
        for message in messages:
            message_id = uuid.uuid4().hex
            message.metadata.__dict__["_message_id"] = message_id  # as a SuperLink does
            self.sent.append(message)
            self.replies[message_id] = self.answer(message,
                                                   self.contexts[message.metadata.dst_node_id])
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids) -> list[Message]:
        return [self.replies.pop(i) for i in message_ids if i in self.replies]

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))


def run_in_process(experiment: dict[str, Any], path: Path, grid: LoopbackGrid) -> Path:
    """`experiment`, written to `path`, run by the ServerApp's code on `grid`; returns the run
    directory."""
    path.write_text(json.dumps(experiment))
    runs = Path(experiment["experiment"]["output_dir"])
    pattern = f"{experiment['experiment']['name']}-*"
    earlier = set(runs.glob(pattern))  # runs of the same name before this one
    with server_identity():
        run_federation(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                     run_config={"config": str(path)}), app_files())
    (run_dir,) = set(runs.glob(pattern)) - earlier
    return run_dir
