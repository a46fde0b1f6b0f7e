"""Audio loading and features, and the frozen encoders (built-in and via from_pretrained)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from transformers import ASTFeatureExtractor

from fed_a2v.data.audio import FeatureSettings, fbank_features, load_audio, pad_or_trim, resample
from fed_a2v.data.builtin.synthetic import SOUNDS
from fed_a2v.encode import encoders

PROMPTS = [encoders.class_prompt(name) for name in SOUNDS]


# ---------------------------------------------------------------------------------------------
# Audio


@pytest.mark.parametrize("max_length", [300, 100], ids=["padded", "truncated"])
def test_fbank_matches_ast_feature_extractor(max_length):
    # 1.5 s gives ~148 frames: padded up to 300, truncated down to 100.
    waveform = torch.randn(24000, generator=torch.Generator().manual_seed(0)) * 0.1
    settings = FeatureSettings(num_mel_bins=64, max_length=max_length)
    ours = fbank_features(waveform, settings)
    extractor = ASTFeatureExtractor(num_mel_bins=64, max_length=max_length)
    theirs = extractor(waveform.numpy(), sampling_rate=16000, return_tensors="pt").input_values[0]
    assert ours.shape == theirs.shape == (max_length, 64)
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_fbank_padding_is_the_normalised_zero():
    settings = FeatureSettings(num_mel_bins=64, max_length=300)
    feats = fbank_features(torch.randn(16000) * 0.1, settings)  # ~98 frames
    pad = (0 - settings.mean) / (2 * settings.std)
    assert torch.allclose(feats[150:], torch.full((150, 64), pad))
    assert not torch.allclose(feats[:90], torch.full((90, 64), pad))


def test_pad_or_trim():
    x = torch.arange(5.0)
    assert torch.equal(pad_or_trim(x, 3), x[:3])
    assert torch.equal(pad_or_trim(x, 7), torch.tensor([0.0, 1, 2, 3, 4, 0, 0]))
    assert torch.equal(pad_or_trim(x, 5), x)


def _stereo_wav(path, seconds: float, rate: int = 22050) -> None:
    t = np.arange(round(seconds * rate)) / rate
    tone = np.sin(2 * np.pi * 440 * t)
    soundfile.write(path, np.stack([0.6 * tone, 0.2 * tone], axis=1), rate, subtype="FLOAT")


@pytest.mark.parametrize("clip_seconds", [0.5, 2.0], ids=["trimmed", "padded"])
def test_load_audio_mono_resampled_exact_length(tmp_path, clip_seconds):
    path = tmp_path / "stereo.wav"
    _stereo_wav(path, 1.0)
    wave = load_audio(path, 16000, clip_seconds)
    assert wave.dtype == torch.float32
    assert wave.shape == (round(clip_seconds * 16000),)
    # Mono is the channel mean (0.4 * tone), now sampled at 16 kHz; compare away from the edges.
    t = torch.arange(16000, dtype=torch.float64) / 16000
    expected = 0.4 * torch.sin(2 * torch.pi * 440 * t)
    n = min(len(wave), 16000)
    inner = slice(200, n - 200)
    assert torch.allclose(wave[inner].double(), expected[inner], atol=5e-3)
    if clip_seconds > 1.0:
        assert torch.count_nonzero(wave[16000:]) == 0


@pytest.mark.parametrize("source_rate", [8000, 11025, 22050, 44100, 48000, 96000])
def test_resample_keeps_a_tone_and_the_length(source_rate):
    seconds = 0.25
    n = round(seconds * source_rate) + 7  # a length that does not divide evenly
    t = torch.arange(n, dtype=torch.float64) / source_rate
    tone = torch.sin(2 * torch.pi * 1000 * t).float()
    out = resample(tone, source_rate, 16000)
    assert out.shape == (math.ceil(n * 16000 / source_rate),)
    expected = torch.sin(2 * torch.pi * 1000 * torch.arange(len(out), dtype=torch.float64) / 16000)
    inner = slice(100, len(out) - 100)  # away from the zero padding at both ends
    assert torch.allclose(out[inner].double(), expected[inner], atol=2e-3)


def test_resample_removes_what_the_target_rate_cannot_hold():
    t = torch.arange(44100, dtype=torch.float64) / 44100
    above_nyquist = torch.sin(2 * torch.pi * 12000 * t).float()  # 12 kHz > 8 kHz
    out = resample(above_nyquist, 44100, 16000)
    assert out[200:-200].abs().max() < 0.01


def test_load_audio_odd_length_is_exact(tmp_path):
    path = tmp_path / "odd.wav"
    _stereo_wav(path, 0.37, rate=44100)
    assert load_audio(path, 16000, 0.33).shape == (5280,)


# ---------------------------------------------------------------------------------------------
# Built-in encoders


def _max_offdiag_cosine(x: torch.Tensor) -> float:
    n = F.normalize(x.flatten(1), dim=1)
    sims = n @ n.T
    sims.fill_diagonal_(-1.0)
    return sims.max().item()


def test_builtin_clip_targets_are_separated_and_deterministic():
    targets = encoders.clip_targets("builtin:tiny-clip", PROMPTS)
    assert targets.shape == (len(SOUNDS), 64)
    assert targets.dtype == torch.float32
    assert _max_offdiag_cosine(targets) < 0.95
    assert torch.equal(targets, encoders.clip_targets("builtin:tiny-clip", PROMPTS))


def test_builtin_t5_targets_are_separated_and_deterministic():
    targets = encoders.t5_targets("builtin:tiny-t5", PROMPTS, 17)
    assert targets.shape == (len(SOUNDS), 17, 64)
    assert _max_offdiag_cosine(targets) < 0.95
    assert torch.equal(targets, encoders.t5_targets("builtin:tiny-t5", PROMPTS, 17))


def test_targets_do_not_depend_on_the_other_prompts():
    alone = encoders.clip_targets("builtin:tiny-clip", PROMPTS[:1])
    assert torch.allclose(alone[0], encoders.clip_targets("builtin:tiny-clip", PROMPTS)[0],
                          atol=1e-5)


def test_class_prompt():
    assert encoders.class_prompt("church_bells") == "church bells"
    assert encoders.class_prompt("dog") == "dog"


def test_unknown_builtin_raises():
    with pytest.raises(ValueError, match="builtin:tiny-clip"):
        encoders.clip_targets("builtin:huge-clip", PROMPTS)


def _waves() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(16000, generator=gen) * 0.1 for _ in range(3)]


def test_builtin_audio_encoder():
    encoder = encoders.AudioEncoder.load("builtin:tiny-ast")
    assert encoder.hidden_size == 96
    assert encoder.settings.num_mel_bins == 64 and encoder.settings.max_length == 256
    waves = _waves()
    tokens = encoder.encode(waves, batch_size=2)
    assert tokens.shape[0] == 3 and tokens.shape[2] == 96
    # Batch composition does not change a clip's tokens.
    assert torch.allclose(encoder.encode(waves[1:2])[0], tokens[1], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The from_pretrained route: save the built-ins, load them back by path, offline.


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_saved_audio_encoder_loads_by_path(tmp_path, offline):
    directory = encoders.save_builtin("builtin:tiny-ast", tmp_path / "ast")
    assert (directory / "config.json").exists()
    builtin = encoders.AudioEncoder.load("builtin:tiny-ast")
    loaded = encoders.AudioEncoder.load(str(directory))
    assert loaded.settings == builtin.settings
    waves = _waves()
    assert torch.equal(loaded.encode(waves), builtin.encode(waves))


def test_saved_clip_loads_by_path(tmp_path, offline):
    directory = encoders.save_builtin("builtin:tiny-clip", tmp_path / "clip")
    loaded = encoders.clip_targets(str(directory), PROMPTS)
    assert torch.equal(loaded, encoders.clip_targets("builtin:tiny-clip", PROMPTS))


def test_saved_t5_loads_by_path(tmp_path, offline):
    directory = encoders.save_builtin("builtin:tiny-t5", tmp_path / "t5")
    loaded = encoders.t5_targets(str(directory), PROMPTS, 17)
    assert torch.equal(loaded, encoders.t5_targets("builtin:tiny-t5", PROMPTS, 17))
