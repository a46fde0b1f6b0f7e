"""What the server reads of a node's reply: its own metrics, the node's key and name, and the
nodes' metrics averaged the way Flower's strategies average them."""

from __future__ import annotations

import logging

from flwr.app import Message, MetricRecord, RecordDict

from fed_a2v.encode.node_data import COUNT_KEYS
from fed_a2v.federation.protocol import NODE, VAL_EXAMPLES

log = logging.getLogger(__name__)


def aggregate_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Each metric's mean over the nodes that report it, weighted by the clips behind it
    (`val_*`: the node's val clips, `VAL_EXAMPLES`; the rest: `weight_key`), as Flower's
    `aggregate_metricrecords` computes it; clip counts add up over nodes. A node without val
    clips reports no `val_*` keys, so the nodes' keys may differ."""
    metrics = [reply_metrics(r) for r in records]
    out = MetricRecord()
    for key in dict.fromkeys(k for m in metrics for k in m):
        if key in (weight_key, VAL_EXAMPLES):
            continue
        having = [m for m in metrics if key in m]
        if key in COUNT_KEYS:
            out[key] = sum(int(m[key]) for m in having)
            continue
        by = VAL_EXAMPLES if key.startswith("val_") else weight_key
        weights = [float(m.get(by, 0)) for m in having]
        total = sum(weights)
        if total > 0:
            out[key] = sum(float(m[key]) * (w / total) for m, w in zip(having, weights,
                                                                       strict=True))
    return out


def reply_metrics(content: RecordDict) -> MetricRecord | None:
    """A reply's own MetricRecord: "metrics", or its only one; a one-stage train reply also
    holds the evaluation of the adapters it received (`EVALUATION`)."""
    records = content.metric_records
    if "metrics" in records:
        return records["metrics"]
    return next(iter(records.values())) if len(records) == 1 else None


def node_key(reply: Message) -> str:
    """The node's own key (the same after a restart, unlike its Flower node id); its name in
    the run's records is `NodeNames.of`."""
    if reply.has_content() and NODE in reply.content:  # error replies have none
        return str(reply.content[NODE]["key"])
    return f"flower node {reply.metadata.src_node_id}"


class NodeNames:
    """Each node's name in a run's records: the name it sent (`identify` in
    fed_a2v.federation.node), unique in the run and the same after a resume or a restart of the
    node (it goes with the node's key, `node_key`)."""

    def __init__(self) -> None:
        self.by_key: dict[str, str] = {}  # node key -> name
        self.by_id: dict[int, str] = {}  # Flower node id -> name, from its replies

    def of(self, reply: Message) -> str:
        """The name of the node that sent `reply`. A reply without one (an error) takes its
        Flower node's name from an earlier reply, else "node <Flower node id>"."""
        flower_id = reply.metadata.src_node_id
        if not (reply.has_content() and NODE in reply.content):
            return self.of_id(flower_id)
        key = node_key(reply)
        name = self.by_key.get(key) or self._name(
            key, str(reply.content[NODE].get("name", f"node {flower_id}")))
        self.by_id[flower_id] = name
        return name

    def of_id(self, flower_id: int) -> str:
        """A Flower node's name: from its replies so far, else "node <its id>"."""
        return self.by_id.get(flower_id, f"node {flower_id}")

    def restore(self, by_key: dict[str, str]) -> None:
        """The names a stopped part of a resumed run gave."""
        for key, name in by_key.items():
            self._name(key, name)

    def _name(self, key: str, wanted: str) -> str:
        """Give the node with `key` the name `wanted`, or, if another node of the run has it,
        the first free one of "<wanted> (2)", "<wanted> (3)", ... (with a warning)."""
        if key in self.by_key:
            return self.by_key[key]
        taken = set(self.by_key.values())
        name, n = wanted, 1
        while name in taken:
            n += 1
            name = f"{wanted} ({n})"
        if name != wanted:
            holder = next(k for k, v in self.by_key.items() if v == wanted)
            log.warning("two nodes call themselves %r (keys %r and %r): the second is %r in "
                        "this run's records; give each node its own node_split_id or node JSON "
                        "file name", wanted, holder, key, name)
        self.by_key[key] = name
        return name
