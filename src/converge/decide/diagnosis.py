"""Did the run converge, and if not, why? Pure rules over the epoch history and the event log.

Each finding is a `converge.decide.findings.Finding` (code, severity, message, evidence, fix):
``evidence`` holds numbers from the run, ``fix`` a concrete next step. The codes and what triggers them
(thresholds are the module constants below):

* ``converged``       -- the run stopped on its convergence rule. Every text that mentions the kept weights
  names their epoch: that of the best monitored value (not the validation loss's minimum when another
  value is monitored).
* ``still_improving`` -- it hit --max-epochs while the monitored value was still improving: its best
  epoch is among the last ``patience`` epochs.
* ``diverged``        -- it stopped because training blew up (after the guard's rollbacks, if on).
* ``lr_too_high``     -- at least ``ROLLBACKS_FOR_LR`` rollbacks, or the training loss oscillated: it rose
  by more than ``RISE`` from one epoch to the next in at least ``OSCILLATION_SHARE`` of the epochs before
  the first LR cut (and at least twice).
* ``collapsed``       -- the model learned nothing: its best validation loss sits at the loss of the best
  constant prediction (or training fell back there for good); the rule and its thresholds are in
  `converge.decide.collapse`. An error when the kept weights learned nothing, a warning when training lost
  what it had learned later (the kept weights are older). The likely cause comes with it: an LR too high
  (then ``lr_too_high`` is named too) or unscaled inputs. A collapsed run is not also called
  ``still_improving`` (tiny moves at the constant level are noise), nor ``underfitting`` unless the collapse
  has no such cause and the reference model does much better (the model cannot represent the task).
* ``lr_too_high``     -- at least ``ROLLBACKS_FOR_LR`` rollbacks, or the training loss oscillated: it rose
  by more than ``RISE`` (and by more than ``RISE_OF_START`` of the first epoch's loss) from one epoch to
  the next in at least ``OSCILLATION_SHARE`` of the epochs before the first LR cut (and at least twice);
  or a collapse whose history shows a blow-up (see above).
* ``overfitting``     -- (not judged while the training loss oscillates) either of:
  a *rise*: after its minimum the validation loss rose by more than ``OVERFIT_RISE`` while the training
  loss fell by more than ``TRAIN_FALL``, over at least ``MIN_EPOCHS_AFTER_BEST`` epochs, and the rise is
  more than ``RISE_OF_START`` of the first epoch's loss (a loss near zero wobbles by 10 % as noise), at
  the last epoch, or by more than ``RESTART_PREFIX_RISE`` at an LR cut that went on from the best weights
  (the history as it stood then). For a loss that reaches zero or below (a negative log-likelihood) the
  rise and the fall are shares of the fall from the first epoch's loss (the larger of training and
  validation) to the best epoch's. Where the run scores the validation split itself (the Trainer; not
  `Monitor`), the rise must also be more than the split's noise: the validation loss of the weights that
  rose and of the kept ones (the best monitored value's), on the same fixed parts of the split, must rise
  part by part by more than a one-sided t-test at the 5 % level allows (``rise_test``,
  `converge.decide.significance`; at a restart the test is kept in its event). A few validation samples
  growing confident the wrong way raise a small split's loss by 30 % and more while the test loss does not
  move;
  a *gap* at the best epoch: the validation loss is at least ``GAP_RATIO`` times the training loss and
  above it by at least ``GAP_OF_SCALE`` of the constant-prediction loss (the first epoch's loss when that
  is unknown), and, when an accuracy is measured on both splits, the training accuracy is above the
  validation accuracy by at least ``GAP_METRIC``. The training values are those of the kept weights
  evaluated on the training split at the end (``fit``) when given, else the epoch's running training loss.
* ``underfitting``    -- the model fits even the data it sees poorly (validation no worse than
  ``UNDERFIT_GAP`` times training), judged against what the data allows: the validation loss a small proxy
  model reaches on the same splits (``reference_loss``; never wider than a bottleneck of the user's model,
  see `converge.engine.reference`). The best validation loss is at least ``UNDERFIT_REFERENCE`` times it and
  above it by at least ``UNDERFIT_REFERENCE_GAP`` of the constant-prediction loss. Without a reference it is
  not claimed: a loss still far above zero on training and validation alike is a model too small or targets
  the inputs do not determine, and only a yardstick tells them apart (labels drawn from a logistic model,
  under the task's BCE with ``pos_weight``: training at 66 % of the constant's loss, within 3 % of the true
  model's, was called underfitting).

Status codes come first, then problems; every problem that applies is named, each with its evidence and fix.
"""

from __future__ import annotations

import dataclasses
import math

from converge.decide.collapse import Collapse, collapse
from converge.decide.findings import Finding
from converge.decide.significance import PairedRise
from converge.status import Status

ROLLBACKS_FOR_LR = 2
RISE = 0.10
OSCILLATION_SHARE = 0.3
OVERFIT_RISE = 0.10
TRAIN_FALL = 0.10
MIN_EPOCHS_AFTER_BEST = 3
RESTART_PREFIX_RISE = 2 * OVERFIT_RISE   # the rise judged as the history stood at a restart from the best weights
# An LR cut goes on from the best weights once the validation loss has risen this much above its best while
# the training loss fell this much (`overfitted_since_best`): far less than the diagnosis's 10 % and 10 %,
# which tell a person "overfitting". The restart costs only the epochs since the best; going on from drifted
# weights at the lower LR kept a GRU tagger at +9.8 % (the 10 % missed it) 4.6 % above a classic loop's
# test loss, a multi-label MLP at +2.8 % 1.6 % above.
RESTART_RISE = 0.02
RESTART_FALL = 0.05
RISE_OF_START = 0.01
UNDERFIT_GAP = 1.3
GAP_RATIO = 3.0               # overfitting by gap: validation loss at least this many times the training loss
GAP_OF_SCALE = 0.1            # ... and above it by this share of the constant-prediction loss
GAP_METRIC = 0.05             # ... and training accuracy above validation accuracy by this much (when measured)
GAP_METRICS = ("accuracy",)   # metrics whose direction (higher is better) and range (0..1) are known
UNDERFIT_REFERENCE = 2.0      # underfitting: best validation loss at least this many times the reference's
UNDERFIT_REFERENCE_GAP = 0.05  # ... and above it by this share of the constant-prediction loss


# How serious each code is: a status that needs no action is information; a problem is a warning;
# a run that blew up is an error.
SEVERITY = {"converged": "info", "still_improving": "warning", "diverged": "error", "lr_too_high": "warning",
            "overfitting": "warning", "underfitting": "warning", "collapsed": "error"}


def finding(code: str, message: str, evidence: dict, fix: str, severity: str | None = None) -> Finding:
    return Finding(code, severity or SEVERITY[code], message, evidence, fix)


def diagnose_run(history: list[dict], events: list[dict], *, status: str | None, monitor: str, mode: str,
             patience: int, max_epochs: int, weight_decay: float | None = None,
             baseline_loss: float | None = None, fit: dict | None = None,
             reference_loss: float | None = None, rise_test: PairedRise | None = None) -> list[Finding]:
    """All findings for a run. ``status`` None means the run is still going (only problem codes apply).
    ``baseline_loss``: the loss of the best constant prediction on the training targets; ``fit``: the kept
    weights' values on the training split (``train_loss``, ``train_accuracy``, ...) and on validation
    (``val_...``); ``reference_loss``: the validation loss a small proxy model reaches on the same data;
    ``rise_test``: the last weights' validation loss against the kept ones', part by part (read only when the
    rise's thresholds hold)."""
    collapsed = collapse(history, events, baseline_loss) if status is not None else None
    status_finding = _status_finding(history, events, status, monitor, mode, patience, max_epochs)
    if collapsed is not None and not collapsed.late and status_finding is not None and \
            status_finding.code in ("still_improving", "converged"):
        # Improving at the constant level is noise, and a model that learned nothing never "converged"
        # (the plateau rule stopped it; the summary's status says so); a late collapse keeps older weights
        # that did learn, so its status code stands beside it.
        status_finding = None
    elif collapsed is not None and status_finding is not None and status_finding.code == "still_improving":
        status_finding = None
    findings = [status_finding] if status_finding is not None else []
    lr_high = _lr_too_high(history, events) or (_collapse_lr(history, collapsed) if collapsed else None)
    kept = _best(history, monitor, mode)[0]
    for rule in (_collapsed(collapsed, history) if collapsed else None, lr_high,
                 _overfitting(history, events, weight_decay, fit, baseline_loss, kept_epoch=kept, monitor=monitor,
                              rise_test=rise_test),
                 _underfitting(history, baseline_loss, fit, reference_loss)
                 if status is not None and (collapsed is None or not collapsed.causes) else None):
        if rule is not None:
            findings.append(rule)
    if len(findings) > 1 and findings[0].code == "converged":
        first = findings[0]
        findings[0] = Finding(first.code, first.severity, first.message, first.evidence,
                              f"the best weights (epoch {first.evidence.get('best_epoch')}) are in "
                              f"best.safetensors; see the problems below")
    return findings


def live_findings(history: list[dict], events: list[dict], *, weight_decay: float | None = None,
                  monitor: str = "val_loss", mode: str = "min", rise_test: PairedRise | None = None) -> list[Finding]:
    """The problems worth telling while the run still trains. ``monitor``/``mode`` say which epoch's weights
    are kept, so that a fix can name it; ``rise_test`` as for `diagnose_run`, with the current weights."""
    kept = _best(history, monitor, mode)[0]
    if rise_test is not None:
        rise_test = dataclasses.replace(rise_test, looks=rise_looks(history))
    return [f for f in (_lr_too_high(history, events),
                        _overfitting(history, events, weight_decay, kept_epoch=kept, monitor=monitor,
                                     rise_test=rise_test)) if f]


def rise_looks(history: list[dict]) -> int:
    """How many times the live diagnosis has tested the current rise, this epoch included: the epochs since
    the best validation loss at which the rise passed the thresholds (where the test is made). Each look is
    another chance for the split's noise to pass the test (`PairedRise.looks`)."""
    finite = _finite_losses(history)
    if not finite:
        return 1
    best = min(finite, key=lambda item: item[1])
    at = finite.index(best)
    looks = sum(1 for index in range(max(at + 1, MIN_EPOCHS_AFTER_BEST), len(finite))
                if _rise_beyond_thresholds(best, finite[index], finite[0]) is not None)
    return max(1, looks)


# --- status ------------------------------------------------------------------------------------------
def _status_finding(history, events, status, monitor, mode, patience, max_epochs) -> Finding | None:
    best_epoch, best = _best(history, monitor, mode)
    cut_epochs = [e.get("epoch") for e in events if e.get("event") == "lr_reduced"]
    cuts = len(cut_epochs)
    after = sum(1 for epoch in cut_epochs if isinstance(epoch, int) and best_epoch is not None and epoch > best_epoch)
    base = {"epochs": len(history), "best_epoch": best_epoch, "best": best, "monitor": monitor, "lr_cuts": cuts,
            "lr_cuts_after_best": after}
    if status == Status.CONVERGED:
        # the cuts that failed to help are those after the best epoch (the stop reason counts them the same way)
        tried = (f"despite {after} LR cut(s) after it" if after else "with no LR cut after it") + \
            (f" ({cuts} in the whole run)" if cuts != after else "")
        return finding("converged", f"converged: best {monitor} {_fmt(best)} at epoch {best_epoch}; no significant "
                       f"improvement after it {tried}", base,
                       f"nothing to fix: the best weights (epoch {best_epoch}) are in best.safetensors")
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
    # Weights an LR throws about score a validation loss that jumps too (it is scored in eval mode: no dropout,
    # no batch statistics); a training loss that jumps alone is its batches' and its dropout's noise (a
    # BatchNorm1d and dropout on 342 rows at batch 16: 0.07 -> 0.19 -> 0.07 at every LR tried, 5e-4 included,
    # the validation loss smooth, and the suggested lower LR no better on test).
    oscillating = oscillating and _oscillation(history, events, "val_loss")[2]
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


def _oscillation(history: list[dict], events: list[dict], key: str = "train_loss") -> tuple[int, list, bool]:
    """Epoch-to-epoch rises of the training loss (or of ``key``) before the first LR cut: (rises, pairs,
    oscillating)."""
    first_cut = next((e["epoch"] for e in events if e.get("event") == "lr_reduced"), None)
    losses = [r.get(key) for r in history if first_cut is None or r["epoch"] <= first_cut]
    pairs = [(a, b) for a, b in zip(losses, losses[1:]) if _finite(a) and _finite(b) and a > 0]
    # A rise counts when it is also more than RISE_OF_START of the first epoch's loss: a loss 1000x below
    # its start wobbles by 10 % and more as noise (a Conv1d at 100 % accuracy, its loss 0.0006 -> 0.006,
    # was called "LR too high").
    start = next((loss for loss in losses if _finite(loss)), None)
    floor = RISE_OF_START * abs(start) if start is not None else 0.0
    rises = sum(1 for a, b in pairs if b > a * (1 + RISE) and b - a > floor)
    return rises, pairs, bool(rises >= 2 and pairs and rises / len(pairs) >= OSCILLATION_SHARE)


def _overfitting(history: list[dict], events: list[dict], weight_decay: float | None, fit: dict | None = None,
                 baseline_loss: float | None = None, *, kept_epoch: int | None = None,
                 monitor: str = "val_loss", rise_test: PairedRise | None = None) -> Finding | None:
    """``kept_epoch``: the epoch whose weights the run keeps (the best ``monitor``), named in the fix;
    ``rise_test``: the rise to the last epoch measured part by part (None: not measured, the rise stands on
    the thresholds alone)."""
    if _oscillation(history, events)[2]:
        return None  # a training loss that jumps about says nothing about generalization
    decay = f"raise --weight-decay (e.g. to {max(weight_decay or 0, 1e-3) * 10:.3g})"
    return _overfitting_rise(history, decay, kept_epoch, monitor, rise_test=rise_test) or \
        _overfitting_before_restart(history, events, decay, kept_epoch, monitor) or \
        _overfitting_gap(history, fit, baseline_loss, decay, kept_epoch)


def _overfitting_before_restart(history: list[dict], events: list[dict], decay: str, kept_epoch: int | None,
                                monitor: str) -> Finding | None:
    """The rise as the history stood at an LR cut that went on from the best weights (``restarted_from_best``):
    the restart takes the run back near its best, so the rise from the best to the *last* epoch no longer
    shows what the run went through (an LSTM whose validation loss rose 28 % while its training loss fell
    69 %, three times, ended 2 % above its best and was called only "converged", after the live diagnosis had
    named the overfitting at epoch 10). The largest such rise.

    Such a rise is cut short by the restart and measured at the run's larger LR, where the validation loss is
    noisier than at its end: at LR 4.9e-3 a regression's swung 1.46 -> 2.32 -> 1.73 in three epochs and then
    went below its best, which the end's 10 % would have called overfitting. So a rise before a restart must
    be ``RESTART_PREFIX_RISE`` (twice the end's): on the new-user task files that kept the clear ones (28 %,
    27 %, 386 %) and left out four of 10-14 %."""
    found = []
    for event in events:
        if event.get("event") == "restarted_from_best" and isinstance(event.get("epoch"), int) and \
                event.get("rise_significant", True):   # measured at the cut as within the noise: not evidence
            before = [row for row in history if row.get("epoch", 0) <= event["epoch"]]
            rise = _overfitting_rise(before, decay, kept_epoch, monitor, rise=RESTART_PREFIX_RISE)
            if rise is not None:
                rise.evidence.update({k: v for k, v in event.items() if k.startswith("rise_")})
                found.append(rise)
    return max(found, key=lambda f: f.evidence["val_rise"], default=None)


def _kept_text(kept_epoch: int | None, monitor: str) -> str:
    return f"the weights kept are those of epoch {kept_epoch} (the best {monitor})" if kept_epoch is not None \
        else "the best weights are kept"


def _overfitting_rise(history: list[dict], decay: str, kept_epoch: int | None = None,
                      monitor: str = "val_loss", rise: float = OVERFIT_RISE,
                      fall: float = TRAIN_FALL, rise_test: PairedRise | None = None) -> Finding | None:
    """The overfitting *rise* (module text); none when ``rise_test`` (the last weights against the kept ones,
    part by part of the validation split) says the rise is within the split's noise."""
    finite = _finite_losses(history)
    if len(finite) < MIN_EPOCHS_AFTER_BEST + 1:
        return None
    best_epoch, best_val, train_at_best = best = min(finite, key=lambda item: item[1])
    last_epoch, last_val, last_train = finite[-1]
    measured = _rise_beyond_thresholds(best, finite[-1], finite[0], rise, fall)
    if measured is None:
        return None
    val_rise, train_fall, signed = measured
    if rise_test is not None and not rise_test.significant:
        return None
    evidence = {"best_val_epoch": best_epoch, "val_loss_at_best": best_val, "val_loss_last": last_val,
                "train_loss_at_best": train_at_best, "train_loss_last": last_train,
                "val_rise": round(val_rise, 4), "train_fall": round(train_fall, 4),
                "gap_last": last_val / last_train if last_train > 0 else None, "kept_epoch": kept_epoch,
                **(rise_test.evidence() if rise_test is not None else {})}
    if signed:
        evidence["measured_as"] = "shares of the fall from the first epoch's loss to the best epoch's"
        said = (f"validation loss rose from {best_val:.4g} to {last_val:.4g} after epoch {best_epoch} ({val_rise:.0%} "
                f"of its fall until then) while training loss fell from {train_at_best:.4g} to {last_train:.4g}")
    else:
        said = f"validation loss rose {val_rise:.0%} after epoch {best_epoch} while training loss fell {train_fall:.0%}"
    return finding("overfitting", f"overfitting: {said}", evidence,
                   f"{decay}, get more data or augment it, or use a smaller model; "
                   f"{_kept_text(kept_epoch, monitor)}")


def _finite_losses(history: list[dict]) -> list[tuple]:
    """(epoch, validation loss, training loss) of the epochs where both are finite numbers."""
    val = [(r["epoch"], r.get("val_loss"), r.get("train_loss")) for r in history]
    return [(e, v, t) for e, v, t in val if _finite(v) and _finite(t)]


def _rise_beyond_thresholds(best: tuple, last: tuple, first: tuple, rise: float = OVERFIT_RISE,
                            fall: float = TRAIN_FALL) -> tuple[float, float, bool] | None:
    """(validation rise, training fall, measured as signed shares) from the ``best`` epoch to the ``last``,
    each (epoch, validation loss, training loss), ``first`` the first epoch's, when the rise and the fall pass
    their thresholds at least ``MIN_EPOCHS_AFTER_BEST`` epochs after the best; else None."""
    best_epoch, best_val, train_at_best = best
    last_epoch, last_val, last_train = last
    if last_epoch - best_epoch < MIN_EPOCHS_AFTER_BEST:
        return None
    start = max(first[1], first[2])
    signed = best_val <= 0 or train_at_best <= 0
    if signed:
        # A loss that reaches zero or below (the negative log-likelihood of real values) has no ratio to
        # its best; its rise and fall are shares of what it had gained from the first epoch until then.
        val_gain, train_gain = start - best_val, start - train_at_best
        if val_gain <= 0 or train_gain <= 0:
            return None
        val_rise, train_fall = (last_val - best_val) / val_gain, (train_at_best - last_train) / train_gain
    else:
        val_rise, train_fall = last_val / best_val - 1, 1 - last_train / train_at_best
    if val_rise <= rise or train_fall <= fall or (not signed and last_val - best_val <= RISE_OF_START * start):
        return None
    return val_rise, train_fall, signed


def overfitted_since_best(history: list[dict]) -> dict | None:
    """The evidence of the overfitting *rise* (see the module text) when the history shows it, else None. At
    an LR cut it says the weights have drifted from the best ones into overfitting: the lower LR then goes on
    from the best weights (``restarted_from_best``), as a person would reload the best checkpoint. A cut on
    a plain plateau, where the current weights are as good as the best within noise, goes on from them.

    The drift it asks is smaller than the diagnosis's (`RESTART_RISE`, `RESTART_FALL`). On a GRU tagger that
    overfit two epochs after its best, going on from the best weights took the test loss from 0.276 to 0.270
    (mean of 3 seeds; the classic loop's 0.266), 0.269 with the smaller drift; a masked GRU tagger 0.2545 ->
    0.2499, a multi-label MLP 0.7525 -> 0.7462. On bench/auto.py's 12 runs it acted on 5: validation loss as
    good or better on each; the other 7 did not change."""
    # Also for a loss that reaches zero or below: on a Gaussian-NLL MLP (300 rows) going on from the best weights
    # gave test NLL -0.3666 against -0.3579 over 6 seeds (2 better, 2 worse, 2 the same; the held-out seeds 3-5
    # -0.393 against -0.372), once progress after a restart was judged from the best.
    found = _overfitting_rise(history, "", rise=RESTART_RISE, fall=RESTART_FALL)
    if found is None:
        return None
    return {k: found.evidence[k] for k in ("val_rise", "train_fall")}


def _overfitting_gap(history: list[dict], fit: dict | None, baseline_loss: float | None,
                     decay: str, kept_epoch: int | None = None) -> Finding | None:
    """The generalization gap of the kept weights (those of ``kept_epoch``; the lowest validation loss when
    it is not known): training far better than validation."""
    rows = [r for r in history if _finite(r.get("val_loss")) and _finite(r.get("train_loss"))]
    if not rows:
        return None
    best = next((r for r in rows if r["epoch"] == kept_epoch), None) or min(rows, key=lambda r: r["val_loss"])
    fit = fit or {}
    train = fit.get("train_loss") if _finite(fit.get("train_loss")) else best["train_loss"]
    val = fit.get("val_loss") if _finite(fit.get("val_loss")) else best["val_loss"]
    scale = baseline_loss if _finite(baseline_loss) and baseline_loss > 0 else \
        max(rows[0]["val_loss"], rows[0]["train_loss"])
    if not (train >= 0 and val >= GAP_RATIO * train and val - train >= GAP_OF_SCALE * scale):
        return None
    evidence = {"best_val_epoch": best["epoch"], "train_loss": train, "val_loss": val,
                "gap_ratio": round(val / train, 4) if train > 0 else None, "scale": scale,
                "train_measured_on": "the kept weights, evaluated" if _finite(fit.get("train_loss"))
                else "the epoch's running training loss"}
    gaps = []
    for name in GAP_METRICS:
        t, v = fit.get(f"train_{name}"), fit.get(f"val_{name}", best.get(f"val_{name}"))
        if _finite(t) and _finite(v):
            evidence.update({f"train_{name}": t, f"val_{name}": v})
            gaps.append((name, t - v))
    if gaps and not all(gap >= GAP_METRIC for _, gap in gaps):
        return None
    said = "; ".join(f"training {name} {fit[f'train_{name}']:.1%} vs validation {fit[f'train_{name}'] - gap:.1%}"
                     for name, gap in gaps)
    return finding("overfitting", f"overfitting: at the kept epoch ({best['epoch']}) the training loss is "
                   f"{train:.4g} against {val:.4g} on validation" + (f"; {said}" if said else ""), evidence,
                   f"the model memorizes its training data: get more data or augment it, {decay}, add "
                   f"dropout, or use a smaller model")


def _underfitting(history: list[dict], baseline_loss: float | None, fit: dict | None = None,
                  reference_loss: float | None = None) -> Finding | None:
    known = _finite(baseline_loss) and baseline_loss > 0
    if not history or not known or not (_finite(reference_loss) and reference_loss >= 0):
        return None   # no yardstick: a high loss may be all the targets allow
    fit = fit or {}
    train = next((r.get("train_loss") for r in reversed(history) if _finite(r.get("train_loss"))), None)
    val = min((r["val_loss"] for r in history if _finite(r.get("val_loss"))), default=None)
    if train is None or val is None:
        return None
    fitted = fit.get("train_loss") if _finite(fit.get("train_loss")) else train
    if val > UNDERFIT_GAP * fitted:
        return None  # a gap: the model fits its training data better than it generalizes
    if val < UNDERFIT_REFERENCE * reference_loss or val - reference_loss < UNDERFIT_REFERENCE_GAP * baseline_loss:
        return None
    evidence = {"train_loss": fitted, "best_val_loss": val, "reference_val_loss": reference_loss,
                "constant_prediction_loss": baseline_loss, "times_reference": round(val / reference_loss, 4)
                if reference_loss > 0 else None}
    return finding("underfitting", f"underfitting: the best validation loss {val:.4g} is "
                   f"{val / reference_loss if reference_loss > 0 else math.inf:.3g}x what a small reference "
                   f"model reaches on the same data ({reference_loss:.4g}), and training is no better",
                   evidence, "the model is too small or too constrained for this task: use a larger or "
                   "nonlinear model (more units or layers), lower --weight-decay, train longer; the reference "
                   "sees standardized inputs (converge standardizes a feature matrix, or feature sequences, by "
                   "default; other inputs are yours to scale, or --fix's: `converge doctor TASK` tells)")


def needs_reference(history: list[dict], fit: dict | None = None, baseline_loss: float | None = None) -> bool:
    """Whether the underfitting rule could fire with a reference loss: not when validation is clearly worse
    than training (a gap), nor when the best validation loss is already below ``UNDERFIT_REFERENCE_GAP`` of the
    constant's (no reference can be that far below it) -- the caller may then skip building one."""
    rows = [r for r in history if _finite(r.get("val_loss")) and _finite(r.get("train_loss"))]
    if not rows or not (_finite(baseline_loss) and baseline_loss > 0):
        return False
    fitted = (fit or {}).get("train_loss")
    train = fitted if _finite(fitted) else rows[-1]["train_loss"]
    best = min(r["val_loss"] for r in rows)
    return best <= UNDERFIT_GAP * train and best >= UNDERFIT_REFERENCE_GAP * baseline_loss


def _collapsed(found: Collapse, history: list[dict]) -> Finding:
    evidence = {"best_val_loss": found.best_val_loss, "train_loss_last": found.last_train_loss,
                "constant_prediction_loss": found.baseline, "at_constant_level_since_epoch": found.since_epoch,
                "likely_causes": list(found.causes), **found.cause_evidence}
    if found.late:
        what = (f"training collapsed: from epoch {found.since_epoch} the losses sit at the level of a constant "
                f"prediction ({found.baseline:.4g}); the kept weights (best validation loss "
                f"{found.best_val_loss:.4g}) are from before")
    else:
        what = (f"collapsed: the model learned nothing -- its best validation loss {found.best_val_loss:.4g} is "
                f"no better than predicting a constant ({found.baseline:.4g}: the loss of the best constant "
                f"prediction)")
    fixes = []
    if "lr_too_high" in found.causes:
        fixes.append(f"lower the learning rate ({_lower_lr(history, found)}; or --lr auto)")
    if "unscaled_inputs" in found.causes:
        fixes.append("scale the inputs: converge standardizes unscaled features by default unless "
                     "--no-standardize, or use --fix")
    if not fixes:
        fixes.append("try --lr auto, check the inputs with `converge doctor TASK` (unscaled features, labels that "
                     "do not depend on the inputs), the model's output layer, and whether the model can represent "
                     "the task at all (then `underfitting` is named too, when a reference model does better)")
    return finding("collapsed", what, evidence, "; ".join(fixes),
                   severity="warning" if found.late else "error")


def _collapse_lr(history: list[dict], found: Collapse) -> Finding | None:
    """lr_too_high when a collapse comes after a blow-up, a rollback, or a loss of what was learned."""
    if "lr_too_high" not in found.causes:
        return None
    worst, rollbacks = found.cause_evidence.get("worst_epoch_train_loss"), found.cause_evidence.get("rollbacks", 0)
    why = [f"{rollbacks} rollback(s) after a loss blow-up"] if rollbacks else []
    if _finite(worst) and worst > found.baseline:
        why.append(f"a training loss of {worst:.4g} in an epoch ({worst / found.baseline:.3g}x a constant "
                   f"prediction's)")
    if found.cause_evidence.get("lr_rose_to"):
        why.append(f"the LR rose to {found.cause_evidence['lr_rose_to']:.3g} by epoch "
                   f"{found.cause_evidence['lr_rose_at_epoch']} (warmup or a jump)")
    if found.late:
        why.append(f"the run had learned, then fell back to the constant level at epoch {found.since_epoch}")
    evidence = {"rollbacks": rollbacks, "worst_epoch_train_loss": worst,
                "starting_lr": history[0].get("lr") if history else None, "collapsed": True}
    return finding("lr_too_high", "the learning rate was too high: " + ", ".join(why or ["the model collapsed"]) +
                   ", and the model ended at the constant prediction", evidence,
                   f"start from {_lower_lr(history, found)} (or let converge choose it: --lr auto), and consider "
                   f"--clip-grad 1.0")


def _lower_lr(history: list[dict], found: Collapse) -> str:
    lr = found.cause_evidence.get("lr_before_rollback") or found.cause_evidence.get("lr_rose_to") or \
        max((r["lr"] for r in history if _finite(r.get("lr"))), default=None)
    return f"--lr {lr / 10:.3g}" if _finite(lr) and lr > 0 else "a 10x lower --lr"


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
