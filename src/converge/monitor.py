"""`Monitor`: converge's convergence decisions for people who keep their own training loop.

The decisions come from the pure tracker in `converge.decide.plateau` (the same one `converge.fit` uses);
acting on them (best weights, LR cuts) is `converge.engine.verdict.apply_verdict`, also shared.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch
from torch import nn

from converge.decide import ConvergencePolicy, ConvergenceTracker, Verdict
from converge.engine.optim import current_lr, group_lrs
from converge.engine.verdict import Applied, apply_verdict, lr_at_minimum

DEFAULT_MIN_LR_RATIO = 1e-3   # min_lr=None: each group's floor is 1e-3 x its LR when the Monitor first sees it


class Monitor:
    """Call ``step(value)`` once per epoch with the validation value. It cuts the LR on a plateau, keeps the
    best weights in memory and returns True when the run should stop: it has converged (a plateau that
    survived an LR cut), reached ``stopping_threshold``, or diverged (a non-finite value, or a value worse
    than ``divergence_threshold``). Then ``stop_reason_`` says why and ``last_verdict_.rule`` which rule.

    ```python
    monitor = Monitor(model, optimizer)
    for epoch in range(1000):
        train_one_epoch()
        if monitor.step(validate()):
            break
    monitor.restore_best()
    ```

    Options (keyword-only):

    * ``mode``: ``"min"`` or ``"max"``; ``threshold`` and ``threshold_mode`` (``"rel"``, relative to the
      reference's magnitude, or ``"abs"``): how much better a value must be to count as progress.
    * ``patience``: act at the ``patience``-th epoch in a row without progress (torch's
      ``ReduceLROnPlateau(patience=p)`` acts at the (p+1)-th: use ``patience=p + 1`` here).
    * ``factor``: LR multiplier at each cut. ``min_lr``: the floor, one number or one per parameter group
      (default: 1e-3 x each group's LR). ``eps``: a cut that changes a group's LR by ``eps`` or less is
      skipped. A cut never raises an LR (a group below its floor, or frozen at 0, keeps its LR).
    * ``cooldown``: epochs right after a cut that do not count against patience.
    * ``unproductive_cuts``: cuts without progress before a plateau stops the run (0: plain early stopping).
    * ``window``: progress is judged on the median of the last ``window`` values (1 turns it off).
    * ``check_finite``: stop at once on a NaN or infinite value (default on).
    * ``stopping_threshold``: stop once a value beats it. ``divergence_threshold``: stop once a value is
      worse than it. ``baseline``: nothing counts as progress until a value beats it.
    * ``start_from_epoch``: the first ``start_from_epoch`` values are not judged (a warm-up).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, mode: str = "min",
                 patience: int = 5, factor: float = 0.1, threshold: float = 1e-3, threshold_mode: str = "rel",
                 cooldown: int = 0, min_lr: float | Sequence[float] | None = None, unproductive_cuts: int = 1,
                 eps: float = 1e-8, window: int = 3, check_finite: bool = True,
                 stopping_threshold: float | None = None, divergence_threshold: float | None = None,
                 baseline: float | None = None, start_from_epoch: int = 0) -> None:
        if not (isinstance(factor, numbers.Real) and 0 < factor < 1):
            raise ValueError(f"factor must be between 0 and 1, got {factor!r}")
        if not (isinstance(eps, numbers.Real) and math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        self.model, self.optimizer, self.factor, self.eps = model, optimizer, float(factor), float(eps)
        self._floor_for_new_groups, self.min_lrs = _floors(min_lr, optimizer)
        self.tracker = ConvergenceTracker(ConvergencePolicy(
            mode=mode, patience=patience, threshold=threshold, threshold_mode=threshold_mode,
            cooldown=cooldown, unproductive_cuts=unproductive_cuts, window=window, check_finite=check_finite,
            stopping_threshold=stopping_threshold, divergence_threshold=divergence_threshold,
            baseline=baseline, start_from_epoch=start_from_epoch))
        self.best_state_: dict | None = None
        self.last_verdict_: Verdict | None = None
        self.last_applied_: Applied | None = None
        self.stop_reason_ = ""
        self.last_lr_ = group_lrs(optimizer)

    @property
    def best(self) -> float:
        """The best value seen so far (inf in mode "min", -inf in mode "max", before the first finite one)."""
        return self.tracker.best

    @property
    def best_epoch(self) -> int:
        """The 1-based number of the ``step`` call that saw the best value (0 before any)."""
        return self.tracker.best_epoch

    @property
    def min_lr(self) -> float:
        """The first parameter group's LR floor (``min_lrs`` holds one per group). Setting it sets one floor
        for every group, as the older Monitor's single ``min_lr`` did."""
        return self.min_lrs[0]

    @min_lr.setter
    def min_lr(self, value: float) -> None:
        self._floor_for_new_groups, self.min_lrs = _floors(value, self.optimizer)

    def step(self, value: float | torch.Tensor) -> bool:
        """Judge one epoch's value and act on it: keep the weights on a new best, cut the LR on a plateau.
        Returns True when the run should stop; ``stop_reason_`` then says why, ``last_verdict_`` holds the
        whole verdict and ``last_applied_`` what was done (LRs before and after)."""
        value = float(value)
        floors = self._current_floors()
        at_minimum = lr_at_minimum(self.optimizer, factor=self.factor, min_lrs=floors, eps=self.eps)
        verdict = self.tracker.update(value, lr_at_minimum=at_minimum)
        applied = apply_verdict(verdict, model=self.model, optimizer=self.optimizer, factor=self.factor,
                                min_lrs=floors, eps=self.eps)
        if applied.best_state is not None:
            self.best_state_ = applied.best_state
        self.last_verdict_, self.last_applied_, self.last_lr_ = verdict, applied, applied.lrs_after
        if verdict.stop:
            self.stop_reason_ = verdict.reason
        return verdict.stop

    def get_last_lr(self) -> list[float]:
        """Each parameter group's LR after the last ``step`` (before the first: when the Monitor was made),
        as torch's schedulers report it."""
        return list(self.last_lr_)

    def restore_best(self) -> None:
        """Put the best weights seen so far back into the model (no-op before the first finite value)."""
        if self.best_state_ is not None:
            self.model.load_state_dict(self.best_state_)

    def state_dict(self) -> dict:
        """Everything needed to continue: the tracker (with its options), the best weights, the LR floors."""
        return {"tracker": self.tracker.state_dict(), "best_state": self.best_state_, "min_lr": self.min_lr,
                "min_lrs": list(self.min_lrs), "factor": self.factor, "eps": self.eps,
                "stop_reason": self.stop_reason_, "last_lr": list(self.last_lr_)}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from `state_dict`, also one saved by an older Monitor (its single
        ``min_lr`` then applies to every group). Raises KeyError naming any missing required key."""
        missing = [k for k in ("tracker", "best_state", "min_lr", "factor") if k not in state]
        if missing:
            raise KeyError(f"Monitor state is missing {missing}")
        self.tracker.load_state_dict(state["tracker"])
        self.best_state_ = state["best_state"]
        groups = len(self.optimizer.param_groups)
        self.min_lrs = [float(v) for v in state.get("min_lrs") or [state["min_lr"]] * groups]
        self.factor = float(state["factor"])
        self.eps = float(state.get("eps", self.eps))
        self.stop_reason_ = state.get("stop_reason", "")
        self.last_lr_ = [float(v) for v in state.get("last_lr") or group_lrs(self.optimizer)]

    def _current_floors(self) -> list[float]:
        """One floor per group, for groups added to the optimizer since, too (when ``min_lr`` was not a list)."""
        groups = self.optimizer.param_groups
        if len(self.min_lrs) > len(groups) or (len(self.min_lrs) < len(groups) and self._floor_for_new_groups is None):
            raise ValueError(f"the optimizer has {len(groups)} parameter groups but min_lr has {len(self.min_lrs)} "
                             f"entries {self.min_lrs!r}: append one to monitor.min_lrs for each group added")
        for group in groups[len(self.min_lrs):]:
            kind, number = self._floor_for_new_groups
            self.min_lrs.append(number if kind == "fixed" else float(group["lr"]) * number)
        return list(self.min_lrs)

    def __repr__(self) -> str:
        best = self.best if math.isfinite(self.best) else None
        return f"Monitor(best={best}, best_epoch={self.best_epoch}, lr={current_lr(self.optimizer):.3g})"


def _floors(min_lr, optimizer: torch.optim.Optimizer) -> tuple[tuple[str, float] | None, list[float]]:
    """(the rule for groups added later, one floor per group now) from the ``min_lr`` option."""
    lrs = group_lrs(optimizer)
    if min_lr is None:
        return ("ratio", DEFAULT_MIN_LR_RATIO), [lr * DEFAULT_MIN_LR_RATIO for lr in lrs]
    if isinstance(min_lr, numbers.Real):
        if not (math.isfinite(min_lr) and min_lr >= 0):
            raise ValueError(f"min_lr must be a finite number >= 0, got {min_lr!r}")
        return ("fixed", float(min_lr)), [float(min_lr)] * len(lrs)
    floors = list(min_lr)
    if len(floors) != len(lrs) or not all(isinstance(v, numbers.Real) and math.isfinite(v) and v >= 0
                                          for v in floors):
        raise ValueError(f"min_lr must be one number >= 0 per parameter group ({len(lrs)}), got {min_lr!r}")
    return None, [float(v) for v in floors]
