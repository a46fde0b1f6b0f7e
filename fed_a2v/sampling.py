"""Batch samplers: random, or stratified (each batch from one class)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def random_batches(num_samples: int, batch_size: int, seed: int) -> list[list[int]]:
    order = np.random.default_rng(seed).permutation(num_samples)
    return [order[i:i + batch_size].tolist() for i in range(0, num_samples, batch_size)]


def stratified_batches(labels: Sequence[int], batch_size: int, seed: int) -> list[list[int]]:
    """Batches drawn from one class each; every sample exactly once; batch order shuffled."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    batches = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        batches += [members[i:i + batch_size].tolist() for i in range(0, len(members), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


class EpochBatches:
    """The batches of every epoch, reseeded per epoch so epochs differ but runs repeat."""

    def __init__(self, labels: Sequence[int], batch_size: int, stratified: bool, seed: int):
        self.labels, self.batch_size = labels, batch_size
        self.stratified, self.seed = stratified, seed

    def epoch(self, epoch: int) -> Iterator[list[int]]:
        seed = self.seed * 1_000_003 + epoch
        if self.stratified:
            return iter(stratified_batches(self.labels, self.batch_size, seed))
        return iter(random_batches(len(self.labels), self.batch_size, seed))
