"""The audio files a corpus's metadata names: those missing from disk (checked before a run),
and the labels the metadata in or above a folder of clips gives them (`fed-a2v generate
--audio DIR`)."""

from __future__ import annotations

import logging
from pathlib import Path

from fed_a2v.config.schema import BUILTIN_DATASETS
from fed_a2v.data.corpora import (
    Corpus,
    is_manifest,
    json_object,
    manifest_path,
    read_esc50,
    read_manifest,
)

log = logging.getLogger(__name__)

SHOWN = 10  # missing files named in an error; the rest are counted


def _fold_lists(root: Path) -> dict[Path, list[Path]]:
    """Upstream's ESC-50 layout: each `fold0K.json` names files in `audio/fold0K/`."""
    listed = {}
    for fold_file in sorted(root.glob("fold0[0-9].json")):
        names = json_object(fold_file)
        listed[fold_file] = [root / "audio" / fold_file.stem / name for name in names]
    return listed


def listed_files(kind: str, root: Path, seed: int = 0) -> dict[Path, list[Path]]:
    """The audio files the metadata of the corpus of `kind` at `root` names, by the file naming
    them: a manifest's rows, ESC-50's `meta/esc50.csv` rows, upstream's `fold0K.json` lists (the
    built-in corpora are in ESC-50's layout). Other kinds: none (class folders list what is
    there; VEGAS's and VGGSound's lists name the whole public corpus, of which a download
    usually lacks some, and their readers leave those clips out with a warning)."""
    if kind == "csv":
        manifest = manifest_path(root)
        return {manifest: [c.path for c in read_manifest(manifest, seed).clips]}
    if kind not in ("esc50", *BUILTIN_DATASETS):
        return {}
    meta = root / "meta" / "esc50.csv"
    if meta.is_file():
        return {meta: [c.path for c in read_esc50(root).clips]}
    if (root / "class_labels.json").is_file():
        return _fold_lists(root)
    return {}


def missing_files(kind: str, root: Path, seed: int = 0) -> dict[Path, list[Path]]:
    """The audio files the corpus's metadata names that do not exist, by the file naming them
    (only files with some missing)."""
    missing = {}
    for listing, paths in listed_files(kind, root, seed).items():
        absent = [p for p in paths if not p.is_file()]
        if absent:
            missing[listing] = absent
    return missing


def missing_message(where: str, missing: dict[Path, list[Path]]) -> str:
    """An error naming each metadata file, its missing audio files (the first `SHOWN`) and how
    many there are."""
    parts = []
    for listing, paths in missing.items():
        shown = "".join(f"\n  {p}" for p in paths[:SHOWN])
        more = f"\n  ... and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
        parts.append(f"{listing} names {len(paths)} audio file{'s' * (len(paths) > 1)} that "
                     f"do{'es' * (len(paths) == 1)} not exist:{shown}{more}")
    return (f"{where}: " + "\n".join(parts) + "\nfix the paths, add the files or remove their "
            "rows")


def _labelled_corpora(folder: Path) -> list[Corpus]:
    """The labelled metadata in `folder`: ESC-50's (`meta/esc50.csv`, or upstream's
    `class_labels.json` with `fold0K.json`), then each CSV manifest (`path,label` columns)."""
    found = []
    if (folder / "meta" / "esc50.csv").is_file() or (folder / "class_labels.json").is_file():
        found.append(read_esc50(folder))
    found += [read_manifest(csv_file) for csv_file in sorted(folder.glob("*.csv"))
              if is_manifest(csv_file)]
    return found


def labels_near(folder: Path, levels: int = 2) -> dict[Path, str]:
    """Labels (resolved path -> label) that metadata in `folder` or up to `levels` folders above
    it gives: ESC-50's `meta/esc50.csv` or upstream's `class_labels.json` + `fold0K.json`, and
    CSV manifests (any `*.csv` with `path` and `label` columns). The nearest folder wins."""
    labels: dict[Path, str] = {}
    folder = folder.resolve()
    for where in [folder, *folder.parents][:levels + 1]:
        for corpus in _labelled_corpora(where):
            for clip in corpus.clips:
                labels.setdefault(clip.path.resolve(), clip.label)
    return labels
