"""Held-out metrics: MSE, cosine to the own target, and top-1 retrieval over all classes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fed_a2v.encode.encoded_set import EncodedSet
from fed_a2v.model.adapters import Adapter
from fed_a2v.model.losses import batch_targets, per_sample_mse, row_similarities, unit_rows


@torch.no_grad()
def evaluate_adapters(adapters: dict[str, Adapter], data: EncodedSet,
                      class_targets: dict[str, torch.Tensor], batch_size: int,
                      device: torch.device, prefix: str = "eval") -> dict[str, float]:
    """`<prefix>_<adapter>_mse|cosine|top1`, means over the samples of `data` (`eval`: the
    held-out clips, `val`: the validation clips).

    Top-1: whether the target nearest to the prediction by cosine, among all targets (every
    class, or every caption), is the sample's own.
    """
    sums: dict[str, float] = {}
    for name, adapter in adapters.items():
        adapter.to(device).eval()
        targets = class_targets[name].to(device)
        unit_targets = unit_rows(targets)
        mse = cos = hits = 0.0
        for start in range(0, len(data), batch_size):
            idx = list(range(start, min(start + batch_size, len(data))))
            tokens = data.tokens.batch(idx).to(device)
            rows = data.target_ids[idx].to(device)
            pred = adapter(tokens)
            own = batch_targets(targets, rows)
            mse += per_sample_mse(pred, own).sum().item()
            cos += F.cosine_similarity(pred.flatten(1), own.flatten(1), dim=1).sum().item()
            nearest = row_similarities(pred, unit_targets).argmax(dim=1)
            hits += (nearest == rows).sum().item()
        n = max(len(data), 1)
        sums |= {f"{prefix}_{name}_mse": mse / n, f"{prefix}_{name}_cosine": cos / n,
                 f"{prefix}_{name}_top1": hits / n}
    return sums
