"""Knowledge distillation of the adapters on generated token sequences (`adapter_aggregation_mode`
`kd`): the student (the round's FedAvg) learns, on samples of every class, what the teacher
says for them: for each class, the mean of the adapters of the nodes that hold it.

What an adapter is taught is what its training loss reads: a span adapter's coordinates, any
other adapter's output. Teacher outputs are added up as each node's adapters arrive
(`TeacherSums`), so the server holds one node's adapters at a time, never all of them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from tqdm import tqdm

from fed_a2v.model.adapters import SpanAdapter
from fed_a2v.model.generators import ClassGenerator, iter_samples
from fed_a2v.model.optim import AdamW
from fed_a2v.model.train import seeded_rng


def taught(adapter: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """What distillation matches for `adapter` on `tokens`: coordinates or outputs."""
    return adapter.coordinates(tokens) if isinstance(adapter, SpanAdapter) else adapter(tokens)


def class_seed(seed: int, index: int) -> int:
    """The seed of class `index`'s transfer samples in a round with `seed`."""
    return seed * 1_000_003 + index


class TransferSet:
    """`samples` generated token sequences of each class, drawn again (the same) whenever they
    are needed, so they are never all held at once: class name -> its generator."""

    def __init__(self, generators: Mapping[str, ClassGenerator], samples: int, seed: int,
                 chunk: int = 32) -> None:
        self.generators = dict(generators)
        self.samples, self.seed, self.chunk = samples, seed, chunk

    @property
    def classes(self) -> list[str]:
        return list(self.generators)

    def batches(self, name: str) -> list[torch.Tensor]:
        index = self.classes.index(name)
        return list(iter_samples(self.generators[name], self.samples,
                                 class_seed(self.seed, index), self.chunk))


class TeacherSums:
    """Per class and adapter, the weighted sum of the teachers' outputs on the class's transfer
    samples, and the weights: `add` one node's adapters, `mean` the teacher."""

    def __init__(self, transfer: TransferSet) -> None:
        self.transfer = transfer
        self.sums: dict[str, dict[str, torch.Tensor]] = {}
        self.weights: dict[str, float] = {}
        self.nodes: dict[str, list[str]] = {}  # class -> the nodes that taught it

    @torch.no_grad()
    def add(self, adapters: Mapping[str, nn.Module], weights: Mapping[str, float],
            node: str) -> None:
        """Add a node's adapters as teacher of the classes in `weights` (class -> weight, its
        clips of the class; classes without a transfer set are skipped)."""
        for a in adapters.values():
            a.eval()
        for name, weight in weights.items():
            if name not in self.transfer.generators or weight <= 0:
                continue
            outs = {k: torch.cat([taught(a, x) for x in self.transfer.batches(name)]).double()
                    for k, a in adapters.items()}
            held = self.sums.setdefault(name, {})
            for k, out in outs.items():
                held[k] = held[k] + weight * out if k in held else weight * out
            self.weights[name] = self.weights.get(name, 0.0) + weight
            self.nodes.setdefault(name, []).append(node)

    def mean(self, name: str) -> dict[str, torch.Tensor]:
        return {k: (v / self.weights[name]).float() for k, v in self.sums[name].items()}


def distill(student: Mapping[str, nn.Module], teacher: TeacherSums, epochs: int, lr: float,
            batch_size: int, seed: int) -> dict[str, float]:
    """Train the `student` adapters for `epochs` on every taught class's transfer samples
    against the teacher's mean outputs, MSE, AdamW at `lr`; returns each adapter's mean loss
    over the last epoch (nothing to teach: {})."""
    classes = [c for c in teacher.transfer.classes if c in teacher.weights]
    if not classes or epochs < 1:
        return {}
    tokens = torch.cat([torch.cat(teacher.transfer.batches(c)) for c in classes])
    targets = {k: torch.cat([teacher.mean(c)[k] for c in classes]) for k in student}
    optimizers = {k: AdamW(a.parameters(), lr=lr, weight_decay=0.0)
                  for k, a in student.items()}
    rng = torch.Generator().manual_seed(seed)
    for a in student.values():
        a.train()
    with seeded_rng(seed, torch.device("cpu")):  # dropout draws from torch's global RNG
        return _epochs(student, optimizers, tokens, targets, epochs, batch_size, rng)


def _epochs(student: Mapping[str, nn.Module], optimizers: Mapping[str, AdamW],
            tokens: torch.Tensor, targets: Mapping[str, torch.Tensor], epochs: int,
            batch_size: int, rng: torch.Generator) -> dict[str, float]:
    losses: dict[str, float] = {}
    for _ in tqdm(range(epochs), desc="distillation", unit="epoch", disable=None, leave=False):
        order = torch.randperm(len(tokens), generator=rng)
        sums = dict.fromkeys(student, 0.0)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            x = tokens[idx]
            for k, a in student.items():
                loss = (taught(a, x) - targets[k][idx]).pow(2).mean()
                optimizers[k].zero_grad()
                loss.backward()
                optimizers[k].step()
                sums[k] += loss.item() * len(idx)
        losses = {k: v / len(tokens) for k, v in sums.items()}
    for a in student.values():
        a.eval()
    return losses
