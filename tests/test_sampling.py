"""Batch samplers: coverage, stratification, batch size, seeding and per-epoch reshuffling."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fed_a2v.model.train import EpochBatches, random_batches, stratified_batches

# Label lists of 1-80 samples over 1-9 classes, with batch sizes and seeds to match.
label_lists = st.integers(1, 9).flatmap(
    lambda classes: st.lists(st.integers(0, classes - 1), min_size=1, max_size=80))
batch_sizes = st.integers(1, 9)
seeds = st.integers(0, 2**32 - 1)


def _flat(batches):
    return sorted(i for b in batches for i in b)


@settings(max_examples=200, deadline=None)
@given(label_lists, batch_sizes, seeds)
def test_stratified_batches_properties(labels: list[int], batch_size: int, seed: int) -> None:
    batches = stratified_batches(labels, batch_size, seed)
    assert _flat(batches) == list(range(len(labels)))
    for batch in batches:
        assert 1 <= len(batch) <= batch_size
        assert len({labels[i] for i in batch}) == 1
    # Each class fills as few batches as possible: ceil(count / batch_size).
    counts = {c: labels.count(c) for c in set(labels)}
    assert len(batches) == sum(-(-n // batch_size) for n in counts.values())


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 80), batch_sizes, seeds)
def test_random_batches_properties(num_samples: int, batch_size: int, seed: int) -> None:
    batches = random_batches(num_samples, batch_size, seed)
    assert _flat(batches) == list(range(num_samples))
    assert all(len(b) == batch_size for b in batches[:-1])
    assert 1 <= len(batches[-1]) <= batch_size


def test_random_batches_of_nothing():
    assert random_batches(0, 4, 0) == []
    assert stratified_batches([], 4, 0) == []


LABELS = [i % 5 for i in range(60)]


@pytest.mark.parametrize("make", [
    lambda seed: stratified_batches(LABELS, 4, seed),
    lambda seed: random_batches(len(LABELS), 4, seed),
], ids=["stratified", "random"])
def test_seeding(make):
    assert make(7) == make(7)
    assert make(7) != make(8)
    assert make(7) != [list(range(i, i + 4)) for i in range(0, 60, 4)]  # not the identity order


def test_stratified_batch_order_is_shuffled_across_classes():
    # 20 classes of 3 samples, batch size 5: one batch per class; the chance that a shuffled
    # order comes out sorted by class is 1 / 20!.
    labels = [c for c in range(20) for _ in range(3)]
    batches = stratified_batches(labels, 5, seed=0)
    order = [labels[b[0]] for b in batches]
    assert sorted(order) == list(range(20))
    assert order != sorted(order)
    assert order != sorted(order, reverse=True)


def test_stratified_members_are_shuffled_within_a_class():
    labels = [0] * 40
    batches = stratified_batches(labels, 40, seed=0)
    assert batches[0] != list(range(40))


@pytest.mark.parametrize("stratified", [False, True])
def test_epoch_batches_differ_per_epoch_and_repeat_per_seed(stratified):
    labels = [i % 4 for i in range(40)]
    sampler = EpochBatches(labels, 4, stratified, seed=3)
    epochs = [list(sampler.epoch(e)) for e in range(3)]
    for batches in epochs:
        assert _flat(batches) == list(range(40))
        if stratified:
            assert all(len({labels[i] for i in b}) == 1 for b in batches)
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != epochs[2]
    again = EpochBatches(labels, 4, stratified, seed=3)
    assert [list(again.epoch(e)) for e in range(3)] == epochs
    other = EpochBatches(labels, 4, stratified, seed=4)
    assert list(other.epoch(0)) != epochs[0]


def test_epoch_batches_seeds_do_not_alias_epochs():
    # (seed, epoch) pairs must not collide for small values, e.g. (0, 1) vs (1, 0).
    labels = [i % 3 for i in range(30)]
    seen = {}
    for seed in range(4):
        for epoch in range(4):
            key = tuple(map(tuple, EpochBatches(labels, 5, False, seed).epoch(epoch)))
            assert key not in seen, (seed, epoch, seen.get(key))
            seen[key] = (seed, epoch)
