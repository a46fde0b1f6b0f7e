"""Corpora and each node's share of them: ESC-50 layout reading and disjoint node splits."""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Config, ConfigError, NodeConfig, suggest
from .synthetic import ensure_synthetic_corpus


@dataclass(frozen=True)
class Clip:
    path: Path
    label: str
    fold: int


@dataclass(frozen=True)
class Corpus:
    root: Path
    classes: list[str]  # index = class id, as the corpus numbers them
    clips: list[Clip]


@dataclass(frozen=True)
class NodeSplit:
    train: list[Clip]
    test: list[Clip]
    classes: list[str]  # the classes this node holds


def read_esc50(root: str | Path) -> Corpus:
    """Read `meta/esc50.csv` (filename, fold, target, category, ...) under `root`."""
    root = Path(root)
    meta = root / "meta" / "esc50.csv"
    if not meta.exists():
        raise ConfigError(f"{meta}: not found; 'dataset.path' must be an ESC-50 layout folder")
    names: dict[int, str] = {}
    clips = []
    with open(meta, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                target, fold = int(row["target"]), int(row["fold"])
                names[target] = row["category"]
                clips.append(Clip(root / "audio" / row["filename"], row["category"], fold))
            except (KeyError, TypeError, ValueError) as err:
                raise ConfigError(f"{meta}: line {line}: bad row ({err})") from err
    return Corpus(root, [names[t] for t in sorted(names)], clips)


def open_corpus(config: Config, path: str | Path | None = None) -> Corpus:
    """The configured corpus, generating the built-in one on first use."""
    ds = config.dataset
    root = Path(path or ds.path)
    if ds.name == "synthetic":
        ensure_synthetic_corpus(root, config.experiment.seed, ds.num_classes,
                                ds.clips_per_class, ds.clip_seconds, ds.sample_rate)
    return read_esc50(root)


def _check_names(asked: list[str], known: list[str], what: str, where: str) -> None:
    for name in asked:
        if name not in known:
            raise ConfigError(f"{where}: '{what}' names '{name}', which the corpus does not "
                              f"have{suggest(name, known)}; it has: {', '.join(known)}")


def split_for_node(corpus: Corpus, node: NodeConfig, node_index: int, num_nodes: int,
                   config: Config, where: str = "node") -> NodeSplit:
    """This node's train and held-out clips.

    The corpus is cut into `num_nodes` disjoint shards, stratified per class and seeded by the
    experiment seed; the node keeps shard `node_split_id` (default: its own index), restricted to
    its classes and folds. Nodes with different split ids therefore never share a clip, whatever
    classes they select.
    """
    classes = list(corpus.classes)
    if node.selected_classes is not None:
        _check_names(node.selected_classes, corpus.classes, "selected_classes", where)
        classes = [c for c in corpus.classes if c in node.selected_classes]
    if node.excluded_classes is not None:
        _check_names(node.excluded_classes, corpus.classes, "excluded_classes", where)
        classes = [c for c in classes if c not in node.excluded_classes]
    train_folds = config.dataset.train_folds if node.train_folds is None else node.train_folds
    test_folds = config.dataset.test_folds if node.test_folds is None else node.test_folds
    folds = {c.fold for c in corpus.clips}
    for fold in (*train_folds, *test_folds):
        if fold not in folds:
            raise ConfigError(f"{where}: fold {fold} is not in the corpus (folds: {sorted(folds)})")
    if set(train_folds) & set(test_folds):
        raise ConfigError(f"{where}: train folds {train_folds} and test folds {test_folds} overlap")

    shards = node.num_nodes or num_nodes
    shard = node.node_split_id if node.node_split_id is not None else node_index
    if shard >= shards:
        raise ConfigError(f"{where}: node_split_id {shard} must be below num_nodes {shards}")
    mine = set(shard_clips(corpus, shards, config.experiment.seed)[shard])
    keep = set(classes)
    train = [c for c in corpus.clips if c in mine and c.label in keep and c.fold in train_folds]
    test = [c for c in corpus.clips if c in mine and c.label in keep and c.fold in test_folds]
    return NodeSplit(train, test, classes)


def shard_clips(corpus: Corpus, num_shards: int, seed: int) -> list[list[Clip]]:
    """Deal each (class, fold) group's clips, shuffled by `seed`, round-robin into shards."""
    groups: dict[tuple[str, int], list[Clip]] = defaultdict(list)
    for clip in corpus.clips:
        groups[(clip.label, clip.fold)].append(clip)
    shards: list[list[Clip]] = [[] for _ in range(num_shards)]
    rng = np.random.default_rng(seed)
    offset = 0
    for key in sorted(groups):
        group = groups[key]
        for i, j in enumerate(rng.permutation(len(group))):
            shards[(offset + i) % num_shards].append(group[j])
        offset += len(group)  # rotate so small groups do not all favour shard 0
    return shards
