"""Whether a difference between two sets of weights, scored on the same fixed parts of the validation split, is
more than the split's sampling noise: the part-by-part differences are paired, so what the two have in common
(hard samples, easy ones) cancels, and their spread says how much the difference would move on another draw of
validation samples.

Two decisions read it: which `converge tune` trial is reported (`reported_trial`), and whether a validation
loss that rose after its best epoch is overfitting or a few samples' noise (`diagnosis`). On a breast-cancer
task with 91 validation rows, a rise of 29 % (0.053 to 0.068) was 1.0 standard errors of its paired
difference, and the test loss of the last weights was within 1.5 % of the kept ones'; on a binary task with
480 rows a rise of 30 % was 2.5 standard errors, and the test loss rose by 27 %.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

# One-sided, at the 5 % level. The t of Student's distribution, not the normal 1.645: with 16 parts the standard
# error is itself estimated from 15 differences, and the normal quantile would call too many rises real.
LEVEL = 0.05


def paired_standard_error(a: tuple[float, ...] | list[float], b: tuple[float, ...] | list[float]) -> float | None:
    """The standard error of the mean part-by-part difference of two sets of weights (None: too few parts to
    say, parts that do not pair up, or a part that is not a finite number)."""
    if len(a) != len(b) or len(a) < 2:
        return None
    differences = [x - y for x, y in zip(a, b)]
    if not all(math.isfinite(d) for d in differences):
        return None
    return statistics.stdev(differences) / math.sqrt(len(differences))


def t_upper_tail(t: float, degrees_of_freedom: int) -> float:
    """P(T > t) for Student's t with a whole number of degrees of freedom, from its closed form (Abramowitz
    and Stegun 26.7.3-4: a finite series in the cosine of atan(t / sqrt(df)); exact, no library needed)."""
    df = degrees_of_freedom
    theta = math.atan(abs(t) / math.sqrt(df))
    cos2, sin = math.cos(theta) ** 2, math.sin(theta)
    term = total = 1.0
    if df % 2:
        for k in range(1, (df - 1) // 2):
            term *= 2 * k / (2 * k + 1) * cos2
            total += term
        inside = 2 / math.pi * (theta + (sin * math.cos(theta) * total if df > 1 else 0.0))
    else:
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * cos2
            total += term
        inside = sin * total
    tail = (1 - inside) / 2   # P(|T| < |t|) is ``inside``; half the rest lies above
    return tail if t >= 0 else 1 - tail


def t_needed(degrees_of_freedom: int, level: float = LEVEL) -> float:
    """The t a one-sided difference must reach to be called real at ``level``: the quantile of Student's t,
    found by bisection on its exact tail."""
    if degrees_of_freedom < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {degrees_of_freedom}")
    if not 0 < level < 0.5:
        raise ValueError(f"level must lie between 0 and 0.5, got {level}")
    low, high = 0.0, 1.0
    while t_upper_tail(high, degrees_of_freedom) > level:
        low, high = high, high * 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if t_upper_tail(middle, degrees_of_freedom) > level else (low, middle)
    return high


@dataclass(frozen=True)
class PairedRise:
    """How far the value of the ``after`` weights lies above the ``before`` weights', part by part."""

    rise: float              # the mean part-by-part difference (after - before)
    standard_error: float
    parts: int
    # How many times this rise has been tested: the live diagnosis tests it at each epoch it passes the
    # thresholds (`diagnosis.rise_looks`). Each look is another chance for noise to pass, so each is held to
    # LEVEL / looks (Bonferroni). Without it, breast cancer was told overfitting live at t = 1.91 (the fourth
    # look), where the end of the run measured 1.01.
    looks: int = 1

    @property
    def t(self) -> float:
        if self.standard_error > 0:
            return self.rise / self.standard_error
        return math.inf if self.rise > 0 else -math.inf if self.rise < 0 else 0.0

    @property
    def needed(self) -> float:
        return t_needed(self.parts - 1, LEVEL / self.looks)

    @property
    def significant(self) -> bool:
        return self.t > self.needed

    def evidence(self) -> dict:
        """What a finding or an event says of the test (a t without noise to divide by is None: JSON has no
        infinity)."""
        return {"rise_t": round(self.t, 3) if math.isfinite(self.t) else None, "rise_t_needed": round(self.needed, 3),
                "rise_parts": self.parts, **({"rise_looks": self.looks} if self.looks > 1 else {}),
                "rise_significant": self.significant}


def paired_rise(after: list[float] | None, before: list[float] | None, *, looks: int = 1) -> PairedRise | None:
    """The paired rise from ``before`` to ``after`` (the same parts of one split, scored with two sets of
    weights); None when the parts cannot say (missing, unpaired, fewer than two, not finite). ``looks``: see
    `PairedRise.looks`."""
    if not after or not before:
        return None
    error = paired_standard_error(after, before)
    if error is None:
        return None
    return PairedRise(statistics.fmean(a - b for a, b in zip(after, before)), error, len(after), max(1, looks))
