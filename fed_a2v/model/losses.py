"""Losses with per-sample pairing enforced: predictions and targets are both `(B, ...)`."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`(B,)` mean squared error of each sample against its own target.

    Shapes must match exactly: the upstream code's `(B, 1, 768)` targets against `(B, 768)`
    predictions broadcast every prediction against every target of the batch.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape "
                         f"{tuple(target.shape)}; targets must be per sample")
    return (pred - target).pow(2).flatten(1).mean(dim=1)


def adapter_loss(pred: torch.Tensor, target: torch.Tensor, labels: torch.Tensor,
                 per_class: bool) -> torch.Tensor:
    """Batch MSE; with `per_class`, the mean over the batch's classes of each class's mean."""
    losses = per_sample_mse(pred, target)
    if labels.shape != losses.shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} != batch {tuple(losses.shape)}")
    if not per_class:
        return losses.mean()
    classes, inverse = labels.unique(return_inverse=True)
    sums = torch.zeros(len(classes), dtype=losses.dtype, device=losses.device)
    sums = sums.index_add(0, inverse, losses)
    counts = torch.bincount(inverse, minlength=len(classes)).to(losses.dtype)
    return (sums / counts).mean()


def unit_rows(table: torch.Tensor) -> torch.Tensor:
    """`(K, ...)` -> `(K, D)`: each row flattened and scaled to unit length."""
    return F.normalize(table.flatten(1), dim=1)


def row_similarities(pred: torch.Tensor, unit_table: torch.Tensor) -> torch.Tensor:
    """`(B, K)`: the cosine similarity of each prediction to every row of `unit_table`
    (`unit_rows` of a target table); its argmax is the nearest target, as top-1 scores it."""
    return unit_rows(pred) @ unit_table.T


def retrieval_loss(pred: torch.Tensor, unit_table: torch.Tensor, rows: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """Cross-entropy of each prediction's cosine similarity to every target row (over
    `temperature`) against its own row `rows[i]`: the held-out top-1 task itself.
    `unit_table`: `unit_rows` of the target table, made once per training, not per batch.

    MSE weighs every target value alike; where the rows share most of their values (T5 prompts
    that differ in one word, padded to one length) the part that tells them apart is a small
    share of it, and this term is what pushes the predictions apart along it."""
    return F.cross_entropy(row_similarities(pred, unit_table) / temperature, rows)


def batch_targets(class_targets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each sample's own target: row `labels[i]` of `(C, ...)`, shape `(B, ...)`."""
    return class_targets.index_select(0, labels)
