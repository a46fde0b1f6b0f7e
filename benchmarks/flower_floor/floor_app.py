"""A ServerApp and a ClientApp that do no work: each round sends `stages` messages (train, then
evaluate) to every node and waits for the replies, which the nodes send at once, importing
nothing beyond Flower. Replies are polled as FedA2V's server polls them
(`fed_a2v.federation.rounds`), not every 3 s as Flower's own `send_and_receive`. The rounds'
wall times are what the engine costs."""

import json
import time
from pathlib import Path

from flwr.app import Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fed_a2v.federation.rounds import RoundGrid, RoundTimeout, connected_nodes

server = ServerApp()
client = ClientApp()


def _reply(msg: Message) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)


@client.train()
def train(msg: Message, context: Context) -> Message:
    return _reply(msg)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _reply(msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    grid = RoundGrid(grid, RoundTimeout())
    wanted = int(cfg["nodes"])
    nodes = connected_nodes(grid, wanted, seconds=600)
    if len(nodes) < wanted:
        raise RuntimeError(f"{len(nodes)} of {wanted} nodes connected in 600 s")
    kinds = [MessageType.TRAIN, MessageType.EVALUATE][: int(cfg["stages"])]
    ends = [time.time()]
    for _ in range(int(cfg["rounds"])):
        for kind in kinds:
            messages = [grid.create_message(RecordDict(), kind, node, "") for node in nodes]
            grid.send_and_receive(messages)
        ends.append(time.time())
    Path(str(cfg["out"])).write_text(json.dumps(ends))
