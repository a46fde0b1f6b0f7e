"""Clips shared between nodes, found without any audio leaving a node.

Each node sends the server, once, salted digests of its training and held-out clips: SHA-256
of a per-run salt and the clip's content digest (the one its token cache is keyed by). The
server compares the sets of every two nodes: a clip both train on, or one node's held-out clip
in another's training set, fails the run unless `federation.allow_overlap`.

What the digests reveal: whether a file the server itself holds is among a node's clips (it can
salt and hash that file too), and how many clips a node has; nothing about any other clip.
Copies are found only byte for byte: the same sound re-encoded is another file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message

from .config import ConfigError
from .protocol import DIGESTS, DIGESTS_REQUEST

log = logging.getLogger(__name__)



class OverlapError(ConfigError):
    """Nodes share clips and the config does not allow it; the message names them."""


@dataclass(frozen=True)
class ClipSets:
    """Digests of one node's training and held-out clips."""

    train: frozenset[str]
    test: frozenset[str]


def salted(salt: str, content_digests: Iterable[str]) -> list[str]:
    return sorted({hashlib.sha256(f"{salt}:{d}".encode()).hexdigest()[:32]
                   for d in content_digests})


def overlap(a: str, sets_a: ClipSets, b: str, sets_b: ClipSets) -> str | None:
    """What nodes `a` and `b` share, in words, or None."""
    found = []
    if shared := len(sets_a.train & sets_b.train):
        found.append(f"{shared} training clips are in both")
    for name, held, other, train in ((a, sets_a.test, b, sets_b.train),
                                     (b, sets_b.test, a, sets_a.train)):
        if leaked := len(held & train):
            found.append(f"{leaked} of {name}'s {len(held)} held-out clips are in {other}'s "
                         "training set")
    return f"{a} and {b}: {'; '.join(found)}" if found else None


def find_overlaps(nodes: dict[str, ClipSets]) -> list[str]:
    """Every pair of nodes that shares clips, in words."""
    names = sorted(nodes)
    pairs = [overlap(a, nodes[a], b, nodes[b]) for i, a in enumerate(names) for b in names[i + 1:]]
    return [p for p in pairs if p]


def report(found: list[str], allow: bool, where: str) -> None:
    """Raise OverlapError for `found` overlaps, or log them if the config allows overlap."""
    if not found:
        return
    text = f"{where}: nodes share clips:\n  " + "\n  ".join(found)
    if not allow:
        raise OverlapError(f"{text}\nmake the nodes' shares disjoint, or set "
                           "'federation.allow_overlap' to true if that is intended")
    log.warning("%s ('federation.allow_overlap' is true)", text)


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
