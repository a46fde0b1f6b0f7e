"""Each node's share of a corpus and its train / val / test split.

First the node's clips: a shard of the corpus (partition "nodes" or "dirichlet"), or every clip
of its classes cut only by its own node_split_id (partition "classes", upstream's way). Then
train/val/test, by folds or by ratios; clips whose split the layout gives keep it. Fold keys that
leave folds of the corpus unused, or that cannot apply (every clip's split is given), are named
in a warning. docs/upstream-config.md, "Corpus layouts", states the rules with worked counts.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from fed_a2v.config.field_rules import ConfigError, suggest
from fed_a2v.config.schema import Config, DatasetConfig, NodeConfig
from fed_a2v.data.corpora import Clip, Corpus, vggsound_class

log = logging.getLogger(__name__)

FOLD_KEYS = ("use_folds", "train_folds", "val_folds", "test_folds")


@dataclass(frozen=True)
class NodeSplit:
    train: list[Clip]
    val: list[Clip]  # validation clips, disjoint from train and test (may be empty)
    test: list[Clip]
    classes: list[str]  # the classes this node holds


def _resolve_names(asked: list[str], known: list[str], what: str, where: str) -> set[str]:
    """The corpus's names for `asked`: exact, else compared as upstream's VGGSound reader did
    (lower case, spaces as underscores: "Dog barking" is dog_barking)."""
    normal = {vggsound_class(name): name for name in known}
    found = set()
    for name in asked:
        if name not in known and vggsound_class(name) not in normal:
            raise ConfigError(f"{where}: '{what}' names '{name}', which the corpus does not "
                              f"have{suggest(name, known)}; it has: {', '.join(known)}")
        found.add(name if name in known else normal[vggsound_class(name)])
    return found


def _check_folds(asked: Iterable[int], known: set[int], what: str, where: str) -> None:
    for fold in asked:
        if fold not in known:
            raise ConfigError(f"{where}: '{what}' has fold {fold}, which the corpus does not "
                              f"have (folds: {sorted(known)})")


def node_classes(corpus: Corpus, node: NodeConfig, where: str) -> list[str]:
    classes = list(corpus.classes)
    if node.selected_classes is not None:
        chosen = _resolve_names(node.selected_classes, corpus.classes, "selected_classes", where)
        classes = [c for c in classes if c in chosen]
    if node.excluded_classes is not None:
        left_out = _resolve_names(node.excluded_classes, corpus.classes, "excluded_classes",
                                  where)
        classes = [c for c in classes if c not in left_out]
    return classes


def split_for_node(corpus: Corpus, node: NodeConfig, node_index: int, num_nodes: int,
                   config: Config, where: str = "node") -> NodeSplit:
    """This node's train, val and test clips (each in corpus order).

    Partition "nodes"/"dirichlet": the corpus is cut into `num_nodes` disjoint shards
    (stratified per class and fold, or in Dirichlet proportions per class), seeded by the
    experiment seed; the node keeps shard `node_split_id` (default: its own index), restricted
    to its classes. Nodes with different split ids never share a clip, whatever their classes.
    Partition "classes": `class_share`. Then `divide` makes train/val/test.
    """
    classes = node_classes(corpus, node, where)
    keep = set(classes)
    if config.dataset.partition == "classes":
        pool = class_share([c for c in corpus.clips if c.label in keep], classes, node, config,
                           where)
    else:
        if node.samples_per_node is not None:
            raise ConfigError(f"{where}: 'samples_per_node' needs 'dataset.partition' "
                              f"\"classes\" (it is \"{config.dataset.partition}\")")
        shards = node.num_nodes or num_nodes
        shard = node.node_split_id if node.node_split_id is not None else node_index
        if shard >= shards:
            raise ConfigError(f"{where}: node_split_id {shard} must be below num_nodes {shards}")
        if config.dataset.partition == "dirichlet":
            dealt = dirichlet_shards(corpus, shards, config.dataset.dirichlet_alpha,
                                     config.experiment.seed)
        else:
            dealt = shard_clips(corpus, shards, config.experiment.seed)
        mine = set(dealt[shard])
        pool = [c for c in corpus.clips if c in mine and c.label in keep]
        pool = first_per_class(pool, config.for_node(node, "num_samples_per_class"))
    train, val, test = divide(pool, corpus, node, node_index, config, where)
    return NodeSplit(train, val, test, classes)


def first_per_class(clips: list[Clip], limit: int | None) -> list[Clip]:
    """The first `limit` clips of each class, in the given order (all with no limit)."""
    if limit is None:
        return clips
    seen: dict[str, int] = defaultdict(int)
    kept = []
    for clip in clips:
        seen[clip.label] += 1
        if seen[clip.label] <= limit:
            kept.append(clip)
    return kept


def class_share(clips: list[Clip], classes: list[str], node: NodeConfig, config: Config,
                where: str) -> list[Clip]:
    """Partition "classes": every clip of the node's classes, as upstream's VEGAS reader cuts
    them. `num_samples_per_class` keeps the first N per class (not with samples_per_node); with
    `node_split_id` and one of `samples_per_node` (block of K per class) or `num_nodes` (the
    id-th of N near-equal blocks per class), each class's clips, sorted by file and shuffled by
    one RandomState(node_split_seed) class after class, are cut to this node's block."""
    per_node, parts, part = node.samples_per_node, node.num_nodes, node.node_split_id
    if per_node is None:
        clips = first_per_class(clips, config.for_node(node, "num_samples_per_class"))
    if part is None:
        if per_node is not None or parts is not None:
            log.warning("%s: 'samples_per_node'/'num_nodes' without 'node_split_id': the node "
                        "keeps every clip of its classes", where)
        return clips
    if per_node is not None and parts is not None:
        raise ConfigError(f"{where}: 'samples_per_node' and 'num_nodes' both cut the node's "
                          "clips; set one of them")
    if per_node is None and parts is None:
        return clips
    if parts is not None and part >= parts:
        raise ConfigError(f"{where}: 'node_split_id' ({part}) must be below 'num_nodes' "
                          f"({parts})")
    rng = np.random.RandomState(config.for_node(node, "node_split_seed"))
    kept: set[Clip] = set()
    for label in classes:
        group = sorted((c for c in clips if c.label == label), key=lambda c: str(c.path))
        rng.shuffle(group)
        if per_node is not None:
            start, size = part * per_node, per_node
        else:
            q, r = divmod(len(group), parts)
            start, size = (part * (q + 1), q + 1) if part < r else (part * q + r, q)
        kept.update(group[start:start + size])
    return [c for c in clips if c in kept]


def divide(pool: list[Clip], corpus: Corpus, node: NodeConfig, node_index: int,
           config: Config, where: str) -> tuple[list[Clip], list[Clip], list[Clip]]:
    """(train, val, test) of the node's clips: by folds where `use_folds` is true or a list of
    folds (None: where the corpus has folds), else by ratios. Clips whose split the layout
    gives keep it; when it gives no val, val is the val ratio of its training clips."""
    use_folds = config.for_node(node, "use_folds")
    stratify = config.for_node(node, "stratify")
    seed = config.for_node(node, "node_split_seed") + (
        node.node_split_id if node.node_split_id is not None else node_index)
    free = [c for c in pool if c.split is None]
    if pool and not free:
        _note_unused_fold_keys(config, node, where)
    if use_folds is None:
        use_folds = not any(c.fold == 0 for c in free)
    if use_folds is False:
        train_r, val_r, test_r = split_ratios(config, node, where)
        train, val, test = ratio_cut(free, test_r, val_r, stratify, seed)
    else:
        train, val, test, val_r = _fold_cut(free, corpus, node, use_folds, config, where)
        if val_r:
            train, val, _ = ratio_cut(train, 0.0, val_r, stratify, seed)
    given = {s: [c for c in pool if c.split == s] for s in ("train", "val", "test")}
    if not given["val"] and val_r:
        given["train"], given["val"], _ = ratio_cut(given["train"], 0.0, val_r, stratify, seed)
    order = {clip: i for i, clip in enumerate(pool)}
    return tuple(sorted(part + given[s], key=order.__getitem__)  # type: ignore[return-value]
                 for part, s in ((train, "train"), (val, "val"), (test, "test")))


def _note_unused_fold_keys(config: Config, node: NodeConfig, where: str) -> None:
    """Warn about fold keys set (the node's, or the experiment's away from their defaults) on
    clips whose every split the layout gives: they cannot apply."""
    default = DatasetConfig()
    keys = [f"'{k}'" for k in FOLD_KEYS if getattr(node, k) is not None]
    keys += [f"'dataset.{k}'" for k in FOLD_KEYS
             if getattr(node, k) is None and getattr(config.dataset, k) != getattr(default, k)]
    if keys:
        log.warning("%s: %s do not apply: every clip's split (train/val/test) is given by the "
                    "corpus (a manifest's split column, VGGSound's CSV)", where, ", ".join(keys))


def _fold_cut(clips: list[Clip], corpus: Corpus, node: NodeConfig, use_folds: bool | list[int],
              config: Config, where: str):
    """Train/val/test folds; val from `val_folds` (taken out of the training folds), else
    val_ratio (default 0) of the training folds, returned as the last element."""
    ds = config.dataset
    train_folds = ds.train_folds if node.train_folds is None else node.train_folds
    test_folds = ds.test_folds if node.test_folds is None else node.test_folds
    val_folds = ds.val_folds if node.val_folds is None else node.val_folds
    if any(c.fold == 0 for c in clips):
        raise ConfigError(f"{where}: the corpus at {corpus.root} has no folds, so it cannot be "
                          "split by folds: set 'use_folds' to false (a ratio split) for this node")
    folds = {c.fold for c in corpus.clips if c.split is None}
    if folds:
        for what, asked in (("train_folds", train_folds), ("test_folds", test_folds),
                            ("val_folds", val_folds or []),
                            ("use_folds", use_folds if isinstance(use_folds, list) else [])):
            _check_folds(asked, folds, what, where)
        unused = sorted(folds - set(train_folds) - set(test_folds) - set(val_folds or []))
        if unused and not isinstance(use_folds, list):
            log.warning("%s: the corpus's fold(s) %s are in none of 'train_folds', 'val_folds' "
                        "and 'test_folds', so their clips are not used", where,
                        ", ".join(map(str, unused)))
    if isinstance(use_folds, list):
        train_folds, test_folds = ([f for f in fs if f in use_folds]
                                   for fs in (train_folds, test_folds))
        val_folds = None if val_folds is None else [f for f in val_folds if f in use_folds]
    if set(train_folds) & set(test_folds):
        raise ConfigError(f"{where}: train folds {train_folds} and test folds {test_folds} overlap")
    if val_folds is not None:
        if set(val_folds) & set(test_folds):
            raise ConfigError(f"{where}: val folds {val_folds} and test folds {test_folds} "
                              "overlap")
        train_folds = [f for f in train_folds if f not in val_folds]
    val_ratio = config.for_node(node, "val_ratio") if val_folds is None else None
    return ([c for c in clips if c.fold in train_folds],
            [c for c in clips if val_folds and c.fold in val_folds],
            [c for c in clips if c.fold in test_folds], val_ratio or 0.0)


def split_ratios(config: Config, node: NodeConfig, where: str) -> tuple[float, float, float]:
    """(train, val, test) ratios: val None -> 0.1, test None -> what train and val leave;
    three that do not sum to 1 (+-0.01) are scaled to, with a warning (as upstream did)."""
    train = config.for_node(node, "train_ratio")
    val = config.for_node(node, "val_ratio")
    val = 0.1 if val is None else val
    test = config.for_node(node, "test_ratio")
    if test is None:
        test = max(0.0, round(1.0 - train - val, 9))  # 1 - 0.8 - 0.1 is 0.1, not 0.0999...
    total = train + val + test
    if total <= 0:
        raise ConfigError(f"{where}: 'train_ratio', 'val_ratio' and 'test_ratio' are all 0")
    if abs(total - 1.0) > 0.01:
        scaled = (train / total, val / total, test / total)
        log.warning("%s: train/val/test ratios %g/%g/%g sum to %g; scaled to %.3f/%.3f/%.3f",
                    where, train, val, test, total, *scaled)
        return scaled
    return train, val, test


def _count(ratio: float, n: int) -> int:
    """round(ratio * n), halves up (1e-9 absorbs float noise such as 0.1 * 5 = 0.5000...1)."""
    return math.floor(ratio * n + 0.5 + 1e-9)


def ratio_cut(clips: list[Clip], test: float, val: float, stratify: bool,
              seed: int) -> tuple[list[Clip], list[Clip], list[Clip]]:
    """(train, val, test): per class when `stratify` (classes in name order), else over all,
    the clips sorted by path and shuffled by default_rng(seed); the first round(test * n) are
    test, the next round(val * n) val, the rest train."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[Clip]] = defaultdict(list)
    for clip in clips:
        groups[clip.label if stratify else ""].append(clip)
    train, val_part, test_part = [], [], []
    for key in sorted(groups):
        group = sorted(groups[key], key=lambda c: str(c.path))
        shuffled = [group[i] for i in rng.permutation(len(group))]
        n_test = min(_count(test, len(group)), len(group))
        n_val = min(_count(val, len(group)), len(group) - n_test)
        test_part += shuffled[:n_test]
        val_part += shuffled[n_test:n_test + n_val]
        train += shuffled[n_test + n_val:]
    return train, val_part, test_part


def _groups(corpus: Corpus) -> dict[tuple[str, str], list[Clip]]:
    """Clips by (class, fold or split): shards are cut within each group."""
    groups: dict[tuple[str, str], list[Clip]] = defaultdict(list)
    for clip in corpus.clips:
        groups[(clip.label, clip.split or str(clip.fold))].append(clip)
    return groups


def shard_clips(corpus: Corpus, num_shards: int, seed: int) -> list[list[Clip]]:
    """Deal each (class, fold) group's clips, shuffled by `seed`, round-robin into shards."""
    shards: list[list[Clip]] = [[] for _ in range(num_shards)]
    rng = np.random.default_rng(seed)
    offset = 0
    groups = _groups(corpus)
    for key in sorted(groups):
        group = groups[key]
        for i, j in enumerate(rng.permutation(len(group))):
            shards[(offset + i) % num_shards].append(group[j])
        offset += len(group)  # rotate so small groups do not all favour shard 0
    return shards


def dirichlet_shards(corpus: Corpus, num_shards: int, alpha: float,
                     seed: int) -> list[list[Clip]]:
    """Each class's clips go to shards in proportions drawn from Dirichlet(alpha), the same
    proportions in every fold of the class, so a node's held-out clips match its training mix."""
    rng = np.random.default_rng(seed)
    shares = {label: rng.dirichlet(np.full(num_shards, alpha)) for label in corpus.classes}
    shards: list[list[Clip]] = [[] for _ in range(num_shards)]
    groups = _groups(corpus)
    for key in sorted(groups):
        group = groups[key]
        order = rng.permutation(len(group))
        cuts = np.round(np.cumsum(shares[key[0]])[:-1] * len(group)).astype(int)
        for shard, part in enumerate(np.split(order, cuts)):
            shards[shard] += [group[j] for j in part]
    return shards
