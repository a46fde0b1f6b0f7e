"""The trainable adapters: a MAP block pools audio tokens, a GroupNorm MLP maps them out; a
span adapter maps them to coordinates in the span of its target rows (the default for T5).

Everything normalises per sample (GroupNorm over channels), so in eval mode a sample's output does
not depend on what else is in its batch. Pooling runs at the audio encoder's width and only the
last layer projects up to the target width, which keeps the per-round payload small.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from fed_a2v.config.feda2v_section import FedA2VConfig
from fed_a2v.files import atomic_write
from fed_a2v.model.layers import MLP, MAPBlock, TokenStatistics
from fed_a2v.model.target_span import SpanBasis, span_rank
from fed_a2v.model.upstream_adapters import build_upstream_adapters


class Adapter(nn.Module):
    """Audio tokens `(B, T, d_audio)` to `(B, d_out)` (`n_latents` None: one pooled vector) or
    `(B, n_latents, d_out)` (a sequence): MAP pooling, then a GroupNorm MLP per latent (which,
    with `adapter_token_statistics`, also reads the tokens' `TokenStatistics`)."""

    def __init__(self, d_audio: int, d_out: int, n_latents: int | None,
                 cfg: FedA2VConfig) -> None:
        super().__init__()
        self.pooled = n_latents is None
        self.pool = MAPBlock(d_audio, n_latents or 1, cfg.adapter_num_heads,
                             cfg.adapter_mlp_ratio, cfg.adapter_norm_groups, cfg.adapter_dropout)
        self.stats = TokenStatistics(d_audio) if cfg.adapter_token_statistics else None
        self.head = MLP(d_audio * (5 if self.stats else 1), cfg.adapter_hidden_dim, d_out,
                        cfg.adapter_norm_groups, cfg.adapter_dropout)

    @property
    def out_features(self) -> int:
        return self.head[-1].out_features

    def latents(self, tokens: torch.Tensor) -> torch.Tensor:
        """`(B, latents, width)`: what the head reads, the pooled latents (and statistics)."""
        pooled = self.pool(tokens)
        if self.stats is None:
            return pooled
        stats = self.stats(tokens)[:, None].expand(-1, pooled.shape[1], -1)
        return torch.cat([pooled, stats], dim=-1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.head(self.latents(tokens))
        return out[:, 0] if self.pooled else out


class SpanAdapter(Adapter):
    """Audio tokens `(B, T, d_audio)` to a point of the span of the target rows, shaped like a
    row: one MAP pooling and a GroupNorm MLP to `rank` coordinates (`coordinates`), which
    `out` (`SpanBasis`, set from the table by `adapters_for_targets`) turns into the mean row
    plus those coordinates along the directions in which the rows differ. Its loss is taken on
    the coordinates (`fed_a2v.model.train`)."""

    def __init__(self, d_audio: int, shape: tuple[int, ...], rank: int,
                 cfg: FedA2VConfig) -> None:
        super().__init__(d_audio, rank, None, cfg)
        self.out = SpanBasis(shape, rank)

    @property
    def out_features(self) -> int:
        return self.out.shape[-1]

    def coordinates(self, tokens: torch.Tensor) -> torch.Tensor:
        return super().forward(tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.coordinates(tokens))


# What each diffusion model is conditioned on, so which adapters a federation trains: FLUX on
# CLIP's pooled output and T5's sequence, Stable Diffusion 1.x on CLIP's token sequence alone.
ADAPTERS_BY_DIFFUSION = {"flux": ("clip", "t5"), "sd": ("clip",)}


def adapter_names(cfg: FedA2VConfig) -> tuple[str, ...]:
    """The adapters an experiment trains (and the target tensors it needs), in order."""
    return ADAPTERS_BY_DIFFUSION[cfg.diffusion_type]


def build_adapters(d_audio: int, d_clip: int, d_t5: int | None, cfg: FedA2VConfig,
                   seed: int = 0, target_rows: int | None = None) -> dict[str, nn.Module]:
    """flux: the CLIP adapter `(B, d_clip)` and the T5 adapter `(B, t5_max_length, d_t5)`;
    sd: the CLIP adapter `(B, clip_max_length, d_clip)` only (`d_t5` unused). Those named in
    `span_adapters` are `SpanAdapter`s, whose width follows the target table's `target_rows`
    (their basis is set by `adapters_for_targets`). With `adapter_design` "upstream", the
    upstream research code's adapters of those shapes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.adapter_design == "upstream":
            return build_upstream_adapters(d_audio, d_clip, d_t5, cfg)
        if cfg.diffusion_type == "sd":
            shapes = {"clip": (cfg.clip_max_length, d_clip)}
        elif d_t5 is None:
            raise ValueError("diffusion_type 'flux' needs the T5 targets' width (d_t5)")
        else:
            shapes = {"clip": (d_clip,), "t5": (cfg.t5_max_length, d_t5)}
        spans = [name for name in shapes if name in cfg.span_adapters]
        if spans and target_rows is None:
            raise ValueError(f"span adapters ({', '.join(spans)}) need the target table's rows")
        # full adapters first, in order, from one seeded stream
        adapters = {name: Adapter(d_audio, shape[-1], shape[0] if len(shape) > 1 else None, cfg)
                    for name, shape in shapes.items() if name not in spans}
    for name in spans:  # each from the seed alone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            rank = span_rank(target_rows, math.prod(shapes[name]))
            adapters[name] = SpanAdapter(d_audio, shapes[name], rank, cfg)
    return {name: adapters[name] for name in shapes}


def adapters_for_targets(d_audio: int, targets: dict[str, torch.Tensor], cfg: FedA2VConfig,
                         seed: int = 0) -> dict[str, nn.Module]:
    """The adapters `cfg` trains, as wide as their `targets` (`(N, ..., width)` each), span
    adapters on the span of their tables."""
    missing = [name for name in adapter_names(cfg) if name not in targets]
    if missing:
        raise ValueError(f"diffusion_type '{cfg.diffusion_type}' trains adapters "
                         f"{', '.join(adapter_names(cfg))}, but the targets have no "
                         f"{', '.join(missing)} (targets: {', '.join(sorted(targets))})")
    d_t5 = targets["t5"].shape[-1] if "t5" in targets else None
    adapters = build_adapters(d_audio, targets["clip"].shape[-1], d_t5, cfg, seed,
                              len(targets["clip"]))
    for name, adapter in adapters.items():
        if isinstance(adapter, SpanAdapter):
            adapter.out.set_table(targets[name])
    return adapters


def adapters_state(adapters: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """One flat state dict, keys prefixed by adapter name (`clip.`, `t5.`)."""
    return {f"{name}.{k}": v for name, a in adapters.items() for k, v in a.state_dict().items()}


def load_adapters_state(adapters: dict[str, nn.Module], state: dict[str, torch.Tensor]) -> None:
    for name, adapter in adapters.items():
        prefix = f"{name}."
        adapter.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                 if k.startswith(prefix)})


def save_adapters(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    atomic_write(path, lambda tmp: save_file(
        {k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata))
