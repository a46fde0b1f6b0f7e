"""The default built-in corpus: acoustically distinct synthetic sounds, in the ESC-50 layout
(`generator.ensure_corpus`). Every clip varies in pitch, timing, level and noise.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from fed_a2v.data.builtin.generator import NUM_FOLDS, Generator, ensure_corpus

Synth = Callable[[np.random.Generator, int, int], np.ndarray]
__all__ = ["NUM_FOLDS", "SOUNDS", "SYNTHETIC", "ensure_synthetic_corpus", "synthesize_clip"]


def _tone(freqs: np.ndarray, sr: int, harmonics: tuple[float, ...] = (1.0,)) -> np.ndarray:
    """A tone following the per-sample frequency track `freqs`, with harmonic weights."""
    phase = 2 * np.pi * np.cumsum(freqs) / sr
    return sum(w * np.sin((k + 1) * phase) for k, w in enumerate(harmonics))


def _env(n: int, attack: float, decay: float, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    return np.minimum(1.0, t / max(attack, 1e-4)) * np.exp(-t / decay)


def _place(out: np.ndarray, sound: np.ndarray, start: int) -> None:
    end = min(len(out), start + len(sound))
    if start < end:
        out[start:end] += sound[: end - start]


def _lowpass(x: np.ndarray, alpha: float) -> np.ndarray:
    y = np.empty_like(x)
    acc = 0.0
    for i, v in enumerate(x):  # one-pole filter; clips are short
        acc += alpha * (v - acc)
        y[i] = acc
    return y


def dog(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    out = np.zeros(n)
    f0 = rng.uniform(420, 620)
    for start in np.sort(rng.uniform(0.05, 0.8, size=rng.integers(2, 5))) * n:
        m = int(rng.uniform(0.12, 0.2) * sr)
        track = f0 * np.linspace(1.15, 0.8, m)
        bark = _tone(track, sr, (1.0, 0.6, 0.4, 0.25)) + 0.3 * rng.standard_normal(m)
        _place(out, bark * _env(m, 0.01, 0.06, sr), int(start))
    return out


def rooster(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    out = np.zeros(n)
    f0 = rng.uniform(550, 800)
    start = int(rng.uniform(0.0, 0.3) * n)
    for shape in (1.0, 1.25, 1.4, 1.0):
        m = int(rng.uniform(0.18, 0.3) * sr)
        track = f0 * shape * (1 + 0.08 * np.sin(np.linspace(0, np.pi, m)))
        _place(out, _tone(track, sr, (1.0, 0.5, 0.3)) * np.hanning(m), start)
        start += m + int(0.03 * sr)
    return out


def cow(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    m = int(rng.uniform(1.0, 1.6) / 2.0 * n)
    f0 = rng.uniform(110, 160)
    t = np.arange(m) / sr
    track = f0 * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(4, 6) * t))
    moo = _tone(track, sr, (1.0, 0.8, 0.6, 0.5, 0.3, 0.2)) * np.hanning(m)
    out = np.zeros(n)
    _place(out, moo, int(rng.uniform(0.0, 0.3) * n))
    return out


def crickets(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    t = np.arange(n) / sr
    carrier = np.sin(2 * np.pi * rng.uniform(3800, 4800) * t)
    gate = (np.sin(2 * np.pi * rng.uniform(15, 30) * t) > 0.3).astype(float)
    chirps = (np.sin(2 * np.pi * rng.uniform(1.5, 3) * t + rng.uniform(0, 6)) > -0.2)
    return carrier * gate * chirps


def rain(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    noise = _lowpass(rng.standard_normal(n), rng.uniform(0.2, 0.4))
    drops = np.zeros(n)
    for pos in rng.integers(0, n, size=int(rng.uniform(30, 60) * n / sr)):
        m = int(0.01 * sr)
        _place(drops, rng.standard_normal(m) * _env(m, 0.0005, 0.003, sr), int(pos))
    return noise + 0.6 * drops


def siren(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    t = np.arange(n) / sr
    low, high = rng.uniform(550, 700), rng.uniform(1200, 1500)
    sweep = (np.sin(2 * np.pi * rng.uniform(0.6, 1.2) * t + rng.uniform(0, 6)) + 1) / 2
    return _tone(low + (high - low) * sweep, sr, (1.0, 0.3))


def clock_tick(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    out = np.zeros(n)
    period = rng.uniform(0.4, 0.6) * sr
    pos = rng.uniform(0, period)
    while pos < n:
        m = int(0.006 * sr)
        click = np.diff(rng.standard_normal(m + 1)) * _env(m, 0.0002, 0.0015, sr)
        _place(out, click, int(pos))
        pos += period * rng.uniform(0.97, 1.03)
    return out


def church_bells(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    out = np.zeros(n)
    f0 = rng.uniform(280, 480)
    m = int(1.2 * sr)
    strike = sum(
        w * np.sin(2 * np.pi * f0 * r * np.arange(m) / sr) * _env(m, 0.002, d, sr)
        for r, w, d in ((1.0, 1.0, 0.8), (2.0, 0.6, 0.5), (2.76, 0.5, 0.35), (5.4, 0.3, 0.15))
    )
    pos = rng.uniform(0.0, 0.2) * n
    while pos < n:
        _place(out, strike, int(pos))
        pos += rng.uniform(0.8, 1.1) * sr
    return out


def car_horn(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    m = int(rng.uniform(0.5, 1.1) * sr)
    f = rng.uniform(380, 440)
    track = np.full(m, f)
    honk = np.sign(_tone(track, sr)) + np.sign(_tone(track * 1.25, sr))
    out = np.zeros(n)
    _place(out, 0.5 * honk * np.minimum(1, np.hanning(m) * 8), int(rng.uniform(0, 0.4) * n))
    return out


def engine(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    t = np.arange(n) / sr
    f0 = rng.uniform(35, 60)
    hum = _tone(np.full(n, f0), sr, (1.0, 0.7, 0.5, 0.4, 0.3))
    am = 1 + 0.3 * np.sin(2 * np.pi * f0 / 4 * t)
    return hum * am + 0.5 * _lowpass(rng.standard_normal(n), 0.05)


def chirping_birds(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    out = np.zeros(n)
    for start in rng.uniform(0, 0.95, size=rng.integers(5, 10)) * n:
        m = int(rng.uniform(0.05, 0.1) * sr)
        f = rng.uniform(2500, 4500)
        track = f * np.linspace(1.0, rng.uniform(1.2, 1.5), m)
        _place(out, _tone(track, sr) * np.hanning(m), int(start))
    return out


def door_wood_knock(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    out = np.zeros(n)
    f = rng.uniform(180, 280)
    start = rng.uniform(0.05, 0.4) * n
    for _ in range(rng.integers(2, 5)):
        m = int(0.08 * sr)
        knock = np.sin(2 * np.pi * f * np.arange(m) / sr) * _env(m, 0.0005, 0.015, sr)
        _place(out, knock + 0.3 * rng.standard_normal(m) * _env(m, 0.0002, 0.004, sr), int(start))
        start += rng.uniform(0.15, 0.25) * sr
    return out


# Class names are ESC-50's; the order is the class index (`target`).
SOUNDS: dict[str, Synth] = {
    fn.__name__: fn
    for fn in (dog, rooster, siren, rain, clock_tick, church_bells, crickets, engine, cow,
               chirping_birds, car_horn, door_wood_knock)
}


def synthesize_clip(name: str, rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    """One clip of class `name`: the sound at a random level plus background noise."""
    sound = SOUNDS[name](rng, sr, n)
    sound = sound / (np.abs(sound).max() + 1e-9) * rng.uniform(0.3, 0.9)
    noise_level = rng.uniform(0.003, 0.02)
    return (sound + noise_level * rng.standard_normal(n)).clip(-1, 1).astype(np.float32)


SYNTHETIC = Generator("synthetic", tuple(SOUNDS), synthesize_clip,
                      "12 kinds of synthesised sound (dog, rooster, siren, rain, ...) over "
                      "a little white noise")


def ensure_synthetic_corpus(
    root: str | Path, seed: int, num_classes: int, clips_per_class: int,
    clip_seconds: float, sample_rate: int,
) -> Path:
    """Write the synthetic corpus under `root` unless it is already there with the same
    settings (`generator.ensure_corpus`)."""
    return ensure_corpus(SYNTHETIC, root, seed, num_classes, clips_per_class, clip_seconds,
                         sample_rate)
