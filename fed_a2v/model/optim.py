"""AdamW on plain tensors, step for step what `torch.optim.AdamW` computes on CPU.

Why not `torch.optim`: its `Optimizer` imports `torch._dynamo` (sympy, torch.fx, FSDP...) the
first time it adds a parameter group or steps: 1.1-1.4 s of CPU and about 150 MiB
(`benchmarks/node_process.py`). A deployed node runs every message in a fresh `flwr-clientapp`
process, so it paid that on every train message: more than the training itself
(docs/performance.md). This class does the same arithmetic, in the same
order, as torch's single-tensor AdamW (the one it uses for CPU tensors; `amsgrad`, `maximize`,
`capturable` and `foreach` off), so results are bit for bit the same there
(tests/test_optim.py). On CUDA torch would use its multi-tensor kernels, which round
differently; the update is the same one.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class AdamW:
    """Decoupled weight decay Adam (Loshchilov & Hutter) over `params`, one learning rate."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("AdamW got an empty parameter list")
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"AdamW: invalid lr {lr}, betas {betas}, eps {eps} or "
                             f"weight_decay {weight_decay}")
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        # per parameter: steps taken, first and second moment (created at its first step)
        self.state: dict[int, tuple[int, torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        beta1, beta2 = self.betas
        for i, param in enumerate(self.params):
            if param.grad is None:
                continue
            grad = param.grad
            steps, exp_avg, exp_avg_sq = self.state.get(
                i, (0, torch.zeros_like(param), torch.zeros_like(param)))
            steps += 1
            self.state[i] = (steps, exp_avg, exp_avg_sq)
            if self.weight_decay != 0:
                param.mul_(1 - self.lr * self.weight_decay)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = self.lr / (1 - beta1 ** steps)
            denom = (exp_avg_sq.sqrt() / (1 - beta2 ** steps) ** 0.5).add_(self.eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)

    def zero_grad(self) -> None:
        """Drop every gradient (as `torch.optim`'s `set_to_none=True`)."""
        for param in self.params:
            param.grad = None
