"""The built-in spoken corpora (English; Italian and German, the confirmation corpora) and the
instrument corpus: generated through the config like `synthetic`, in the ESC-50 layout,
deterministic from the seed, every clip a real sound of its class."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.schema import BUILTIN_DATASETS
from fed_a2v.config.validate import config_from_dict
from fed_a2v.data.builtin.generator import ClipError, Generator, ensure_corpus, over_noise
from fed_a2v.data.builtin.instruments import INSTRUMENTS, playable_keys, soundfont
from fed_a2v.data.builtin.speech import (
    ACCENTS,
    GERMAN_ACCENTS,
    ITALIAN_ACCENTS,
    PALABRAS,
    PAROLE,
    SPANISH_ACCENTS,
    VARIANTS,
    WOERTER,
    WORDS,
    EspeakError,
    speak,
)
from fed_a2v.data.node_corpora import BUILTIN, corpus_index, open_corpus

NEW = ("speech", "instruments", "italian_speech", "german_speech", "spanish_speech")
TINY = {"num_classes": 3, "clips_per_class": 5, "clip_seconds": 1.0, "sample_rate": 16000}


def _config(kind: str, root: Path, seed: int = 0, **changes):
    return config_from_dict({"experiment": {"seed": seed},
                             "dataset": {"name": kind, "path": str(root), **TINY, **changes}})


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module", params=NEW)
def tiny(request, tmp_path_factory):
    """(kind, folder) of a 3 class x 5 clip, 1 s corpus made through the config."""
    root = tmp_path_factory.mktemp(request.param) / "corpus"
    open_corpus(_config(request.param, root))
    return request.param, root


def test_registry_matches_the_config_names():
    assert tuple(BUILTIN) == BUILTIN_DATASETS
    assert len(WORDS) == 20 and len(INSTRUMENTS) == 16
    assert len(PAROLE) == len(WOERTER) == len(PALABRAS) == 12


def test_layout_folds_and_labels(tiny):
    kind, root = tiny
    rows = list(csv.DictReader(open(root / "meta" / "esc50.csv")))
    assert len(rows) == 15
    assert json.loads((root / "meta" / f"{kind}.json").read_text()) == {"seed": 0, **TINY}
    classes = BUILTIN[kind].classes[:3]
    for row in rows:
        assert row["category"] == classes[int(row["target"])]
        audio, rate = soundfile.read(root / "audio" / row["filename"])
        assert rate == 16000 and audio.shape == (16000,)
        assert row["filename"].startswith(f"{row['fold']}-")
    folds = {(r["target"], r["fold"]) for r in rows}
    assert folds == {(str(t), str(f)) for t in range(3) for f in range(1, 6)}
    corpus = open_corpus(_config(kind, root))  # read back, not made again
    assert corpus.classes == list(classes) and len(corpus.clips) == 15


def test_same_seed_same_bytes_other_seed_other_clips(tiny, tmp_path):
    kind, root = tiny
    again = tmp_path / "again"
    open_corpus(_config(kind, again))
    assert _files(again) == _files(root)
    other = tmp_path / "other"
    open_corpus(_config(kind, other, seed=1))
    first, second = _files(root), _files(other)
    wavs = [k for k in first if k.endswith(".wav")]
    assert all(first[k] != second[k] for k in wavs)


def test_a_clip_depends_on_its_seed_alone():
    """eSpeak keeps state between utterances: each clip must not see the clips before it."""
    for kind in NEW:
        gen = BUILTIN[kind]
        label = gen.classes[0]
        alone = gen.make_clip(label, np.random.default_rng([0, 0, 1]), 16000, 16000)
        gen.make_clip(gen.classes[1], np.random.default_rng(5), 16000, 16000)
        after = gen.make_clip(label, np.random.default_rng([0, 0, 1]), 16000, 16000)
        assert np.array_equal(alone, after)
        other = gen.make_clip(gen.classes[1], np.random.default_rng([0, 0, 1]), 16000, 16000)
        assert not np.array_equal(alone, other)  # the class decides what is heard


def test_every_word_and_voice_speaks():
    plain, rate = speak("left", "en", 175, 50, 50)
    assert rate == 22050 and len(plain) > 0.2 * rate
    for word in WORDS:
        assert np.abs(speak(word, "en-us", 175, 50, 50)[0]).max() > 3000, word
    for accent in ACCENTS:
        assert np.abs(speak("stop", accent, 175, 50, 50)[0]).max() > 3000, accent
    for words, accent in ((PAROLE, ITALIAN_ACCENTS[0]), (WOERTER, GERMAN_ACCENTS[0]),
                          (PALABRAS, SPANISH_ACCENTS[0])):
        for word in words:  # the confirmation corpora's words, each in its own voice
            assert np.abs(speak(word, accent, 175, 50, 50)[0]).max() > 3000, word
    # Italian phonemes, not English ones: the same spelling sounds different
    assert not np.array_equal(speak("mare", "it", 175, 50, 50)[0],
                              speak("mare", "en", 175, 50, 50)[0])
    for variant in VARIANTS[1:]:
        # eSpeak falls back to the plain voice for a variant it does not know.
        wave = speak("left", f"en+{variant}", 175, 50, 50)[0]
        assert not np.array_equal(wave, plain), variant
    with pytest.raises(EspeakError, match="no voice 'zz'"):
        speak("left", "zz", 175, 50, 50)


def test_every_instrument_sounds_across_its_range_and_each_its_own_way():
    font = soundfont()
    spectra = []
    for name, inst in INSTRUMENTS.items():
        keys = playable_keys(name)
        assert len(keys) >= 0.9 * (inst.high - inst.low + 1), name
        for key in keys:
            assert font.zones(inst.program, key, 35) and font.zones(inst.program, key, 127)
        low, high = (font.note(inst.program, key, 100, 0.5, 16000)[:8000]
                     for key in (keys[0], keys[-1]))
        assert np.abs(low).max() > 0.01 and np.abs(high).max() > 0.01, name
        assert _centroid(high) > _centroid(low) + 50, name  # its pitch follows the key
        spectra.append(_log_spectrum(font.note(inst.program, 67, 100, 0.5, 16000)[:8000]))
    similar = np.corrcoef(spectra)
    np.fill_diagonal(similar, 0)
    assert similar.max() < 0.95  # no two instruments sound alike on the same note


def _log_spectrum(wave: np.ndarray) -> np.ndarray:
    return np.log(np.abs(np.fft.rfft(wave, 16000))[50:4000] + 1e-6)


def _centroid(wave: np.ndarray, rate: int = 16000) -> float:
    power = np.abs(np.fft.rfft(wave)) ** 2
    return float((np.fft.rfftfreq(len(wave), 1 / rate) * power).sum() / power.sum())


def test_a_failed_clip_names_its_class_and_clip_and_leaves_nothing(tmp_path):
    def make(label, rng, rate, n):
        sound = np.zeros(n) if label == "quiet" else np.sin(np.arange(n) / 5)
        return over_noise(sound, rng, rate, (0.0, 10.0), (0.5, 0.9))

    broken = Generator("broken", ("loud", "quiet"), make)
    with pytest.raises(ClipError, match=r"class 'quiet', clip 0: .*silent"):
        ensure_corpus(broken, tmp_path / "c", 0, 2, 5, 0.5, 8000)
    assert not list(tmp_path.iterdir())


def test_config_errors(tmp_path, monkeypatch):
    for kind, most in (("synthetic", 12), ("speech", 20), ("instruments", 16),
                       ("italian_speech", 12), ("german_speech", 12),
                       ("spanish_speech", 12)):
        with pytest.raises(ConfigError, match=rf"'dataset.num_classes': {most + 1} is above "
                                              rf"the {most} classes of the built-in {kind}"):
            _config(kind, tmp_path, num_classes=most + 1)
        _config(kind, tmp_path, num_classes=most)
    with pytest.raises(ConfigError, match="'dataset.num_classes'"):
        config_from_dict({"dataset": {"name": "mixed", "num_classes": 17},
                          "nodes": {"0": {"dataset": "instruments"}}})
    monkeypatch.chdir(tmp_path)
    config = config_from_dict({"dataset": {"name": "speech", **TINY}})
    assert config.dataset_path() == "data/speech-seed0-3x5-1s-16000hz"
    index = corpus_index(config)  # the server's view: classes without generating
    assert index.classes == ["yes", "no", "up"] and not (tmp_path / "data").exists()


def test_a_folder_holds_one_corpus_and_one_setting(tiny, tmp_path):
    kind, root = tiny
    with pytest.raises(ConfigError, match=f"holds a {kind} corpus made with"):
        open_corpus(_config(kind, root, clips_per_class=6))
    other = next(k for k in NEW if k != kind)
    with pytest.raises(ConfigError, match=f"exists and is not a {other} corpus"):
        open_corpus(_config(other, root))
