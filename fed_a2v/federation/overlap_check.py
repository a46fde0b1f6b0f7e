"""The clip-overlap check over Flower messages: the node's salted digests as a record, and the
server's side that asks every node once and compares each new set with the others'
(`fed_a2v.data.overlap` holds the set logic)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable

from flwr.app import ConfigRecord, Message

from fed_a2v.data.overlap import ClipSets, overlap, report, salted
from fed_a2v.federation.protocol import DIGESTS, DIGESTS_REQUEST


def digests_record(salt: str, key: str, name: str, train: Iterable[str],
                   test: Iterable[str]) -> ConfigRecord:
    """A node's answer: its identity and the salted digests of its clips' content digests."""
    return ConfigRecord({"key": key, "name": name, "train": json.dumps(salted(salt, train)),
                         "test": json.dumps(salted(salt, test))})


class OverlapCheck:
    """The server's side: asks each node for its digests until it has them, and compares every
    newly arrived set with the others'."""

    def __init__(self, allow: bool, salt: str | None = None) -> None:
        self.allow = allow
        self.salt = salt or secrets.token_hex(16)
        self.nodes: dict[int, tuple[str, str, ClipSets]] = {}  # Flower id -> key, name, sets

    def request(self, node_id: int) -> dict[str, ConfigRecord]:
        """The record to add to an instruction for `node_id`, if its digests are still due."""
        return {} if node_id in self.nodes else {DIGESTS_REQUEST: ConfigRecord({"salt": self.salt})}

    def note(self, replies: list[Message]) -> None:
        """Take the digests in `replies`; raise OverlapError if a node shares clips with another
        (unless allowed)."""
        answered = {m.metadata.src_node_id for m in replies if not m.has_error()}
        for msg in replies:
            if msg.has_error() or DIGESTS not in msg.content:
                continue
            node, record = msg.metadata.src_node_id, msg.content[DIGESTS]
            key = str(record["key"])
            sets = ClipSets(frozenset(json.loads(str(record["train"]))),
                            frozenset(json.loads(str(record["test"]))))
            for other, (other_key, _, _) in list(self.nodes.items()):
                # The same node back under a new Flower id (a restart): it replaces its old
                # self. Two nodes answering together under one key are two nodes.
                if other_key == key and other not in answered:
                    del self.nodes[other]
            self.nodes[node] = (key, f"{record['name']} (node {node})", sets)
            name = self.nodes[node][1]
            found = [overlap(name, sets, other_name, other_sets)
                     for other, (_, other_name, other_sets) in self.nodes.items() if other != node]
            report([f for f in found if f], self.allow, "the federation")
