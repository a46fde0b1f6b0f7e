"""The built-in `instruments` corpus: short phrases of sampled General MIDI instruments over noise.

Each clip is a few notes of one instrument from the General MIDI SoundFont that the
`pretty-midi` wheel ships (TimGM6mb.sf2), rendered by `soundfont.SoundFont`: a random melody in
the instrument's own range, random tempo, note lengths and velocities, starting at a random
moment, mixed over random noise at a random SNR.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fed_a2v.data.builtin.generator import Generator, over_noise
from fed_a2v.data.builtin.soundfont import SoundFont, load_soundfont
from fed_a2v.extras import require


class Instrument(NamedTuple):
    program: int  # General MIDI program, 0-based
    low: int  # the lowest and highest MIDI key its melodies use
    high: int


# The first `num_classes` are used; ten families of the General MIDI set come first.
INSTRUMENTS = {
    "piano": Instrument(0, 40, 88),
    "violin": Instrument(40, 55, 93),
    "trumpet": Instrument(56, 55, 82),
    "flute": Instrument(73, 60, 96),
    "acoustic_guitar": Instrument(24, 40, 76),
    "church_organ": Instrument(19, 36, 84),
    "cello": Instrument(42, 36, 72),
    "clarinet": Instrument(71, 50, 89),
    "marimba": Instrument(12, 48, 84),
    "saxophone": Instrument(65, 49, 81),
    "harp": Instrument(46, 36, 91),
    "banjo": Instrument(105, 48, 79),
    "trombone": Instrument(57, 40, 72),
    "oboe": Instrument(68, 58, 91),
    "accordion": Instrument(21, 48, 84),
    "xylophone": Instrument(13, 65, 96),
}
SOUNDFONT = "TimGM6mb.sf2"
SOUNDFONT_MODULE = "pretty_midi"  # ships it; comes with the `corpora` extra
TEMPO_BPM = (70, 160)
NOTES = (1, 6)  # notes per phrase
BEATS = (0.5, 1.0, 1.5, 2.0)  # note lengths
STEPS = (-5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5)  # playable keys from one note to the next
VELOCITY = (45, 120)
JITTER = 10  # a note's velocity differs from the phrase's by up to this
SNR_DB = (5.0, 25.0)
PEAK = (0.2, 0.9)


def soundfont() -> SoundFont:
    """The General MIDI SoundFont of the `pretty-midi` wheel, read once per process."""
    require("corpora", SOUNDFONT_MODULE, what="the built-in instruments corpus")
    spec = importlib.util.find_spec(SOUNDFONT_MODULE)
    path = Path(spec.submodule_search_locations[0]) / SOUNDFONT
    if not path.exists():
        raise FileNotFoundError(f"the instruments corpus needs {SOUNDFONT}, which the "
                                f"pretty-midi wheel ships; {path} is missing")
    return load_soundfont(str(path))


@cache
def playable_keys(name: str) -> tuple[int, ...]:
    """The keys of instrument `name`'s range that the SoundFont has samples for at every
    velocity a clip uses (TimGM6mb's saxophone lacks one)."""
    inst, font = INSTRUMENTS[name], soundfont()
    softest = max(1, VELOCITY[0] - JITTER)
    keys = tuple(k for k in range(inst.low, inst.high + 1)
                 if all(font.zones(inst.program, k, v) for v in (softest, 127)))
    if not keys:
        raise ValueError(f"{font.path} has no samples for {name} in keys {inst.low}-{inst.high}")
    return keys


def instrument_clip(name: str, rng: np.random.Generator, sample_rate: int,
                    n: int) -> np.ndarray:
    """One clip of instrument `name`: a random phrase, placed at a random start, over noise."""
    program, keys, font = INSTRUMENTS[name].program, playable_keys(name), soundfont()
    beat = 60.0 / rng.uniform(*TEMPO_BPM)
    velocity = rng.integers(*VELOCITY, endpoint=True)
    at = int(rng.integers(len(keys)))
    onset = rng.uniform(0.0, 0.3) * n / sample_rate
    out = np.zeros(n, np.float32)
    for _ in range(rng.integers(*NOTES, endpoint=True)):
        start = round(onset * sample_rate)
        if start >= n:
            break
        length = beat * BEATS[rng.integers(len(BEATS))]
        jitter = rng.integers(-JITTER, JITTER, endpoint=True)
        note = font.note(program, keys[at], int(np.clip(velocity + jitter, 1, 127)),
                         0.9 * length, sample_rate)[:n - start]
        out[start:start + len(note)] += note
        onset += length
        at = int(np.clip(at + STEPS[rng.integers(len(STEPS))], 0, len(keys) - 1))
    return over_noise(out, rng, sample_rate, SNR_DB, PEAK)


INSTRUMENTS_CORPUS = Generator(
    "instruments", tuple(INSTRUMENTS), instrument_clip,
    f"{len(INSTRUMENTS)} General MIDI instruments (piano, violin, trumpet, flute, ...) from the "
    "TimGM6mb SoundFont: random 1-6 note phrases, tempo and velocity, over noise at 5-25 dB SNR")
