"""The building blocks of the adapters: a channel GroupNorm, a GroupNorm MLP, a multihead
attention-pooling (MAP) block, and the tokens' summary statistics a head reads beside it."""

from __future__ import annotations

import torch
from torch import nn


def group_count(channels: int, wanted: int) -> int:
    """The largest group count <= `wanted` that divides `channels`."""
    return next(g for g in range(min(wanted, channels), 0, -1) if channels % g == 0)


class ChannelGroupNorm(nn.GroupNorm):
    """GroupNorm over the last (channel) dim of `(..., C)`: sequences normalise `D`, not `L`."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__(group_count(channels, groups), channels)

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
        self.attn = nn.MultiheadAttention(dim, group_count(dim, n_heads), batch_first=True)
        self.norm_out = ChannelGroupNorm(dim, groups)
        self.mlp = MLP(dim, dim * mlp_ratio, dim, groups, dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.norm_in(tokens)
        queries = self.latents.expand(tokens.shape[0], -1, -1)
        # The queries stay in the residual path, so latents differ even where attention
        # weights coincide (the T5 adapter's 17 positions must not collapse to one).
        x = queries + self.attn(queries, tokens, tokens, need_weights=False)[0]
        return x + self.mlp(self.norm_out(x))


def token_statistics(tokens: torch.Tensor) -> torch.Tensor:
    """`(..., T, d)` -> `(..., 4d)`: the mean and the (population) standard deviation over the
    tokens, token 0 and token 1 (token 0 again for a single token: `use_cls_token_only`).

    Attention pooling is a weighted mean of the tokens, so it cannot compute their spread; on
    the built-in corpora the spread alone predicts the class about as well as all four
    (docs/corpora.md, "How the default recipe was chosen")."""
    return torch.cat([tokens.mean(-2), tokens.std(-2, correction=0), tokens[..., 0, :],
                      tokens[..., min(1, tokens.shape[-2] - 1), :]], dim=-1)


class TokenStatistics(nn.Module):
    """`(B, T, d)` tokens -> `(B, 4d)`: `token_statistics`, each of the four GroupNorm-ed per
    sample; what an adapter's head reads beside its pooled latents."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(4, 4 * dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(token_statistics(tokens))
