"""Has the run learned nothing? A pure rule over the epoch history, the event log and the loss of the best
constant prediction (the label entropy, the mean per-label entropy, the target variance:
`converge.engine.objective.constant_prediction_loss`).

Any constant prediction scores at best that loss, so a model whose loss sits at (or above) it predicts no
better than a constant -- whatever its outputs look like. The rule:

* a loss is *at the constant level* when it is at least ``COLLAPSE_SHARE`` of the constant-prediction loss
  (a model that learned a little is below it; 5 % leaves room for validation labels that are spread a
  little differently from the training labels the constant is measured on);
* the run has *collapsed* when its best validation loss is at the constant level (the weights it keeps
  learned nothing) and its last training loss is not below ``FIT_SHARE`` of the constant loss (a model
  that fits its training data far better than a constant learned something, if not something that
  generalizes: the overfitting rules judge it) and it is no longer moving: over its last ``FLAT_EPOCHS``
  epochs the validation loss improved by less than ``FLAT_SHARE`` of the constant loss (a run still coming
  down from the level, an LR too low, is still improving: the status rules judge it); or when, after the validation loss had been below the level, the validation and training
  losses of its last ``LASTING_EPOCHS`` epochs are back at it (training lost what it had learned; the kept
  weights are from before).

The likely cause, from the run's own history:

* ``lr_too_high``: a rollback of the divergence guard, a training loss of an epoch above ``SPIKE_SHARE`` times
  the constant loss (a blow-up: the model is far worse than a constant), an LR that rose during the run (a
  warmup or a jump: more than ``LR_JUMP`` times the epoch before's), or a run that had learned and lost it;
  these are what a too-high learning rate leaves behind;
* ``unscaled_inputs``: the doctor found unscaled features (a ``doctor_finding`` event) and no standardization
  was applied (no applied ``standardize_features`` remedy);
* otherwise unknown: the fix lists what to try.

The automatic choice (`converge.choose.auto`) asks two smaller questions with the same level:

* :func:`no_better_than_constant`: a race arm whose validation loss is at the level (it predicts what a
  constant would: one class for every row, the mean target) or above it learned nothing: it ranks after
  every arm that did (among those that did not, `converge.decide.race.race_order` ties the arms whose losses
  lie within ``1 - COLLAPSE_SHARE`` of the constant loss of each other);
* :func:`never_learned`: an LR range test whose smoothed loss never fell below the level gives no evidence
  of where the model learns: its suggestion is not used.

No tensors, no I/O: the engine hands the numbers in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

COLLAPSE_SHARE = 0.95   # a loss at or above this share of the constant-prediction loss is "at the constant level"
LASTING_EPOCHS = 2      # epochs at the level, at the end, for a run that had learned to count as collapsed late
FIT_SHARE = 0.5         # a training loss below this share of the constant's: the model fits its training data
LR_JUMP = 1.5           # an epoch's LR above this many times the epoch before's is a jump
FLAT_EPOCHS = 3         # the epochs over which a collapsed run's validation loss no longer moves...
FLAT_SHARE = 0.01       # ... by this share of the constant loss
SPIKE_SHARE = 1.5       # an epoch's training loss above this many times the constant loss is a blow-up


@dataclass(frozen=True)
class Collapse:
    """A run that learned nothing. ``late``: it had learned, then fell back (the kept weights are older)."""

    best_val_loss: float
    last_train_loss: float | None
    baseline: float
    late: bool
    since_epoch: int            # the first epoch of the final stretch at the constant level
    causes: tuple[str, ...]     # "lr_too_high", "unscaled_inputs" (most likely first); empty: unknown
    cause_evidence: dict = field(default_factory=dict)


def at_constant_level(loss: float | None, baseline: float) -> bool:
    """Whether ``loss`` is no better than the best constant prediction (within ``COLLAPSE_SHARE``)."""
    return _finite(loss) and loss >= COLLAPSE_SHARE * baseline


def no_better_than_constant(loss: float | None, baseline: float | None) -> bool:
    """A finite loss at or above ``COLLAPSE_SHARE`` of the constant prediction's (False when either is
    unknown; a non-finite loss is a blow-up, which the race drops on its own)."""
    if not (_finite(loss) and _finite(baseline) and baseline > 0):
        return False
    return at_constant_level(loss, baseline)


def never_learned(smoothed_losses: list[float], baseline: float | None) -> bool:
    """Whether a loss curve (smoothed) never fell below the constant level (False when unknown)."""
    finite = [loss for loss in smoothed_losses if _finite(loss)]
    if not finite or not (_finite(baseline) and baseline > 0):
        return False
    return min(finite) >= COLLAPSE_SHARE * baseline


def collapse(history: list[dict], events: list[dict], baseline: float | None) -> Collapse | None:
    """The run's collapse, or None (also when the constant-prediction loss is unknown)."""
    if not _finite(baseline) or baseline <= 0:
        return None
    rows = [r for r in history if _finite(r.get("val_loss"))]
    if not rows:
        return None
    best_val = min(r["val_loss"] for r in rows)
    last_train = next((r["train_loss"] for r in reversed(history) if _finite(r.get("train_loss"))), None)
    tail = rows[-LASTING_EPOCHS:]
    late = (not at_constant_level(best_val, baseline) and len(tail) == LASTING_EPOCHS
            and all(at_constant_level(r["val_loss"], baseline) and at_constant_level(r.get("train_loss"), baseline)
                    for r in tail))
    fits_train = _finite(last_train) and last_train < FIT_SHARE * baseline
    if not late and (not at_constant_level(best_val, baseline) or fits_train or _moving(rows, baseline)):
        return None
    since = rows[-1]["epoch"]
    for row in reversed(rows):
        if not at_constant_level(row["val_loss"], baseline):
            break
        since = row["epoch"]
    causes, evidence = _causes(history, events, baseline, late)
    return Collapse(best_val, last_train, baseline, late, since, causes, evidence)


def _moving(rows: list[dict], baseline: float) -> bool:
    """The validation loss still improved by FLAT_SHARE of the baseline over the last FLAT_EPOCHS epochs."""
    window = min(FLAT_EPOCHS, len(rows) - 1)
    if window < 1:
        return False
    before = rows[-1 - window]["val_loss"]
    return before - min(r["val_loss"] for r in rows[-window:]) >= FLAT_SHARE * baseline


def _causes(history: list[dict], events: list[dict], baseline: float, late: bool) -> tuple[tuple[str, ...], dict]:
    rollbacks = [e for e in events if e.get("event") == "rollback"]
    train = [r["train_loss"] for r in history if _finite(r.get("train_loss"))]
    worst = max(train, default=None)
    evidence = {"rollbacks": len(rollbacks), "worst_epoch_train_loss": worst}
    if rollbacks:
        evidence["lr_before_rollback"] = rollbacks[0].get("lr")
    lrs = [r.get("lr") for r in history]
    jumps = [(r["epoch"], b) for r, a, b in zip(history[1:], lrs, lrs[1:]) if _finite(a) and _finite(b) and a > 0
             and b > LR_JUMP * a]
    if jumps:
        evidence["lr_rose_to"], evidence["lr_rose_at_epoch"] = jumps[-1][1], jumps[-1][0]
    causes = []
    if rollbacks or late or jumps or (worst is not None and worst > SPIKE_SHARE * baseline):
        causes.append("lr_too_high")
    if unscaled_inputs(events):
        causes.append("unscaled_inputs")
    return tuple(causes), evidence


def unscaled_inputs(events: list[dict]) -> bool:
    """The doctor found unscaled features and nothing standardized them."""
    found = any(e.get("event") == "doctor_finding" and e.get("code") == "unscaled_features"
                and e.get("severity") in ("warning", "error") for e in events)
    fixed = any(e.get("event") == "remedy" and e.get("remedy") == "standardize_features"
                and (e.get("detail") or {}).get("applied") for e in events)
    return found and not fixed


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
