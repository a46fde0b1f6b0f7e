"""A first experiment file written from a corpus on disk (`fed-a2v new`), as `flwr new` starts a
project: the corpus's layout, classes and splits are read from the data, so every key written
applies to it.

The corpus is a CSV manifest (or a folder holding exactly one), an ESC-50 folder, class folders
(`<class>/*.wav`), or a VEGAS or VGGSound folder. The file holds the quickstart's built-in models
and settings, short rounds for a first try, and a `nodes` section that spreads the classes over
the nodes: `iid` (every node every class, on disjoint shards) or `classes` (classes dealt
round-robin, each node holding every clip of its own). Train and test come from the corpus's
folds or split column where it has them, else from ratios.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.validate import config_from_dict
from fed_a2v.data.corpora import EXPECTED, Corpus, corpus_present, is_manifest, read_corpus
from fed_a2v.data.node_corpora import check_node_shares
from fed_a2v.data.splits import split_for_node
from fed_a2v.files import atomic_write_text

DEFAULT_NODES = 3
DEFAULT_ROUNDS = 2
LOCAL_EPOCHS = 2
SEED = 0  # experiment.seed: it also deals the folds of a corpus without them
SPLITS = ("iid", "classes")
MAX_CLIP_SECONDS = 10.0  # the AST's input is 1024 frames of 10 ms
# Ratio splits where the corpus has no folds or split column: no val, a fifth held out.
RATIOS = {"train_ratio": 0.8, "val_ratio": 0.0, "test_ratio": 0.2}
# Folder layouts, in the order they are looked for (a manifest comes between these and
# class folders: a folder with both is read through its manifest).
FOLDER_KINDS = ("esc50", "vggsound", "vegas")
LAYOUT_NAMES = {"csv": "CSV manifest", "esc50": "ESC-50 folder", "vggsound": "VGGSound folder",
                "vegas": "VEGAS folder", "folders": "class folders"}
REAL_MODELS_NOTE = (
    "models: the built-in tiny ones (builtin:tiny-ast, -clip, -t5) run offline and show that "
    "the pipeline works, not what real encoders learn. For real ones set "
    "feda2v.audio_model_name to MIT/ast-finetuned-audioset-10-10-0.4593, clip_model_name and "
    "t5_model_name to black-forest-labs/FLUX.1-schnell with clip_model_subfolder text_encoder "
    "and t5_model_subfolder text_encoder_2 (a hub id or a local directory; docs/corpora.md, "
    "\"Real ESC-50\", says what they cost)")


@dataclass(frozen=True)
class FoundCorpus:
    """A corpus found on disk: its `dataset.name` and `dataset.path` (absolute)."""

    kind: str
    path: Path


@dataclass
class FirstExperiment:
    """What `write_first_experiment` wrote: the file, its content, and lines saying why."""

    path: Path
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def report(self) -> list[str]:
        """What was written and the commands that come next."""
        return [f"wrote {self.path}", *self.notes, "next:",
                f"  fed-a2v validate {self.path}", f"  fed-a2v simulate --config {self.path}"]


def find_corpus(path: str | Path) -> FoundCorpus:
    """The layout of the corpus at `path`: a CSV manifest file; a folder that is ESC-50,
    VGGSound or VEGAS; a folder holding exactly one CSV manifest; or class folders."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder")
    if path.is_file():
        if not is_manifest(path):
            raise ConfigError(f"{path}: not a CSV manifest (a header with the columns path and "
                              "label, then one row per clip)")
        return FoundCorpus("csv", path)
    for kind in FOLDER_KINDS:
        if corpus_present(kind, path):
            return FoundCorpus(kind, path)
    manifests = sorted(p for p in path.glob("*.csv") if is_manifest(p))
    if len(manifests) > 1:
        raise ConfigError(f"{path}: holds {len(manifests)} CSV manifests "
                          f"({', '.join(p.name for p in manifests)}): pass the one to use")
    if manifests:
        return FoundCorpus("csv", manifests[0])
    if corpus_present("folders", path):
        return FoundCorpus("folders", path)
    raise ConfigError(f"{path}: no corpus found. Expected one of: {EXPECTED['csv']} (columns "
                      f"path,label[,caption,split,fold]); {EXPECTED['esc50']}; "
                      f"{EXPECTED['folders']}")


def experiment_name(text: str) -> str:
    """`text` as a run directory prefix: lower case letters, digits, `_` and `-`."""
    name = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    return name or "experiment"


def nodes_section(classes: list[str], num_nodes: int, split: str) -> dict[str, dict[str, Any]]:
    """`iid`: every node selects every class; `classes`: class i goes to node i mod N, so each
    node has its own classes and every class one node."""
    if split not in SPLITS:
        raise ConfigError(f"split '{split}' must be one of {', '.join(SPLITS)}")
    if num_nodes < 1:
        raise ConfigError(f"--nodes must be at least 1, got {num_nodes}")
    if split == "iid":
        return {str(i): {"selected_classes": list(classes)} for i in range(num_nodes)}
    if len(classes) < num_nodes:
        raise ConfigError(f"--split classes deals {len(classes)} classes over {num_nodes} nodes, "
                          f"so a node would have none: use --nodes {len(classes)} or fewer, or "
                          "--split iid")
    return {str(i): {"selected_classes": classes[i::num_nodes]} for i in range(num_nodes)}


def split_keys(corpus: Corpus) -> tuple[dict[str, Any], str]:
    """The `dataset` keys that make train / test for `corpus`, and a line saying which: none
    where the layout gives every clip's split, its folds where it has two or more (the last one
    held out), else ratios."""
    free = [c for c in corpus.clips if c.split is None]
    if not free:
        return {}, "train/test: each clip's split as the corpus gives it (its split column)"
    folds = sorted({c.fold for c in free})
    given = " (clips with a split in the corpus keep it)" if len(free) < len(corpus.clips) else ""
    if corpus.dealt_folds or 0 in folds or len(folds) < 2:
        why = "the corpus has no folds" if corpus.dealt_folds or 0 in folds else "one fold only"
        return ({"use_folds": False, **RATIOS},
                f"train/test: ratios {RATIOS['train_ratio']:g} / {RATIOS['test_ratio']:g} of "
                f"each node's clips per class ({why}){given}")
    train, test = folds[:-1], folds[-1:]
    return ({"use_folds": True, "train_folds": train, "test_folds": test},
            f"train/test: the corpus's folds, {', '.join(map(str, train))} for training and "
            f"{test[0]} held out{given}")


def clip_seconds(corpus: Corpus) -> tuple[float, list[str]]:
    """`dataset.clip_seconds` for `corpus`: its longest clip, rounded up to 0.1 s, at most
    MAX_CLIP_SECONDS; and lines on its audio (rates, lengths, files libsndfile cannot read)."""
    seconds, rates, unreadable = [], set(), []
    for clip in corpus.clips:
        try:
            info = soundfile.info(str(clip.path))
        except (soundfile.LibsndfileError, RuntimeError, OSError):
            unreadable.append(clip.path)
            continue
        rates.add(info.samplerate)
        seconds.append(info.duration)
    if not seconds:
        raise ConfigError(f"{corpus.root}: none of its {len(corpus.clips)} audio files can be "
                          f"read (e.g. {unreadable[0]})")
    longest = max(seconds)
    chosen = min(MAX_CLIP_SECONDS, max(0.1, math.ceil(longest * 10 - 1e-6) / 10))
    hz = ", ".join(f"{r} Hz" for r in sorted(rates))
    lines = [f"audio: {len(seconds)} files at {hz} (resampled to the encoder's rate on the "
             f"nodes), {min(seconds):.2f}-{longest:.2f} s: clip_seconds {chosen:g} (longer clips "
             "are trimmed, shorter ones padded)"]
    if unreadable:
        lines.append(f"warning: {len(unreadable)} files cannot be read (e.g. {unreadable[0]}); "
                     "the nodes will skip them")
    return chosen, lines


def first_experiment(corpus_path: str | Path, out: str | Path, template: dict[str, Any],
                     num_nodes: int = DEFAULT_NODES, split: str = "iid",
                     rounds: int = DEFAULT_ROUNDS, name: str | None = None) -> FirstExperiment:
    """The experiment for the corpus at `corpus_path` (not written), checked as `fed-a2v
    validate` checks it: the config loads and every node has training clips, none shared.
    `template` (`fed-a2v new` passes configs/quickstart.json) gives the models and the
    experiment, training and adapter settings; the corpus, nodes and rounds are this one's."""
    if rounds < 1:
        raise ConfigError(f"--rounds must be at least 1, got {rounds}")
    found = find_corpus(corpus_path)
    corpus = read_corpus(found.kind, found.path, SEED)
    if not corpus.clips:
        raise ConfigError(f"{found.path}: the {LAYOUT_NAMES[found.kind]} lists no clips")
    if len(corpus.classes) < 2 and not corpus.has_captions:
        raise ConfigError(f"{found.path}: the {LAYOUT_NAMES[found.kind]} has one class only "
                          f"({corpus.classes[0]}); the adapters learn to tell classes apart, so "
                          "a corpus needs two or more (class folders: name the folder that "
                          "holds one folder per class)")
    nodes = nodes_section(corpus.classes, num_nodes, split)
    keys, split_line = split_keys(corpus)
    seconds, audio_lines = clip_seconds(corpus)
    folder = found.path.parent if found.path.is_file() else found.path
    dataset: dict[str, Any] = {"name": found.kind, "path": str(found.path),
                               "partition": "classes" if split == "classes" else "nodes",
                               **keys, "clip_seconds": seconds}
    if not corpus.has_captions:
        dataset["prompt_template"] = "{label}"
    data = {
        "experiment": {**template["experiment"], "name": experiment_name(name or folder.name),
                       "seed": SEED},
        "federation": {**template["federation"], "global_rounds": rounds,
                       "num_clients": num_nodes, "local_epochs": LOCAL_EPOCHS,
                       "min_clients": num_nodes},
        "training": dict(template["training"]),
        "dataset": dataset,
        "feda2v": dict(template["feda2v"]),
        "nodes": nodes,
    }
    source = str(out)
    config = config_from_dict(data, source)
    where = {f"{source}: 'nodes.{k}'": (config.nodes[k], int(k), num_nodes) for k in nodes}
    try:
        shares = check_node_shares(config, where, source)
    except ConfigError as err:
        raise ConfigError(f"{err}\nnothing written to {out}") from None
    notes = [f"corpus: {LAYOUT_NAMES[found.kind]} {found.path} (dataset.name \"{found.kind}\"), "
             f"{len(corpus.classes)} classes, {len(corpus.clips)} clips"
             + (", a caption each (the text targets)" if corpus.has_captions else ""),
             *audio_lines, _nodes_line(split, num_nodes), split_line,
             *(f"  {line}" for line in shares)]
    for key, (node, index, total) in where.items():
        if not split_for_node(corpus, node, index, total, config, key).test:
            notes.append(f"warning: {key}: no held-out clip, so no eval metrics from it")
    notes += [f"rounds: {rounds}, of {LOCAL_EPOCHS} local epochs each, for a first try "
              "(federation.global_rounds, federation.local_epochs)", REAL_MODELS_NOTE]
    return FirstExperiment(Path(out), data, notes)


def _nodes_line(split: str, num_nodes: int) -> str:
    if split == "iid":
        return (f"nodes: {num_nodes}, each with every class (IID); partition \"nodes\" deals "
                "each class's clips into disjoint shards, one per node")
    return (f"nodes: {num_nodes}, classes dealt round-robin, each node its own (non-IID); "
            "partition \"classes\": a node holds every clip of its classes")


def write_first_experiment(corpus_path: str | Path, out: str | Path | None,
                           template: dict[str, Any], num_nodes: int = DEFAULT_NODES,
                           split: str = "iid",
                           rounds: int = DEFAULT_ROUNDS, name: str | None = None,
                           force: bool = False) -> FirstExperiment:
    """Write `first_experiment` to `out` (default: `<experiment name>.json` here); an existing
    file only with `force`."""
    if out is None:
        found = find_corpus(corpus_path)
        folder = found.path.parent if found.path.is_file() else found.path
        out = Path(f"{experiment_name(name or folder.name)}.json")
    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(f"{out} exists: choose another --out, or --force to overwrite it")
    made = first_experiment(corpus_path, out, template, num_nodes, split, rounds, name)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, dumps(made.data) + "\n")
    return made


def dumps(data: Any, indent: str = "") -> str:
    """JSON with objects indented and lists of plain values on one line (class lists stay
    readable)."""
    if isinstance(data, dict) and data:
        inner = indent + "  "
        items = [f"{inner}{json.dumps(k)}: {dumps(v, inner)}" for k, v in data.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(data, list) and any(isinstance(v, (dict, list)) for v in data):
        inner = indent + "  "
        return "[\n" + ",\n".join(inner + dumps(v, inner) for v in data) + f"\n{indent}]"
    return json.dumps(data)
