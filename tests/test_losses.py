"""Losses pair each prediction with its own sample's target, at any batch size."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F

import fed_a2v.model.train as train_mod
from fed_a2v.config.feda2v_section import FedA2VConfig
from fed_a2v.encode.encoded_set import EncodedSet
from fed_a2v.model.adapters import adapters_for_targets
from fed_a2v.model.evaluation import evaluate_adapters
from fed_a2v.model.losses import (
    adapter_loss,
    batch_targets,
    per_sample_mse,
    retrieval_loss,
    unit_rows,
)
from fed_a2v.model.train import LocalTrainConfig, train_local

# Four samples of two dims; prediction is all ones, the targets differ by known amounts.
PRED = torch.ones(4, 2)
TARGET = PRED + torch.tensor([[1.0, -1.0],   # squared errors 1, 1 -> MSE 1
                              [2.0, 2.0],    # 4, 4 -> 4
                              [3.0, 1.0],    # 9, 1 -> 5
                              [0.0, 2.0]])   # 0, 4 -> 2
LABELS = torch.tensor([0, 0, 1, 2])


def test_per_sample_mse_by_hand():
    assert torch.allclose(per_sample_mse(PRED, TARGET), torch.tensor([1.0, 4.0, 5.0, 2.0]))


def test_per_sample_mse_flattens_sequence_dims():
    pred = torch.zeros(2, 3, 2)
    target = torch.zeros(2, 3, 2)
    target[1, 0, 0] = 6.0  # one squared error of 36 over 6 values
    assert torch.allclose(per_sample_mse(pred, target), torch.tensor([0.0, 6.0]))


def test_plain_mean_by_hand():
    loss = adapter_loss(PRED, TARGET, LABELS, per_class=False)
    assert loss.item() == pytest.approx((1 + 4 + 5 + 2) / 4)


def test_per_class_mean_by_hand():
    # class 0: (1 + 4) / 2 = 2.5; class 1: 5; class 2: 2 -> mean of the three
    loss = adapter_loss(PRED, TARGET, LABELS, per_class=True)
    assert loss.item() == pytest.approx((2.5 + 5 + 2) / 3)


def test_per_class_mean_ignores_label_values_and_order():
    labels = torch.tensor([7, 7, 3, 11])
    assert adapter_loss(PRED, TARGET, labels, True).item() == pytest.approx((2.5 + 5 + 2) / 3)
    perm = torch.tensor([2, 0, 3, 1])
    loss = adapter_loss(PRED[perm], TARGET[perm], LABELS[perm], True)
    assert loss.item() == pytest.approx((2.5 + 5 + 2) / 3)


def test_per_class_loss_has_gradient():
    pred = PRED.clone().requires_grad_()
    adapter_loss(pred, TARGET, LABELS, per_class=True).backward()
    # d/dpred of class-0 samples is halved relative to the single-sample classes.
    expected = -2 * (TARGET - PRED) / 2 / torch.tensor([2.0, 2.0, 1.0, 1.0]).view(4, 1) / 3
    assert torch.allclose(pred.grad, expected)


def test_broadcastable_shape_mismatch_is_rejected():
    # The upstream bug: (B, 1, D) targets against (B, D) predictions broadcast to (B, B, D).
    pred = torch.randn(4, 8)
    with pytest.raises(ValueError, match="shape"):
        per_sample_mse(pred, pred.unsqueeze(1))
    with pytest.raises(ValueError, match="shape"):
        adapter_loss(pred, pred.unsqueeze(1), LABELS, per_class=False)


def test_labels_must_match_batch():
    with pytest.raises(ValueError, match="labels"):
        adapter_loss(PRED, TARGET, torch.tensor([0, 1, 2]), per_class=True)


# ---------------------------------------------------------------------------------------------
# Pairing at batch size > 1.

CLASS_TARGETS = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
BATCH_LABELS = torch.tensor([2, 0, 1, 3, 1, 0, 2, 3])


def test_batch_targets_gives_each_sample_its_own_class_target():
    targets = batch_targets(CLASS_TARGETS, BATCH_LABELS)
    assert targets.shape == (8, 6)
    for i, label in enumerate(BATCH_LABELS.tolist()):
        assert torch.equal(targets[i], CLASS_TARGETS[label])


def test_batch_targets_for_sequence_targets():
    seq_targets = torch.randn(4, 3, 5)
    targets = batch_targets(seq_targets, BATCH_LABELS)
    assert targets.shape == (8, 3, 5)
    assert all(torch.equal(targets[i], seq_targets[c]) for i, c in enumerate(BATCH_LABELS))


@pytest.mark.parametrize("per_class", [False, True])
def test_perfect_predictor_has_zero_loss_and_permuted_one_does_not(per_class):
    targets = batch_targets(CLASS_TARGETS, BATCH_LABELS)
    own = targets.clone()  # a predictor that returns each sample's own target
    assert adapter_loss(own, targets, BATCH_LABELS, per_class).item() == 0.0
    shifted = own.roll(1, dims=0)  # neighbouring samples always have different labels here
    assert (BATCH_LABELS != BATCH_LABELS.roll(1)).all()
    assert adapter_loss(shifted, targets, BATCH_LABELS, per_class).item() > 0.1


# ---------------------------------------------------------------------------------------------
# The retrieval term: cross-entropy over cosine similarities to every target row.

def test_retrieval_loss_by_hand():
    gen = torch.Generator().manual_seed(3)
    table, pred = torch.randn(3, 2, 4, generator=gen), torch.randn(5, 2, 4, generator=gen)
    rows = torch.tensor([0, 2, 1, 1, 0])
    cos = F.cosine_similarity(pred.flatten(1)[:, None], table.flatten(1)[None], dim=-1)
    expected = -(cos / 0.1).log_softmax(dim=1)[torch.arange(5), rows].mean()
    unit = unit_rows(table)
    assert torch.allclose(retrieval_loss(pred, unit, rows, 0.1), expected)
    # cosine: the predictions' scale does not count, the temperature does
    assert torch.allclose(retrieval_loss(7 * pred, unit, rows, 0.1), expected)
    assert not torch.allclose(retrieval_loss(pred, unit, rows, 0.5), expected)


def test_retrieval_loss_is_lowest_for_each_clips_own_row():
    table = torch.randn(4, 6, generator=torch.Generator().manual_seed(4))
    rows = torch.tensor([0, 1, 2, 3, 3, 1])
    unit = unit_rows(table)
    own = retrieval_loss(table[rows], unit, rows, 0.1)
    assert own < retrieval_loss(table[rows.roll(1)], unit, rows, 0.1)
    assert own < retrieval_loss(table[rows.flip(0)], unit, rows, 0.1)



NUM_CLASSES, D_TOKEN, N_TOKENS, T5_LEN = 3, 16, 6, 3


def _encoded_set(per_class: int, gen: torch.Generator, offsets: torch.Tensor,
                 positions: torch.Tensor) -> EncodedSet:
    """Noise tokens plus a fixed position embedding (as AST's) plus the class's offset."""
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    tokens = torch.randn(len(labels), N_TOKENS, D_TOKEN, generator=gen) * 0.5
    tokens += positions + offsets[labels].unsqueeze(1)
    return EncodedSet(tokens, labels)


def _task():
    gen = torch.Generator().manual_seed(0)
    offsets = torch.randn(NUM_CLASSES, D_TOKEN, generator=gen) * 3
    positions = torch.randn(N_TOKENS, D_TOKEN, generator=gen) * 3
    train = _encoded_set(8, gen, offsets, positions)
    test = _encoded_set(4, gen, offsets, positions)
    targets = {"clip": torch.randn(NUM_CLASSES, 8, generator=gen),
               "t5": torch.randn(NUM_CLASSES, T5_LEN, 8, generator=gen)}
    cfg = FedA2VConfig(t5_max_length=T5_LEN, adapter_hidden_dim=32, adapter_dropout=0.0)
    adapters = adapters_for_targets(D_TOKEN, targets, cfg, seed=0)
    return adapters, train, test, targets


def _train_cfg(stratified: bool, per_class: bool) -> LocalTrainConfig:
    return LocalTrainConfig(epochs=20, batch_size=4, stratified=stratified,
                            per_class_loss=per_class, grad_accum_steps=1,
                            learning_rates={"clip": 3e-3, "t5": 3e-3},
                            weight_decays={"clip": 0.0, "t5": 0.0}, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("stratified,per_class", [(False, False), (True, True)])
def test_training_at_batch_size_4_learns_each_class(stratified, per_class):
    torch.manual_seed(0)
    adapters, train, test, targets = _task()
    cpu = torch.device("cpu")
    before = evaluate_adapters(adapters, test, targets, batch_size=4, device=cpu)
    history = train_local(adapters, train, targets, _train_cfg(stratified, per_class), cpu)
    after = evaluate_adapters(adapters, test, targets, batch_size=4, device=cpu)
    for name in ("clip", "t5"):
        assert len(history[name]) == 20
        assert history[name][-1] < 0.1 * history[name][0]
        assert after[f"eval_{name}_mse"] < 0.1 * before[f"eval_{name}_mse"]
        assert after[f"eval_{name}_top1"] == 1.0
    assert before["eval_clip_top1"] < 1.0 and before["eval_t5_top1"] < 1.0


def test_the_retrieval_term_tells_apart_rows_that_share_most_values():
    """Targets that differ in a small share of their values (as T5 prompts padded to one
    length): after the same training, MSE alone still confuses classes and the retrieval
    term does not."""
    cpu = torch.device("cpu")
    top1 = {}
    for weight in (0.0, 1.0):
        adapters, train, test, targets = _task()
        gen = torch.Generator().manual_seed(7)
        shared = {k: torch.randn(t.shape[1:], generator=gen) + 0.05 * t
                  for k, t in targets.items()}
        cfg = dataclasses.replace(_train_cfg(False, False), epochs=10, retrieval_weight=weight)
        train_local(adapters, train, shared, cfg, cpu)
        metrics = evaluate_adapters(adapters, test, shared, batch_size=4, device=cpu)
        top1[weight] = [metrics[f"eval_{n}_top1"] for n in ("clip", "t5")]
    assert top1[1.0] == [1.0, 1.0]
    assert sum(top1[0.0]) < 1.9


def test_upstream_collated_targets_are_rejected_by_training():
    """The upstream collation gave `(B, 1, D)` CLIP targets: fed through real training, the
    loss's shape check stops it before any step."""
    adapters, train, _, targets = _task()
    collated = {**targets, "clip": targets["clip"].unsqueeze(1)}  # (C, 1, D): batches (B, 1, D)
    with pytest.raises(ValueError, match=r"prediction shape \(4, 8\) != target shape \(4, 1, 8\)"):
        train_local(adapters, train, collated, _train_cfg(False, False), torch.device("cpu"))


def upstream_mse(pred, target, labels, per_class):
    """Upstream's loss: MSE of `(B, ...)` predictions against `(B, 1, ...)` targets, which
    broadcasts to `(B, B, ...)`: every prediction against every target of its batch."""
    return F.mse_loss(pred, target.unsqueeze(1))


def test_the_upstream_broadcast_pulls_every_prediction_to_the_batch_mean():
    pred = torch.randn(4, 6, requires_grad=True)
    target = torch.randn(4, 6)
    with pytest.warns(UserWarning, match="broadcast"):
        loss = upstream_mse(pred, target, LABELS, False)
    by_hand = torch.stack([(pred[j] - target[i]).pow(2) for i in range(4) for j in range(4)])
    assert torch.allclose(loss, by_hand.mean())
    loss.backward()
    # d/dpred_j = 2 (pred_j - mean target) / (B * D): each sample's own target plays no part.
    assert torch.allclose(pred.grad, 2 * (pred.detach() - target.mean(0)) / (4 * 6))


@pytest.mark.slow
@pytest.mark.parametrize("batch_size,epochs", [(1, 5), (4, 20), (24, 120)])  # 120 steps each
def test_the_same_training_with_the_upstream_broadcast(monkeypatch, batch_size, epochs):
    """Control: the task above with upstream's broadcasting loss. At batch size 1 a `(1, 1, D)`
    target broadcasts to itself and the task is learned (upstream trained well only there);
    above it, each prediction is pulled towards its batch's mean target, and the MSE stays far
    from what the per-sample loss reaches (< 0.1 of the start). Top-1 can survive while the
    own target weighs in each batch's mean; with the whole set in one batch (24 clips) every
    prediction gets the same target and top-1 falls to chance."""
    monkeypatch.setattr(train_mod, "adapter_loss", upstream_mse)
    adapters, train, test, targets = _task()
    cpu = torch.device("cpu")
    before = evaluate_adapters(adapters, test, targets, batch_size=4, device=cpu)
    cfg = _train_cfg(False, False)
    cfg.batch_size, cfg.epochs = batch_size, epochs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the broadcast warning, every step
        train_local(adapters, train, targets, cfg, cpu)
    after = evaluate_adapters(adapters, test, targets, batch_size=4, device=cpu)
    ratios = [after[f"eval_{n}_mse"] / before[f"eval_{n}_mse"] for n in ("clip", "t5")]
    top1 = [after["eval_clip_top1"], after["eval_t5_top1"]]
    if batch_size == 1:
        assert max(ratios) < 0.1 and min(top1) == 1.0
    else:
        assert min(ratios) > 0.25, ratios
    if batch_size == len(train):
        assert max(top1) < 0.5


def test_train_local_rejects_empty_data():
    adapters, _, _, targets = _task()
    empty = EncodedSet(torch.empty(0, N_TOKENS, D_TOKEN), torch.empty(0, dtype=torch.long))
    with pytest.raises(ValueError):
        train_local(adapters, empty, targets, _train_cfg(False, False), torch.device("cpu"))
