"""Which finished `converge tune` trial the search reports: the automatic choice, unless another trial beats it
on validation by more than the validation split's noise.

Taking the trial with the best validation value among many overfits the validation split: the best of N
draws is partly luck, and on a small validation split that luck is as large as the differences between
good configurations. Measured in bench/tune.py (40 trials, 12 task-seed pairs), reporting the lowest
validation loss ended worse on test than trial 0, the automatic choice (the very run `converge train`
makes), on 3 pairs; this rule, on 1 (where validation loss and accuracy disagree).

The rule, in words: among the complete trials with a finite value, report the automatic trial unless some
other trial is better than it by more than ``z`` standard errors of the paired difference; then report
the best of those that are. The standard error comes from each trial's monitored value scored on the
same ``K`` fixed parts of the validation split (``parts``): the differences part by part, their spread
divided by sqrt(K), estimate how much the gap between the two trials would move on another draw of
validation samples. Without the automatic trial, or without parts to compare (a study begun by an older
converge), the best value is reported, as before. Directions are explicit (``mode`` "min" or "max").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from converge.decide.significance import paired_standard_error

MARGIN_Z = 2.0   # standard errors of the paired difference another trial must beat the automatic one by


@dataclass(frozen=True)
class Scored:
    """A complete trial: its best monitored value (the search's objective) and that value on the fixed parts
    of the validation split (None when not scored)."""

    number: int
    value: float
    parts: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Reported:
    number: int
    reason: str


def reported_trial(trials: list[Scored], automatic: int | None, mode: str, *, z: float = MARGIN_Z) -> Reported | None:
    """The trial to report among ``trials`` (``automatic``: the number of the automatic choice's trial)."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    if not (math.isfinite(z) and z >= 0):
        raise ValueError(f"z must be a finite number >= 0, got {z!r}")
    sign = 1.0 if mode == "min" else -1.0
    finite = sorted((t for t in trials if math.isfinite(t.value)), key=lambda t: (sign * t.value, t.number))
    if not finite:
        return None
    best = finite[0]
    auto = next((t for t in finite if t.number == automatic), None)
    if auto is None:
        return Reported(best.number, "the best validation value (no automatic trial to compare with)")
    if best is auto:
        return Reported(auto.number, "the automatic choice has the best validation value")
    for other in finite:
        if other is auto:
            break
        gain = sign * (auto.value - other.value)
        noise = paired_standard_error(other.parts, auto.parts) if other.parts and auto.parts else None
        if noise is None:
            return Reported(best.number, "the best validation value (no validation parts to measure the noise)")
        if gain > z * noise:
            return Reported(other.number, f"better than the automatic choice (trial {auto.number}) by {gain:.4g}, "
                                          f"more than {z:g} x the validation noise {noise:.3g}")
    return Reported(auto.number, f"no trial beats the automatic choice by more than {z:g} x the validation "
                                 f"noise (best trial {best.number} by {sign * (auto.value - best.value):.4g})")
