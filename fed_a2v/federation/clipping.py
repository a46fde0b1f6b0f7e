"""The node's side of differential privacy (`fed_a2v.federation.privacy`): Flower's clipping
mod for the experiment's mechanism. Its own module so that a ClientApp process imports none of
the server's rounds (its imports are paid in every message's fresh process)."""

from __future__ import annotations

import copy
import json
from typing import Any

from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

FIXED, ADAPTIVE = "client_fixed_clipping", "client_adaptive_clipping"  # privacy.mechanism
FLOWER_MODS = {FIXED: fixedclipping_mod, ADAPTIVE: adaptiveclipping_mod}


def clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """The node's side: Flower's clipping mod for the experiment's `privacy.mechanism` (read
    from the instruction, as the node reads its whole config), else nothing.

    Flower's mods want an instruction of one ArrayRecord and one ConfigRecord and a reply of
    one ArrayRecord and one MetricRecord; FedA2V's also carry the targets, the overlap check's
    request and the node's reports. The mod sees just the adapters, config and metrics; the
    node's code gets the whole instruction, and the whole reply goes back with the adapters
    and metrics the mod made (clipped, and for adaptive clipping with its norm bit)."""
    mod = FLOWER_MODS.get(_mechanism(msg))
    if mod is None:
        return call_next(msg, context)
    replies: list[Message] = []
    received = msg.content["arrays"]

    def answer(_view: Message, ctx: Context) -> Message:
        reply = call_next(msg, ctx)
        if reply.has_error():
            return reply
        replies.append(reply)
        arrays = reply.content["arrays"]
        if set(arrays) == set(received):  # the mod compares the key lists, order included
            arrays = ArrayRecord({k: arrays[k] for k in received})
        return _only(reply, {"arrays": arrays, "metrics": reply.content["metrics"]})

    out = mod(_only(msg, {"arrays": received, "config": msg.content["config"]}),
              context, answer)
    if out.has_error():
        # Flower's mods build some errors as replies to the node's reply, which the server
        # cannot match to its instruction: answer the instruction itself
        return Message(out.error, reply_to=msg)
    if not replies:
        return out
    reply = replies[0]
    reply.content["arrays"], reply.content["metrics"] = (out.content["arrays"],
                                                         out.content["metrics"])
    return reply


def _only(msg: Message, records: dict[str, Any]) -> Message:
    """`msg` (its metadata) holding only `records`."""
    return Message(content=RecordDict(records), metadata=copy.copy(msg.metadata))


def _mechanism(msg: Message) -> str:
    if not msg.has_content() or "config" not in msg.content.config_records:
        return "none"
    experiment = msg.content["config"].get("experiment")
    if experiment is None:
        return "none"
    return str(json.loads(str(experiment)).get("privacy", {}).get("mechanism", "none"))
