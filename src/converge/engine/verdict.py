"""Acting on a convergence verdict: the one place that keeps the best weights and cuts the learning rate
when `converge.decide.plateau` says so. The Trainer and `converge.Monitor` both call it, so a fix here
holds for `converge train`, `converge.fit` and a user's own loop alike. Stopping is the caller's: it
owns the loop."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from converge.decide.plateau import Verdict
from converge.engine.optim import current_lr, scale_lr
from converge.io.weights import snapshot


@dataclass(frozen=True)
class Applied:
    """What acting on one verdict changed."""

    best_state: dict[str, torch.Tensor] | None   # a copy of the weights when the value was a new best
    lr_before: float
    lr_after: float

    @property
    def cut(self) -> bool:
        return self.lr_after != self.lr_before


def apply_verdict(verdict: Verdict, *, model: nn.Module, optimizer: torch.optim.Optimizer, lr_factor: float,
                  min_lr: float) -> Applied:
    """Snapshot the weights on a new best; on ``reduce_lr`` multiply every group's LR by ``lr_factor``,
    never below ``min_lr``."""
    best = snapshot(model.state_dict()) if verdict.new_best else None
    before = current_lr(optimizer)
    after = scale_lr(optimizer, lr_factor, min_lr) if verdict.reduce_lr else before
    return Applied(best, before, after)
