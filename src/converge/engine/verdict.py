"""Acting on a plateau verdict: the one place where a decision from `converge.decide` touches the model and
the optimizer. The training loop, `converge.Monitor` and the framework callbacks all decide an epoch's end
through `decide_epoch`, so the judgement has one implementation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from converge.decide import Verdict
from converge.decide.diagnosis import overfitted_since_best
from converge.decide.significance import PairedRise
from converge.engine.optim import group_lrs, planned_lrs, scale_lr
from converge.io.weights import snapshot
from converge.status import Status


@dataclass(frozen=True)
class Applied:
    """What acting on one verdict did. ``best_state`` is a snapshot of the weights when the verdict saw a new
    best (else None); ``cut`` is True when at least one group's LR went down."""

    best_state: dict[str, torch.Tensor] | None
    lrs_before: list[float]
    lrs_after: list[float]
    cut: bool


def apply_verdict(verdict: Verdict, *, model: nn.Module, optimizer: torch.optim.Optimizer, factor: float,
                  min_lrs: float | Sequence[float], eps: float = 0.0) -> Applied:
    """Keep the weights on a new best; cut every group's LR on ``reduce_lr``: by ``factor``, not below that
    group's floor in ``min_lrs`` (one number for all groups, or one per group), never upwards, skipping a
    group whose cut would be ``eps`` or less, and in place for a tensor LR. Stopping is the caller's job."""
    before = group_lrs(optimizer)
    best_state = snapshot(model.state_dict()) if verdict.new_best else None
    if verdict.reduce_lr:
        scale_lr(optimizer, factor, min_lrs, eps=eps)
    after = group_lrs(optimizer)
    return Applied(best_state, before, after, cut=any(new < old for new, old in zip(after, before)))


def lr_at_minimum(optimizer: torch.optim.Optimizer, *, factor: float, min_lrs: float | Sequence[float],
                  eps: float = 0.0) -> bool:
    """True when a cut would change no group's LR (each is at its floor, or would move by ``eps`` or less):
    a plateau then ends the run instead of asking for a cut that does nothing."""
    return planned_lrs(optimizer, factor, min_lrs, eps) == group_lrs(optimizer)


@dataclass(frozen=True)
class EpochDecision:
    """What the end of an epoch decided, already acted on (the LR cut, the weights kept): the verdict, what
    acting did, the notes for the epoch's line, and the stop the caller must make (status, reason, evidence)."""

    verdict: Verdict
    applied: Applied
    notes: list[str] = field(default_factory=list)
    stop: tuple[Status, str, dict] | None = None


def decide_epoch(record: dict, *, monitor: str, tracker, model: nn.Module, optimizer: torch.optim.Optimizer,
                 factor: float, min_lrs: float | Sequence[float], event: Callable[..., None],
                 eps: float = 0.0) -> EpochDecision:
    """The tracker's verdict on ``record[monitor]`` (the epoch's values, with its ``lr``), acted on by
    `apply_verdict`; each decision is logged through ``event(kind, **values)``: ``new_best``, ``lr_reduced``,
    ``still_descending`` (a plateau stop held back by a steady descent).
    The stop itself (converged, diverged) is returned for the caller to make, with its evidence."""
    value, previous_best, lr = record[monitor], tracker.best, record["lr"]
    at_minimum = lr_at_minimum(optimizer, factor=factor, min_lrs=min_lrs, eps=eps)
    verdict = tracker.update(value, lr_at_minimum=at_minimum)
    applied = apply_verdict(verdict, model=model, optimizer=optimizer, factor=factor, min_lrs=min_lrs, eps=eps)
    notes, stop = [], None
    if verdict.new_best:
        event("new_best", monitor=monitor, value=value, previous=previous_best if math.isfinite(previous_best)
              else None, significant=verdict.significant)
        notes.append("new best")
    if verdict.reduce_lr and applied.cut:  # a cut that lowered no LR is no cut: the LR is at its floor
        event("lr_reduced", old_lr=lr, new_lr=applied.lrs_after[0], reason=verdict.reason,
              bad_epochs=verdict.bad_epochs, best=tracker.best, best_epoch=tracker.best_epoch)
        notes.append(f"lr -> {applied.lrs_after[0]:.3g}")
    if verdict.descending:
        event("still_descending", monitor=monitor, value=value, reason=verdict.reason,
              bad_epochs=verdict.bad_epochs, best=tracker.best, best_epoch=tracker.best_epoch)
        notes.append("still descending")
    if verdict.stop:
        status = Status.DIVERGED if verdict.diverged else Status.CONVERGED
        stop = (status, verdict.reason, {"bad_epochs": verdict.bad_epochs, "lr": lr, "best": tracker.best,
                                         "best_epoch": tracker.best_epoch})
        notes.append(status.value)
    return EpochDecision(verdict, applied, notes, stop)


def restart_if_overfit(history: list[dict], tracker, *, model: nn.Module, best_state: dict | None,
                       event: Callable[..., None], monitor: str, rise: PairedRise | None = None) -> str | None:
    """At an LR cut: when the run has overfit since its best epoch (`decide.diagnosis.overfitted_since_best`),
    load the best weights, so the cut LR goes on from them and not from where overfitting took them, and log
    ``restarted_from_best``; the tracker measures progress from the best value from then on
    (`ConvergenceTracker.went_back_to_best`). Returns the epoch line's note, or None when nothing was done (no
    overfitting, or the current weights are the best). The caller's guard must learn the loss level again
    (``rebase``). ``rise``: the weights being left against the best ones, part by part of the validation
    split; the event keeps what it says, so that the diagnosis does not call a rise within the noise
    overfitting (the restart itself does not wait for it: going on from the best weights costs nothing)."""
    drift = overfitted_since_best(history)
    if drift is None or best_state is None or tracker.best_epoch == tracker.epochs:
        return None
    model.load_state_dict(best_state)
    tracker.went_back_to_best()
    event("restarted_from_best", best_epoch=tracker.best_epoch, monitor=monitor, value=tracker.best, **drift,
          **(rise.evidence() if rise is not None else {}))
    return f"from epoch {tracker.best_epoch}'s weights"
