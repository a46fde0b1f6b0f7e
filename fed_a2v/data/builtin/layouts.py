"""The built-in generated sounds written in the other corpus layouts (upstream's ESC-50 folds,
official ESC-50, VEGAS, VGGSound) under chosen class names, for tests and trial runs without
the real corpora: `write_layout(root, "vegas", VEGAS_CLASSES, 20)`.

Class k sounds like the generator's k-th kind (`synthetic.SOUNDS`, 12 kinds, then round again);
clip i of class k is the same audio in every layout (seeded by seed, k, i).
"""

from __future__ import annotations

import csv
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.data.builtin.synthetic import NUM_FOLDS, SOUNDS, synthesize_clip

LAYOUTS = ("esc50", "esc50-upstream", "vegas", "vggsound")


def vggsound_split(i: int) -> str:
    """The split `write_layout` gives clip i of each class in the VGGSound layout."""
    return "test" if i % NUM_FOLDS == NUM_FOLDS - 1 else "train"


def write_layout(root: str | Path, layout: str, classes: Sequence[str], clips_per_class: int,
                 seed: int = 0, clip_seconds: float = 5.0, sample_rate: int = 16000,
                 captions: bool = False) -> Path:
    """Write `clips_per_class` clips of each class in `layout` under `root` (which must not
    hold files yet); return `root`. Folds: clip i is in fold i % 5 + 1 (upstream's fold0K holds
    fold K + 1). VGGSound: every fifth clip is in the test split. `captions` writes
    captions.json (ESC-50 upstream, VGGSound) with one caption per clip."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout '{layout}' is not one of {', '.join(LAYOUTS)}")
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"{root}: exists and is not empty; choose another folder")
    kinds = list(SOUNDS)
    n = round(clip_seconds * sample_rate)
    writer = {"esc50": _Esc50, "esc50-upstream": _Esc50Upstream, "vegas": _Vegas,
              "vggsound": _VggSound}[layout](root)
    for target, name in enumerate(classes):
        for i in range(clips_per_class):
            path = writer.clip(target, name, i)
            path.parent.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, target, i])
            audio = synthesize_clip(kinds[target % len(kinds)], rng, sample_rate, n)
            soundfile.write(path, audio, sample_rate, subtype="PCM_16")
            if captions:
                writer.captions[path.stem] = f"{name.replace('_', ' ')} sound, take {i}"
    writer.finish(list(classes))
    if captions and writer.captions_file:
        _write_json(root / "captions.json", writer.captions)
    return root


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def _write_csv(path: Path, rows: list[list[object]], header: list[str] | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        if header:
            out.writerow(header)
        out.writerows(rows)


class _Layout(ABC):
    captions_file = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.rows: list[list[object]] = []
        self.captions: dict[str, str] = {}

    @abstractmethod
    def clip(self, target: int, name: str, i: int) -> Path:
        """Where clip i of class `name` goes; notes it for the metadata."""

    @abstractmethod
    def finish(self, classes: list[str]) -> None:
        """Write the metadata files."""


class _Esc50(_Layout):
    """meta/esc50.csv and audio/, as `synthetic.ensure_synthetic_corpus` writes it."""

    captions_file = False  # the official layout has none

    def clip(self, target: int, name: str, i: int) -> Path:
        fold = i % NUM_FOLDS + 1
        filename = f"{fold}-{target:02d}{i:04d}-A-{target}.wav"
        self.rows.append([filename, fold, target, name, "False", f"{target:02d}{i:04d}", "A"])
        return self.root / "audio" / filename

    def finish(self, classes: list[str]) -> None:
        _write_csv(self.root / "meta" / "esc50.csv", self.rows,
                   ["filename", "fold", "target", "category", "esc10", "src_file", "take"])


class _Esc50Upstream(_Layout):
    """class_labels.json, fold0K.json ({file: [class]}) and audio/fold0K/."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.folds: dict[int, dict[str, list[str]]] = {k: {} for k in range(NUM_FOLDS)}

    def clip(self, target: int, name: str, i: int) -> Path:
        fold = i % NUM_FOLDS  # upstream's 0-based fold number
        filename = f"{fold + 1}-{target:02d}{i:04d}-A-{target}.wav"
        self.folds[fold][filename] = [name]
        return self.root / "audio" / f"fold0{fold}" / filename

    def finish(self, classes: list[str]) -> None:
        _write_json(self.root / "class_labels.json", {c: k for k, c in enumerate(classes)})
        for fold, files in self.folds.items():
            _write_json(self.root / f"fold0{fold}.json", files)


class _Vegas(_Layout):
    """<class>/audios/video_XXXXX.wav with <class>/video_info.csv (row i is video_{i:05d})."""

    captions_file = False  # upstream keys VEGAS captions by video id, which repeats per class

    def clip(self, target: int, name: str, i: int) -> Path:
        self.rows.append([name, f"vegas{target:02d}{i:05d}", 10 * i, 10 * i + 10])
        return self.root / name / "audios" / f"video_{i:05d}.wav"

    def finish(self, classes: list[str]) -> None:
        for name in classes:
            rows = [row[1:] for row in self.rows if row[0] == name]
            _write_csv(self.root / name / "video_info.csv", rows,
                       ["YTID", "start_second", "end_second"])


class _VggSound(_Layout):
    """vggsound.csv (ytid,start,label,split; no header) and {train,test}/audios/."""

    def clip(self, target: int, name: str, i: int) -> Path:
        ytid, start, split = f"yt_{target:02d}-{i:04d}", 10 * i, vggsound_split(i)
        self.rows.append([ytid, start, name.replace("_", " "), split])
        return self.root / split / "audios" / f"{ytid}_{start:06d}.wav"

    def finish(self, classes: list[str]) -> None:
        _write_csv(self.root / "vggsound.csv", self.rows, None)
