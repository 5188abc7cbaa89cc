"""When to cut the learning rate and when a run has converged (or must stop at once).

One state machine decides both, so the two can never disagree:

* A value is a *new best* when it beats the best so far at all; the best weights follow it.
* Progress is judged on the *smoothed* value: the median of the last ``window`` finite values (3 by
  default; ``window=1`` turns smoothing off). One unusually good epoch therefore cannot set a bar that
  the still-improving trend fails to clear for ``patience`` epochs -- the known failure of
  ReduceLROnPlateau, which compares every epoch with the best value ever seen and so answers one lucky
  (or one bad) epoch with a train of LR cuts.
* The smoothed value is a *significant improvement* when it beats the *reference* -- the value of the last
  significant improvement, or ``baseline`` before there was one -- by more than ``threshold`` (relative to
  ``|reference|`` by default, or absolute) and by more than ``min_delta`` (an absolute floor, 0 by
  default). Only significant improvements reset patience. Because the
  reference does not creep along with tiny gains, slow but steady progress still counts once it adds up.
* After ``patience`` epochs without a significant improvement the learning rate is cut by ``factor``.
  The ``cooldown`` epochs right after a cut do not count against patience, whether they improve or not
  (cooldown is counted in epochs after the cut, as ReduceLROnPlateau and Keras count it).
* The run has *converged* when patience runs out again and the LR has already been cut
  ``unproductive_cuts`` times since the last significant improvement, or cannot be cut further
  (it is at its minimum). "Patience ran out once" is therefore never a stop on its own: a plateau
  is first answered with a smaller step, and only a plateau that survives it ends the run.

"patience N" means: act at the N-th consecutive epoch without a significant improvement. While the
best value is still no better than a constant prediction's (``constant_level``, when known) the run has not
started learning, and patience is ``unlearned_factor`` (3) times longer: some models sit at that level
for several epochs and then learn (a GRU over padded traces: 9 epochs, then a test loss of 0.45 against
0.693 for a constant), and a cut there slows the escape while a stop gives up on a model that would learn.

Non-finite values (NaN, +-inf) are never an improvement, count as epochs without progress and are left
out of the median (they say nothing about the trend of the finite values). With ``check_finite`` the
first one stops the run at once; a stop whose last value is non-finite is never called "converged".

Three rules stop the run whatever patience says: a value that beats ``stopping_threshold`` (the target is
reached), a value worse than ``divergence_threshold`` (the run has diverged) and, with ``check_finite``,
a non-finite value. The first ``start_from_epoch`` values are not judged at all (a warm-up), except that
``check_finite`` still stops on a non-finite one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum

from converge.decide.collapse import COLLAPSE_SHARE

_MODES = ("min", "max")
_THRESHOLD_MODES = ("rel", "abs")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class ConvergencePolicy:
    """The options of the rule in the module docstring. ``check_finite`` is off by default here because
    the training loop's divergence guard already answers a non-finite value with a rollback; the
    ``Monitor`` turns it on by default."""

    mode: str = "min"
    patience: int = 5
    threshold: float = 1e-3
    threshold_mode: str = "rel"
    cooldown: int = 0
    unproductive_cuts: int = 1
    window: int = 3
    check_finite: bool = False
    stopping_threshold: float | None = None
    divergence_threshold: float | None = None
    baseline: float | None = None
    start_from_epoch: int = 0
    min_delta: float = 0.0
    # the monitored loss of the best constant prediction: while the best value is no better (within
    # COLLAPSE_SHARE), the run has not started learning, and patience is `unlearned_factor` times longer
    constant_level: float | None = None
    unlearned_factor: int = 3

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.threshold_mode not in _THRESHOLD_MODES:
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {self.threshold_mode!r}")
        for name in ("patience", "window", "unlearned_factor"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("cooldown", "unproductive_cuts", "start_from_epoch"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("threshold", "min_delta"):
            value = getattr(self, name)
            if not (_is_number(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.check_finite, bool):
            raise ValueError(f"check_finite must be True or False, got {self.check_finite!r}")
        for name in ("stopping_threshold", "divergence_threshold", "baseline", "constant_level"):
            value = getattr(self, name)
            if value is not None and not _is_number(value):
                raise ValueError(f"{name} must be a finite number or None, got {value!r}")
        stop, diverge = self.stopping_threshold, self.divergence_threshold
        if stop is not None and diverge is not None and not _beats(stop, diverge, self.mode):
            raise ValueError(f"stopping_threshold ({stop!r}) must be better than divergence_threshold "
                             f"({diverge!r}) in mode {self.mode!r}")


# A loss that approaches zero keeps improving *relatively* for ever (1e-6, 1e-7, ...: each 10 % better
# than the last) while nothing that matters changes any more. Measured against what the task allows to
# gain, the loss of the best constant prediction, gains below this share of it are negligible.
NEGLIGIBLE_SHARE = 1e-4


def negligible_gain(constant_loss: float | None) -> float:
    """The ``min_delta`` for a loss whose constant prediction scores ``constant_loss`` (0: unknown)."""
    if constant_loss is None or not _is_number(constant_loss) or constant_loss <= 0:
        return 0.0
    return NEGLIGIBLE_SHARE * constant_loss


def _beats(value: float, other: float, mode: str) -> bool:
    return value < other if mode == "min" else value > other


def is_improvement(value: float, best: float, *, mode: str, threshold: float = 0.0,
                   threshold_mode: str = "rel", min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than the threshold and by more than ``min_delta``.
    Non-finite values never do."""
    if not math.isfinite(value):
        return False
    if not math.isfinite(best):
        return True
    margin = max(threshold * abs(best) if threshold_mode == "rel" else threshold, min_delta)
    return value < best - margin if mode == "min" else value > best + margin


class StopRule(str, Enum):
    """Which rule stopped the run (a ``str``, so it compares equal to its value and prints plainly)."""

    PLATEAU = "plateau"                            # patience ran out after the allowed cuts, or at the minimum LR
    NON_FINITE = "non_finite"                      # a NaN or infinite value (at once with check_finite)
    STOPPING_THRESHOLD = "stopping_threshold"      # the value beat the target
    DIVERGENCE_THRESHOLD = "divergence_threshold"  # the value was worse than the divergence threshold


@dataclass(frozen=True)
class Verdict:
    """What one epoch's monitored value means. ``reason`` is a sentence for a person; ``rule`` says which
    rule stopped the run (None while it goes on)."""

    new_best: bool
    significant: bool
    reduce_lr: bool
    stop: bool
    bad_epochs: int
    reason: str = ""
    rule: StopRule | None = None
    descending: bool = False   # a plateau stop held back by a steady descent (`ConvergenceTracker.still_descending`)

    @property
    def diverged(self) -> bool:
        """True when the stop is a failure (a non-finite value, or worse than the divergence threshold)."""
        return self.rule in (StopRule.NON_FINITE, StopRule.DIVERGENCE_THRESHOLD)


class ConvergenceTracker:
    """Feed it one monitored value per epoch; it says whether to keep the weights, cut the LR or stop."""

    def __init__(self, policy: ConvergencePolicy | None = None) -> None:
        self.policy = policy or ConvergencePolicy()
        self.best = math.inf if self.policy.mode == "min" else -math.inf
        self.reference = self.best if self.policy.baseline is None else float(self.policy.baseline)
        self.best_epoch = 0
        self.epochs = 0
        self.bad_epochs = 0
        self.cooldown_left = 0
        self.cuts_since_improvement = 0
        self.total_cuts = 0
        self.recent: list[float] = []
        self.trail: list[float] = []   # the last patience + 1 values while each beat the one before (a descent)

    def smoothed(self, value: float) -> float:
        """The median of the last ``window`` finite values, ``value`` included. A non-finite ``value`` is
        returned as it is (it is never progress)."""
        if not math.isfinite(value):
            return value
        values = sorted([*self.recent, value][-self.policy.window:])
        middle = len(values) // 2
        return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2

    def update(self, value: float, *, lr_at_minimum: bool = False) -> Verdict:
        """Judge one epoch's value. ``lr_at_minimum``: no LR cut could lower the LR any more (then a plateau
        stops the run instead of asking for a cut)."""
        p = self.policy
        value = float(value)
        self.epochs += 1
        if self.epochs <= p.start_from_epoch:
            return self._warming_up(value)
        new_best = is_improvement(value, self.best, mode=p.mode)
        if new_best:
            self.best, self.best_epoch = value, self.epochs
        significant = self._count(value)
        self._follow_trail(value)
        hard_stop = self._hard_stop(value)
        if hard_stop is not None:
            return Verdict(new_best, significant, False, True, self.bad_epochs, *hard_stop)
        if self.bad_epochs < self.patience_now():
            return Verdict(new_best, significant, False, False, self.bad_epochs)
        bad = self.bad_epochs
        if self.cuts_since_improvement >= p.unproductive_cuts or lr_at_minimum:
            if self.still_descending():
                return Verdict(new_best, significant, False, False, bad,
                               f"not stopped: each of the last {p.patience} epochs improved on the one before, "
                               f"though none significantly on the best ({self._best_text()})", descending=True)
            return Verdict(new_best, significant, False, True, bad, *self._plateau_stop(value, lr_at_minimum))
        self.cuts_since_improvement += 1
        self.total_cuts += 1
        self.bad_epochs = 0
        self.cooldown_left = p.cooldown
        reason = f"no significant improvement for {bad} epochs; {self._best_text()}"
        return Verdict(new_best, significant, True, False, bad, reason)

    def went_back_to_best(self) -> None:
        """The weights were put back to the best epoch's (an LR cut after overfitting goes on from them):
        progress from here on is measured against the best value itself. The reference is a smoothed value
        of the epochs that led up to the best, behind it; against that, epochs that only come back near the
        best read as a significant gain, and the cut that follows as a productive one: a 4-class MLP cut and
        restarted for 15 more epochs without a better test result (34 epochs, 19 this way), a GRU on
        synthetic reviews for 21 (39, 18)."""
        if is_improvement(self.best, self.reference, mode=self.policy.mode):
            self.reference = self.best

    def not_learning_yet(self) -> bool:
        """Whether the best value still sits at a constant prediction's (``constant_level``, a loss in mode
        "min"; within COLLAPSE_SHARE either way): the run has not started learning. Some models sit there for
        a while and then learn (a GRU over padded traces: 9 epochs at the constant level, then 0.45); a cut
        there slows the escape and a stop calls a model that would have learned "collapsed". A best value
        well *above* that level is no wait but an LR too high (a network at LR 4: 2.8 against 2.3), and the
        cut is the answer there."""
        level = self.policy.constant_level
        return level is not None and self.policy.mode == "min" and level > 0 and math.isfinite(self.best) and \
            COLLAPSE_SHARE * level <= self.best <= level / COLLAPSE_SHARE

    def patience_now(self) -> int:
        """``patience``, or ``unlearned_factor`` times it while the run has not started learning."""
        p = self.policy
        return p.patience * p.unlearned_factor if self.not_learning_yet() else p.patience

    # --- the steps of update ----------------------------------------------------------------------
    def still_descending(self) -> bool:
        """Whether each of the last ``patience`` values beat the one before by the margin of a significant
        improvement (``threshold``, ``min_delta``): a steady descent that has not yet reached the best (an
        LR cut made after the run drifted above its best, say) is progress, not a plateau, and does not end
        the run. The first epoch that is not such a step ends it."""
        return len(self.trail) > self.policy.patience

    def _follow_trail(self, value: float) -> None:
        p = self.policy
        if not math.isfinite(value):
            self.trail = []
        elif self.trail and not is_improvement(value, self.trail[-1], mode=p.mode, threshold=p.threshold,
                                               threshold_mode=p.threshold_mode, min_delta=p.min_delta):
            self.trail = [value]
        else:
            self.trail = [*self.trail, value][-(p.patience + 1):]

    def _warming_up(self, value: float) -> Verdict:
        """The first ``start_from_epoch`` values are not judged; only ``check_finite`` still applies."""
        if self.policy.check_finite and not math.isfinite(value):
            return Verdict(False, False, False, True, 0, *self._non_finite_stop(value))
        return Verdict(False, False, False, False, 0)

    def _count(self, value: float) -> bool:
        """Smooth, compare with the reference, count the epoch against patience (or the cooldown).
        Returns whether the epoch was a significant improvement."""
        p = self.policy
        significant = False
        if math.isfinite(value):
            smoothed = self.smoothed(value)
            self.recent = [*self.recent, value][-p.window:]
            significant = is_improvement(smoothed, self.reference, mode=p.mode, threshold=p.threshold,
                                         threshold_mode=p.threshold_mode, min_delta=p.min_delta)
        if significant:
            self.reference = float(smoothed)
            self.bad_epochs = 0
            self.cuts_since_improvement = 0
        else:
            self.bad_epochs += 1
        if self.cooldown_left > 0:  # the epochs right after a cut never count, improving or not
            self.cooldown_left -= 1
            self.bad_epochs = 0
        return significant

    def _hard_stop(self, value: float) -> tuple[str, StopRule] | None:
        """(reason, rule) when a value ends the run whatever patience says."""
        p = self.policy
        if p.check_finite and not math.isfinite(value):
            return self._non_finite_stop(value)
        sign = "<" if p.mode == "min" else ">"
        if p.stopping_threshold is not None and math.isfinite(value) and _beats(value, p.stopping_threshold, p.mode):
            return (f"stopping threshold reached: {value:.6g} {sign} {p.stopping_threshold:.6g} at epoch "
                    f"{self.epochs}; {self._best_text()}", StopRule.STOPPING_THRESHOLD)
        if p.divergence_threshold is not None and _beats(p.divergence_threshold, value, p.mode):
            worse = ">" if p.mode == "min" else "<"
            return (f"diverged: {value:.6g} {worse} the divergence threshold {p.divergence_threshold:.6g} at "
                    f"epoch {self.epochs}; {self._best_text()}", StopRule.DIVERGENCE_THRESHOLD)
        return None

    def _non_finite_stop(self, value: float) -> tuple[str, StopRule]:
        return (f"diverged: the monitored value is {value} at epoch {self.epochs} (check_finite); "
                f"{self._best_text()}", StopRule.NON_FINITE)

    def _plateau_stop(self, value: float, lr_at_minimum: bool) -> tuple[str, StopRule]:
        p, bad, cuts = self.policy, self.bad_epochs, self.cuts_since_improvement
        why = ("with the learning rate at its minimum" if lr_at_minimum and cuts < p.unproductive_cuts
               else f"even after {cuts} LR cut{'s' if cuts != 1 else ''}" if cuts else "(no LR cuts allowed)")
        if not math.isfinite(value):
            return (f"diverged: the monitored value is {value} and there was no significant improvement in "
                    f"{bad} epochs {why}; {self._best_text()}", StopRule.NON_FINITE)
        if self.not_learning_yet():
            return (f"converged: never left the level of a constant prediction ({p.constant_level:.6g}) in "
                    f"{bad} epochs {why}; {self._best_text()}", StopRule.PLATEAU)
        if p.baseline is not None and self.reference == p.baseline:
            return (f"converged: never beat the baseline {p.baseline:.6g}, {bad} epochs {why}; "
                    f"{self._best_text()}", StopRule.PLATEAU)
        return (f"converged: no significant improvement in {bad} epochs {why}; {self._best_text()}",
                StopRule.PLATEAU)

    def _best_text(self) -> str:
        if not math.isfinite(self.best):
            return "no finite value yet"
        return f"best {self.best:.6g} at epoch {self.best_epoch}"

    # --- state ---------------------------------------------------------------------------------------
    _STATE_KEYS = ("best", "reference", "best_epoch", "epochs", "bad_epochs", "cooldown_left",
                   "cuts_since_improvement", "total_cuts")

    def state_dict(self) -> dict:
        """Everything needed to continue deciding exactly where this tracker stands, the policy included."""
        state = {key: getattr(self, key) for key in self._STATE_KEYS}
        state["policy"] = asdict(self.policy)
        state["recent"] = list(self.recent)
        state["trail"] = list(self.trail)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from :meth:`state_dict`, also one saved before options were added (they take
        their defaults). Raises KeyError naming any missing required key."""
        missing = [key for key in (*self._STATE_KEYS, "policy") if key not in state]
        if missing:
            raise KeyError(f"ConvergenceTracker state is missing {missing}")
        self.policy = ConvergencePolicy(**state["policy"])
        self.best, self.reference = float(state["best"]), float(state["reference"])
        for key in self._STATE_KEYS[2:]:
            setattr(self, key, int(state[key]))
        # Older trackers kept non-finite values in the window; they are left out now.
        recent = [float(v) for v in state.get("recent", [])]
        self.recent = [v for v in recent if math.isfinite(v)][-self.policy.window:]
        # Saved before the descent was followed: none is known, so the next values start one.
        self.trail = [float(v) for v in state.get("trail", [])][-(self.policy.patience + 1):]
