"""Local training: the seed fixes every random draw; gradient accumulation averages each group."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from fed_a2v.config.feda2v_section import FedA2VConfig
from fed_a2v.encode.encoded_set import EncodedSet
from fed_a2v.model.adapters import adapters_for_targets, adapters_state, build_adapters
from fed_a2v.model.losses import adapter_loss
from fed_a2v.model.optim import AdamW
from fed_a2v.model.train import LocalTrainConfig, accumulation_sizes, train_local

NUM_CLASSES, D_TOKEN, N_TOKENS, D_CLIP, D_T5, T5_LEN = 3, 16, 6, 8, 8, 3
CPU = torch.device("cpu")


def _data(per_class: int = 4) -> EncodedSet:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    return EncodedSet(torch.randn(len(labels), N_TOKENS, D_TOKEN, generator=gen), labels)


TARGETS = {"clip": torch.randn(NUM_CLASSES, D_CLIP, generator=torch.Generator().manual_seed(1)),
           "t5": torch.randn(NUM_CLASSES, T5_LEN, D_T5, generator=torch.Generator().manual_seed(2))}


def _cfg(**changes) -> LocalTrainConfig:
    settings = {"epochs": 3, "batch_size": 1, "stratified": False, "per_class_loss": False,
                "grad_accum_steps": 1, "learning_rates": {"clip": 3e-3, "t5": 3e-3},
                "weight_decays": {"clip": 1e-4, "t5": 1e-4}, "seed": 5}
    return LocalTrainConfig(**(settings | changes))


def _train(cfg: LocalTrainConfig, dropout: float = 0.05) -> tuple[dict, dict]:
    """Fresh adapters (init seed 0) trained with `cfg`: their state and the loss history."""
    adapters = adapters_for_targets(D_TOKEN, TARGETS,
                                    FedA2VConfig(t5_max_length=T5_LEN, adapter_hidden_dim=32,
                                                 adapter_dropout=dropout), seed=0)
    history = train_local(adapters, _data(), TARGETS, cfg, CPU)
    return adapters_state(adapters), history


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_same_seed_trains_the_same_adapters_whatever_ran_before() -> None:
    torch.manual_seed(123)
    first, first_history = _train(_cfg())
    torch.rand(1000)  # other code drawing from the global RNG in between changes nothing
    second, second_history = _train(_cfg())
    assert _same(first, second) and first_history == second_history
    other, _ = _train(_cfg(seed=6))
    assert not _same(first, other)


@pytest.mark.parametrize("batch_size,stratified", [(1, False), (1, True), (4, True)])
def test_mean_and_per_class_loss_train_identically_on_one_class_batches(
        batch_size: int, stratified: bool) -> None:
    """A batch of one class (batch size 1, or stratified batches) gives the per-class loss the
    same gradient as the mean loss: the two arms must train bit-identical adapters."""
    mean = _train(_cfg(batch_size=batch_size, stratified=stratified, per_class_loss=False))
    per_class = _train(_cfg(batch_size=batch_size, stratified=stratified, per_class_loss=True))
    assert _same(mean[0], per_class[0]) and mean[1] == per_class[1]


def test_train_local_leaves_the_callers_rng_alone() -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    _train(_cfg(epochs=1))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("batches,steps,sizes", [
    (5, 2, [2, 2, 2, 2, 1]),
    (7, 3, [3, 3, 3, 3, 3, 3, 1]),
    (8, 4, [4] * 8),
    (3, 4, [3, 3, 3]),
    (3, 1, [1, 1, 1]),
])
def test_accumulation_group_sizes_by_hand(batches: int, steps: int, sizes: list[int]) -> None:
    assert accumulation_sizes(batches, steps) == sizes


def test_every_accumulation_group_steps_with_the_mean_gradient_of_its_batches(monkeypatch) -> None:
    """Five copies of one clip, batch size 1, groups of 2 (2, 2, then 1): every batch has the
    one-clip loss, so each group's mean gradient is that loss's gradient at the parameters of
    the step, the last, shorter group included (dividing it by 2 would halve it)."""
    cfg = FedA2VConfig(t5_max_length=T5_LEN, adapter_hidden_dim=32, adapter_dropout=0.0)
    adapter = build_adapters(D_TOKEN, D_CLIP, D_T5, cfg, seed=0, target_rows=2)["clip"]
    clip = torch.randn(1, N_TOKENS, D_TOKEN, generator=torch.Generator().manual_seed(3))
    data = EncodedSet(clip.expand(5, -1, -1).clone(), torch.zeros(5, dtype=torch.long))
    names = [name for name, _ in adapter.named_parameters()]
    steps: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []

    step = AdamW.step

    def keep(optimizer: AdamW) -> None:
        steps.append(([p.detach().clone() for p in optimizer.params],
                      [p.grad.clone() for p in optimizer.params]))
        step(optimizer)

    monkeypatch.setattr(AdamW, "step", keep)
    train_local({"clip": adapter}, data, {"clip": TARGETS["clip"]},
                _cfg(epochs=1, grad_accum_steps=2, learning_rates={"clip": 1e-2},
                     weight_decays={"clip": 0.0}), CPU)
    assert len(steps) == 3
    for params, grads in steps:
        values = dict(zip(names, [p.requires_grad_() for p in params], strict=True))
        loss = adapter_loss(functional_call(adapter, values, (clip,)),
                            TARGETS["clip"][:1], torch.zeros(1, dtype=torch.long), False)
        expected = torch.autograd.grad(loss, list(values.values()))
        for name, got, want in zip(names, grads, expected, strict=True):
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-8), name
