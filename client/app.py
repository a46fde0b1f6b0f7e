"""FedA2V ClientApp: wires `fed_a2v.federation.node` into Flower."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fed_a2v.federation.clipping import clipping_mod
from fed_a2v.federation.node import evaluate_reply, train_reply
from fed_a2v.launch.host import setup_process

app = ClientApp()


# The experiment's privacy.mechanism picks Flower's clipping mod per message: the node learns
# the config from the server's instruction, after this app is built.
@app.train(mods=[clipping_mod])
def train(msg: Message, context: Context) -> Message:
    setup_process()
    return train_reply(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    setup_process()
    return evaluate_reply(msg, context)
