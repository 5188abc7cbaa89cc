"""`Monitor`: converge's convergence decisions for people who keep their own training loop."""

from __future__ import annotations

import math

import torch
from torch import nn

from converge.decide import ConvergencePolicy, ConvergenceTracker, Verdict
from converge.engine.optim import current_lr
from converge.engine.verdict import apply_verdict


class Monitor:
    """Call ``step(val_loss)`` once per epoch. It cuts the LR on a plateau, keeps the best weights in
    memory and returns True when the run has converged (a plateau that survived an LR cut).

    >>> monitor = Monitor(model, optimizer)
    >>> for epoch in range(1000):
    ...     train_one_epoch()
    ...     if monitor.step(validate()):
    ...         break
    >>> monitor.restore_best()
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, mode: str = "min",
                 patience: int = 5, factor: float = 0.1, threshold: float = 1e-3, threshold_mode: str = "rel",
                 cooldown: int = 0, min_lr: float | None = None, unproductive_cuts: int = 1) -> None:
        if not 0 < factor < 1:
            raise ValueError(f"factor must be between 0 and 1, got {factor!r}")
        self.model, self.optimizer, self.factor = model, optimizer, factor
        self.min_lr = current_lr(optimizer) * 1e-3 if min_lr is None else float(min_lr)
        self.tracker = ConvergenceTracker(ConvergencePolicy(
            mode=mode, patience=patience, threshold=threshold, threshold_mode=threshold_mode,
            cooldown=cooldown, unproductive_cuts=unproductive_cuts))
        self.best_state_: dict | None = None
        self.last_verdict_: Verdict | None = None
        self.stop_reason_ = ""

    @property
    def best(self) -> float:
        return self.tracker.best

    @property
    def best_epoch(self) -> int:
        return self.tracker.best_epoch

    def step(self, value: float | torch.Tensor) -> bool:
        value = float(value)
        lr = current_lr(self.optimizer)
        verdict = self.tracker.update(value, lr_at_minimum=lr <= self.min_lr * (1 + 1e-9))
        self.last_verdict_ = verdict
        applied = apply_verdict(verdict, model=self.model, optimizer=self.optimizer, lr_factor=self.factor,
                                min_lr=self.min_lr)
        if verdict.new_best:
            self.best_state_ = applied.best_state
        if verdict.stop:
            self.stop_reason_ = verdict.reason
        return verdict.stop

    def restore_best(self) -> None:
        """Put the best weights seen so far back into the model (no-op before the first finite value)."""
        if self.best_state_ is not None:
            self.model.load_state_dict(self.best_state_)

    def state_dict(self) -> dict:
        return {"tracker": self.tracker.state_dict(), "best_state": self.best_state_, "min_lr": self.min_lr,
                "factor": self.factor, "stop_reason": self.stop_reason_}

    def load_state_dict(self, state: dict) -> None:
        missing = [k for k in ("tracker", "best_state", "min_lr", "factor") if k not in state]
        if missing:
            raise KeyError(f"Monitor state is missing {missing}")
        self.tracker.load_state_dict(state["tracker"])
        self.best_state_ = state["best_state"]
        self.min_lr, self.factor = float(state["min_lr"]), float(state["factor"])
        self.stop_reason_ = state.get("stop_reason", "")

    def __repr__(self) -> str:
        best = self.best if math.isfinite(self.best) else None
        return f"Monitor(best={best}, best_epoch={self.best_epoch}, lr={current_lr(self.optimizer):.3g})"
