"""The trainable adapters: a MAP block pools audio tokens, a GroupNorm MLP maps them out.

Everything normalises per sample (GroupNorm over channels), so in eval mode a sample's output does
not depend on what else is in its batch. Pooling runs at the audio encoder's width and only the
last layer projects up to the target width, which keeps the per-round payload small.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import FedA2VConfig


def _groups(channels: int, wanted: int) -> int:
    """The largest group count <= `wanted` that divides `channels`."""
    return next(g for g in range(min(wanted, channels), 0, -1) if channels % g == 0)


class ChannelGroupNorm(nn.GroupNorm):
    """GroupNorm over the last (channel) dim of `(..., C)`: sequences normalise `D`, not `L`."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__(_groups(channels, groups), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class MLP(nn.Sequential):
    def __init__(self, d_in: int, d_hidden: int, d_out: int, groups: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(d_in, d_hidden),
            ChannelGroupNorm(d_hidden, groups),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d_hidden, d_out),
        )


class MAPBlock(nn.Module):
    """Multihead attention pooling: `n_latents` learned queries attend over the tokens."""

    def __init__(self, dim: int, n_latents: int, n_heads: int, mlp_ratio: int, groups: int,
                 dropout: float) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, n_latents, dim) * dim**-0.5)
        self.norm_in = ChannelGroupNorm(dim, groups)
        self.attn = nn.MultiheadAttention(dim, _groups(dim, n_heads), batch_first=True)
        self.norm_out = ChannelGroupNorm(dim, groups)
        self.mlp = MLP(dim, dim * mlp_ratio, dim, groups, dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.norm_in(tokens)
        queries = self.latents.expand(tokens.shape[0], -1, -1)
        # The queries stay in the residual path, so latents differ even where attention
        # weights coincide (the T5 adapter's 17 positions must not collapse to one).
        x = queries + self.attn(queries, tokens, tokens, need_weights=False)[0]
        return x + self.mlp(self.norm_out(x))


class Adapter(nn.Module):
    """Audio tokens `(B, T, d_audio)` to `(B, d_out)` (`n_latents` None: one pooled vector) or
    `(B, n_latents, d_out)` (a sequence)."""

    def __init__(self, d_audio: int, d_out: int, n_latents: int | None,
                 cfg: FedA2VConfig) -> None:
        super().__init__()
        self.pooled = n_latents is None
        self.pool = MAPBlock(d_audio, n_latents or 1, cfg.adapter_num_heads,
                             cfg.adapter_mlp_ratio, cfg.adapter_norm_groups, cfg.adapter_dropout)
        self.head = MLP(d_audio, cfg.adapter_hidden_dim, d_out, cfg.adapter_norm_groups,
                        cfg.adapter_dropout)

    @property
    def out_features(self) -> int:
        return self.head[-1].out_features

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.head(self.pool(tokens))
        return out[:, 0] if self.pooled else out


# What each diffusion model is conditioned on, so which adapters a federation trains: FLUX on
# CLIP's pooled output and T5's sequence, Stable Diffusion 1.x on CLIP's token sequence alone.
ADAPTERS_BY_DIFFUSION = {"flux": ("clip", "t5"), "sd": ("clip",)}


def adapter_names(cfg: FedA2VConfig) -> tuple[str, ...]:
    """The adapters an experiment trains (and the target tensors it needs), in order."""
    return ADAPTERS_BY_DIFFUSION[cfg.diffusion_type]


def build_adapters(d_audio: int, d_clip: int, d_t5: int | None, cfg: FedA2VConfig,
                   seed: int = 0) -> dict[str, nn.Module]:
    """flux: the CLIP adapter `(B, d_clip)` and the T5 adapter `(B, t5_max_length, d_t5)`;
    sd: the CLIP adapter `(B, clip_max_length, d_clip)` only (`d_t5` unused). With
    `adapter_design` "upstream", the upstream research code's adapters of those shapes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.adapter_design == "upstream":
            from .upstream_adapters import build_upstream_adapters  # it imports this module

            return build_upstream_adapters(d_audio, d_clip, d_t5, cfg)
        if cfg.diffusion_type == "sd":
            return {"clip": Adapter(d_audio, d_clip, cfg.clip_max_length, cfg)}
        if d_t5 is None:
            raise ValueError("diffusion_type 'flux' needs the T5 targets' width (d_t5)")
        return {
            "clip": Adapter(d_audio, d_clip, None, cfg),
            "t5": Adapter(d_audio, d_t5, cfg.t5_max_length, cfg),
        }


def adapters_for_targets(d_audio: int, targets: dict[str, torch.Tensor], cfg: FedA2VConfig,
                         seed: int = 0) -> dict[str, nn.Module]:
    """The adapters `cfg` trains, as wide as their `targets` (`(N, ..., width)` each)."""
    missing = [name for name in adapter_names(cfg) if name not in targets]
    if missing:
        raise ValueError(f"diffusion_type '{cfg.diffusion_type}' trains adapters "
                         f"{', '.join(adapter_names(cfg))}, but the targets have no "
                         f"{', '.join(missing)} (targets: {', '.join(sorted(targets))})")
    d_t5 = targets["t5"].shape[-1] if "t5" in targets else None
    return build_adapters(d_audio, targets["clip"].shape[-1], d_t5, cfg, seed)


def adapters_state(adapters: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """One flat state dict, keys prefixed by adapter name (`clip.`, `t5.`)."""
    return {f"{name}.{k}": v for name, a in adapters.items() for k, v in a.state_dict().items()}


def load_adapters_state(adapters: dict[str, nn.Module], state: dict[str, torch.Tensor]) -> None:
    for name, adapter in adapters.items():
        prefix = f"{name}."
        adapter.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                 if k.startswith(prefix)})
