"""Acting on a plateau verdict: the one place where a decision from `converge.decide` touches the model and
the optimizer. `converge.Monitor` uses it, and so does the training loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from converge.decide import Verdict
from converge.engine.optim import group_lrs, planned_lrs, scale_lr
from converge.io.weights import snapshot


@dataclass(frozen=True)
class Applied:
    """What acting on one verdict did. ``best_state`` is a snapshot of the weights when the verdict saw a new
    best (else None); ``cut`` is True when at least one group's LR went down."""

    best_state: dict[str, torch.Tensor] | None
    lrs_before: list[float]
    lrs_after: list[float]
    cut: bool


def apply_verdict(verdict: Verdict, *, model: nn.Module, optimizer: torch.optim.Optimizer, factor: float,
                  min_lrs: float | Sequence[float], eps: float = 0.0) -> Applied:
    """Keep the weights on a new best; cut every group's LR on ``reduce_lr``: by ``factor``, not below that
    group's floor in ``min_lrs`` (one number for all groups, or one per group), never upwards, skipping a
    group whose cut would be ``eps`` or less, and in place for a tensor LR. Stopping is the caller's job."""
    before = group_lrs(optimizer)
    best_state = snapshot(model.state_dict()) if verdict.new_best else None
    if verdict.reduce_lr:
        scale_lr(optimizer, factor, min_lrs, eps=eps)
    after = group_lrs(optimizer)
    return Applied(best_state, before, after, cut=any(new < old for new, old in zip(after, before)))


def lr_at_minimum(optimizer: torch.optim.Optimizer, *, factor: float, min_lrs: float | Sequence[float],
                  eps: float = 0.0) -> bool:
    """True when a cut would change no group's LR (each is at its floor, or would move by ``eps`` or less):
    a plateau then ends the run instead of asking for a cut that does nothing."""
    return planned_lrs(optimizer, factor, min_lrs, eps) == group_lrs(optimizer)
