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

# One-sided 95 % quantiles of Student's t by degrees of freedom (parts - 1): with 16 parts the standard error is
# itself estimated from 15 differences, and the normal 1.645 would call too many rises real.
T_ONE_SIDED_95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833,
                  10: 1.812, 11: 1.796, 12: 1.782, 13: 1.771, 14: 1.761, 15: 1.753, 16: 1.746, 17: 1.740,
                  18: 1.734, 19: 1.729, 20: 1.725, 25: 1.708, 30: 1.697}
T_ONE_SIDED_95_LARGE = 1.645


def paired_standard_error(a: tuple[float, ...] | list[float], b: tuple[float, ...] | list[float]) -> float | None:
    """The standard error of the mean part-by-part difference of two sets of weights (None: too few parts to
    say, parts that do not pair up, or a part that is not a finite number)."""
    if len(a) != len(b) or len(a) < 2:
        return None
    differences = [x - y for x, y in zip(a, b)]
    if not all(math.isfinite(d) for d in differences):
        return None
    return statistics.stdev(differences) / math.sqrt(len(differences))


def t_needed(degrees_of_freedom: int) -> float:
    """The t a one-sided difference must reach to be called real at the 5 % level (the table's nearest lower
    entry for degrees of freedom it does not list: the larger, more cautious value)."""
    if degrees_of_freedom < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {degrees_of_freedom}")
    listed = [df for df in T_ONE_SIDED_95 if df <= degrees_of_freedom]
    return T_ONE_SIDED_95[max(listed)] if degrees_of_freedom <= max(T_ONE_SIDED_95) else T_ONE_SIDED_95_LARGE


@dataclass(frozen=True)
class PairedRise:
    """How far the value of the ``after`` weights lies above the ``before`` weights', part by part."""

    rise: float              # the mean part-by-part difference (after - before)
    standard_error: float
    parts: int

    @property
    def t(self) -> float:
        if self.standard_error > 0:
            return self.rise / self.standard_error
        return math.inf if self.rise > 0 else -math.inf if self.rise < 0 else 0.0

    @property
    def needed(self) -> float:
        return t_needed(self.parts - 1)

    @property
    def significant(self) -> bool:
        return self.t > self.needed

    def evidence(self) -> dict:
        """What a finding or an event says of the test (a t without noise to divide by is None: JSON has no
        infinity)."""
        return {"rise_t": round(self.t, 3) if math.isfinite(self.t) else None, "rise_t_needed": self.needed,
                "rise_parts": self.parts, "rise_significant": self.significant}


def paired_rise(after: list[float] | None, before: list[float] | None) -> PairedRise | None:
    """The paired rise from ``before`` to ``after`` (the same parts of one split, scored with two sets of
    weights); None when the parts cannot say (missing, unpaired, fewer than two, not finite)."""
    if not after or not before:
        return None
    error = paired_standard_error(after, before)
    if error is None:
        return None
    return PairedRise(statistics.fmean(a - b for a, b in zip(after, before)), error, len(after))
