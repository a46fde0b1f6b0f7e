"""A small SoundFont 2 sampler in numpy: the notes of a General MIDI instrument, rendered mono.

It reads the presets, instruments, zones and samples of an `.sf2` file and plays a note as the
format describes: each matching zone's sample, pitched from its root key and tuning, looped as
its sample mode says, shaped by its volume envelope, attenuation and low-pass cutoff, softer
at lower velocity as the default modulator makes it. Modulation envelopes, LFOs, filter
resonance, chorus and reverb are left out.
(The `tinysoundfont` wheel renders the same file, but it requires PyAudio, which has no Linux
wheel and does not build without PortAudio's headers.)
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

# Generator operators (SoundFont 2.04, section 8.1.2) that this sampler reads.
START, END, LOOP_START, LOOP_END, START_COARSE = 0, 1, 2, 3, 4
FILTER_FC, END_COARSE = 8, 12
VOL_DELAY, VOL_ATTACK, VOL_HOLD, VOL_DECAY, VOL_SUSTAIN, VOL_RELEASE = 33, 34, 35, 36, 37, 38
KEY_TO_HOLD, KEY_TO_DECAY = 39, 40
INSTRUMENT, KEY_RANGE, VEL_RANGE, LOOP_START_COARSE = 41, 43, 44, 45
ATTENUATION, LOOP_END_COARSE, COARSE_TUNE, FINE_TUNE = 48, 50, 51, 52
SAMPLE_ID, SAMPLE_MODES, SCALE_TUNING, ROOT_KEY = 53, 54, 56, 58

DEFAULTS = {FILTER_FC: 13500, VOL_DELAY: -12000, VOL_ATTACK: -12000, VOL_HOLD: -12000,
            VOL_DECAY: -12000, VOL_RELEASE: -12000, SCALE_TUNING: 100, ROOT_KEY: -1,
            KEY_RANGE: 127 << 8, VEL_RANGE: 127 << 8}
# Preset zones add to these; the rest are the instrument zone's alone.
NOT_ADDITIVE = {START, END, LOOP_START, LOOP_END, START_COARSE, END_COARSE, LOOP_START_COARSE,
                LOOP_END_COARSE, INSTRUMENT, KEY_RANGE, VEL_RANGE, SAMPLE_ID, SAMPLE_MODES,
                ROOT_KEY, 46, 47, 57}
ENVELOPE_DB = 100.0  # a decay or release time is the time for this much attenuation

PHDR = np.dtype([("name", "S20"), ("preset", "<u2"), ("bank", "<u2"), ("bag", "<u2"),
                 ("library", "<u4"), ("genre", "<u4"), ("morphology", "<u4")])
BAG = np.dtype([("gen", "<u2"), ("mod", "<u2")])
GEN = np.dtype([("oper", "<u2"), ("amount", "<i2")])
INST = np.dtype([("name", "S20"), ("bag", "<u2")])
SHDR = np.dtype([("name", "S20"), ("start", "<u4"), ("end", "<u4"), ("loop_start", "<u4"),
                 ("loop_end", "<u4"), ("rate", "<u4"), ("pitch", "u1"), ("correction", "i1"),
                 ("link", "<u2"), ("type", "<u2")])


class SoundFontError(ValueError):
    """A file that is not a SoundFont this sampler can read, or a preset it lacks."""


def _timecents(value: int) -> float:
    return 2.0 ** (value / 1200)


def _in_range(packed: int, value: int) -> bool:
    low, high = packed & 0xFF, (packed >> 8) & 0xFF
    return low <= value <= high


@dataclass(frozen=True)
class Zone:
    """One sample of a preset for a key and velocity, with its generators resolved."""

    gens: dict[int, int]
    start: int
    end: int
    loop_start: int
    loop_end: int
    rate: int
    pitch: int
    correction: int

    def get(self, oper: int) -> int:
        return self.gens.get(oper, DEFAULTS.get(oper, 0))


class SoundFont:
    """The presets of one `.sf2` file; `note` renders a note of one of them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        chunks = self._chunks(self.path.read_bytes())
        try:
            raw = chunks["smpl"]
            self.samples = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
            self.phdr, self.pbag, self.pgen, self.inst, self.ibag, self.igen, self.shdr = (
                np.frombuffer(chunks[name], dtype)
                for name, dtype in (("phdr", PHDR), ("pbag", BAG), ("pgen", GEN),
                                    ("inst", INST), ("ibag", BAG), ("igen", GEN),
                                    ("shdr", SHDR)))
        except (KeyError, ValueError) as err:
            raise SoundFontError(f"{self.path}: not a SoundFont 2 file ({err})") from None
        self.presets = {(int(p["bank"]), int(p["preset"])): i
                        for i, p in enumerate(self.phdr[:-1])}

    @staticmethod
    def _chunks(data: bytes) -> dict[str, bytes]:
        """The leaf chunks of the RIFF file by id (sdta's smpl, pdta's phdr ... shdr)."""
        if data[:4] != b"RIFF" or data[8:12] != b"sfbk":
            raise SoundFontError("no RIFF sfbk header")
        found, pos, end = {}, 12, len(data)
        while pos + 8 <= end:
            cid = data[pos:pos + 4].decode("latin-1")
            (size,) = struct.unpack("<I", data[pos + 4:pos + 8])
            if cid == "LIST":
                pos += 12  # step into the list: its type, then its chunks
                continue
            found[cid] = data[pos + 8:pos + 8 + size]
            pos += 8 + size + (size & 1)
        return found

    @staticmethod
    def _zones(bags: np.ndarray, gens: np.ndarray, first: int, last: int,
               terminal: int) -> tuple[dict[int, int], list[dict[int, int]]]:
        """The global zone and the other zones of bags `first..last-1`; a first zone without
        the `terminal` generator (instrument or sample) is the global one."""
        zones = [{int(g["oper"]): int(g["amount"]) & 0xFFFF if g["oper"] in (KEY_RANGE, VEL_RANGE)
                  else int(g["amount"])
                  for g in gens[bags[b]["gen"]:bags[b + 1]["gen"]]}
                 for b in range(first, last)]
        if zones and terminal not in zones[0]:
            return zones[0], [z for z in zones[1:] if terminal in z]
        return {}, [z for z in zones if terminal in z]

    def zones(self, program: int, key: int, velocity: int, bank: int = 0) -> list[Zone]:
        """The zones that sound for `key` at `velocity` on preset `bank:program`."""
        if (bank, program) not in self.presets:
            raise SoundFontError(f"{self.path}: no preset {bank}:{program}")
        i = self.presets[(bank, program)]
        p_global, p_zones = self._zones(self.pbag, self.pgen, self.phdr[i]["bag"],
                                        self.phdr[i + 1]["bag"], INSTRUMENT)
        found = []
        for pz in p_zones:
            preset = {**p_global, **pz}
            if not (_in_range(preset.get(KEY_RANGE, DEFAULTS[KEY_RANGE]), key)
                    and _in_range(preset.get(VEL_RANGE, DEFAULTS[VEL_RANGE]), velocity)):
                continue
            k = preset[INSTRUMENT]
            i_global, i_zones = self._zones(self.ibag, self.igen, self.inst[k]["bag"],
                                            self.inst[k + 1]["bag"], SAMPLE_ID)
            for iz in i_zones:
                gens = {**i_global, **iz}
                if not (_in_range(gens.get(KEY_RANGE, DEFAULTS[KEY_RANGE]), key)
                        and _in_range(gens.get(VEL_RANGE, DEFAULTS[VEL_RANGE]), velocity)):
                    continue
                for oper, amount in preset.items():
                    if oper not in NOT_ADDITIVE:
                        gens[oper] = gens.get(oper, DEFAULTS.get(oper, 0)) + amount
                found.append(self._zone(gens))
        return found

    def _zone(self, gens: dict[int, int]) -> Zone:
        s = self.shdr[gens[SAMPLE_ID]]
        g = gens.get
        return Zone(gens,
                    int(s["start"]) + g(START, 0) + 32768 * g(START_COARSE, 0),
                    int(s["end"]) + g(END, 0) + 32768 * g(END_COARSE, 0),
                    int(s["loop_start"]) + g(LOOP_START, 0) + 32768 * g(LOOP_START_COARSE, 0),
                    int(s["loop_end"]) + g(LOOP_END, 0) + 32768 * g(LOOP_END_COARSE, 0),
                    int(s["rate"]), int(s["pitch"]), int(s["correction"]))

    def note(self, program: int, key: int, velocity: int, seconds: float, sample_rate: int,
             bank: int = 0) -> np.ndarray:
        """Key `key` held `seconds` at `velocity` (1..127), then released: the sum of its
        zones, mono float32 at `sample_rate`, with the release tail (at most 1 s)."""
        zones = self.zones(program, key, velocity, bank)
        if not zones:
            raise SoundFontError(f"{self.path}: preset {bank}:{program} has no sample for key "
                                 f"{key} at velocity {velocity}")
        parts = [self._render(z, key, velocity, seconds, sample_rate) for z in zones]
        out = np.zeros(max(len(p) for p in parts), np.float32)
        for part in parts:
            out[:len(part)] += part
        return out

    def _render(self, z: Zone, key: int, velocity: int, seconds: float,
                sample_rate: int) -> np.ndarray:
        release = min(1.0, _timecents(z.get(VOL_RELEASE)))
        n_held, n = round(seconds * sample_rate), round((seconds + release) * sample_rate)
        root = z.get(ROOT_KEY) if z.get(ROOT_KEY) >= 0 else z.pitch
        cents = (z.get(SCALE_TUNING) * (key - root) + 100 * z.get(COARSE_TUNE)
                 + z.get(FINE_TUNE) + z.correction)
        step = 2.0 ** (cents / 1200) * z.rate / sample_rate
        pos = np.arange(n) * step
        looped = z.get(SAMPLE_MODES) & 1 and z.start <= z.loop_start < z.loop_end - 1 <= z.end
        if looped:
            rel, span = z.loop_start - z.start, z.loop_end - z.loop_start
            past = pos >= z.loop_end - z.start
            pos[past] = rel + (pos[past] - rel) % span
        else:
            pos = pos[pos < z.end - z.start - 1]
        whole = pos.astype(np.int64)
        frac = (pos - whole).astype(np.float32)
        data = self.samples[z.start:z.end]
        wave = data[whole] * (1 - frac) + data[np.minimum(whole + 1, len(data) - 1)] * frac
        wave = self._lowpass(wave, z.get(FILTER_FC), sample_rate)
        env = self._envelope(z, key, len(wave), n_held, sample_rate)
        # The default velocity modulator: up to 96 dB of attenuation, concave in velocity.
        db = -z.get(ATTENUATION) / 10 - 40 * math.log10(127 / max(velocity, 1))
        return (wave * env * 10 ** (db / 20)).astype(np.float32)

    @staticmethod
    def _lowpass(wave: np.ndarray, fc_cents: int, sample_rate: int) -> np.ndarray:
        """A zero-phase second-order low-pass at the zone's cutoff (no resonance)."""
        cutoff = 8.176 * 2 ** (fc_cents / 1200)
        if cutoff >= 0.45 * sample_rate or len(wave) < 2:
            return wave
        freqs = np.fft.rfftfreq(len(wave), 1 / sample_rate)
        gain = 1 / np.sqrt(1 + (freqs / cutoff) ** 4)
        return np.fft.irfft(np.fft.rfft(wave) * gain, len(wave)).astype(np.float32)

    @staticmethod
    def _envelope(z: Zone, key: int, n: int, n_held: int, sample_rate: int) -> np.ndarray:
        """The volume envelope (delay, attack, hold, decay to sustain, release at `n_held`)."""
        t = np.arange(n) / sample_rate
        delay, attack = _timecents(z.get(VOL_DELAY)), _timecents(z.get(VOL_ATTACK))
        hold = _timecents(z.get(VOL_HOLD) + z.get(KEY_TO_HOLD) * (60 - key))
        decay = _timecents(z.get(VOL_DECAY) + z.get(KEY_TO_DECAY) * (60 - key))
        sustain_db = min(max(z.get(VOL_SUSTAIN), 0), 1000) / 10
        rise = np.clip((t - delay) / attack, 0, 1)
        fall_db = np.clip((t - delay - attack - hold) / decay * ENVELOPE_DB, 0, sustain_db)
        env = rise * 10 ** (-fall_db / 20)
        if n_held < n:
            after = np.arange(n - n_held) / sample_rate / max(_timecents(z.get(VOL_RELEASE)), 1e-3)
            env[n_held:] = env[n_held - 1 if n_held else 0] * 10 ** (-after * ENVELOPE_DB / 20)
        return env.astype(np.float32)


@lru_cache(maxsize=2)
def load_soundfont(path: str) -> SoundFont:
    """The SoundFont at `path`, read once per process."""
    return SoundFont(path)
