"""Did the run converge, and if not, why? Pure rules over the epoch history and the event log.

Each finding is a `converge.decide.findings.Finding` (code, severity, message, evidence, fix):
``evidence`` holds numbers from the run, ``fix`` a concrete next step. The codes and what triggers them
(thresholds are the module constants below):

* ``converged``       -- the run stopped on its convergence rule.
* ``still_improving`` -- it hit --max-epochs while the monitored value was still improving: its best
  epoch is among the last ``patience`` epochs.
* ``diverged``        -- it stopped because training blew up (after the guard's rollbacks, if on).
* ``lr_too_high``     -- at least ``ROLLBACKS_FOR_LR`` rollbacks, or the training loss oscillated: it rose
  by more than ``RISE`` from one epoch to the next in at least ``OSCILLATION_SHARE`` of the epochs before
  the first LR cut (and at least twice).
* ``overfitting``     -- (not judged while the training loss oscillates) after its minimum the validation loss rose by more than ``OVERFIT_RISE`` while the
  training loss fell by more than ``TRAIN_FALL``, over at least ``MIN_EPOCHS_AFTER_BEST`` epochs, and the
  rise is more than ``RISE_OF_START`` of the first epoch's loss (a loss near zero wobbles by 10 % as noise).
* ``underfitting``    -- the training loss at the end is still above ``UNDERFIT_SHARE`` of the loss of the
  best constant prediction (the label entropy, or the target variance) and validation is no worse than
  ``UNDERFIT_GAP`` times training: the model does not fit even the data it sees.

Status codes come first, then problems.
"""

from __future__ import annotations

import math

from converge.decide.findings import Finding
from converge.status import Status

ROLLBACKS_FOR_LR = 2
RISE = 0.10
OSCILLATION_SHARE = 0.3
OVERFIT_RISE = 0.10
TRAIN_FALL = 0.10
MIN_EPOCHS_AFTER_BEST = 3
RISE_OF_START = 0.01
UNDERFIT_SHARE = 0.5
UNDERFIT_GAP = 1.3


# How serious each code is: a status that needs no action is information; a problem is a warning;
# a run that blew up is an error.
SEVERITY = {"converged": "info", "still_improving": "warning", "diverged": "error", "lr_too_high": "warning",
            "overfitting": "warning", "underfitting": "warning"}


def finding(code: str, message: str, evidence: dict, fix: str) -> Finding:
    return Finding(code, SEVERITY[code], message, evidence, fix)


def diagnose_run(history: list[dict], events: list[dict], *, status: str | None, monitor: str, mode: str,
             patience: int, max_epochs: int, weight_decay: float | None = None,
             baseline_loss: float | None = None) -> list[Finding]:
    """All findings for a run. ``status`` None means the run is still going (only problem codes apply)."""
    findings = [f for f in (_status_finding(history, events, status, monitor, mode, patience, max_epochs),) if f]
    for rule in (_lr_too_high(history, events), _overfitting(history, events, weight_decay),
                 _underfitting(history, baseline_loss) if status is not None else None):
        if rule is not None:
            findings.append(rule)
    return findings


def live_findings(history: list[dict], events: list[dict], *, weight_decay: float | None = None) -> list[Finding]:
    """The problems worth telling while the run still trains."""
    return [f for f in (_lr_too_high(history, events), _overfitting(history, events, weight_decay)) if f]


# --- status ------------------------------------------------------------------------------------------
def _status_finding(history, events, status, monitor, mode, patience, max_epochs) -> Finding | None:
    best_epoch, best = _best(history, monitor, mode)
    cuts = sum(1 for e in events if e.get("event") == "lr_reduced")
    base = {"epochs": len(history), "best_epoch": best_epoch, "best": best, "monitor": monitor, "lr_cuts": cuts}
    if status == Status.CONVERGED:
        return finding("converged", f"converged: best {monitor} {_fmt(best)} at epoch {best_epoch}; no significant "
                       f"improvement after it despite {cuts} LR cut(s)", base,
                       "nothing to fix: the best weights are in best.safetensors")
    if status == Status.MAX_EPOCHS and best_epoch is not None and len(history) - best_epoch < patience:
        recent = _improvement(history, monitor, mode, window=min(5, len(history) - 1))
        evidence = {**base, "max_epochs": max_epochs, "improvement_last_epochs": recent}
        return finding("still_improving", f"reached --max-epochs {max_epochs} while {monitor} was still improving "
                       f"(best at epoch {best_epoch} of {len(history)})", evidence,
                       f"raise --max-epochs (e.g. to {2 * max(max_epochs, len(history))}), or continue this run "
                       f"with `converge resume DIR --max-epochs N`")
    if status == Status.DIVERGED:
        stop = next((e for e in reversed(events) if e.get("event") == Status.DIVERGED), {})
        rollbacks = sum(1 for e in events if e.get("event") == "rollback")
        evidence = {**base, "rollbacks": rollbacks, "loss": stop.get("loss", stop.get("train_loss")),
                    "lr": stop.get("lr")}
        lr = stop.get("lr")
        lower = f"--lr {lr / 10:.3g}" if isinstance(lr, (int, float)) and lr > 0 else "a 10x lower --lr"
        return finding("diverged", stop.get("reason") or "training diverged", evidence,
                       f"start from {lower}, add --clip-grad 1.0, and check the data with `converge doctor TASK` "
                       f"(NaN/Inf values, unscaled features)")
    return None


# --- problems ----------------------------------------------------------------------------------------
def _lr_too_high(history: list[dict], events: list[dict]) -> Finding | None:
    rollbacks = [e for e in events if e.get("event") == "rollback"]
    rises, pairs, oscillating = _oscillation(history, events)
    if len(rollbacks) < ROLLBACKS_FOR_LR and not oscillating:
        return None
    settled = rollbacks[-1].get("new_lr") if rollbacks else None
    start_lr = history[0]["lr"] if history else None
    evidence = {"rollbacks": len(rollbacks), "train_loss_rises": rises, "epochs_judged": len(pairs) + 1,
                "starting_lr": start_lr, "lr_after_rollbacks": settled}
    why = (f"{len(rollbacks)} rollbacks after loss blow-ups" if len(rollbacks) >= ROLLBACKS_FOR_LR
           else f"the training loss rose in {rises} of {len(pairs)} epochs before the first LR cut")
    target = settled if settled else (start_lr / 3 if start_lr else None)
    fix = (f"start from --lr {target:.3g}" if target else "start from a lower --lr") + \
          " (or let converge choose it: --lr auto), and consider --clip-grad 1.0"
    return finding("lr_too_high", f"the learning rate was too high: {why}", evidence, fix)


def _oscillation(history: list[dict], events: list[dict]) -> tuple[int, list, bool]:
    """Epoch-to-epoch rises of the training loss before the first LR cut: (rises, pairs, oscillating)."""
    first_cut = next((e["epoch"] for e in events if e.get("event") == "lr_reduced"), None)
    losses = [r.get("train_loss") for r in history if first_cut is None or r["epoch"] <= first_cut]
    pairs = [(a, b) for a, b in zip(losses, losses[1:]) if _finite(a) and _finite(b) and a > 0]
    rises = sum(1 for a, b in pairs if b > a * (1 + RISE))
    return rises, pairs, bool(rises >= 2 and pairs and rises / len(pairs) >= OSCILLATION_SHARE)


def _overfitting(history: list[dict], events: list[dict], weight_decay: float | None) -> Finding | None:
    if _oscillation(history, events)[2]:
        return None  # a training loss that jumps about says nothing about generalization
    val = [(r["epoch"], r.get("val_loss"), r.get("train_loss")) for r in history]
    finite = [(e, v, t) for e, v, t in val if _finite(v) and _finite(t)]
    if len(finite) < MIN_EPOCHS_AFTER_BEST + 1:
        return None
    best_epoch, best_val, train_at_best = min(finite, key=lambda item: item[1])
    last_epoch, last_val, last_train = finite[-1]
    if last_epoch - best_epoch < MIN_EPOCHS_AFTER_BEST or best_val <= 0 or train_at_best <= 0:
        return None
    val_rise = last_val / best_val - 1
    train_fall = 1 - last_train / train_at_best
    start = max(finite[0][1], finite[0][2])
    if val_rise <= OVERFIT_RISE or train_fall <= TRAIN_FALL or last_val - best_val <= RISE_OF_START * start:
        return None
    evidence = {"best_val_epoch": best_epoch, "val_loss_at_best": best_val, "val_loss_last": last_val,
                "train_loss_at_best": train_at_best, "train_loss_last": last_train,
                "val_rise": round(val_rise, 4), "train_fall": round(train_fall, 4),
                "gap_last": last_val / last_train if last_train > 0 else None}
    decay = f"raise --weight-decay (e.g. to {max(weight_decay or 0, 1e-3) * 10:.3g})"
    return finding("overfitting", f"overfitting: validation loss rose {val_rise:.0%} after epoch {best_epoch} "
                   f"while training loss fell {train_fall:.0%}", evidence,
                   f"{decay}, get more data or augment it, or use a smaller model; the best weights "
                   f"(epoch {best_epoch}) are kept")


def _underfitting(history: list[dict], baseline_loss: float | None) -> Finding | None:
    if not history or baseline_loss is None or not _finite(baseline_loss) or baseline_loss <= 0:
        return None
    train = next((r.get("train_loss") for r in reversed(history) if _finite(r.get("train_loss"))), None)
    val = min((r["val_loss"] for r in history if _finite(r.get("val_loss"))), default=None)
    if train is None or val is None:
        return None
    share = train / baseline_loss
    if share <= UNDERFIT_SHARE or val > UNDERFIT_GAP * train:
        return None
    evidence = {"train_loss_last": train, "best_val_loss": val, "constant_prediction_loss": baseline_loss,
                "share_of_constant_loss": round(share, 4)}
    return finding("underfitting", f"underfitting: the training loss is still {share:.0%} of what predicting a "
                   f"constant gives ({train:.4g} vs {baseline_loss:.4g})", evidence,
                   "use a larger model (more units or layers), lower --weight-decay, and check the inputs "
                   "with `converge doctor TASK` (features that carry no signal, unscaled features)")


# --- helpers -----------------------------------------------------------------------------------------
def _best(history: list[dict], monitor: str, mode: str) -> tuple[int | None, float | None]:
    values = [(r["epoch"], r.get(monitor)) for r in history if _finite(r.get(monitor))]
    if not values:
        return None, None
    pick = min if mode == "min" else max
    epoch, value = pick(values, key=lambda item: item[1])
    return epoch, value


def _improvement(history: list[dict], monitor: str, mode: str, window: int) -> float | None:
    """Relative improvement of the monitored value over the last ``window`` epochs (positive: better)."""
    if window < 1:
        return None
    before, after = history[-window - 1].get(monitor), history[-1].get(monitor)
    if not (_finite(before) and _finite(after)) or before == 0:
        return None
    change = (before - after) / abs(before)
    return round(change if mode == "min" else -change, 6)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value) -> str:
    return f"{value:.6g}" if _finite(value) else str(value)
