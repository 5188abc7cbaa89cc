"""When to cut the learning rate and when a run has converged.

One state machine decides both, so the two can never disagree:

* A value is a *new best* when it beats the best so far at all; the best weights follow it.
* Progress is judged on the *smoothed* value: the median of the last ``window`` values (3 by default).
  One unusually good epoch therefore cannot set a bar that the still-improving trend fails to clear
  for ``patience`` epochs -- the known failure of ReduceLROnPlateau, which compares every epoch with the
  best value ever seen and so answers one lucky (or one bad) epoch with a train of LR cuts.
* The smoothed value is a *significant improvement* when it beats the *reference* -- the value of the last
  significant improvement -- by more than ``threshold`` (relative to ``|reference|`` by default, or
  absolute). Only significant improvements reset patience. Because the reference does not creep along
  with tiny gains, slow but steady progress still counts once it adds up to the threshold.
* After ``patience`` epochs without a significant improvement (epochs in cooldown after a cut
  do not count) the learning rate is cut by ``factor``.
* The run has *converged* when patience runs out again and the LR has already been cut
  ``unproductive_cuts`` times since the last significant improvement, or cannot be cut further
  (it is at its minimum). "Patience ran out once" is therefore never a stop on its own: a plateau
  is first answered with a smaller step, and only a plateau that survives it ends the run.

"patience N" means: act at the N-th consecutive epoch without a significant improvement.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

_MODES = ("min", "max")
_THRESHOLD_MODES = ("rel", "abs")


@dataclass(frozen=True)
class ConvergencePolicy:
    mode: str = "min"
    patience: int = 5
    threshold: float = 1e-3
    threshold_mode: str = "rel"
    cooldown: int = 0
    unproductive_cuts: int = 1
    window: int = 3

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.threshold_mode not in _THRESHOLD_MODES:
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {self.threshold_mode!r}")
        if not (isinstance(self.patience, int) and self.patience >= 1):
            raise ValueError(f"patience must be an integer >= 1, got {self.patience!r}")
        if not self.threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold!r}")
        if not (isinstance(self.cooldown, int) and self.cooldown >= 0):
            raise ValueError(f"cooldown must be an integer >= 0, got {self.cooldown!r}")
        if not (isinstance(self.window, int) and self.window >= 1):
            raise ValueError(f"window must be an integer >= 1, got {self.window!r}")
        if not (isinstance(self.unproductive_cuts, int) and self.unproductive_cuts >= 0):
            raise ValueError(f"unproductive_cuts must be an integer >= 0, got {self.unproductive_cuts!r}")


def is_improvement(value: float, best: float, *, mode: str, threshold: float = 0.0,
                   threshold_mode: str = "rel") -> bool:
    """Whether ``value`` beats ``best`` by more than the threshold. Non-finite values never do."""
    if not math.isfinite(value):
        return False
    if not math.isfinite(best):
        return True
    margin = threshold * abs(best) if threshold_mode == "rel" else threshold
    return value < best - margin if mode == "min" else value > best + margin


@dataclass(frozen=True)
class Verdict:
    """What one epoch's monitored value means. ``reason`` is a sentence for a person."""

    new_best: bool
    significant: bool
    reduce_lr: bool
    stop: bool
    bad_epochs: int
    reason: str = ""


class ConvergenceTracker:
    """Feed it one monitored value per epoch; it says whether to keep the weights, cut the LR or stop."""

    def __init__(self, policy: ConvergencePolicy | None = None) -> None:
        self.policy = policy or ConvergencePolicy()
        self.best = math.inf if self.policy.mode == "min" else -math.inf
        self.reference = self.best
        self.best_epoch = 0
        self.epochs = 0
        self.bad_epochs = 0
        self.cooldown_left = 0
        self.cuts_since_improvement = 0
        self.total_cuts = 0
        self.recent: list[float] = []

    def smoothed(self, value: float) -> float:
        """The median of the last ``window`` values including ``value``; non-finite values count as worst."""
        worst = math.inf if self.policy.mode == "min" else -math.inf
        values = sorted(v if math.isfinite(v) else worst for v in (*self.recent, value)[-self.policy.window:])
        middle = len(values) // 2
        return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2

    def update(self, value: float, *, lr_at_minimum: bool = False) -> Verdict:
        p = self.policy
        self.epochs += 1
        new_best = is_improvement(value, self.best, mode=p.mode)
        smoothed = self.smoothed(value)
        self.recent = [*self.recent, float(value)][-p.window:]
        significant = is_improvement(smoothed, self.reference, mode=p.mode, threshold=p.threshold,
                                     threshold_mode=p.threshold_mode)
        if new_best:
            self.best, self.best_epoch = float(value), self.epochs
        if significant:
            self.reference = float(smoothed)
            self.bad_epochs = 0
            self.cuts_since_improvement = 0
        elif self.cooldown_left > 0:
            self.cooldown_left -= 1
        else:
            self.bad_epochs += 1

        if self.bad_epochs < p.patience:
            return Verdict(new_best, significant, False, False, self.bad_epochs)
        bad = self.bad_epochs
        if self.cuts_since_improvement >= p.unproductive_cuts or lr_at_minimum:
            cuts = self.cuts_since_improvement
            why = ("with the learning rate at its minimum" if lr_at_minimum and cuts < p.unproductive_cuts
                   else f"even after {cuts} LR cut{'s' if cuts != 1 else ''}" if cuts else "(no LR cuts allowed)")
            reason = (f"converged: no significant improvement in {bad} epochs {why}; "
                      f"best {self.best:.6g} at epoch {self.best_epoch}")
            return Verdict(new_best, significant, False, True, bad, reason)
        self.cuts_since_improvement += 1
        self.total_cuts += 1
        self.bad_epochs = 0
        self.cooldown_left = p.cooldown
        reason = f"no significant improvement for {bad} epochs; best {self.best:.6g} at epoch {self.best_epoch}"
        return Verdict(new_best, significant, True, False, bad, reason)

    _STATE_KEYS = ("best", "reference", "best_epoch", "epochs", "bad_epochs", "cooldown_left",
                   "cuts_since_improvement", "total_cuts")

    def state_dict(self) -> dict:
        state = {key: getattr(self, key) for key in self._STATE_KEYS}
        state["policy"] = asdict(self.policy)
        state["recent"] = list(self.recent)
        return state

    def load_state_dict(self, state: dict) -> None:
        missing = [key for key in (*self._STATE_KEYS, "policy") if key not in state]
        if missing:
            raise KeyError(f"ConvergenceTracker state is missing {missing}")
        self.policy = ConvergencePolicy(**state["policy"])
        self.best, self.reference = float(state["best"]), float(state["reference"])
        for key in self._STATE_KEYS[2:]:
            setattr(self, key, int(state[key]))
        self.recent = [float(v) for v in state.get("recent", [])][-self.policy.window:]
