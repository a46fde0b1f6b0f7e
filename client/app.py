"""FedA2V ClientApp: wires `fed_a2v.node` into Flower."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fed_a2v.node import evaluate_reply, train_reply
from fed_a2v.process import setup_process

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    setup_process()
    return train_reply(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    setup_process()
    return evaluate_reply(msg, context)
