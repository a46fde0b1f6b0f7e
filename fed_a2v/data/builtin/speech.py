"""The built-in `speech` corpus: short spoken words in many voices over background noise.

Each clip is one word, said one to three times, by eSpeak NG (the `espeakng-loader` wheel
ships its library and data; it is driven here through ctypes) in a random English accent and
voice variant, at a random rate, pitch and pitch range, with a random intonation (statement,
question or exclamation), then played slower or faster (pitch and formants move with it),
placed at a random moment of the clip and mixed over random noise at a random SNR.

eSpeak NG keeps state from one utterance to the next (its wave generator's phase and
flutter), so every clip loads a fresh copy of the library, and some voices draw from the C
library's rand(), so every clip seeds it: a clip then depends on its seed alone, whichever
clips were made before it in the process.
"""

from __future__ import annotations

import _ctypes
import ctypes
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from fed_a2v.data.audio import resample
from fed_a2v.data.builtin.generator import ClipMaker, Generator, over_noise
from fed_a2v.extras import require

# eSpeak NG comes with the `corpora` extra (the espeakng-loader wheel).
ESPEAK_MODULE = "espeakng_loader"
ESPEAK_WHEELS = "espeakng-loader: wheels for Linux x86_64, macOS and Windows only"

# Google Speech Commands' ten keywords, then the ten digits: the first `num_classes` are used.
WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
         "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# The confirmation corpora `italian_speech`, `german_speech` and `spanish_speech`: words in
# eSpeak NG's Italian, German and Spanish voices, which no recipe was tuned on (docs/corpora.md,
# "How the default recipe was chosen"). The same twelve things in each language.
PAROLE = ("cane", "gatto", "pioggia", "campana", "treno", "vento", "fuoco", "mare", "tuono",
          "uccello", "orologio", "chitarra")
ITALIAN_ACCENTS = ("it",)
WOERTER = ("Hund", "Katze", "Regen", "Glocke", "Zug", "Wind", "Feuer", "Meer", "Donner",
           "Vogel", "Uhr", "Gitarre")
GERMAN_ACCENTS = ("de",)
PALABRAS = ("perro", "gato", "lluvia", "campana", "tren", "viento", "fuego", "mar", "trueno",
            "ave", "reloj", "guitarra")
SPANISH_ACCENTS = ("es",)
ACCENTS = ("en", "en-us", "en-us-nyc", "en-029", "en-gb-scotland", "en-gb-x-rp",
           "en-gb-x-gbclan", "en-gb-x-gbcwmd")
# eSpeak NG's voice variants (espeak-ng-data/voices/!v), "" for an accent's own voice. Left
# out: the robotic ones, and those with breath noise (f2, f3, f5, whisper, ...), whose output
# changes from one process to the next.
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f4", "klatt", "klatt2",
            "klatt3", "klatt4", "croak", "Alex", "Andy", "Annie", "aunty", "boris", "david",
            "ed", "edward", "grandma", "grandpa", "iven", "john", "linda", "max", "michel",
            "norbert", "quincy", "rob", "robert", "steph", "travis", "zac", "belinda",
            "benjamin", "anika", "adam", "announcer", "Lee", "Michael", "Mike", "Gene", "Jacky",
            "ian", "paul", "shelby")
ENDINGS = ("", ".", "?", "!")
REPEATS = (1, 3)  # a clip says its word this many times, commas between
RATE_WPM = (80, 180)  # eSpeak's range is 80..450
PITCH = (5, 95)  # base pitch, 0..100
PITCH_RANGE = (10, 100)  # intonation range, 0..100
STRETCH = (0.86, 1.14)  # played at this times its speed: tempo, pitch and formants together
SNR_DB = (5.0, 25.0)
PEAK = (0.2, 0.9)

# speak_lib.h
AUDIO_OUTPUT_SYNCHRONOUS, POS_CHARACTER, CHARS_UTF8 = 2, 1, 1
RATE, PITCH_PARAM, RANGE = 1, 3, 4
Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                            ctypes.c_void_p)


class EspeakError(RuntimeError):
    """eSpeak NG is missing, would not start, or did not say a word."""


def _paths() -> tuple[str, str]:
    """The eSpeak NG library and data folder that the `espeakng-loader` wheel ships."""
    require("corpora", ESPEAK_MODULE, what="the built-in speech corpus", note=ESPEAK_WHEELS)
    # Deferred: espeakng-loader (the `corpora` extra) is needed only to make this corpus.
    import espeakng_loader

    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


@contextmanager
def _espeak() -> Iterator[ctypes.CDLL]:
    """A freshly loaded, initialised eSpeak NG, unloaded afterwards."""
    library, data = _paths()
    lib = ctypes.CDLL(library)
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    try:
        if lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(), 0) <= 0:
            raise EspeakError(f"eSpeak NG would not start with its data at {data}")
        yield lib
    finally:
        lib.espeak_Terminate()
        close = getattr(_ctypes, "dlclose", None) or _ctypes.FreeLibrary  # POSIX, Windows
        close(lib._handle)


def speak(text: str, voice: str, rate: int, pitch: int, pitch_range: int,
          seed: int = 0) -> tuple[np.ndarray, int]:
    """`text` said by eSpeak NG voice `voice` (e.g. "en-us+f3"), the C library's rand()
    seeded with `seed` first: int16 samples, sample rate."""
    chunks: list[np.ndarray] = []

    @Callback
    def collect(wav, count, events):  # eSpeak's callback signature
        if wav and count > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    with _espeak() as lib:
        sample_rate = lib.espeak_ng_GetSampleRate()
        lib.espeak_SetSynthCallback(collect)
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EspeakError(f"eSpeak NG has no voice '{voice}'")
        for param, value in ((RATE, rate), (PITCH_PARAM, pitch), (RANGE, pitch_range)):
            lib.espeak_SetParameter(param, int(value), 0)
        if sys.platform != "win32":  # there eSpeak's C runtime is its own
            ctypes.CDLL(None).srand(ctypes.c_uint(seed))
        data = text.encode()
        status = lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None,
                                  None)
        if status != 0 or lib.espeak_Synchronize() != 0:
            raise EspeakError(f"eSpeak NG failed to say {text!r} with voice '{voice}' "
                              f"(status {status})")
    wave = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return wave, sample_rate


def _trim(wave: np.ndarray, level: float = 0.02) -> np.ndarray:
    """`wave` without the near-silence eSpeak puts before and after a word."""
    loud = np.flatnonzero(np.abs(wave) > level * np.abs(wave).max(initial=0.0))
    return wave[loud[0]:loud[-1] + 1] if loud.size else wave[:0]


def spoken_clips(accents: tuple[str, ...]) -> ClipMaker:
    """The clip maker of a spoken corpus whose voices speak with one of `accents`."""

    def spoken_clip(word: str, rng: np.random.Generator, sample_rate: int,
                    n: int) -> np.ndarray:
        """One clip of `word`, said 1-3 times: a random voice, rate, pitch and intonation,
        stretched, placed at a random start, over noise."""
        voice = f"{accents[rng.integers(len(accents))]}+{VARIANTS[rng.integers(len(VARIANTS))]}"
        text = ", ".join([word] * rng.integers(*REPEATS, endpoint=True))
        text += ENDINGS[rng.integers(len(ENDINGS))]
        wave, native = speak(text, voice.rstrip("+"), rng.integers(*RATE_WPM, endpoint=True),
                             rng.integers(*PITCH, endpoint=True),
                             rng.integers(*PITCH_RANGE, endpoint=True), rng.integers(2**31))
        word_wave = _trim(wave.astype(np.float32) / 32768.0)
        if not word_wave.size:
            raise EspeakError(f"eSpeak NG said nothing for {text!r} with voice '{voice}'")
        # Read as if recorded at another rate, a multiple of 525 Hz (22050 = 42 x 525): few
        # distinct rate pairs, each a small ratio, so the resampling filters are few and cached.
        source_rate = round(native * rng.uniform(*STRETCH) / 525) * 525
        sound = resample(torch.from_numpy(word_wave), source_rate, sample_rate).numpy()[:n]
        fade = min(len(sound), round(0.01 * sample_rate))  # no click where a long word is cut
        sound[len(sound) - fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
        out = np.zeros(n, np.float32)
        start = rng.integers(0, n - len(sound) + 1)
        out[start:start + len(sound)] = sound
        return over_noise(out, rng, sample_rate, SNR_DB, PEAK)

    return spoken_clip


SPEECH = Generator("speech", WORDS, spoken_clips(ACCENTS),
                   f"{len(WORDS)} spoken words (yes, no, up, down, ..., then the digits), 1-3 "
                   f"times a clip, by eSpeak NG in {len(ACCENTS)} English accents x "
                   f"{len(VARIANTS)} voices, random rate, pitch and intonation, over noise at "
                   f"{SNR_DB[0]:g}-{SNR_DB[1]:g} dB SNR")



def confirmation_corpus(name: str, words: tuple[str, ...], accent: str,
                        language: str) -> Generator:
    """A spoken corpus of `words` in eSpeak NG's `accent` voice x every voice variant."""
    return Generator(
        name, words, spoken_clips((accent,)),
        f"{len(words)} spoken {language} words ({', '.join(words[:3])}, ...), 1-3 times a clip, "
        f"by eSpeak NG's {language} voice x {len(VARIANTS)} voice variants, random rate, pitch "
        f"and intonation, over noise at {SNR_DB[0]:g}-{SNR_DB[1]:g} dB SNR")


ITALIAN_SPEECH = confirmation_corpus("italian_speech", PAROLE, ITALIAN_ACCENTS[0], "Italian")
GERMAN_SPEECH = confirmation_corpus("german_speech", WOERTER, GERMAN_ACCENTS[0], "German")
SPANISH_SPEECH = confirmation_corpus("spanish_speech", PALABRAS, SPANISH_ACCENTS[0], "Spanish")
# Every corpus eSpeak NG speaks (the `corpora` extra's espeakng-loader).
SPOKEN_CORPORA = (SPEECH, ITALIAN_SPEECH, GERMAN_SPEECH, SPANISH_SPEECH)
