"""When training has blown up: a non-finite loss, or a loss spike far outside recent running statistics.

The watch sees step losses one by one, in order (the engine reads them from the device in small
windows, never once per step) and keeps running statistics of ``log(loss)``: an exponential moving
mean and variance. Log space makes the rule scale-free (a loss of 1e4 and one of 1e-2 are judged
alike) and matches how losses fall: by factors, not by amounts.

A step is a *spike* when either test below says so and its loss is above ``floor_fraction`` of the
first losses' mean (so that a loss already near zero, 1e-8 -> 1e-6, is not called a blow-up).

The *outlier* test needs all of these:

* its loss is more than ``spike_factor`` times the running (geometric) mean -- a big jump, not noise;
* its log-loss is more than ``spike_zscore`` running standard deviations above the running mean --
  unusual for this run's batch-to-batch noise, which can be large late in training;
* at least ``warmup`` finite losses have been seen, so the statistics mean something.

The *peak* test: the loss is more than ``peak_factor`` times the largest of the last ``peak_window``
accepted losses, and at least ``peak_floor_share`` of the first losses' mean. Log statistics go blind once
a run's batch losses touch zero (classification that fits its data); the peak test, on the plain scale,
still sees a jump back to a sizeable loss there. "Sizeable" is measured against where the run began: once
every batch is near zero, one sample the model gets wrong lifts its batch's loss tenfold (a 10-class
cross-entropy near 0.005 jumps to 0.07 at batch 32), which is noise, not a blow-up -- and rolling it back
cut a tune trial's LR five times in a row to 1e-7 (bench/tune.py, digits_mlp).
The outlier test asks the same of a step while the running (geometric) mean sits below ``near_zero_share``
of the first losses' mean: the run fits its data, a batch's loss is mostly one sample it still gets wrong,
and the log statistics take that sample for a blow-up. A tiny BERT at 100 % accuracy, running mean 6e-4 on
a start of 0.69, had batches at 0.08-0.2 ("267x the running mean, 6.4 standard deviations"): ten
rollbacks in ten epochs cut its LR from 1e-3 to 2e-11. A blow-up from there climbs to a sizeable loss,
where the test still sees it.
The outlier test is off while the running (geometric) mean sits below ``zero_share`` of the first
losses' mean (losses at zero, not a small level): a triplet loss on embeddings is exactly 0 on most
batches once every triplet meets its margin, and a batch at 0.0004 (0.2 % of where the run began) was
"9e25x the running mean 4e-30": four rollbacks cut the LR from 3e-3 to 3e-6.

A step has *exploded* when its loss is more than ``explode_factor`` times the run's first loss: whatever
the noise, a loss a thousand times worse than at initialization is a blow-up (and the running statistics
cannot see it when the run climbs there within its first steps).

A loss that goes *negative* (a Gaussian negative log-likelihood, an ELBO's sign, a log-likelihood ratio) has
no log scale: once a loss below ``-floor_fraction`` of the first losses' mean magnitude is seen, the watch
judges the run on the plain scale. A step is then a spike when its loss is above the running (arithmetic)
mean by more than ``spike_zscore`` running standard deviations *and* by more than ``spike_factor - 1``
times the first losses' mean magnitude (a jump as large as that from 1 to ``spike_factor`` where the run
began). Without this, the log statistics of a loss around zero took every positive batch loss after a
negative stretch for a spike 1e28 times the running mean (a Gaussian NLL regression, rolled back five
times and stopped as diverged while it improved). The peak test, a ratio of losses, is off there too.

A *non-finite* loss or gradient norm (NaN, +-Inf) is always an alarm. Alarmed values never enter the statistics.

A *collapse* (needs ``baseline``: the loss of the best constant prediction on the training targets, known
when the data is in memory; without it the test is off): the run had learned -- its running (geometric)
mean loss is below ``learned_share`` of the baseline -- and then a stretch of ``collapse_steps`` losses
starts at the constant level (at least `converge.decide.collapse.COLLAPSE_SHARE` of the baseline), stays
near it (every loss at least ``near_share`` of the baseline: batch noise may dip below the level) and
averages at it. A sudden, lasting jump back to what a constant prediction scores means the model lost what
it had learned (dead units, a step too large): roll back and cut the LR, not a plateau to wait out. The
losses of a stretch are held back from the statistics until it ends without an alarm (then they enter, in
order).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass

from converge.decide.collapse import COLLAPSE_SHARE


@dataclass(frozen=True)
class GuardPolicy:
    spike_factor: float = 4.0
    spike_zscore: float = 6.0
    warmup: int = 10
    smoothing: float = 0.05           # weight of the newest value in the moving statistics
    floor_fraction: float = 1e-3
    explode_factor: float = 1e3
    peak_factor: float = 6.0
    peak_window: int = 100
    peak_floor_share: float = 0.5     # a peak must reach this share of the first losses' mean
    zero_share: float = 1e-6          # a running (geometric) mean below this share of it: losses at zero
    near_zero_share: float = 0.01     # below this share of it, an outlier must be sizeable too (peak_floor_share)
    max_rollbacks: int = 5            # consecutive rollbacks without a new best before "diverged"
    lr_factor: float = 0.5            # the first rollback halves the LR; each further one in a row cuts harder
    baseline: float | None = None     # the constant prediction's loss (None: no collapse test)
    learned_share: float = 0.5        # the run has learned once its running mean is below this share of it
    collapse_steps: int = 16          # losses in a row near the constant level that make a collapse
    near_share: float = 0.6           # "near the level": at least this share of the baseline

    def __post_init__(self) -> None:
        if not self.spike_factor > 1:
            raise ValueError(f"spike_factor must be > 1, got {self.spike_factor!r}")
        if not self.spike_zscore > 0:
            raise ValueError(f"spike_zscore must be > 0, got {self.spike_zscore!r}")
        if not 0 < self.smoothing < 1:
            raise ValueError(f"smoothing must be between 0 and 1, got {self.smoothing!r}")
        if not 0 < self.lr_factor < 1:
            raise ValueError(f"lr_factor must be between 0 and 1, got {self.lr_factor!r}")
        if not (isinstance(self.max_rollbacks, int) and self.max_rollbacks >= 0):
            raise ValueError(f"max_rollbacks must be an integer >= 0, got {self.max_rollbacks!r}")
        if self.baseline is not None and not (math.isfinite(self.baseline) and self.baseline > 0):
            raise ValueError(f"baseline must be a positive finite loss or None, got {self.baseline!r}")
        if not 0 < self.learned_share <= self.near_share <= COLLAPSE_SHARE:
            raise ValueError(f"need 0 < learned_share <= near_share <= {COLLAPSE_SHARE}, got "
                             f"{self.learned_share!r} and {self.near_share!r}")
        if not (isinstance(self.collapse_steps, int) and self.collapse_steps >= 1):
            raise ValueError(f"collapse_steps must be an integer >= 1, got {self.collapse_steps!r}")


@dataclass(frozen=True)
class Alarm:
    """A step the run must not keep. ``reason`` is a sentence for a person."""

    kind: str            # "nonfinite", "spike" or "collapse"
    loss: float
    typical: float       # the running geometric mean of recent losses (nan before any)
    reason: str


class LossWatch:
    """Feed it every step's loss in order; it answers None (fine) or an :class:`Alarm`."""

    def __init__(self, policy: GuardPolicy | None = None) -> None:
        self.policy = policy or GuardPolicy()
        self.seen = 0             # finite, accepted losses
        self.mean = 0.0           # of log(loss)
        self.var = 0.0
        self.first_sum = 0.0      # sum of the first `warmup` losses, for the near-zero floor
        self.first_loss = math.nan
        self.recent: deque[float] = deque(maxlen=self.policy.peak_window)   # the last accepted losses
        self.held: list[float] = []   # losses at the constant level, in a row, held back from the statistics
        self.plain_mean = 0.0         # of the loss itself, for a loss that goes negative
        self.plain_var = 0.0
        self.first_abs_sum = 0.0      # sum of the first `warmup` losses' magnitudes
        self.signed = False           # a clearly negative loss was seen: the plain scale rules
        self.counted = 0              # losses in the running statistics since they (re)started (`rebase`)

    @property
    def typical(self) -> float:
        if not self.seen:
            return math.nan
        return self.plain_mean if self.signed else math.exp(self.mean)

    def update(self, loss: float, grad_norm: float | None = None) -> Alarm | None:
        """Judge one step. ``grad_norm`` is the step's gradient norm where it was measured."""
        p = self.policy
        if not math.isfinite(loss):
            return Alarm("nonfinite", loss, self.typical, f"the training loss became {loss}")
        if grad_norm is not None and not math.isfinite(grad_norm):
            return Alarm("nonfinite", loss, self.typical, f"the gradient norm became {grad_norm}")
        log_loss = math.log(max(loss, 1e-30))
        if self.first_loss > 0 and loss > p.explode_factor * self.first_loss:
            return Alarm("spike", loss, self.typical, f"the loss exploded: {loss:.4g} is "
                         f"{loss / self.first_loss:.3g}x the first loss of the run ({self.first_loss:.4g})")
        start = self.first_sum / p.warmup   # the first losses' mean (once warmed up)
        magnitude = self.first_abs_sum / p.warmup
        if self.seen >= p.warmup and not self.signed and loss < -p.floor_fraction * magnitude:
            self.signed = True
        settled = self.counted >= p.warmup   # the running statistics know the loss's level
        if self.signed and settled:
            jump, spread = loss - self.plain_mean, math.sqrt(self.plain_var)
            if jump > (p.spike_factor - 1) * magnitude and jump > p.spike_zscore * spread:
                return Alarm("spike", loss, self.typical,
                             f"loss spike: {loss:.4g} is {jump:.3g} above the running mean {self.plain_mean:.4g} "
                             f"({jump / spread if spread else math.inf:.3g} standard deviations; the loss takes "
                             f"negative values, so it is judged on its plain scale)")
        elif not self.signed and settled and loss > p.floor_fraction * start:
            jump = log_loss - self.mean
            spread = math.sqrt(self.var)
            # the run's losses sit at zero, where their logs mean nothing (see the module text)
            blind = self.typical < p.zero_share * start
            sizeable = loss >= p.peak_floor_share * start   # measured against where the run began
            # near zero, a batch's loss is one sample the model still gets wrong unless it is sizeable
            judged = not blind and (sizeable or self.typical >= p.near_zero_share * start)
            if judged and jump > math.log(p.spike_factor) and jump > p.spike_zscore * spread:
                return Alarm("spike", loss, self.typical,
                             f"loss spike: {loss:.4g} is {math.exp(jump):.3g}x the running mean {self.typical:.4g} "
                             f"({jump / spread if spread else math.inf:.3g} standard deviations of log-loss)")
            # max() only when the loss beats the last one by the factor: the peak is never below the last.
            candidate = loss > p.peak_factor * self.recent[-1] and sizeable
            peak = max(self.recent) if candidate else math.inf
            if loss > p.peak_factor * peak:
                times = f"{loss / peak:.3g}x" if peak > 0 else "above all"   # every recent loss exactly 0
                return Alarm("spike", loss, self.typical, f"loss spike: {loss:.4g} is {times} the "
                             f"largest of the last {len(self.recent)} losses ({peak:.4g})")
        if self._collapsing(loss):
            self.held.append(loss)
            if len(self.held) < p.collapse_steps:
                return None
            mean = sum(self.held) / len(self.held)
            if mean >= COLLAPSE_SHARE * p.baseline:
                typical, self.held = self.typical, []
                return Alarm("collapse", loss, typical, f"collapse: {p.collapse_steps} losses in a row near the "
                             f"level of a constant prediction ({p.baseline:.4g}; their mean {mean:.4g}) after the "
                             f"run had learned (running mean {typical:.4g})")
            return self._release()
        self._release()
        self._accept(log_loss, loss)
        return None

    def _collapsing(self, loss: float) -> bool:
        """A stretch at the constant level after having learned starts or goes on (off without a baseline)."""
        p = self.policy
        if p.baseline is None or self.seen < p.warmup or self.typical >= p.learned_share * p.baseline:
            return False
        return loss >= (p.near_share if self.held else COLLAPSE_SHARE) * p.baseline

    def _release(self) -> None:
        """The stretch ended without an alarm: its losses were noise and enter the statistics, in order."""
        for held in self.held:
            self._accept(math.log(max(held, 1e-30)), held)
        self.held = []

    def _accept(self, log_loss: float, loss: float) -> None:
        if self.seen == 0:
            self.first_loss = loss
        if self.seen < self.policy.warmup:
            self.first_sum += loss
            self.first_abs_sum += abs(loss)
        self.mean, self.var = self._moved(self.mean, self.var, log_loss)
        self.plain_mean, self.plain_var = self._moved(self.plain_mean, self.plain_var, loss)
        self.seen += 1
        self.counted += 1
        self.recent.append(loss)

    def rebase(self) -> None:
        """The run moved to other weights on purpose (it went on from its best weights after overfitting,
        whose training loss is many times the overfit one's): the running statistics start again from the
        next losses, and the spike tests wait ``warmup`` of them. What the first losses of the run set (the
        explode test's reference, the floors, the scale) stays."""
        self.counted = 0
        self.recent.clear()
        self.held = []

    def _moved(self, mean: float, var: float, value: float) -> tuple[float, float]:
        """A running mean and variance with ``value`` added: plain while warming up, so that the first value does
        not dominate; exponentially weighted after."""
        delta = value - mean
        if self.counted < self.policy.warmup:
            n = self.counted + 1
            mean += delta / n
            return mean, var + (delta * (value - mean) - var) / n
        a = self.policy.smoothing
        return mean + a * delta, (1 - a) * (var + a * delta * delta)

    _STATE_KEYS = ("seen", "mean", "var", "first_sum", "first_loss", "recent")
    _LATER_KEYS = ("plain_mean", "plain_var", "first_abs_sum", "signed", "counted")   # absent from older checkpoints

    def state_dict(self) -> dict:
        state = {key: getattr(self, key) for key in (*self._STATE_KEYS, *self._LATER_KEYS)}
        return {**state, "recent": list(self.recent), "held": list(self.held), "policy": asdict(self.policy)}

    def load_state_dict(self, state: dict) -> None:
        missing = [key for key in (*self._STATE_KEYS, "policy") if key not in state]
        if missing:
            raise KeyError(f"LossWatch state is missing {missing}")
        self.policy = GuardPolicy(**state["policy"])
        self.seen = int(state["seen"])
        self.mean, self.var = float(state["mean"]), float(state["var"])
        self.first_sum, self.first_loss = float(state["first_sum"]), float(state["first_loss"])
        self.recent = deque((float(v) for v in state["recent"]), maxlen=self.policy.peak_window)
        self.held = [float(v) for v in state.get("held", [])]   # absent in checkpoints from before the test
        # Absent from checkpoints from before the plain scale: a run that had not gone negative goes on alike.
        self.plain_mean, self.plain_var = float(state.get("plain_mean", 0.0)), float(state.get("plain_var", 0.0))
        self.first_abs_sum = float(state.get("first_abs_sum", abs(self.first_sum)))
        self.signed = bool(state.get("signed", False))
        self.counted = int(state.get("counted", self.seen))   # before `rebase`: every loss seen was counted


@dataclass(frozen=True)
class RollbackVerdict:
    give_up: bool
    lr_factor: float     # multiply the LR by this after rolling back
    reason: str = ""


def rollback_verdict(streak: int, policy: GuardPolicy) -> RollbackVerdict:
    """What to do about an alarm when ``streak`` rollbacks already happened since the last new best.

    Isolated incidents (a bad batch) get a gentle cut; repeated ones mean the LR itself is too high, so
    each further rollback in a row cuts twice as hard (x0.5, x0.25, x0.125, ... with the default).
    """
    if streak >= policy.max_rollbacks:
        return RollbackVerdict(True, 1.0, f"gave up after {streak} rollbacks in a row without a new best")
    return RollbackVerdict(False, policy.lr_factor ** (streak + 1))


def clip_after_rollback(current: float | None, typical_grad_norm: float | None) -> float | None:
    """Gradient clipping to use after a rollback: halve an existing limit, or start at twice the typical
    gradient norm seen so far (no limit when none is known)."""
    if current is not None:
        return current / 2
    if typical_grad_norm is not None and math.isfinite(typical_grad_norm) and typical_grad_norm > 0:
        return 2 * typical_grad_norm
    return None
