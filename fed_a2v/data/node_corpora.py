"""Which corpus each node reads, where it is, and checks of every node's share before a run.

A node's corpus kind is its `dataset`, else `dataset.name`; its folder is its `dataset_path`,
else `dataset.paths[kind]`, else `dataset.path` (for the experiment's own kind), else
`<dataset.path>/<FOLDERS[kind]>`. The readers are in `corpora`, the splits in `splits`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.schema import BUILTIN_CLASSES, DATASETS, Config, NodeConfig
from fed_a2v.data.builtin.generator import Generator, ensure_corpus
from fed_a2v.data.builtin.instruments import INSTRUMENTS_CORPUS
from fed_a2v.data.builtin.speech import GERMAN_SPEECH, ITALIAN_SPEECH, SPANISH_SPEECH, SPEECH
from fed_a2v.data.builtin.synthetic import SYNTHETIC
from fed_a2v.data.clip_files import missing_files, missing_message
from fed_a2v.data.corpora import (
    EXPECTED,
    Clip,
    Corpus,
    corpus_present,
    read_corpus,
)
from fed_a2v.data.overlap import ClipSets, OverlapError, find_overlaps, report
from fed_a2v.data.splits import split_for_node
from fed_a2v.files import file_digest

# The built-in corpora by `dataset.name`, each generated on first use in the ESC-50 layout
# (`generator.ensure_corpus`): `synthetic` (the default), `speech`, `instruments`, and the
# confirmation corpora `italian_speech`, `german_speech` and `spanish_speech` (docs/corpora.md).
BUILTIN: dict[str, Generator] = {g.name: g for g in (SYNTHETIC, SPEECH, INSTRUMENTS_CORPUS,
                                                      ITALIAN_SPEECH, GERMAN_SPEECH,
                                                      SPANISH_SPEECH)}
# The config checks `dataset.num_classes` against its own table, without importing the
# generators; the two must agree.
if {name: len(g.classes) for name, g in BUILTIN.items()} != BUILTIN_CLASSES:
    raise RuntimeError(f"config.schema.BUILTIN_CLASSES {BUILTIN_CLASSES} disagrees with the "
                       "built-in corpora's classes")

# Folder names under `dataset.path` in a mixed federation (upstream's folder names).
FOLDERS = {"esc50": "esc50-v2.0.0-full", "vegas": "VEGAS", "vggsound": "vggsound"}


def node_kind(config: Config, node: NodeConfig, where: str = "node") -> str:
    """The kind of corpus `node` reads: its `dataset`, else the experiment's."""
    kind = node.dataset or config.dataset.name
    if kind == "mixed":
        raise ConfigError(f"{where}: 'dataset' is not set: with 'dataset.name' \"mixed\" each "
                          f"node names its corpus, one of {', '.join(DATASETS)}")
    return kind


def _root_key(config: Config, kind: str) -> str:
    """The config key that gives the folder of `kind` (for error messages)."""
    if kind in config.dataset.paths:
        return f"'dataset.paths.{kind}'"
    return "'dataset.path'"


def corpus_root(config: Config, kind: str, path: str | Path | None = None) -> Path:
    """The folder of the corpus of `kind`: `path` if given (a node's `dataset_path`), else as
    the module docstring says."""
    ds = config.dataset
    if path:
        return Path(path)
    if kind in ds.paths:
        return Path(ds.paths[kind])
    if kind == ds.name:
        if not config.dataset_path():
            raise ConfigError(f"'dataset.path' is not set: dataset '{kind}' needs "
                              f"{EXPECTED[kind]}")
        root = Path(config.dataset_path())
        # Upstream's dataset/Audio folder holds each corpus under its own folder name.
        inner = root / FOLDERS.get(kind, "")
        return inner if kind in FOLDERS and inner.is_dir() else root
    if ds.path and kind in FOLDERS:
        return Path(ds.path) / FOLDERS[kind]
    folder = f", or 'dataset.path' holding {FOLDERS[kind]}/" if kind in FOLDERS else ""
    raise ConfigError(f"no folder for the {kind} corpus: set 'dataset.paths.{kind}'{folder} "
                      "or the node's 'dataset_path'")


def located(config: Config, kind: str, path: str | Path | None, where: str) -> Path:
    """`corpus_root`, with `where` (file and key) in front of its error."""
    try:
        return corpus_root(config, kind, path)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def open_corpus(config: Config, path: str | Path | None = None,
                kind: str | None = None) -> Corpus:
    """The corpus of `kind` (default: `dataset.name`) at `path` (default: its configured
    folder), generating a built-in one on first use."""
    kind = kind or node_kind(config, NodeConfig(), "'dataset.name'")
    root = corpus_root(config, kind, path)
    if kind in BUILTIN:
        ds = config.dataset
        ensure_corpus(BUILTIN[kind], root, config.experiment.seed, ds.num_classes,
                      ds.clips_per_class, ds.clip_seconds, ds.sample_rate)
    return read_corpus(kind, root, config.experiment.seed)


def node_corpus(config: Config, node: NodeConfig, where: str = "node") -> Corpus:
    """The corpus `node` reads (its kind, at its folder)."""
    return open_corpus(config, node.dataset_path, node_kind(config, node, where))


def index_kinds(config: Config) -> list[str]:
    """The kinds of corpus the server indexes: the experiment's own (unless mixed), then those
    `nodes` entries name, in node order."""
    kinds = [] if config.dataset.name == "mixed" else [config.dataset.name]
    for key in sorted(config.nodes, key=int):
        kinds.append(node_kind(config, config.nodes[key], f"'nodes.{key}'"))
    if not kinds:
        raise ConfigError("'dataset.name' is \"mixed\" but no 'nodes' entry names its "
                          "'dataset'")
    return list(dict.fromkeys(kinds))


def corpus_index(config: Config) -> Corpus:
    """What the server needs of the corpora: classes and captions, not audio. It reads the
    metadata files only; a built-in corpus's classes are known without generating it. With
    several kinds, the classes are the union in order of `index_kinds` (a class name shared
    by two corpora is one class, one target)."""
    ds = config.dataset
    corpora = [Corpus(corpus_root(config, kind), list(BUILTIN[kind].classes[:ds.num_classes]),
                      []) if kind in BUILTIN else open_corpus(config, kind=kind)
               for kind in index_kinds(config)]
    if len(corpora) == 1:
        return corpora[0]
    classes = list(dict.fromkeys(name for corpus in corpora for name in corpus.classes))
    return Corpus(Path(ds.path), classes, [clip for corpus in corpora for clip in corpus.clips])


def corpus_on_disk(config: Config, path: str | Path | None = None,
                   kind: str | None = None) -> Corpus | None:
    """The corpus's metadata if it is already on disk (never generates), else None."""
    kind = kind or node_kind(config, NodeConfig(), "'dataset.name'")
    root = corpus_root(config, kind, path)
    return read_corpus(kind, root, config.experiment.seed) if corpus_present(kind, root) else None


def require_corpus(config: Config, path: str | Path | None, where: str,
                   generate: bool = False, kind: str | None = None) -> Corpus | None:
    """The metadata of the corpus of `kind` (default: `dataset.name`) at `path` (default: its
    configured folder). A real corpus must be there; a built-in one is generated if
    `generate`, else None until it is. `where` names the file and key in errors, e.g.
    "exp.json: 'dataset.path'"."""
    kind = kind or node_kind(config, NodeConfig(), "'dataset.name'")
    root = located(config, kind, path, where)
    if kind in BUILTIN and generate:
        return open_corpus(config, path, kind)
    corpus = corpus_on_disk(config, path, kind)
    if corpus is None and kind not in BUILTIN:
        raise ConfigError(f"{where}: {root}: no {kind} corpus there (expected {EXPECTED[kind]})")
    return corpus


def check_node_shares(config: Config, nodes: dict[str, tuple[NodeConfig, int, int]],
                      source: str, generate: bool = False,
                      allow_overlap: bool = False) -> list[str]:
    """Each node's share where its corpus is on disk: `where: N train / V val / M test clips`.

    The corpora the server reads and each node's own must exist unless built-in (generated
    here if `generate`). Raises ConfigError for a missing corpus, classes or folds it lacks, a
    node left with nothing, or nodes sharing clips (val and test clips are held out) where
    neither the config nor `allow_overlap` allows it (`fed_a2v.data.overlap`).
    """
    corpora: dict[tuple[str, Path], Corpus | None] = {}

    def load(kind: str, path: str | None, where: str) -> Corpus | None:
        key = (kind, located(config, kind, path, where))
        if key not in corpora:
            corpora[key] = require_corpus(config, path, where, generate, kind)
        return corpora[key]

    for kind in index_kinds(config):
        load(kind, None, f"{source}: {_root_key(config, kind)}")
    found, clip_sets = [], {}
    for where, (node, index, num_nodes) in nodes.items():
        kind = node_kind(config, node, where)
        corpus = load(kind, node.dataset_path, f"{where}: 'dataset_path'" if node.dataset_path
                      else f"{source}: {_root_key(config, kind)}")
        if corpus is None:
            continue
        split = split_for_node(corpus, node, index, num_nodes, config, where)
        if not split.train:
            held = sum(c.label in split.classes for c in corpus.clips)
            raise ConfigError(f"{where}: no training clip in its classes, folds and shard (its "
                              f"{len(split.classes)} classes have {held} clips in {corpus.root})")
        found.append(f"{where}: {len(split.train)} train / {len(split.val)} val / "
                     f"{len(split.test)} test clips")
        clip_sets[where] = ClipSets(frozenset(map(_content_id, split.train)),
                                    frozenset(map(_content_id, split.val + split.test)))
    # Standalone nodes (aggregation "none") never exchange adapters, so one node's test clip
    # in another's training set leaks nothing: each is evaluated on its own adapters only.
    allow = (allow_overlap or config.federation.allow_overlap
             or config.feda2v.adapter_aggregation_mode == "none")
    try:
        report(find_overlaps(clip_sets), allow, source)
    except OverlapError as err:
        if config.dataset.partition != "classes":
            raise
        hint = ("with 'dataset.partition' \"classes\" a node holds every clip of its classes: "
                "give nodes sharing a class a 'node_split_id' with 'num_nodes' or "
                "'samples_per_node', or use partition \"nodes\"")
        raise OverlapError(f"{err}\n{hint}") from None
    return found


def _content_id(clip: Clip) -> str:
    """The clip's content digest, as nodes compute it; its path where this host lacks it."""
    try:
        return file_digest(clip.path)
    except OSError:
        return f"path:{clip.path.resolve()}"



def check_clip_files(config: Config, nodes: Mapping[str, NodeConfig], source: str) -> None:
    """Raise ConfigError if the metadata of a corpus the experiment reads (its own, and each of
    `nodes`' (where -> node)) names audio files that do not exist: the error names the metadata
    file and the missing files (`clip_files.missing_files`). A built-in corpus not generated yet
    is skipped (it is made whole); a user corpus that is not there is an error."""
    seen: set[tuple[str, Path]] = set()

    def check(kind: str, path: str | None, where: str) -> None:
        root = located(config, kind, path, where)
        if (kind, root) in seen:
            return
        seen.add((kind, root))
        if not corpus_present(kind, root):
            if kind in BUILTIN:
                return
            raise ConfigError(f"{where}: {root}: no {kind} corpus there (expected "
                              f"{EXPECTED[kind]})")
        missing = missing_files(kind, root, config.experiment.seed)
        if missing:
            raise ConfigError(missing_message(where, missing))

    for kind in index_kinds(config):
        check(kind, None, f"{source}: {_root_key(config, kind)}")
    for where, node in nodes.items():
        kind = node_kind(config, node, where)
        check(kind, node.dataset_path, f"{where}: 'dataset_path'" if node.dataset_path
              else f"{source}: {_root_key(config, kind)}")
