"""`Monitor`: converge's convergence decisions for people who keep their own training loop, and the core of
the callbacks for other frameworks (`converge.integrations`).

The decisions come from the pure tracker in `converge.decide.plateau` (the same one `converge.fit` uses);
acting on them (best weights, LR cuts) is `converge.engine.verdict.apply_verdict`, also shared. With
``guard=True`` the training losses given to ``after_batch`` go through the Trainer's divergence guard
(`converge.engine.guard`); with ``out`` the run's record goes through the Trainer's recorder
(`converge.engine.recorder`) into a run folder, and ``finish`` adds the end-of-run diagnosis
(`converge.decide.diagnosis`). The Monitor grows no rule of its own: it translates calls into those.
"""

from __future__ import annotations

import math
import numbers
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from converge.console import Console
from converge.decide import ConvergencePolicy, ConvergenceTracker, Verdict
from converge.decide.diagnosis import diagnose_run
from converge.decide.divergence import Alarm, GuardPolicy
from converge.engine.guard import DivergenceGuard, Incident, copied
from converge.engine.judge import new_live_findings
from converge.engine.optim import current_lr, group_lrs
from converge.engine.recorder import RunRecorder
from converge.engine.result import FitResult, run_summary
from converge.engine.verdict import Applied, decide_epoch, restart_if_overfit
from converge.io.runfolder import RUN_INFO, RunFolder
from converge.status import Status

DEFAULT_MIN_LR_RATIO = 1e-3   # min_lr=None: each group's floor is 1e-3 x its LR when the Monitor first sees it


class Monitor:
    """Call ``step(value)`` once per epoch with the validation value. It cuts the LR on a plateau, keeps the
    best weights in memory and returns True when the run should stop: it has converged (a plateau that
    survived an LR cut), reached ``stopping_threshold``, or diverged (a non-finite value, or a value worse
    than ``divergence_threshold``). Then ``stop_reason_`` says why and ``last_verdict_.rule`` which rule.

    ```python
    monitor = Monitor(model, optimizer)
    for epoch in range(1000):
        train_one_epoch()
        if monitor.step(validate()):
            break
    monitor.restore_best()
    ```

    Options (keyword-only):

    * ``mode``: ``"min"`` or ``"max"``; ``threshold`` and ``threshold_mode`` (``"rel"``, relative to the
      reference's magnitude, or ``"abs"``): how much better a value must be to count as progress.
    * ``patience``: act at the ``patience``-th epoch in a row without progress (torch's
      ``ReduceLROnPlateau(patience=p)`` acts at the (p+1)-th: use ``patience=p + 1`` here).
    * ``factor``: LR multiplier at each cut. ``min_lr``: the floor, one number or one per parameter group
      (default: 1e-3 x each group's LR). ``eps``: a cut that changes a group's LR by ``eps`` or less is
      skipped. A cut never raises an LR (a group below its floor, or frozen at 0, keeps its LR).
    * ``cooldown``: epochs right after a cut that do not count against patience.
    * ``unproductive_cuts``: cuts without progress before a plateau stops the run (0: plain early stopping).
    * ``window``: progress is judged on the median of the last ``window`` values (1 turns it off).
    * ``check_finite``: stop at once on a NaN or infinite value (default on).
    * ``stopping_threshold``: stop once a value beats it. ``divergence_threshold``: stop once a value is
      worse than it. ``baseline``: nothing counts as progress until a value beats it.
    * ``start_from_epoch``: the first ``start_from_epoch`` values are not judged (a warm-up).
    * ``restart_from_best``: at an LR cut after overfitting (since the best epoch the validation loss rose
      while the training loss fell: give both in ``values``), load the best weights into the model, so the
      cut LR goes on from them and not from where overfitting took them, as `converge.fit` does (event
      ``restarted_from_best``). Default on; the optimizer's state is kept.

    What the Trainer does beside the decisions, for a loop (or a framework's callback) that asks for it:

    * ``monitor``: the name of the judged value (``"val_loss"``, ``"val_accuracy"``), for the record.
    * ``guard``: the divergence guard. Give each optimizer step's training loss to ``after_batch`` (a
      tensor: it is read once every 32 steps, never per step); a NaN or a spike rolls the model and the
      optimizer back to the state of the last clean evaluation and cuts the LR; too many rollbacks in a
      row stop the run as diverged. A non-finite ``step`` value is rolled back too instead of stopping.
    * ``scheduler``: a ``LambdaLR`` (the Hugging Face schedules are) that sets the LR from its base LRs at
      every step: each cut scales its base LRs too, so the schedule carries the cut on. Other schedulers
      set the LR in ways a cut cannot ride on: they are refused.
    * ``out``: a run folder (``metrics.jsonl``, ``events.jsonl``, and at ``finish`` ``summary.json``,
      ``curves.png``, ``report.html``, ``best.safetensors``), as `converge.fit` writes; ``force`` replaces
      converge's own files in a folder that has them. ``run_info``: facts for ``summary.json``.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, mode: str = "min",
                 patience: int = 5, factor: float = 0.1, threshold: float = 1e-3, threshold_mode: str = "rel",
                 cooldown: int = 0, min_lr: float | Sequence[float] | None = None, unproductive_cuts: int = 1,
                 eps: float = 1e-8, window: int = 3, check_finite: bool = True,
                 stopping_threshold: float | None = None, divergence_threshold: float | None = None,
                 baseline: float | None = None, start_from_epoch: int = 0, restart_from_best: bool = True,
                 monitor: str = "val_loss",
                 guard: bool = False, scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                 out: str | Path | None = None, force: bool = False, run_info: dict | None = None,
                 console: Console | None = None) -> None:
        if not (isinstance(factor, numbers.Real) and 0 < factor < 1):
            raise ValueError(f"factor must be between 0 and 1, got {factor!r}")
        if not (isinstance(eps, numbers.Real) and math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        if scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            raise ValueError(f"converge cuts the LR itself and can only ride on a LambdaLR schedule (its cuts scale "
                             f"the base LRs), got a {type(scheduler).__name__}: drop it, or use a LambdaLR")
        self.model, self.optimizer, self.factor, self.eps = model, optimizer, float(factor), float(eps)
        self.scheduler, self.monitor, self.restart_from_best = scheduler, str(monitor), bool(restart_from_best)
        # A schedule's LRs move under the floors: the floors follow the base LRs the schedule scales.
        self._floor_for_new_groups, self.min_lrs = _floors(min_lr, optimizer, scheduler)
        self.tracker = ConvergenceTracker(ConvergencePolicy(
            mode=mode, patience=patience, threshold=threshold, threshold_mode=threshold_mode,
            cooldown=cooldown, unproductive_cuts=unproductive_cuts, window=window,
            check_finite=False if guard else check_finite,  # with the guard a non-finite value is rolled back instead
            stopping_threshold=stopping_threshold, divergence_threshold=divergence_threshold,
            baseline=baseline, start_from_epoch=start_from_epoch))
        self.best_state_: dict | None = None
        self.last_verdict_: Verdict | None = None
        self.last_applied_: Applied | None = None
        self.stop_reason_ = ""
        self.status_: Status | None = None
        self.last_lr_ = group_lrs(optimizer)
        self.steps_ = 0                     # after_batch calls: the optimizer steps seen
        self.best_record_: dict = {}        # the best evaluation's values
        self._epoch_rollbacks, self._epoch_started = 0, time.monotonic()
        self._guard = self._make_guard() if guard else None
        folder = _create_folder(out, force, self._options(), (run_info or {}).get("name")) if out is not None else None
        self.record = RunRecorder(folder, console or Console(), run_info=run_info)
        self.record.start(first_epoch=1, fresh=True)

    @property
    def best(self) -> float:
        """The best value seen so far (inf in mode "min", -inf in mode "max", before the first finite one)."""
        return self.tracker.best

    @property
    def best_epoch(self) -> int:
        """The 1-based number of the ``step`` call that saw the best value (0 before any)."""
        return self.tracker.best_epoch

    @property
    def min_lr(self) -> float:
        """The first parameter group's LR floor (``min_lrs`` holds one per group). Setting it sets one floor
        for every group, as the older Monitor's single ``min_lr`` did."""
        return self.min_lrs[0]

    @min_lr.setter
    def min_lr(self, value: float) -> None:
        self._floor_for_new_groups, self.min_lrs = _floors(value, self.optimizer)

    @property
    def stopped(self) -> bool:
        """Whether the run should stop (converged, diverged, or the guard gave up)."""
        return self.status_ is not None

    @property
    def history(self) -> list[dict]:
        """One record per ``step``: its values, the LR, the steps so far."""
        return self.record.history

    @property
    def events(self) -> list[dict]:
        """What was decided and done: new bests, LR cuts, rollbacks, the stop."""
        return self.record.events

    def step(self, value: float | torch.Tensor, *, values: dict | None = None) -> bool:
        """Judge one epoch's value and act on it: keep the weights on a new best, cut the LR on a plateau.
        Returns True when the run should stop; ``stop_reason_`` then says why, ``last_verdict_`` holds the
        whole verdict and ``last_applied_`` what was done (LRs before and after). ``values``: the epoch's
        other numbers for the record (``train_loss``, ``val_loss``, ``val_accuracy``, ...)."""
        value = float(value)
        lr = current_lr(self.optimizer)
        record = {"epoch": self.tracker.epochs + 1, "step": self.steps_, "lr": lr,
                  **{k: float(v) for k, v in (values or {}).items()}, self.monitor: value}
        record = {**record, "rollbacks": self._epoch_rollbacks,
                  "seconds": round(time.monotonic() - self._epoch_started, 4)}
        self.record.add_epoch(record)
        notes = self._guard_epoch_end(value) if self._guard is not None and not self.stopped else []
        if not self.stopped:
            notes += self._judge(value, record, lr)
        if not self.stopped:
            notes += self._live_diagnosis()
        if self._guard is not None and not self.stopped:
            self._remember_good()
        self.record.publish_epoch(record, notes)
        self._epoch_rollbacks, self._epoch_started = 0, time.monotonic()
        return self.stopped

    def _judge(self, value: float, record: dict, lr: float) -> list[str]:
        """The tracker's verdict, acted on as the Trainer acts on it (`converge.engine.verdict.decide_epoch`)."""
        decision = decide_epoch(record, monitor=self.monitor, tracker=self.tracker, model=self.model,
                                optimizer=self.optimizer, factor=self.factor, min_lrs=self._current_floors(),
                                event=self._event, eps=self.eps)
        applied = decision.applied
        self._carry_into_schedule(applied.lrs_before, applied.lrs_after)
        self.last_verdict_, self.last_applied_, self.last_lr_ = decision.verdict, applied, applied.lrs_after
        if applied.best_state is not None:
            self.best_state_ = applied.best_state
            self.best_record_ = {k: v for k, v in record.items() if k.startswith("val_") or k == self.monitor}
            if self._guard is not None:
                self._guard.new_best(clean=self._epoch_rollbacks == 0)
        if applied.cut and self.restart_from_best:
            note = restart_if_overfit(self.history, self.tracker, model=self.model, best_state=self.best_state_,
                                      event=self._event, monitor=self.monitor)
            if note is not None:
                decision.notes.append(note)
                if self._guard is not None:
                    self._guard.rebase()
        if decision.stop is not None:
            status, reason, evidence = decision.stop
            self._stop(status, reason, **evidence)
        return decision.notes

    def _live_diagnosis(self) -> list[str]:
        """A problem (overfitting, an LR too high) told the first epoch it shows, as the Trainer tells it."""
        found = new_live_findings(self.history, self.events, weight_decay=self._weight_decay(),
                                  monitor=self.monitor, mode=self.tracker.policy.mode)
        for finding in found:
            self._event("diagnosis", code=finding.code, message=finding.message, fix=finding.fix,
                        evidence=finding.evidence)
        return [f.code for f in found]

    def _stop(self, status: Status, reason: str, **evidence) -> None:
        self.status_, self.stop_reason_ = status, reason
        self._event(status.value, reason=reason, **evidence)

    def _event(self, kind: str, /, **values) -> None:
        self.record.event(kind, epoch=self.tracker.epochs, step=self.steps_, **values)

    def add_event(self, kind: str, /, **values) -> None:
        """Record an event of the caller's own (a choice made before training) in the run's log."""
        self._event(kind, **values)

    # --- the divergence guard ---------------------------------------------------------------------
    def after_batch(self, loss: torch.Tensor | float) -> bool:
        """One optimizer step's training loss. With ``guard``: kept on the device and judged with the
        others every 32 steps (one sync); a blow-up is rolled back (returns True). Without: only counted."""
        self.steps_ += 1
        if self._guard is None or self.stopped:
            return False
        guard = self._guard
        guard.record_loss(self.steps_, torch.as_tensor(loss, device=guard.device))
        guard.record_step(self.steps_, None)
        if not guard.due:
            return False
        incident = guard.check()  # sync point: once per window
        return incident is not None and self._roll_back(incident)

    def _guard_epoch_end(self, value: float) -> list[str]:
        """The rest of the window, then the evaluation itself: a non-finite value is a blow-up too."""
        incident = self._guard.check()
        if incident is None and not math.isfinite(value):
            alarm = Alarm("nonfinite", value, math.nan, f"the validation value {self.monitor} became {value}")
            incident = Incident(alarm, None, self.steps_, None)
        if incident is None:
            return []
        return ["rolled back" if self._roll_back(incident) else "diverged"]

    def _roll_back(self, incident: Incident) -> bool:
        """Back to the last good state with a lower LR; False (and the run stopped) when the guard gives up."""
        before = group_lrs(self.optimizer)
        done = self._guard.roll_back(incident, model=self.model, optimizer=self.optimizer, scaler=None,
                                     min_lr=self._current_floors())
        alarm = incident.alarm
        if done.gave_up:
            self._stop(Status.DIVERGED, f"{alarm.reason} at step {incident.step} and the guard {done.reason}; the "
                                        f"best weights (epoch {self.tracker.best_epoch}) are kept",
                       rollbacks=self._guard.total, **done.evidence)
            return False
        self._carry_into_schedule(before, group_lrs(self.optimizer))
        self._epoch_rollbacks += 1
        self.last_lr_ = group_lrs(self.optimizer)
        self._event("rollback", reason=alarm.reason, **done.evidence, new_lr=done.new_lr,
                    rollbacks_in_a_row=self._guard.streak)
        self.record.console.warning(f"{alarm.reason} (step {incident.step}); rolled back to the last good state, "
                                    f"LR {done.evidence['lr']:.3g} -> {done.new_lr:.3g}")
        return True

    def _make_guard(self) -> DivergenceGuard:
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        guard = DivergenceGuard(GuardPolicy(), device, None)
        guard.remember(self._good_state())  # the start is known-good
        return guard

    def _remember_good(self) -> None:
        """After a clean evaluation: the rollback target (a copy on the CPU; the old one goes first)."""
        self._guard.remember({})
        self._guard.remember(self._good_state())

    def _good_state(self) -> dict:
        return copied({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "scaler": None,
                       "progress": {"step": self.steps_}}, "cpu")

    def _carry_into_schedule(self, before: list[float], after: list[float]) -> None:
        """A LambdaLR sets each LR from its base LR at its next step: a cut scales the base LR too."""
        if self.scheduler is None:
            return
        for index, (old, new) in enumerate(zip(before, after)):
            if old > 0 and new < old:
                self.scheduler.base_lrs[index] *= new / old

    def _weight_decay(self) -> float | None:
        decay = self.optimizer.param_groups[0].get("weight_decay")
        return float(decay) if isinstance(decay, numbers.Real) else None

    def _options(self) -> dict:
        policy = self.tracker.policy
        return {"monitor": self.monitor, "mode": policy.mode, "patience": policy.patience, "factor": self.factor,
                "optimizer": type(self.optimizer).__name__, "lr": current_lr(self.optimizer),
                "weight_decay": self._weight_decay()}

    # --- the end ------------------------------------------------------------------------------------
    def finish(self, *, status: Status | str | None = None, reason: str = "", max_epochs: int | None = None,
               test: dict | None = None, restore_best: bool = True) -> FitResult:
        """The end of the run: load the best weights (``restore_best``), diagnose the run and, with ``out``,
        write its final files. A run that did not stop by itself ends as ``status`` (default
        ``max_epochs``: the loop's own limit came first) with ``reason``. ``test``: the kept weights' test
        values, for the summary. Returns what `converge.fit` returns."""
        if self.status_ is None:
            status = Status(status or Status.MAX_EPOCHS)
            self._stop(status, reason or "the training loop ended before converging")
        finished = self.status_ is not Status.INTERRUPTED
        if finished and restore_best and self.best_state_ is not None:
            self.restore_best()
            self._event("restored_best", best_epoch=self.best_epoch, monitor=self.monitor, value=self.best)
        policy = self.tracker.policy
        findings = diagnose_run(self.history, self.events, status=self.status_ if finished else None,
                                monitor=self.monitor, mode=policy.mode, patience=policy.patience,
                                max_epochs=max_epochs or len(self.history), weight_decay=self._weight_decay())
        summary = run_summary(status=self.status_, stop_reason=self.stop_reason_, epochs=len(self.history),
                              steps=self.steps_, tracker=self.tracker, monitor=self.monitor, mode=policy.mode,
                              best_record=self.best_record_, optimizer=self.optimizer,
                              rollbacks=self._guard.total if self._guard is not None else 0,
                              test={k: float(v) for k, v in (test or {}).items()},
                              diagnosis=[f.to_dict() for f in findings])
        try:
            summary = self.record.finish(summary, self.best_state_ if finished else None, self.monitor)
        finally:
            self.record.close()
        return FitResult(self.model, summary, list(self.history), list(self.events), self.record.run_dir)

    def get_last_lr(self) -> list[float]:
        """Each parameter group's LR after the last ``step`` (before the first: when the Monitor was made),
        as torch's schedulers report it."""
        return list(self.last_lr_)

    def restore_best(self) -> None:
        """Put the best weights seen so far back into the model (no-op before the first finite value)."""
        if self.best_state_ is not None:
            self.model.load_state_dict(self.best_state_)

    def state_dict(self) -> dict:
        """Everything needed to continue: the tracker (with its options), the best weights, the LR floors."""
        return {"tracker": self.tracker.state_dict(), "best_state": self.best_state_, "min_lr": self.min_lr,
                "min_lrs": list(self.min_lrs), "factor": self.factor, "eps": self.eps,
                "stop_reason": self.stop_reason_, "last_lr": list(self.last_lr_),
                "status": self.status_.value if self.status_ is not None else None, "steps": self.steps_,
                "best_record": dict(self.best_record_),
                "guard": self._guard.state_dict() if self._guard is not None else None,
                "history": [dict(r) for r in self.history], "events": [dict(e) for e in self.events]}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from `state_dict`, also one saved by an older Monitor (its single
        ``min_lr`` then applies to every group). Raises KeyError naming any missing required key."""
        missing = [k for k in ("tracker", "best_state", "min_lr", "factor") if k not in state]
        if missing:
            raise KeyError(f"Monitor state is missing {missing}")
        self.tracker.load_state_dict(state["tracker"])
        self.best_state_ = state["best_state"]
        groups = len(self.optimizer.param_groups)
        self.min_lrs = [float(v) for v in state.get("min_lrs") or [state["min_lr"]] * groups]
        self.factor = float(state["factor"])
        self.eps = float(state.get("eps", self.eps))
        self.stop_reason_ = state.get("stop_reason", "")
        self.last_lr_ = [float(v) for v in state.get("last_lr") or group_lrs(self.optimizer)]
        ended = Status(state["status"]) if state.get("status") else None
        self.status_ = ended if ended is not None and not ended.resumable else None
        if ended is not None and self.status_ is None:
            self.stop_reason_ = ""  # it stopped at the loop's limit, or was interrupted: it goes on
        self.steps_ = int(state.get("steps", 0))
        self.best_record_ = dict(state.get("best_record") or {})
        if self._guard is not None and state.get("guard") is not None:
            self._guard.load_state_dict(state["guard"])
        if "history" in state:  # an older Monitor kept no record
            self.record.load(state["history"], state.get("events") or [])

    def _current_floors(self) -> list[float]:
        """One floor per group, for groups added to the optimizer since, too (when ``min_lr`` was not a list)."""
        groups = self.optimizer.param_groups
        if len(self.min_lrs) > len(groups) or (len(self.min_lrs) < len(groups) and self._floor_for_new_groups is None):
            raise ValueError(f"the optimizer has {len(groups)} parameter groups but min_lr has {len(self.min_lrs)} "
                             f"entries {self.min_lrs!r}: append one to monitor.min_lrs for each group added")
        for group in groups[len(self.min_lrs):]:
            kind, number = self._floor_for_new_groups
            self.min_lrs.append(number if kind == "fixed" else float(group["lr"]) * number)
        return list(self.min_lrs)

    def __repr__(self) -> str:
        best = self.best if math.isfinite(self.best) else None
        return f"Monitor(best={best}, best_epoch={self.best_epoch}, lr={current_lr(self.optimizer):.3g})"


def _create_folder(out: str | Path, force: bool, options: dict, name: str | None) -> RunFolder:
    """The run folder, with its run.json (what the report reads first; its name titles the report)."""
    folder = RunFolder.create(out, force=force)
    folder.write_json(RUN_INFO, {"config": options, "name": name or Path(out).name})
    return folder


def _floors(min_lr, optimizer: torch.optim.Optimizer, scheduler=None) -> tuple[tuple[str, float] | None, list[float]]:
    """(the rule for groups added later, one floor per group now) from the ``min_lr`` option."""
    lrs = [float(lr) for lr in scheduler.base_lrs] if scheduler is not None else group_lrs(optimizer)
    if min_lr is None:
        return ("ratio", DEFAULT_MIN_LR_RATIO), [lr * DEFAULT_MIN_LR_RATIO for lr in lrs]
    if isinstance(min_lr, numbers.Real):
        if not (math.isfinite(min_lr) and min_lr >= 0):
            raise ValueError(f"min_lr must be a finite number >= 0, got {min_lr!r}")
        return ("fixed", float(min_lr)), [float(min_lr)] * len(lrs)
    floors = list(min_lr)
    if len(floors) != len(lrs) or not all(isinstance(v, numbers.Real) and math.isfinite(v) and v >= 0
                                          for v in floors):
        raise ValueError(f"min_lr must be one number >= 0 per parameter group ({len(lrs)}), got {min_lr!r}")
    return None, [float(v) for v in floors]
