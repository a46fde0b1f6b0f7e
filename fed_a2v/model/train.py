"""Local training of every adapter the experiment builds on a node's encoded clips."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from fed_a2v.encode.encoded_set import EncodedSet
from fed_a2v.model.adapters import Adapter, SpanAdapter
from fed_a2v.model.losses import (
    adapter_loss,
    batch_targets,
    per_sample_mse,
    retrieval_loss,
    unit_rows,
)
from fed_a2v.model.optim import AdamW


@dataclass
class LocalTrainConfig:
    epochs: int
    batch_size: int
    stratified: bool
    per_class_loss: bool
    grad_accum_steps: int
    learning_rates: dict[str, float]
    weight_decays: dict[str, float]
    seed: int
    # FedProx: each adapter's loss gets (mu / 2) * ||w - w_global||^2, w_global the adapters
    # it started the round from; 0: no proximal term.
    proximal_mu: float = 0.0
    # Each adapter's loss gets weight * retrieval_loss (fed_a2v.model.losses); 0: MSE alone.
    retrieval_weight: float = 0.0
    retrieval_temperature: float = 0.1


@contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Torch's global RNG (dropout draws from it) seeded with `seed` inside, restored after."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def accumulation_sizes(num_batches: int, steps: int) -> list[int]:
    """For each batch, how many batches its accumulation group holds: `steps`, except the
    epoch's last group, which holds the batches left over."""
    return [min(steps, num_batches - i // steps * steps) for i in range(num_batches)]


def proximal_term(adapter: Adapter, anchors: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's (mu / 2) * ||w - w_global||^2 over the adapter's parameters."""
    return mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(adapter.parameters(), anchors,
                                                               strict=True))


def train_local(adapters: dict[str, Adapter], data: EncodedSet,
                class_targets: dict[str, torch.Tensor], cfg: LocalTrainConfig,
                device: torch.device,
                on_epoch: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Train every adapter for `cfg.epochs`; returns each adapter's mean MSE per epoch.
    `on_epoch(epoch)` runs after each epoch (the study evaluates there). Every random draw
    (batches, dropout) follows `cfg.seed`: the same seed gives the same adapters."""
    if len(data) == 0:
        raise ValueError("no training clips")
    with seeded_rng(cfg.seed, device):
        return _train(adapters, data, class_targets, cfg, device, on_epoch)


def _train(adapters: dict[str, Adapter], data: EncodedSet, class_targets: dict[str, torch.Tensor],
           cfg: LocalTrainConfig, device: torch.device,
           on_epoch: Callable[[int], None] | None) -> dict[str, list[float]]:
    optimizers = {
        name: AdamW(a.parameters(), lr=cfg.learning_rates[name],
                    weight_decay=cfg.weight_decays[name])
        for name, a in adapters.items()
    }
    targets = {name: t.to(device) for name, t in class_targets.items()}
    unit_targets = ({name: unit_rows(t) for name, t in targets.items()}
                    if cfg.retrieval_weight else {})
    batches = EpochBatches(data.labels.tolist(), cfg.batch_size, cfg.stratified, cfg.seed)
    history: dict[str, list[float]] = {name: [] for name in adapters}
    for a in adapters.values():
        a.to(device).train()
    # the adapters the round started from (the global ones), for FedProx's proximal term
    anchors = {name: [p.detach().clone() for p in a.parameters()]
               for name, a in adapters.items()} if cfg.proximal_mu else {}
    for epoch in tqdm(range(cfg.epochs), desc="local training", unit="epoch", disable=None,
                      leave=False):
        sums = dict.fromkeys(adapters, 0.0)
        epoch_batches = list(batches.epoch(epoch))
        group_sizes = accumulation_sizes(len(epoch_batches), cfg.grad_accum_steps)
        for step, (idx, group_size) in enumerate(zip(epoch_batches, group_sizes, strict=True),
                                                 start=1):
            index = torch.tensor(idx)
            tokens = data.tokens.batch(idx).to(device)
            labels = data.labels.index_select(0, index).to(device)
            rows = data.target_ids.index_select(0, index).to(device)
            for name, adapter in adapters.items():
                target = batch_targets(targets[name], rows)
                if isinstance(adapter, SpanAdapter):  # its loss on the span's coordinates
                    coordinates = adapter.coordinates(tokens)
                    pred = adapter.out(coordinates)
                    loss = adapter_loss(coordinates, adapter.out.normalize(target), labels,
                                        cfg.per_class_loss)
                else:
                    pred = adapter(tokens)
                    loss = adapter_loss(pred, target, labels, cfg.per_class_loss)
                if cfg.retrieval_weight:
                    loss = loss + cfg.retrieval_weight * retrieval_loss(
                        pred, unit_targets[name], rows, cfg.retrieval_temperature)
                if cfg.proximal_mu:
                    loss = loss + proximal_term(adapter, anchors[name], cfg.proximal_mu)
                (loss / group_size).backward()  # the group's gradient: mean over its batches
                sums[name] += per_sample_mse(pred.detach(), target).sum().item()
            if step % cfg.grad_accum_steps == 0 or step == len(epoch_batches):
                for opt in optimizers.values():
                    opt.step()
                    opt.zero_grad()
        for name in adapters:
            history[name].append(sums[name] / len(data))
        if on_epoch is not None:
            on_epoch(epoch)
            for a in adapters.values():
                a.train()
    return history


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
