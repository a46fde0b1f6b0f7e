"""Audio in: read a file, mono, resample, pad or trim; Kaldi fbank features as AST wants them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional as AF


@dataclass(frozen=True)
class FeatureSettings:
    """What the AST feature extractor does; read from the model's own preprocessor config."""

    sampling_rate: int = 16000
    num_mel_bins: int = 128
    max_length: int = 1024  # frames of 10 ms
    mean: float = -4.2677393
    std: float = 4.5689974
    do_normalize: bool = True


class AudioError(ValueError):
    """A file that cannot be used as audio; the message says why."""


def load_audio(path: str | Path, sampling_rate: int, clip_seconds: float) -> torch.Tensor:
    """A mono float32 waveform of exactly `clip_seconds` at `sampling_rate` (zero padded).

    Anything libsndfile decodes is accepted, whatever its extension, bit depth, channel count or
    rate; files it cannot decode, with no samples, non-finite samples or only zeros (nothing
    to learn from) raise AudioError.
    """
    try:
        data, source_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"cannot decode ({err})") from err
    if data.size == 0:
        raise AudioError("no samples")
    if not np.isfinite(data).all():
        raise AudioError("non-finite samples")
    if not np.abs(data).max() > 0:
        raise AudioError("silent (every sample is zero)")
    waveform = torch.from_numpy(data.T.copy()).mean(dim=0)
    if source_rate != sampling_rate:
        waveform = AF.resample(waveform, source_rate, sampling_rate)
    return pad_or_trim(waveform, round(clip_seconds * sampling_rate))


def pad_or_trim(waveform: torch.Tensor, num_samples: int) -> torch.Tensor:
    if waveform.shape[-1] >= num_samples:
        return waveform[..., :num_samples]
    return torch.nn.functional.pad(waveform, (0, num_samples - waveform.shape[-1]))


def fbank_features(waveform: torch.Tensor, settings: FeatureSettings) -> torch.Tensor:
    """`(max_length, num_mel_bins)` log-mel features, computed as `ASTFeatureExtractor` does."""
    fbank = kaldi.fbank(
        waveform.unsqueeze(0),
        sample_frequency=settings.sampling_rate,
        window_type="hanning",
        num_mel_bins=settings.num_mel_bins,
    )
    frames = fbank.shape[0]
    if frames < settings.max_length:
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, settings.max_length - frames))
    fbank = fbank[: settings.max_length]
    if settings.do_normalize:
        fbank = (fbank - settings.mean) / (settings.std * 2)
    return fbank
