"""How a built-in corpus is written: generated once, deterministically from the seed, into
`meta/esc50.csv` + `audio/*.wav` (folds 1-5), so the loader that reads real ESC-50 reads it.

A `Generator` names its classes and makes one clip of a class from a random generator seeded by
(seed, class, clip): every clip depends on those alone. The background noise that the speech and
instrument corpora put under their sounds is here too.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from tqdm import tqdm

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.validate import check_num_classes

log = logging.getLogger(__name__)

NUM_FOLDS = 5
# (class name, rng, sample rate, samples) -> the clip, float in [-1, 1].
ClipMaker = Callable[[str, np.random.Generator, int, int], np.ndarray]


@dataclass(frozen=True)
class Generator:
    """A built-in corpus: its `dataset.name`, its classes in target order, its clip maker."""

    name: str
    classes: tuple[str, ...]
    make_clip: ClipMaker
    # What a corpus of this kind is, for errors and the README.
    description: str = ""


class ClipError(RuntimeError):
    """One clip of a built-in corpus could not be made."""


def ensure_corpus(
    generator: Generator, root: str | Path, seed: int, num_classes: int,
    clips_per_class: int, clip_seconds: float, sample_rate: int,
) -> Path:
    """Write `generator`'s corpus under `root` unless it is already there with the same
    settings; raise ClipError naming the class and clip if one clip cannot be made."""
    root = Path(root)
    name = generator.name
    check_num_classes(generator.name, len(generator.classes), num_classes, "'dataset.num_classes'")
    settings = {"seed": seed, "num_classes": num_classes, "clips_per_class": clips_per_class,
                "clip_seconds": clip_seconds, "sample_rate": sample_rate}
    marker = root / "meta" / f"{name}.json"
    if marker.exists():
        found = json.loads(marker.read_text())
        if found != settings:
            raise ConfigError(
                f"{root}: holds a {name} corpus made with {found}, but the config asks for "
                f"{settings}; leave 'dataset.path' out (each setting then gets its own "
                f"folder), set it to another folder, or delete this one"
            )
        return root
    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"{root}: exists and is not a {name} corpus; choose another path")

    # Build in a private folder, then rename: nodes starting together never see half a corpus.
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "audio").mkdir(parents=True)
    (tmp / "meta").mkdir()
    names = generator.classes[:num_classes]
    n = round(clip_seconds * sample_rate)
    rows = []
    jobs = [(t, label, i) for t, label in enumerate(names) for i in range(clips_per_class)]
    try:
        for target, label, i in tqdm(jobs, desc=f"{name} corpus", unit="clip",
                                     disable=None, leave=False):
            fold = i % NUM_FOLDS + 1
            filename = f"{fold}-{target:02d}{i:04d}-A-{target}.wav"
            audio = _clip(generator, label, i, np.random.default_rng([seed, target, i]),
                          sample_rate, n)
            soundfile.write(tmp / "audio" / filename, audio, sample_rate, subtype="PCM_16")
            rows.append([filename, fold, target, label, "False", f"{target:02d}{i:04d}", "A"])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with open(tmp / "meta" / "esc50.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        writer.writerows(rows)
    (tmp / "meta" / f"{name}.json").write_text(json.dumps(settings))
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        if root.exists():
            root.rmdir()  # an empty folder left for us
        tmp.rename(root)
        log.info("wrote %s corpus: %d clips, %d classes, in %s", name, len(rows), len(names),
                 root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
        if not marker.exists():
            raise
    return root


def _clip(generator: Generator, label: str, index: int, rng: np.random.Generator,
          sample_rate: int, n: int) -> np.ndarray:
    """One clip, checked: `n` finite samples in [-1, 1], not silent."""
    where = f"{generator.name} corpus, class '{label}', clip {index}"
    try:
        audio = np.asarray(generator.make_clip(label, rng, sample_rate, n), dtype=np.float32)
    except Exception as err:
        raise ClipError(f"{where}: {err}") from err
    if audio.shape != (n,) or not np.isfinite(audio).all() or not np.abs(audio).max() > 0:
        raise ClipError(f"{where}: made no usable audio (shape {audio.shape}, "
                        f"finite {bool(np.isfinite(audio).all())})")
    return audio.clip(-1, 1)


# ---------------------------------------------------------------------------------------------
# Background noise: what the speech and instrument corpora put their sounds over.

NOISES = ("white", "pink", "brown", "hum")


def noise(kind: str, rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """`n` samples of unit-RMS noise: white, pink (1/f), brown (1/f²) or mains hum (50 or
    60 Hz and its harmonics) over a white floor."""
    white = rng.standard_normal(n)
    if kind == "hum":
        t = np.arange(n) / sample_rate
        mains = rng.choice([50.0, 60.0])
        out = sum(rng.uniform(0.2, 1.0) * np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 6))
                  for k in range(1, 6)) + 0.1 * white
    elif kind in ("pink", "brown"):
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(n, 1 / sample_rate)
        power = 1.0 if kind == "pink" else 2.0
        spectrum /= np.maximum(freqs, 20.0) ** (power / 2)  # below 20 Hz held flat
        out = np.fft.irfft(spectrum, n)
    elif kind == "white":
        out = white
    else:
        raise ValueError(f"no noise '{kind}'; one of {', '.join(NOISES)}")
    return out / (np.sqrt(np.mean(out ** 2)) + 1e-12)


def over_noise(sound: np.ndarray, rng: np.random.Generator, sample_rate: int,
               snr_db: tuple[float, float], peak: tuple[float, float]) -> np.ndarray:
    """`sound` over a random kind of noise at a random SNR (dB, against the sound's RMS over
    the span it is heard), the mix scaled to a random peak. A silent `sound` is an error."""
    loud = np.flatnonzero(np.abs(sound) > 0.01 * np.abs(sound).max(initial=0.0))
    if not loud.size or not np.isfinite(sound).all():
        raise ValueError("the synthesised sound is silent or not finite")
    rms = np.sqrt(np.mean(sound[loud[0]:loud[-1] + 1] ** 2))
    kind = NOISES[rng.integers(len(NOISES))]
    level = rms / 10 ** (rng.uniform(*snr_db) / 20)
    mix = sound + level * noise(kind, rng, len(sound), sample_rate)
    return (mix / np.abs(mix).max() * rng.uniform(*peak)).astype(np.float32)
