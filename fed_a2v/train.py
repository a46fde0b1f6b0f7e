"""Local training of both adapters on a node's encoded clips."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from .adapters import Adapter
from .losses import adapter_loss, per_sample_mse
from .sampling import EpochBatches


@dataclass
class EncodedSet:
    """Frozen-encoder tokens `(N, T, D)` and class ids `(N,)` indexing the class targets."""

    tokens: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


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


def batch_targets(class_targets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each sample's own target: row `labels[i]` of `(C, ...)`, shape `(B, ...)`."""
    return class_targets.index_select(0, labels)


def train_local(adapters: dict[str, Adapter], data: EncodedSet,
                class_targets: dict[str, torch.Tensor], cfg: LocalTrainConfig,
                device: torch.device) -> dict[str, list[float]]:
    """Train every adapter for `cfg.epochs`; returns each adapter's mean MSE per epoch."""
    if len(data) == 0:
        raise ValueError("no training clips")
    optimizers = {
        name: torch.optim.AdamW(a.parameters(), lr=cfg.learning_rates[name],
                                weight_decay=cfg.weight_decays[name])
        for name, a in adapters.items()
    }
    targets = {name: t.to(device) for name, t in class_targets.items()}
    batches = EpochBatches(data.labels.tolist(), cfg.batch_size, cfg.stratified, cfg.seed)
    history: dict[str, list[float]] = {name: [] for name in adapters}
    for a in adapters.values():
        a.to(device).train()
    for epoch in tqdm(range(cfg.epochs), desc="local training", unit="epoch", disable=None,
                      leave=False):
        sums = dict.fromkeys(adapters, 0.0)
        epoch_batches = list(batches.epoch(epoch))
        for step, idx in enumerate(epoch_batches, start=1):
            index = torch.tensor(idx)
            tokens = data.tokens.index_select(0, index).to(device, torch.float32)
            labels = data.labels.index_select(0, index).to(device)
            for name, adapter in adapters.items():
                pred = adapter(tokens)
                target = batch_targets(targets[name], labels)
                loss = adapter_loss(pred, target, labels, cfg.per_class_loss)
                (loss / cfg.grad_accum_steps).backward()
                sums[name] += per_sample_mse(pred.detach(), target).sum().item()
            if step % cfg.grad_accum_steps == 0 or step == len(epoch_batches):
                for opt in optimizers.values():
                    opt.step()
                    opt.zero_grad(set_to_none=True)
        for name in adapters:
            history[name].append(sums[name] / len(data))
    return history
