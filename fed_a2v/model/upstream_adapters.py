"""The upstream research code's adapters (lucapalazzo/fedgfe), rebuilt to compare against.

Upstream (master 8caee12ad05f, `system/flcore/trainmodel/downstreamsinestesiaadapters.py`
lines 115-131, the default path: `use_map_adapters = False` at line 53) builds each adapter as
`Sequential(Adapter(768, hidden_dims, out), MAPBlock(n_latents, embed_dim=out, n_heads=8))`:
an MLP over every audio token up to the target width, then attention pooling *at the target
width*: CLIP hidden `[1024, 2048]` to 768, 1 latent; T5 hidden `[1024, 2048, 2048]` to 4096,
17 latents (sd: CLIP with 77 latents). The MAP block is `system/flcore/trainmodel/map.py`
(lines 7-77: separate q/k/v/out projections, zero-initialised latents with Xavier, post-norm
LayerNorm, MLP ratio 4). The MLP's source (`Audio2Visual_NoData/src/models/projection*.py`) is
not in the repository (a symlink to a home directory); `BATCH_SIZE_ANALYSIS.md` lines 121-160
describe it: Linear, GroupNorm (8 groups), GELU, dropout per hidden layer, then Linear. Here
GroupNorm normalises each token's channels, as FedA2V's does (same parameters).

At other audio widths the hidden widths scale with `d_audio / 768` (exact at 768)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fed_a2v.config.feda2v_section import FedA2VConfig
from fed_a2v.model.layers import ChannelGroupNorm, group_count

UPSTREAM_AUDIO_WIDTH = 768
CLIP_HIDDEN = (1024, 2048)
T5_HIDDEN = (1024, 2048, 2048)
MAP_HEADS = 8
MAP_MLP_RATIO = 4
NORM_GROUPS = 8


class TokenMLP(nn.Sequential):
    """Upstream's `Adapter(input_dim, hidden_dims, output_dim)`, applied to every token."""

    def __init__(self, d_in: int, hidden: tuple[int, ...], d_out: int, dropout: float) -> None:
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(d_in, width), ChannelGroupNorm(width, NORM_GROUPS), nn.GELU(),
                       nn.Dropout(dropout)]
            d_in = width
        super().__init__(*layers, nn.Linear(d_in, d_out))


class MAPAttention(nn.Module):
    """map.py's `MAPAttention`: latent queries attend over the tokens."""

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = group_count(dim, n_heads)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim)
                                                                for _ in range(4))

    def forward(self, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        b, k, d = query.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, self.n_heads, d // self.n_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj(query)),
                                             heads(self.k_proj(tokens)),
                                             heads(self.v_proj(tokens)))
        return self.out_proj(out.transpose(1, 2).reshape(b, k, d))


class UpstreamMAPBlock(nn.Module):
    """map.py's `MAPBlock`: attention and MLP on the latents, each followed by LayerNorm."""

    def __init__(self, dim: int, n_latents: int) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.zeros(n_latents, dim))
        nn.init.xavier_uniform_(self.latents)
        self.attn = MAPAttention(dim, MAP_HEADS)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * MAP_MLP_RATIO), nn.GELU(),
                                 nn.Linear(dim * MAP_MLP_RATIO, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        latents = self.latents.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        latents = self.norm1(latents + self.attn(latents, tokens))
        return self.norm2(latents + self.mlp(latents))


class UpstreamAdapter(nn.Module):
    """Tokens `(B, T, d_audio)` to `(B, d_out)` (`n_latents` None) or `(B, n_latents, d_out)`,
    pooling at `d_out`."""

    def __init__(self, d_audio: int, hidden: tuple[int, ...], d_out: int,
                 n_latents: int | None, dropout: float) -> None:
        super().__init__()
        self.pooled = n_latents is None
        self.adapter = TokenMLP(d_audio, hidden, d_out, dropout)
        self.projection = UpstreamMAPBlock(d_out, n_latents or 1)

    @property
    def out_features(self) -> int:
        return self.projection.norm2.normalized_shape[0]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.projection(self.adapter(tokens))
        return out[:, 0] if self.pooled else out


def scaled_hidden(d_audio: int, hidden: tuple[int, ...]) -> tuple[int, ...]:
    """Upstream's hidden widths (made for a 768-wide AST) at audio width `d_audio`."""
    return tuple(max(1, round(h * d_audio / UPSTREAM_AUDIO_WIDTH)) for h in hidden)


def build_upstream_adapters(d_audio: int, d_clip: int, d_t5: int | None,
                            cfg: FedA2VConfig) -> dict[str, UpstreamAdapter]:
    """Upstream's adapters for `cfg.diffusion_type`, as `fed_a2v.model.adapters.build_adapters`
    returns FedA2V's (same names, inputs and output shapes)."""
    drop = cfg.adapter_dropout
    clip_hidden = scaled_hidden(d_audio, CLIP_HIDDEN)
    if cfg.diffusion_type == "sd":
        return {"clip": UpstreamAdapter(d_audio, clip_hidden, d_clip, cfg.clip_max_length, drop)}
    if d_t5 is None:
        raise ValueError("diffusion_type 'flux' needs the T5 targets' width (d_t5)")
    return {"clip": UpstreamAdapter(d_audio, clip_hidden, d_clip, None, drop),
            "t5": UpstreamAdapter(d_audio, scaled_hidden(d_audio, T5_HIDDEN), d_t5,
                                  cfg.t5_max_length, drop)}
