"""Audio in: read a file, mono, resample, pad or trim; Kaldi fbank features as AST wants them.

The resampler and the filter bank are written out here in plain torch (no torchaudio, whose
builds must match torch's exactly): they compute what `torchaudio.functional.resample` and
`torchaudio.compliance.kaldi.fbank` compute, which is what `ASTFeatureExtractor` was trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile
import torch


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


def skipped_clips_note(files: list[str], shown: int = 5) -> str | None:
    """One line on the clips a run skipped ("path: why", as the nodes reported them), or None."""
    if not files:
        return None
    more = f" and {len(files) - shown} more" if len(files) > shown else ""
    return (f"{len(files)} clip(s) could not be read and were skipped: "
            f"{'; '.join(files[:shown])}{more} (all in summary.json 'skipped_files')")


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
        waveform = resample(waveform, source_rate, sampling_rate)
    return pad_or_trim(waveform, round(clip_seconds * sampling_rate))


def pad_or_trim(waveform: torch.Tensor, num_samples: int) -> torch.Tensor:
    if waveform.shape[-1] >= num_samples:
        return waveform[..., :num_samples]
    return torch.nn.functional.pad(waveform, (0, num_samples - waveform.shape[-1]))


# ---------------------------------------------------------------------------------------------
# Resampling: band-limited (windowed sinc) interpolation, one polyphase filter per output phase.

ZERO_CROSSINGS = 6  # filter half-width, in zero crossings of the sinc
ROLLOFF = 0.99  # cutoff as a fraction of the lower Nyquist frequency


@lru_cache(maxsize=16)
def _sinc_kernels(up: int, down: int) -> tuple[torch.Tensor, int]:
    """`(up, 1, taps)` filters for a rate change of `up / down` (in lowest terms) and the
    half-width of input samples each output sample reads."""
    cutoff = min(up, down) * ROLLOFF  # in cycles per `down` input samples
    half = math.ceil(ZERO_CROSSINGS * down / cutoff)
    offsets = torch.arange(-half, half + down, dtype=torch.float64) / down
    phases = -torch.arange(up, dtype=torch.float64)[:, None] / up
    t = ((phases + offsets) * cutoff).clamp(-ZERO_CROSSINGS, ZERO_CROSSINGS)
    window = torch.cos(t * math.pi / (2 * ZERO_CROSSINGS)) ** 2  # Hann, zero at the ends
    sinc = torch.special.sinc(t)
    return (sinc * window * cutoff / down).float()[:, None, :], half


def resample(waveform: torch.Tensor, source_rate: int, target_rate: int) -> torch.Tensor:
    """`waveform` (..., time) from `source_rate` to `target_rate`, as torchaudio's default."""
    divisor = math.gcd(source_rate, target_rate)
    up, down = target_rate // divisor, source_rate // divisor
    if up == down:
        return waveform
    kernels, half = _sinc_kernels(up, down)
    shape = waveform.shape
    flat = torch.nn.functional.pad(waveform.reshape(-1, 1, shape[-1]), (half, half + down))
    out = torch.nn.functional.conv1d(flat, kernels.to(waveform.dtype), stride=down)
    out = out.transpose(1, 2).reshape(*shape[:-1], -1)
    return out[..., : math.ceil(up * shape[-1] / down)]


# ---------------------------------------------------------------------------------------------
# Kaldi filter bank: 25 ms Hann frames every 10 ms, DC removed, pre-emphasis 0.97, power
# spectrum, triangular mel filters from 20 Hz to Nyquist, log.

FRAME_MS, SHIFT_MS = 25, 10
PREEMPHASIS = 0.97
LOW_HZ = 20.0
LOG_FLOOR = torch.finfo(torch.float32).eps


def _mel(hz: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(hz / 700.0)


@lru_cache(maxsize=8)
def _mel_filters(num_bins: int, fft_size: int, sampling_rate: int) -> torch.Tensor:
    """`(fft_size // 2 + 1, num_bins)` triangles, equally spaced on the mel scale."""
    edges = torch.linspace(float(_mel(torch.tensor(LOW_HZ))),
                           float(_mel(torch.tensor(sampling_rate / 2))), num_bins + 2)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bins = _mel(torch.arange(fft_size // 2) * sampling_rate / fft_size)[None]
    rising = (bins - left) / (center - left)
    falling = (right - bins) / (right - center)
    filters = torch.minimum(rising, falling).clamp(min=0)
    # Kaldi leaves the Nyquist bin out of every filter.
    return torch.nn.functional.pad(filters, (0, 1)).T.contiguous()


def kaldi_fbank(waveform: torch.Tensor, sampling_rate: int, num_mel_bins: int) -> torch.Tensor:
    """`(frames, num_mel_bins)` log mel energies of a 1-D waveform, frames wholly inside it."""
    frame = sampling_rate * FRAME_MS // 1000
    shift = sampling_rate * SHIFT_MS // 1000
    if waveform.shape[-1] < frame:
        return waveform.new_zeros(0, num_mel_bins)
    frames = waveform.unfold(-1, frame, shift)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=-1)
    frames = (frames - PREEMPHASIS * previous) * torch.hann_window(frame, periodic=False,
                                                                  dtype=frames.dtype)
    fft_size = 1 << (frame - 1).bit_length()
    power = torch.fft.rfft(frames, n=fft_size).abs().pow(2)
    energies = power @ _mel_filters(num_mel_bins, fft_size, sampling_rate).to(power.dtype)
    return energies.clamp(min=LOG_FLOOR).log()


def fbank_features(waveform: torch.Tensor, settings: FeatureSettings) -> torch.Tensor:
    """`(max_length, num_mel_bins)` log-mel features, computed as `ASTFeatureExtractor` does."""
    fbank = kaldi_fbank(waveform, settings.sampling_rate, settings.num_mel_bins)
    frames = fbank.shape[0]
    if frames < settings.max_length:
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, settings.max_length - frames))
    fbank = fbank[: settings.max_length]
    if settings.do_normalize:
        fbank = (fbank - settings.mean) / (settings.std * 2)
    return fbank
