"""Corpora and each node's share of them: ESC-50 folders, CSV manifests, disjoint node splits."""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import file_digest
from .config import Config, ConfigError, NodeConfig, suggest
from .overlap import ClipSets, find_overlaps, report
from .synthetic import SOUNDS, ensure_synthetic_corpus

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Clip:
    path: Path
    label: str
    fold: int
    caption: str | None = None  # its own text target, where the corpus has one
    split: str | None = None  # "train"/"test" when the manifest decides, else folds do


@dataclass(frozen=True)
class Corpus:
    root: Path
    classes: list[str]  # index = class id
    clips: list[Clip]

    @property
    def has_captions(self) -> bool:
        return any(c.caption for c in self.clips)


@dataclass(frozen=True)
class NodeSplit:
    train: list[Clip]
    val: list[Clip]  # validation clips, disjoint from train and test (may be empty)
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
    for line, row in _rows(meta, ("filename", "fold", "target", "category")):
        try:
            target, fold = int(row["target"]), int(row["fold"])
        except ValueError as err:
            raise ConfigError(f"{meta}: line {line}: bad row ({err})") from err
        names[target] = row["category"]
        clips.append(Clip(root / "audio" / row["filename"], row["category"], fold))
    return Corpus(root, [names[t] for t in sorted(names)], clips)


def read_manifest(path: str | Path, seed: int = 0) -> Corpus:
    """Read a CSV manifest: `path,label` and optional `caption`, `split`, `fold` columns.

    Audio paths are relative to the manifest's folder unless absolute. Without `split` or
    `fold`, clips are dealt into folds 1-5 per class, seeded, so the fold settings apply.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.exists():
        raise ConfigError(f"{path}: manifest not found")
    clips = []
    for line, row in _rows(path, ("path", "label")):
        split = (row.get("split") or "").strip().lower() or None
        if split is not None and split not in SPLITS:
            raise ConfigError(f"{path}: line {line}: split '{split}' must be train or test")
        try:
            fold = int(row["fold"]) if row.get("fold") else 0
        except ValueError as err:
            raise ConfigError(f"{path}: line {line}: fold '{row['fold']}' is not a number") from err
        audio = Path(row["path"])
        clips.append(Clip(audio if audio.is_absolute() else path.parent / audio,
                          row["label"].strip(), fold, (row.get("caption") or "").strip() or None,
                          split))
    if any(c.fold == 0 and c.split is None for c in clips):
        clips = _assign_folds(clips, seed)
    return Corpus(path.parent, sorted({c.label for c in clips}), clips)


def _rows(path: Path, required: tuple[str, ...]):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}; "
                              f"found {', '.join(reader.fieldnames or [])}")
        for line, row in enumerate(reader, start=2):
            if any(not (row.get(c) or "").strip() for c in required):
                raise ConfigError(f"{path}: line {line}: empty {'/'.join(required)}")
            yield line, row


def _assign_folds(clips: list[Clip], seed: int) -> list[Clip]:
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, clip in enumerate(clips):
        by_label[clip.label].append(i)
    folds = [c.fold for c in clips]
    for label in sorted(by_label):
        for rank, i in enumerate(rng.permutation(by_label[label])):
            folds[i] = folds[i] or rank % 5 + 1
    return [Clip(c.path, c.label, f, c.caption, c.split) for c, f in zip(clips, folds, strict=True)]


EXPECTED = {"synthetic": "a folder with meta/esc50.csv (generated on first use)",
            "esc50": "a folder with meta/esc50.csv and audio/",
            "csv": "a CSV manifest, or a folder holding manifest.csv"}


def _root(config: Config, path: str | Path | None) -> Path:
    value = path or config.dataset_path()
    if not value:
        raise ConfigError(f"'dataset.path' is not set: dataset '{config.dataset.name}' needs "
                          f"{EXPECTED[config.dataset.name]}")
    return Path(value)


def open_corpus(config: Config, path: str | Path | None = None) -> Corpus:
    """The configured corpus, generating the built-in one on first use."""
    ds = config.dataset
    root = _root(config, path)
    if ds.name == "csv":
        return read_manifest(root, config.experiment.seed)
    if ds.name == "synthetic":
        ensure_synthetic_corpus(root, config.experiment.seed, ds.num_classes,
                                ds.clips_per_class, ds.clip_seconds, ds.sample_rate)
    return read_esc50(root)


def corpus_index(config: Config) -> Corpus:
    """What the server needs of the corpus: its classes and captions, not its audio. It reads
    the metadata file only (`meta/esc50.csv` or the manifest); the built-in corpus's classes
    are known without generating it."""
    ds = config.dataset
    if ds.name == "synthetic":
        return Corpus(_root(config, None), list(SOUNDS)[:ds.num_classes], [])
    return open_corpus(config)


def corpus_on_disk(config: Config, path: str | Path | None = None) -> Corpus | None:
    """The corpus's metadata if it is already on disk (never generates), else None."""
    root = _root(config, path)
    if config.dataset.name == "csv":
        manifest = root / "manifest.csv" if root.is_dir() else root
        return read_manifest(manifest, config.experiment.seed) if manifest.exists() else None
    return read_esc50(root) if (root / "meta" / "esc50.csv").exists() else None


def require_corpus(config: Config, path: str | Path | None, where: str,
                   generate: bool = False) -> Corpus | None:
    """The metadata of the corpus at `path` (default: the experiment's). An esc50 or csv corpus
    must be there; the built-in one is generated if `generate`, else None until it is.
    `where` names the file and key in errors, e.g. "exp.json: 'dataset.path'"."""
    name = config.dataset.name
    if not (path or config.dataset_path()):
        raise ConfigError(f"{where} is not set: dataset '{name}' needs {EXPECTED[name]}")
    if name == "synthetic" and generate:
        return open_corpus(config, path)
    corpus = corpus_on_disk(config, path)
    if corpus is None and name != "synthetic":
        raise ConfigError(f"{where}: {_root(config, path)}: no {name} corpus there "
                          f"(expected {EXPECTED[name]})")
    return corpus


def check_node_shares(config: Config, nodes: dict[str, tuple[NodeConfig, int, int]],
                      source: str, generate: bool = False) -> list[str]:
    """Each node's share where its corpus is on disk: `where: N train / M held-out clips`.

    The experiment's own corpus (read by the server) and each node's `dataset_path` must exist
    unless built-in (generated here if `generate`). Raises ConfigError for a missing corpus,
    classes or folds it lacks, a node left with nothing, or nodes sharing clips where the
    config does not allow it (`fed_a2v.overlap`).
    """
    shared = require_corpus(config, None, f"{source}: 'dataset.path'", generate)
    found, clip_sets = [], {}
    for where, (node, index, num_nodes) in nodes.items():
        corpus = (require_corpus(config, node.dataset_path, f"{where}: 'dataset_path'", generate)
                  if node.dataset_path else shared)
        if corpus is None:
            continue
        split = split_for_node(corpus, node, index, num_nodes, config, where)
        if not split.train:
            raise ConfigError(f"{where}: no training clip in its classes, folds and shard")
        found.append(f"{where}: {len(split.train)} train / {len(split.test)} held-out clips")
        clip_sets[where] = ClipSets(frozenset(map(_content_id, split.train)),
                                    frozenset(map(_content_id, split.test)))
    report(find_overlaps(clip_sets), config.federation.allow_overlap, source)
    return found


def _content_id(clip: Clip) -> str:
    """The clip's content digest, as nodes compute it; its path where this host lacks it."""
    try:
        return file_digest(clip.path)
    except OSError:
        return f"path:{clip.path.resolve()}"


def _check_names(asked: list[str], known: list[str], what: str, where: str) -> None:
    for name in asked:
        if name not in known:
            raise ConfigError(f"{where}: '{what}' names '{name}', which the corpus does not "
                              f"have{suggest(name, known)}; it has: {', '.join(known)}")


def _check_folds(asked: list[int], known: set[int], what: str, where: str) -> None:
    for fold in asked:
        if fold not in known:
            raise ConfigError(f"{where}: '{what}' has fold {fold}, which the corpus does not "
                              f"have (folds: {sorted(known)})")


def node_classes(corpus: Corpus, node: NodeConfig, where: str) -> list[str]:
    classes = list(corpus.classes)
    if node.selected_classes is not None:
        _check_names(node.selected_classes, corpus.classes, "selected_classes", where)
        classes = [c for c in classes if c in node.selected_classes]
    if node.excluded_classes is not None:
        _check_names(node.excluded_classes, corpus.classes, "excluded_classes", where)
        classes = [c for c in classes if c not in node.excluded_classes]
    return classes


def split_for_node(corpus: Corpus, node: NodeConfig, node_index: int, num_nodes: int,
                   config: Config, where: str = "node") -> NodeSplit:
    """This node's train and held-out clips.

    The corpus is cut into `num_nodes` disjoint shards (stratified per class and fold, or in
    Dirichlet proportions per class), seeded by the experiment seed; the node keeps shard
    `node_split_id` (default: its own index), restricted to its classes and folds. Nodes with
    different split ids never share a clip, whatever classes they select.
    """
    classes = node_classes(corpus, node, where)
    ds = config.dataset
    train_folds = ds.train_folds if node.train_folds is None else node.train_folds
    test_folds = ds.test_folds if node.test_folds is None else node.test_folds
    folds = {c.fold for c in corpus.clips if c.split is None}
    if folds:
        for what, asked in (("train_folds", train_folds), ("test_folds", test_folds),
                            ("use_folds", node.use_folds or [])):
            _check_folds(asked, folds, what, where)
    if node.use_folds is not None:
        train_folds = [f for f in train_folds if f in node.use_folds]
        test_folds = [f for f in test_folds if f in node.use_folds]
    if set(train_folds) & set(test_folds):
        raise ConfigError(f"{where}: train folds {train_folds} and test folds {test_folds} overlap")

    shards = node.num_nodes or num_nodes
    shard = node.node_split_id if node.node_split_id is not None else node_index
    if shard >= shards:
        raise ConfigError(f"{where}: node_split_id {shard} must be below num_nodes {shards}")
    if ds.partition == "dirichlet":
        dealt = dirichlet_shards(corpus, shards, ds.dirichlet_alpha, config.experiment.seed)
    else:
        dealt = shard_clips(corpus, shards, config.experiment.seed)
    mine = set(dealt[shard])
    keep = set(classes)

    def in_split(clip: Clip, split: str, split_folds: list[int]) -> bool:
        return clip.split == split if clip.split is not None else clip.fold in split_folds

    chosen = [c for c in corpus.clips if c in mine and c.label in keep]
    return NodeSplit([c for c in chosen if in_split(c, "train", train_folds)], [],
                     [c for c in chosen if in_split(c, "test", test_folds)], classes)


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
