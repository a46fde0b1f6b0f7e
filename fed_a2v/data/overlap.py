"""Clips shared between nodes, found without any audio leaving a node.

Each node sends the server, once, salted digests of its training and held-out clips: SHA-256
of a per-run salt and the clip's content digest (the one its token cache is keyed by). The
server compares the sets of every two nodes: a clip both train on, or one node's held-out clip
in another's training set, fails the run unless `federation.allow_overlap`. This module holds
the set logic; `fed_a2v.federation.overlap_check` the messages that carry the digests.

What the digests reveal: whether a file the server itself holds is among a node's clips (it can
salt and hash that file too), and how many clips a node has; nothing about any other clip.
Copies are found only byte for byte: the same sound re-encoded is another file.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from fed_a2v.config.field_rules import ConfigError

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
