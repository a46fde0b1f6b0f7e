"""Corpus readers: each supported folder layout becomes a `Corpus` of `Clip`s.

ESC-50 in its official layout (`meta/esc50.csv`) or in upstream's (`class_labels.json`,
`fold00.json`..`fold04.json`), VEGAS (class folders), VGGSound (`vggsound.csv` beside
`train/audios`, `test/audios`), CSV manifests and plain class folders (`<class>/*.wav`).
docs/upstream-config.md, "Corpus layouts", describes each one. Clips of a manifest without a
`fold` or `split`, and of class folders, are dealt into folds 1-5 per class, seeded.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.schema import BUILTIN_DATASETS

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Upstream's VEGAS classes; a VEGAS folder may hold any subset (or other classes).
VEGAS_CLASSES = ("baby_cry", "chainsaw", "dog", "drum", "fireworks", "helicopter", "printer",
                 "rail_transport", "snoring", "water_flowing")
NUM_ESC50_FOLDS = 5
# What a class-folders corpus reads (compared in lower case); libsndfile decodes them all.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


@dataclass(frozen=True)
class Clip:
    path: Path
    label: str
    fold: int  # the corpus's own fold number (ESC-50: 1-5); 0 where the corpus has no folds
    caption: str | None = None  # its own text target, where the corpus has one
    split: str | None = None  # "train"/"val"/"test" when the layout decides, else folds do


@dataclass(frozen=True)
class Corpus:
    root: Path
    classes: list[str]  # index = class id
    clips: list[Clip]
    dealt_folds: bool = False  # folds dealt by `_assign_folds`, not given by the corpus

    @property
    def has_captions(self) -> bool:
        return any(c.caption for c in self.clips)


def read_esc50(root: str | Path) -> Corpus:
    """ESC-50 under `root`: the official layout (`meta/esc50.csv`) or upstream's
    (`class_labels.json` and `fold0K.json`, audio in `audio/fold0K/`; fold0K is fold K+1)."""
    root = Path(root)
    if (root / "meta" / "esc50.csv").exists():
        return _read_esc50_csv(root)
    if (root / "class_labels.json").exists():
        return _read_esc50_folds(root)
    raise ConfigError(f"{root}: no ESC-50 corpus: expected meta/esc50.csv (the official layout) "
                      "or class_labels.json with fold00.json..fold04.json (upstream's layout)")


def _read_esc50_csv(root: Path) -> Corpus:
    meta = root / "meta" / "esc50.csv"
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


def _read_esc50_folds(root: Path) -> Corpus:
    labels_file = root / "class_labels.json"
    labels = json_object(labels_file)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
        raise ConfigError(f"{labels_file}: must map each class name to an integer label")
    classes = sorted(labels, key=lambda name: labels[name])
    captions = _captions(root)
    fold_files = sorted(root.glob("fold0[0-9].json"))
    if not fold_files:
        raise ConfigError(f"{root}: class_labels.json is there but no fold00.json..fold04.json")
    clips, missing = [], 0
    for fold_file in fold_files:
        fold = int(fold_file.stem[-1]) + 1  # upstream counts folds from 0, ESC-50 from 1
        for filename, names in json_object(fold_file).items():
            if not isinstance(names, list) or not names or names[0] not in labels:
                raise ConfigError(f"{fold_file}: '{filename}' must map to a list whose first "
                                  f"element is a class of class_labels.json, got {names!r}")
            path = root / "audio" / fold_file.stem / filename
            if not path.exists():
                missing += 1
                continue
            clips.append(Clip(path, names[0], fold, captions.get(Path(filename).stem)))
    _note_missing(root, missing, "listed in fold0K.json")
    return Corpus(root, classes, clips)


def read_vegas(root: str | Path) -> Corpus:
    """VEGAS: `<root>/<class>/audios/video_XXXXX.wav`, numbered by the row of
    `<root>/<class>/video_info.csv` (or every wav there without it). No folds."""
    root = Path(root)
    folders = sorted(d for d in root.iterdir()
                     if (d / "audios").is_dir() or (d / "video_info.csv").is_file()) \
        if root.is_dir() else []
    if not folders:
        raise ConfigError(f"{root}: no VEGAS corpus: expected class folders holding "
                          "audios/video_XXXXX.wav (and video_info.csv)")
    clips, missing = [], 0
    for folder in folders:
        info = folder / "video_info.csv"
        if info.is_file():
            count = sum(1 for _ in _rows(info, ()))
            ids = [f"video_{i:05d}" for i in range(count)]
        else:
            ids = sorted(p.stem for p in (folder / "audios").glob("*.wav"))
        for video_id in ids:
            path = folder / "audios" / f"{video_id}.wav"
            if path.exists():
                clips.append(Clip(path, folder.name, 0))
            else:
                missing += 1
    _note_missing(root, missing, "listed in video_info.csv")
    unknown = [d.name for d in folders if d.name not in VEGAS_CLASSES]
    if unknown:
        log.info("%s: classes beyond upstream's VEGAS ten: %s", root, ", ".join(unknown))
    return Corpus(root, [d.name for d in folders], clips)


def vggsound_class(label: str) -> str:
    """A VGGSound label as upstream names the class: lower case, spaces as underscores."""
    return label.strip().lower().replace(" ", "_")


def read_vggsound(root: str | Path) -> Corpus:
    """VGGSound: the official `vggsound.csv` (ytid,start,label,split; no header) gives each
    clip's class and split; audio at `<root>/{train,test}/audios/{ytid}_{start}.wav` (the start
    may be zero-padded). Clips of the CSV without audio are left out."""
    root = Path(root)
    meta = root / "vggsound.csv"
    if not meta.exists():
        raise ConfigError(f"{meta}: not found; a VGGSound folder holds vggsound.csv and "
                          "train/audios, test/audios")
    audio: dict[tuple[str, int], Path] = {}
    for folder in ("train", "test"):
        for path in sorted((root / folder / "audios").glob("*.wav")):
            ytid, _, start = path.stem.rpartition("_")
            if ytid and start.isdigit():
                audio[(ytid, int(start))] = path
    clips, classes, listed, moved = [], set(), set(), 0
    with open(meta, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) != 4 or not row[1].strip().isdigit():
                if line == 1:
                    continue  # a header line
                raise ConfigError(f"{meta}: line {line}: expected ytid,start,label,split, "
                                  f"got {','.join(row)}")
            ytid, start, label, split = (v.strip() for v in row)
            if split not in ("train", "test"):
                raise ConfigError(f"{meta}: line {line}: split '{split}' must be train or test")
            classes.add(vggsound_class(label))
            key = (ytid, int(start))
            listed.add(key)
            if key in audio:
                moved += audio[key].parent.parent.name != split
                clips.append(Clip(audio[key], vggsound_class(label), 0, None, split))
    captions = _captions(root)
    if captions:
        clips = [Clip(c.path, c.label, c.fold, captions.get(c.path.stem), c.split) for c in clips]
    _note_missing(root, len(listed) - len(clips), "listed in vggsound.csv")
    if unlisted := len(set(audio) - listed):
        log.warning("%s: %d wav files are not in vggsound.csv and are left out", root, unlisted)
    if moved:
        log.warning("%s: %d clips sit in the other split's folder; vggsound.csv decides", root,
                    moved)
    return Corpus(root, sorted(classes), clips)


MANIFEST_COLUMNS = ("path", "label")  # the columns every manifest has


def manifest_path(root: Path) -> Path:
    """The manifest a `csv` corpus path means: the file, or a folder's `manifest.csv`."""
    return root / "manifest.csv" if root.is_dir() else root


def is_manifest(path: Path) -> bool:
    """Whether `path` is a CSV file whose header names the `MANIFEST_COLUMNS`."""
    if path.suffix.lower() != ".csv":
        return False
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError):
        return False
    return set(MANIFEST_COLUMNS) <= {name.strip() for name in header}


def read_manifest(path: str | Path, seed: int = 0) -> Corpus:
    """Read a CSV manifest: `path,label` and optional `caption`, `split`, `fold` columns.

    Audio paths are relative to the manifest's folder unless absolute. Clips without `split`
    or `fold` are dealt into folds 1-5 per class, seeded, so the fold settings apply.
    """
    path = manifest_path(Path(path))
    if not path.exists():
        raise ConfigError(f"{path}: manifest not found")
    clips = []
    for line, row in _rows(path, MANIFEST_COLUMNS):
        split = (row.get("split") or "").strip().lower() or None
        if split is not None and split not in SPLITS:
            raise ConfigError(f"{path}: line {line}: split '{split}' must be one of "
                              f"{', '.join(SPLITS)}")
        try:
            fold = int(row["fold"]) if row.get("fold") else 0
        except ValueError as err:
            raise ConfigError(f"{path}: line {line}: fold '{row['fold']}' is not a number") from err
        audio = Path(row["path"])
        clips.append(Clip(audio if audio.is_absolute() else path.parent / audio,
                          row["label"].strip(), fold, (row.get("caption") or "").strip() or None,
                          split))
    dealt = any(c.fold == 0 and c.split is None for c in clips)
    if dealt:
        clips = _assign_folds(clips, seed)
    return Corpus(path.parent, sorted({c.label for c in clips}), clips, dealt)


def read_folders(root: str | Path, seed: int = 0) -> Corpus:
    """Class folders: `<root>/<class>/*.wav|flac|ogg|mp3`, the class being the folder's name
    (sorted). Only the files right inside a class folder are read; hidden ones are not. No
    folds of its own: clips are dealt into folds 1-5 per class, seeded, as for a manifest
    without `fold` or `split`."""
    root = Path(root)
    folders = _class_folders(root)
    if not folders:
        raise ConfigError(f"{root}: no class folders with audio: expected {EXPECTED['folders']}")
    if root.is_dir():
        loose = sum(p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES for p in root.iterdir())
        if loose:
            log.warning("%s: %d audio files lie outside any class folder and are left out",
                        root, loose)
    clips = [Clip(path, folder.name, 0) for folder, files in folders for path in files]
    return Corpus(root, [folder.name for folder, _ in folders], _assign_folds(clips, seed), True)


def _class_folders(root: Path) -> list[tuple[Path, list[Path]]]:
    """Each visible folder of `root` holding audio files, with those files, sorted."""
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.suffix.lower() in AUDIO_SUFFIXES)
        if files:
            found.append((folder, files))
    return found


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
            folds[i] = folds[i] or rank % NUM_ESC50_FOLDS + 1
    return [Clip(c.path, c.label, f, c.caption, c.split) for c, f in zip(clips, folds, strict=True)]


def json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; a clear error naming it otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a JSON object")
    return data


def _captions(root: Path) -> dict[str, str]:
    """`<root>/captions.json`, {file name without .wav: caption}, if there."""
    path = root / "captions.json"
    if not path.exists():
        return {}
    captions = json_object(path)
    if not all(isinstance(v, str) for v in captions.values()):
        raise ConfigError(f"{path}: every caption must be a string")
    return captions


def _note_missing(root: Path, missing: int, where: str) -> None:
    if missing:
        log.warning("%s: %d clips %s have no audio file and are left out", root, missing, where)


# Each corpus kind: its reader, and the file whose presence says the corpus is there.
def read_corpus(kind: str, root: Path, seed: int) -> Corpus:
    """The corpus of `kind` (a built-in one, "esc50", "csv", "vegas", "vggsound", "folders")
    at `root`."""
    if kind == "csv":
        return read_manifest(root, seed)
    if kind == "folders":
        return read_folders(root, seed)
    if kind == "vegas":
        return read_vegas(root)
    if kind == "vggsound":
        return read_vggsound(root)
    return read_esc50(root)


def corpus_present(kind: str, root: Path) -> bool:
    """Whether a corpus of `kind` is at `root` (its metadata, not checked further)."""
    if kind == "csv":
        return manifest_path(root).exists()
    if kind == "vegas":
        return root.is_dir() and any((d / "audios").is_dir() or (d / "video_info.csv").is_file()
                                     for d in root.iterdir())
    if kind == "vggsound":
        return (root / "vggsound.csv").exists()
    if kind == "folders":
        return bool(_class_folders(root))
    return (root / "meta" / "esc50.csv").exists() or (root / "class_labels.json").exists()


EXPECTED = {**dict.fromkeys(BUILTIN_DATASETS, "a folder with meta/esc50.csv (generated on "
                                               "first use)"),
            "esc50": "a folder with meta/esc50.csv and audio/, or upstream's class_labels.json, "
                     "fold00.json..fold04.json and audio/fold0K/",
            "csv": "a CSV manifest, or a folder holding manifest.csv",
            "vegas": "a folder of class folders holding audios/video_XXXXX.wav",
            "vggsound": "a folder holding vggsound.csv and train/audios, test/audios",
            "folders": "a folder of class folders holding audio files (<class>/*.wav, .flac, "
                       ".ogg or .mp3)"}
