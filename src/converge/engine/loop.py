"""The training loop: one Trainer owns the counters and runs epochs until a stop rule fires.

Per epoch:
1. seed the epoch (data order and dropout depend on the seed and the epoch number only);
2. train: forward, backward, optimizer step and an on-device sum of the loss per batch; every
   ``CHECK_EVERY`` batches the divergence guard reads its window of losses (a sync point) and, on a
   blow-up, rolls back (`converge.engine.guard`);
3. validate (a sync point), and act on the convergence tracker's verdict (`converge.engine.verdict`):
   keep the best weights, cut the LR, or stop;
4. tell the recorder (`converge.engine.recorder`) and checkpoint.

At the end the kept weights are loaded and the run's judge (`converge.engine.judge`) concludes: the
yardsticks, the fit on the training split, the diagnosis. The host reads values once per epoch and once per
guard window; nothing per step. A stop is always `_stop(status, reason)`: the status type
(`converge.status`) knows its exit code and wording.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import torch
from torch import nn

from converge.config import TrainConfig
from converge.data import epoch_seed, rows_in
from converge.decide import ConvergencePolicy, ConvergenceTracker
from converge.decide.divergence import GuardPolicy
from converge.decide.cadence import estimated_cost, negligible
from converge.decide.plateau import negligible_gain
from converge.decide.significance import PairedRise, paired_rise
from converge.engine import device as dev
from converge.engine.clock import RunClock
from converge.engine.distributed import current_world
from converge.engine.guard import CHECK_EVERY, DivergenceGuard, Incident
from converge.engine.evaluation import evaluate, evaluation_batch_size
from converge.engine.judge import RunJudge, new_live_findings
from converge.engine.objective import Objective, in_memory_constant_loss, monitor_key, scores_of
from converge.engine.progress import EpochProgress
from converge.engine.loss_parameters import WithLossParameters, loss_parameters
from converge.engine.optim import build_optimizer, current_lr, optimizer_step, warm_up
from converge.engine.recorder import RunRecorder
from converge.engine.result import FitResult, run_summary
from converge.engine.signals import StopSignals
from converge.engine.verdict import decide_epoch, restart_if_overfit
from converge.errors import ConvergeError
from converge.io import checkpoint as ckpt
from converge.io.weights import snapshot
from converge.rng import capture_rng, restore_rng, seed_everything
from converge.status import Status, is_final

PROGRESS_UPDATES_PER_EPOCH = 25
# A rise of the validation loss is tested on at least this many parts of the split; with fewer, a one-sided t
# needs 2.35 standard errors and more, and the test says little.
RISE_TEST_FEWEST_PARTS = 4


class Trainer:
    """Trains ``model`` on ``splits`` with every knob of ``config`` set (choose "auto" ones first:
    `converge.choose`). ``recorder`` receives everything that happened (default: memory only, silent);
    ``epoch_judge`` (a search's pruner) sees every epoch's record after the run's own decisions and may
    stop it with a reason; ``restore_best`` loads the best weights at the end; ``started``: when the command
    that runs it started (``time.monotonic()``), so the run's wall time includes its set-up."""

    def __init__(self, model: nn.Module, splits: dict, config: TrainConfig, objective: Objective, *,
                 recorder: RunRecorder | None = None, epoch_judge: Callable[[dict], str | None] | None = None,
                 restore_best: bool = True, tuning_epochs: float = 0.0, started: float | None = None,
                 max_steps: int | None = None, alone: bool = False, judged: bool = True) -> None:
        if config.auto_knobs:
            raise ValueError(f"choose {', '.join(config.auto_knobs)} before building a Trainer (converge.choose)")
        self.config, self.objective = config, objective
        self.record = recorder or RunRecorder()
        self.console = self.record.console
        self.epoch_judge, self.restore_best = epoch_judge, restore_best
        self.max_steps = max_steps  # a budget of optimizer steps (the tuning race): its last epoch may be partial
        self.tuning_epochs = float(tuning_epochs)
        self.device = dev.pick_device(config.device)
        dev.check_amp(config.amp, self.device)
        self.model = model.to(self.device)
        # Under torchrun: forward/backward go through DDP (it averages gradients across ranks); everything
        # else (state, evaluation, export) uses the plain module. ``alone``: this process trains by itself
        # all the same (a tuning arm that rank 0 runs while the other ranks wait for its choice: wrapped in
        # DDP, its first collective waited for them, and `converge train --nproc` with an automatic knob hung).
        self.world = None if alone else current_world(self.device)
        # ``judged``: False for a tuning arm, whose end-of-run judgement no one reads (no reference model
        # trained beside it, no diagnosis at its end)
        self.judged = judged
        self.train_model = self.model if self.world is None else nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # A loss with trainable parameters of its own trains them with the model's, and they are kept and
        # restored with the weights (`weights` for everything that snapshots, restores or clips them).
        self.loss_params = {} if objective.model_loss else loss_parameters(objective.loss_fn, self.model)
        self._place_loss_parameters()
        self.weights = WithLossParameters(self.model, self.loss_params) if self.loss_params else self.model
        self.splits = {name: split.to(self.device) for name, split in splits.items()}
        if getattr(self.splits["train"], "stream", False):
            self.splits["train"].stream_seed(config.seed)  # a stream's data depends on the seed, not on the run
        self.monitor_key = monitor_key(config.monitor, objective)
        self.optimizer = build_optimizer(self.weights, config.optimizer, config.lr, config.weight_decay)
        self.scaler = dev.make_grad_scaler(config.amp, self.device)
        self.tracker = ConvergenceTracker(ConvergencePolicy(
            mode=config.mode, patience=config.patience, threshold=config.threshold,
            cooldown=config.cooldown, unproductive_cuts=config.unproductive_cuts,
            check_finite=not config.guard))  # with the guard a non-finite value is rolled back instead
        self.guard = DivergenceGuard(GuardPolicy(max_rollbacks=config.max_rollbacks), self.device, config.clip_grad,
                                     world=self.world) if config.guard else None
        if self.guard is not None:  # targets in memory: the collapse test is on from the start
            self.guard.know_baseline(in_memory_constant_loss(self.splits["train"], objective))
        # The counters the loop owns.
        self.epoch = 0            # finished epochs
        self.step = 0             # optimizer steps
        self.in_epoch = EpochProgress(self.device, self.world)  # the next batch, the loss summed so far
        self.best_state = snapshot(self.weights.state_dict())
        self.best_record: dict = {}
        self.status: Status | None = None
        self.stop_reason = ""
        self.clock = RunClock(started)
        self._resumed = False     # the state came from the run folder's checkpoint (load_state_dict)
        self._main_writes = False  # this process, or rank 0, writes a run folder (set by run())
        self.judge = RunJudge(self.splits, objective, seed=config.seed)  # the yardsticks and the diagnosis
        self.metric_notes: list[str] = []  # metrics that are batch means, not the whole split's (said once)
        # The validation loss on fixed parts of the split, of the weights now and of the kept ones: whether a rise
        # of the validation loss is more than the split's noise (`_rise_test`).
        self._val_parts: list[float] | None = None
        self._best_val_parts: list[float] | None = None

    def _place_loss_parameters(self) -> None:
        """The loss's parameters (on the run's device since the objective was resolved, `place_loss`) with no
        gradient left by the set-up's trial runs (the LR range test's, the doctor's), and, under torchrun, rank
        0's values on every rank (a loss built when the task file was imported drew them before the seed was
        set)."""
        with torch.no_grad():
            for param in self.loss_params.values():
                param.grad = None
                if self.world is not None:
                    self.world.broadcast_(param.data)

    @property
    def history(self) -> list[dict]:
        return self.record.history

    @property
    def events(self) -> list[dict]:
        return self.record.events

    # --- the loop --------------------------------------------------------------------------------
    def run(self) -> FitResult:
        self.clock.start_loop()
        self._main_writes = self.record.folder is not None
        if self.world is not None:  # rank 0 writes the folder; the others learn whether there is one
            self._main_writes = bool(self.world.object_from_main(self._main_writes))
            if self.guard is not None and self._main_writes:
                self.guard.share_from_main()
        self.console.start(self.config.max_epochs)
        self.record.start(first_epoch=self.epoch + 1, fresh=not self.history and self.step == 0, step=self.step,
                          params=self.config.to_dict())
        if self.status is None and self.judged:
            self.judge.start_reference(self.model, self.device)  # the end-of-run yardstick, beside training
        try:
            with StopSignals() as signals:
                while self.status is None:
                    if self._stop_requested(signals, index=None)[0]:  # between epochs
                        self._interrupted(signals)
                        break
                    if self.max_steps is not None and self.step >= self.max_steps:
                        self._stop(Status.MAX_EPOCHS, f"reached its budget of {self.max_steps} steps")
                        break
                    if self.epoch >= self.config.max_epochs:
                        self._stop(Status.MAX_EPOCHS, f"reached --max-epochs {self.config.max_epochs} "
                                                      f"before converging")
                        break
                    train_loss = self._train_epoch(signals)
                    if train_loss is None:  # interrupted inside the epoch, or the guard gave up
                        if self.status is None:
                            self._interrupted(signals)
                        break
                    self._end_epoch(train_loss)
            return self._finish()
        finally:
            self.judge.stop_reference()  # a run that raised leaves no thread inside torch at exit
            self.clock.stop_loop()
            self.console.close()
            self.record.close()

    def extend(self, epochs: int) -> FitResult:
        """Train ``epochs`` more epochs from where the run stands (the tuning race continues its arms so)."""
        self.config = self.config.with_values(max_epochs=self.epoch + epochs)
        self.status, self.stop_reason = None, ""
        return self.run()

    def _stop(self, status: Status, reason: str, **evidence) -> None:
        """The one way a run stops: the status, a reason for a person, and an event with the evidence."""
        self.status, self.stop_reason = status, reason
        self._event(status.value, reason=reason, **evidence)

    def _interrupted(self, signals: StopSignals) -> None:
        self._stop(Status.INTERRUPTED, f"stopped by {signals.requested}; continue with `converge resume`",
                   batch=self.in_epoch.batch)

    def _train_epoch(self, signals: StopSignals) -> float | None:
        """One pass over the training split. Returns the mean training loss, or None when the run must stop
        (a stop was requested: the state is checkpointed at an optimizer-step boundary first; or the
        divergence guard gave up)."""
        cfg, epoch = self.config, self.epoch + 1
        self._epoch_started = time.monotonic()
        if self.in_epoch.batch == 0:
            seed_everything(epoch_seed(cfg.seed, epoch))
            self.in_epoch.begin()
        follow_schedule = getattr(self.objective.loss_fn, "set_lr_cuts", None)
        if follow_schedule is not None:  # a loss that changes with the schedule (deferred re-weighting)
            follow_schedule(self.tracker.total_cuts)
        if self.guard is not None and not self.guard.has_target:
            self._remember_start()  # the start (or resume point) is known-good
        train = self.splits["train"]
        total = train.num_batches(cfg.batch_size, train=True)
        self.console.start_epoch(epoch, total, completed=self.in_epoch.batch)
        outcome = "rolled_back"
        while outcome == "rolled_back":  # after a rollback the pass goes on past the offending batch
            outcome = self._train_batches(signals, total, epoch)
        if outcome == "stop":
            return None
        loss, seen = self.in_epoch.end()  # sync point: once per epoch
        if seen == 0 and not self.in_epoch.rollbacks:
            raise ConvergeError("the train split produced no batches")
        return loss if loss is not None else math.nan

    def _train_batches(self, signals: StopSignals, total: int | None, epoch: int) -> str:
        """Train from the epoch's next batch to its end. Returns "done", "stop" or "rolled_back"."""
        cfg, progress = self.config, self.in_epoch
        report_every = max(1, (total or 1000) // PROGRESS_UPDATES_PER_EPOCH)
        loss_sum, seen = progress.running_sum(), progress.seen
        model, scaler, objective, guard = self.train_model, self.scaler, self.objective, self.guard
        accumulate = cfg.accumulate
        stats = self.judge.target_stats if self.epoch == 0 else None  # the first epoch's targets: the baseline
        model.train()
        pending_step = False
        batches = self.splits["train"].batches(cfg.batch_size, seed=epoch_seed(cfg.seed, epoch),
                                               start=progress.batch, world=self.world)
        for index, (inputs, targets) in enumerate(batches, start=progress.batch):
            with dev.autocast(cfg.amp, self.device):
                outputs, loss = objective.forward(model, inputs, targets)
            if stats is not None:
                stats.update(targets, scores_of(outputs))
            if scaler is not None:
                scaler.scale(loss / accumulate if accumulate > 1 else loss).backward()
            else:
                (loss / accumulate if accumulate > 1 else loss).backward()
            n = _rows(targets)
            reported = objective.reported_loss(outputs, targets, loss)  # the user's units (no sync)
            loss_sum.add_(reported, alpha=n)
            seen += n
            if guard is not None:
                guard.record_loss(index, reported)
            if (index + 1) % report_every == 0:
                self.console.advance(report_every)
            if (index + 1) % accumulate and index + 1 != total:
                pending_step = True
                continue
            self._optimizer_step()
            pending_step = False
            progress.batch, progress.seen = index + 1, seen
            if self.max_steps is not None and self.step >= self.max_steps:
                break  # the budget ends the epoch here (it is then validated as usual)
            if guard is not None and guard.due and (outcome := self._guard_check()):
                return outcome
            stop, checkpoint_due = self._stop_requested(signals, index)
            if stop or checkpoint_due:
                if guard is not None and (outcome := self._guard_check()):
                    return outcome
                if stop:
                    return "stop"  # _finish writes the checkpoint
                self._checkpoint()
        if pending_step:  # a DataLoader without len(): the last micro-batches still need their step
            self._optimizer_step()
        progress.seen = seen
        if guard is not None and (outcome := self._guard_check()):
            return outcome
        return "done"

    def _optimizer_step(self) -> None:
        cfg, guard = self.config, self.guard
        clip = guard.clip_grad if guard is not None else cfg.clip_grad
        if self.step < cfg.warmup_steps:
            warm_up(self.optimizer, self.step, cfg.warmup_steps)
        wants_norm = guard is not None and clip is None and self.scaler is None and guard.wants_grad_norm(self.step)
        if self.world is not None and self.loss_params:   # DDP averages the model's gradients, not the loss's
            self.world.average_grads(list(self.loss_params.values()))
        grad_norm = optimizer_step(self.weights, self.optimizer, self.scaler, clip=clip, measure_norm=wants_norm)
        self.step += 1
        if guard is not None:
            guard.record_step(self.step, grad_norm)

    # --- stop requests and data parallelism ---------------------------------------------------------
    def _stop_requested(self, signals: StopSignals, index: int | None) -> tuple[bool, bool]:
        """(stop requested, checkpoint due) after batch ``index`` (None: between epochs, where no checkpoint
        is due: the epoch's end wrote one). Data-parallel ranks agree on both at window boundaries, so
        that all of them stop, or checkpoint, after the same step."""
        if self.world is not None and index is not None and (index + 1) % CHECK_EVERY:
            return False, False
        due = index is not None and self.record.checkpoint_due(floor=self.config.checkpoint_seconds)
        stop, (due,) = signals.agree(self.world, self.device, [due])
        return stop, due

    # --- the divergence guard -------------------------------------------------------------------------
    def _guard_check(self) -> str | None:
        """Judge the losses recorded since the last check (a sync point). None when all is well."""
        incident = self.guard.check()
        if incident is None:
            return None
        return "rolled_back" if self._roll_back(incident) else "stop"

    def _roll_back(self, incident: Incident) -> bool:
        """Undo a blow-up and go on past the offending batch; False when the guard gives up (diverged)."""
        done = self.guard.roll_back(incident, model=self.weights, optimizer=self.optimizer, scaler=self.scaler,
                                    min_lr=self.config.min_lr, epoch=self.epoch, in_epoch=self.in_epoch)
        self.step = done.progress["step"]
        self._val_parts = None   # those of the weights rolled back from
        alarm = incident.alarm
        if done.gave_up:
            self._stop(Status.DIVERGED, f"{alarm.reason} at step {incident.step} and the guard {done.reason}; "
                                        f"the best weights (epoch {self.tracker.best_epoch}) are kept",
                       rollbacks=self.guard.total, **done.evidence)
            return False
        self._event("rollback", reason=alarm.reason, **done.evidence, to_step=self.step, new_lr=done.new_lr,
                    clip_grad=done.clip_grad, previous_clip_grad=done.previous_clip_grad,
                    skipped_to_batch=self.in_epoch.batch, rollbacks_in_a_row=self.guard.streak)
        where = f"batch {incident.batch}" if incident.batch is not None else "validation"
        self.console.warning(f"{alarm.reason} (epoch {self.epoch + (incident.batch is not None)}, {where}); "
                             f"rolled back to step {self.step}, LR {done.evidence['lr']:.3g} -> {done.new_lr:.3g}")
        return True

    # --- the end of an epoch --------------------------------------------------------------------------
    def evaluate(self, split_name: str, prefix: str = "", parts: list[float] | None = None) -> dict[str, float]:
        """The loss and metrics over a split (`converge.engine.evaluation`; ``parts`` receives the loss on fixed
        parts of it); a metric that could not be scored on the whole split is said once, in a `metric_note`
        event."""
        notes = list(self.metric_notes)
        values = evaluate(self.model, self.splits[split_name], self.objective,
                          batch_size=evaluation_batch_size(self.config.batch_size, self.device, self.objective),
                          amp=self.config.amp, device=self.device, world=self.world, prefix=prefix, notes=notes,
                          parts=parts)
        for note in notes[len(self.metric_notes):]:
            self.metric_notes.append(note)
            self._event("metric_note", split=split_name, note=note)
            self.console.warning(f"metrics: {note}")
        return values

    def _end_epoch(self, train_loss: float) -> None:
        self.epoch += 1
        lr = current_lr(self.optimizer)
        parts: list[float] | None = [] if self.restore_best else None
        record = {"epoch": self.epoch, "step": self.step, "lr": lr, "train_loss": train_loss,
                  **self.evaluate("val", prefix="val_", parts=parts), "rollbacks": self.in_epoch.rollbacks,
                  "seconds": round(time.monotonic() - self._epoch_started, 4)}
        self._val_parts = parts if parts is not None and len(parts) >= RISE_TEST_FEWEST_PARTS else None
        if self.epoch == 1:
            self._learn_baseline(train_loss, record.get("val_loss", math.nan))
        self.record.add_epoch(record)
        notes = []
        incident = self.guard.validation_incident(record, self.monitor_key, self.step) if self.guard else None
        if incident is not None:
            notes.append("rolled back" if self._roll_back(incident) else "diverged")
        if self.status is None:
            notes += self._decide(record, lr)
        if self.status is None:
            notes += self._live_diagnosis()
        if self.status is None and self.epoch_judge is not None:
            reason = self.epoch_judge(dict(record))
            if reason:
                self._stop(Status.PRUNED, str(reason))
                notes.append("pruned")
        self.record.publish_epoch(record, notes)
        if not self._last_epoch():
            self._checkpoint()  # the last epoch's is the final checkpoint, written by _finish

    def _last_epoch(self) -> bool:
        """Whether the run ends after the epoch that just ended (a stop, or its epoch or step budget spent)."""
        return self.status is not None or self.epoch >= self.config.max_epochs or \
            (self.max_steps is not None and self.step >= self.max_steps)

    def _decide(self, record: dict, lr: float) -> list[str]:
        """The tracker's verdict on the monitored value, acted on: keep the best weights, cut the LR, stop."""
        if self.guard is None and not math.isfinite(record["train_loss"]):
            self._stop(Status.DIVERGED, f"training loss became {record['train_loss']} in epoch {self.epoch}; "
                                        f"the best weights (epoch {self.tracker.best_epoch}) are kept",
                       train_loss=record["train_loss"], lr=lr)
            return ["diverged"]
        decision = decide_epoch(record, monitor=self.monitor_key, tracker=self.tracker, model=self.weights,
                                optimizer=self.optimizer, factor=self.config.lr_factor, min_lrs=self._min_lr(),
                                event=self._event)
        if decision.applied.best_state is not None:
            if self.guard is not None:
                self.guard.new_best(clean=self.in_epoch.rollbacks == 0)
            self.best_state = decision.applied.best_state
            self.best_record = {k: v for k, v in record.items() if k.startswith("val_")}
            self._best_val_parts = self._val_parts
            self.record.save_best(self.best_state)
        if decision.applied.cut and self.restore_best:
            decision.notes.extend(self._restart_if_overfit())
        if decision.stop is not None:
            status, reason, evidence = decision.stop
            self._stop(status, reason, **evidence)
        return decision.notes

    def _restart_if_overfit(self) -> list[str]:
        """At an LR cut after overfitting, the cut LR goes on from the best weights (`restart_if_overfit`)."""
        note = restart_if_overfit(self.history, self.tracker, model=self.weights, best_state=self.best_state,
                                  event=self._event, monitor=self.monitor_key, rise=self._rise_test())
        if note is not None:
            self._val_parts = self._best_val_parts   # the weights are the kept ones again
            if self.guard is not None:
                self.guard.rebase()   # the best weights' training loss may be many times the overfit one's
        return [note] if note is not None else []

    # --- is a rise of the validation loss more than its noise? -----------------------------------------
    def _rise_test(self) -> PairedRise | None:
        """The current weights' validation loss against the kept ones', part by part, both from their own
        epoch's validation (None: cannot say). The kept weights are the best monitored value's: the lowest
        validation loss, or the monitored metric's best. What is asked is whether training past the weights the
        user gets made validation worse (a hinge-loss model monitored on accuracy was called overfitting on a
        10 % rise from the epoch after its kept one; against the kept weights the rise was 0.3 standard
        errors, and the test loss fell)."""
        if not self.restore_best or self.tracker.best_epoch in (None, self.epoch):
            return None
        return paired_rise(self._val_parts, self._best_val_parts)

    def _min_lr(self) -> float:
        """The LR floor of plateau cuts; the guard's rollbacks move it down with their cuts."""
        return self.config.min_lr * (self.guard.lr_scale if self.guard is not None else 1.0)

    def _live_diagnosis(self) -> list[str]:
        """Tell a problem (overfitting, an LR too high) the first epoch it shows, not only at the end. A rise of
        the validation loss is told once the current weights' is measured above the kept ones' by more than
        the validation split's noise (`_rise_test`), held to a stricter level for each epoch it was already
        tested (`live_findings`)."""
        notes = []
        for finding in new_live_findings(self.history, self.events, weight_decay=self.config.weight_decay,
                                         monitor=self.monitor_key, mode=self.config.mode,
                                         rise_test=self._rise_test()):
            self._event("diagnosis", code=finding.code, message=finding.message, fix=finding.fix,
                        evidence=finding.evidence)
            notes.append(finding.code)
        return notes

    def add_event(self, kind: str, /, **values) -> None:
        """Record an event of the caller's own (e.g. that the run was resumed) in the run's log."""
        self._event(kind, **values)

    def _event(self, kind: str, /, **values) -> None:
        self.record.event(kind, epoch=self.epoch, step=self.step, **values)

    # --- the end ---------------------------------------------------------------------------------
    def _finish(self) -> FitResult:
        finished = self.status is not Status.INTERRUPTED
        # The final checkpoint holds the last weights, so `resume --max-epochs` can carry on from them.
        self._checkpoint(final=True, restoring=finished and self.restore_best)
        rise = self._rise_test() if finished else None   # the last weights' parts, before the kept ones load
        if finished and self.restore_best:
            self.weights.load_state_dict(self.best_state)
            self._event("restored_best", best_epoch=self.tracker.best_epoch, monitor=self.monitor_key,
                        value=self.tracker.best)
        test = self.evaluate("test") if "test" in self.splits and finished else None
        summary = self._summary(test)
        summary.update(self.judge.conclude(
            evaluate=self.evaluate, model=self.model, history=self.history, events=self.events, status=self.status,
            config=self.config, monitor=self.monitor_key, best_record=self.best_record, epoch=self.epoch,
            world=self.world, rise_test=rise) if finished and self.judged else {"diagnosis": []})
        if not finished:
            self.judge.stop_reference()
        if self.judge.reference_failure is not None:
            self.console.warning(f"the reference model could not be trained ({self.judge.reference_failure}); "
                                 f"the run is judged without it")
        summary = self.record.finish(summary, self.best_state if finished else None, self.monitor_key)
        return FitResult(self.model, summary, list(self.history), list(self.events), self.record.run_dir)

    def _learn_baseline(self, first_train_loss: float, first_val_loss: float) -> None:
        """After the first epoch (every rank): the constant prediction's loss, which the guard's collapse test
        and the plateau's negligible gain also use. A loss of the user's whose constant prediction is unknown
        measures its negligible gain against its own best constant output's, or the first epoch's mean
        training or validation loss where that is lower (`Judge.gain_scale`), so that a loss heading for zero
        does not train for hundreds of epochs after nothing that matters changes (a GRU on running parity, its
        own cross-entropy: 100 % token accuracy by epoch 5, then 360 epochs from 1e-4 to 1e-11)."""
        baseline = self.judge.learn_baseline(self.world)
        if baseline is not None and self.guard is not None:
            self.guard.know_baseline(baseline)
        floor = 0.0
        if self.monitor_key == "val_loss":   # 0 for a non-finite scale
            floor = negligible_gain(baseline if baseline is not None else self.judge.gain_scale(first_train_loss,
                                                                                              first_val_loss))
        policy = self.tracker.policy   # checkpointed with the tracker
        self.tracker.policy = dataclasses.replace(
            policy, min_delta=max(floor, policy.min_delta),
            constant_level=baseline if policy.constant_level is None and self.monitor_key == "val_loss" else
            policy.constant_level)

    def _summary(self, test: dict | None) -> dict:
        cfg = self.config
        return run_summary(
            status=self.status, stop_reason=self.stop_reason, epochs=self.epoch, steps=self.step,
            tracker=self.tracker, monitor=self.monitor_key, mode=cfg.mode, best_record=self.best_record,
            optimizer=self.optimizer, rollbacks=self.guard.total if self.guard is not None else 0, test=test,
            metric_notes=self.metric_notes, hyperparameters={"optimizer": cfg.optimizer, "lr": cfg.lr,
                                                             "weight_decay": cfg.weight_decay,
                                                             "batch_size": cfg.batch_size},
            tuning_epochs=round(self.tuning_epochs, 3), task_kind=self.objective.kind,
            task_description=self.objective.description, device=str(self.device),
            wall_seconds=round(self.clock.wall_seconds(), 3), train_seconds=round(self.clock.train_seconds(), 3),
            config=cfg.to_dict())

    # --- state -----------------------------------------------------------------------------------
    def state_dict(self, wall_seconds: float | None = None, train_seconds: float | None = None) -> dict:
        """Everything needed to continue the run exactly: one checkpoint dict."""
        return {
            "format": ckpt.FORMAT_VERSION,
            "model": self.weights.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "tracker": self.tracker.state_dict(),
            "guard": self.guard.state_dict() if self.guard is not None else None,
            "best_model": self.best_state,
            "baseline": self.judge.state_dict(),
            "best_record": self.best_record,
            "progress": {"epoch": self.epoch, "step": self.step, "batch": self.in_epoch.batch,
                         "partial_loss": self.in_epoch.loss_sum, "partial_seen": self.in_epoch.seen,
                         "epoch_rollbacks": self.in_epoch.rollbacks,
                         "stream_position": getattr(self.splits["train"], "position", 0),
                         "status": self.status.value if self.status is not None else None,
                         "stop_reason": self.stop_reason, "tuning_epochs": self.tuning_epochs,
                         "wall_seconds": wall_seconds if wall_seconds is not None else self.clock.wall_before,
                         "train_seconds": train_seconds if train_seconds is not None else self.clock.trained_before},
            "rng": capture_rng(),
            "history": self.history,
            "logs": {"events": self.events},
            "val_parts": {"last": self._val_parts, "best": self._best_val_parts},
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint. A run that stopped for good keeps its status (its end is written
        again); one that was interrupted, or stopped at a lower epoch cap, goes on."""
        self.weights.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.tracker.load_state_dict(state["tracker"])
        if self.guard is not None and state.get("guard") is not None:
            self.guard.load_state_dict(state["guard"])
        self.best_state = {k: v.to(self.device) for k, v in state["best_model"].items()}
        self.best_record = dict(state["best_record"])
        self.judge.load_state_dict(state.get("baseline") or {}, self.device)
        progress = state["progress"]
        self.epoch, self.step = progress["epoch"], progress["step"]
        self.in_epoch.restore(progress["batch"], progress["partial_loss"], progress["partial_seen"])
        self.in_epoch.rollbacks = int(progress.get("epoch_rollbacks", 0))
        if getattr(self.splits["train"], "stream", False):
            self.splits["train"].position = int(progress.get("stream_position", 0))
        final = is_final(progress["status"], self.epoch, self.config.max_epochs)
        self.status = Status(progress["status"]) if final else None
        self.stop_reason = progress["stop_reason"] if final else ""
        self.tuning_epochs = float(progress.get("tuning_epochs", 0.0))
        self.clock.load(progress["wall_seconds"], progress.get("train_seconds"))
        self.record.load(state["history"], state["logs"]["events"])
        self.metric_notes = [e["note"] for e in self.events if e.get("event") == "metric_note"]
        parts = state.get("val_parts") or {}   # none in a checkpoint from before they were kept: no rise test
        self._val_parts, self._best_val_parts = parts.get("last"), parts.get("best")
        restore_rng(state["rng"])
        self._resumed = True

    def _checkpoint_state(self) -> dict:
        state = self.state_dict(self.clock.wall_seconds(), self.clock.train_seconds())
        state["progress"].update(self.in_epoch.position())  # summed over all ranks (rank 0 writes it)
        return state

    def _weights_once(self, state: dict) -> dict:
        """``state`` to be written, holding the model's weights once when they are the best weights: torch.save
        writes a storage once however often it is referenced, and a resume copies "model" into the live model
        (a quarter of an AdamW checkpoint less to write)."""
        weights = state["model"]
        if self._weights_are_best(weights):
            for name in weights:
                weights[name] = self.best_state[name]
        return state

    def _settled(self, state: dict, *, restoring: bool) -> dict:
        """``state`` as it may be serialized while the run's end goes on: its lists and dicts copied (events
        are still added), its tensors shared, for nothing changes them any more; but for the model's weights
        when the best ones are about to be loaded over them (``restoring``) and they are not those already:
        then a copy, which costs no more memory than the gradients training held (freed at every step)."""
        state = ckpt.settled(state)
        if restoring:
            weights, copies = state["model"], {}
            for name, value in weights.items():
                if isinstance(value, torch.Tensor) and value is not self.best_state.get(name):
                    key = (value.data_ptr(), value.shape, value.stride())  # tied weights stay tied
                    if key not in copies:
                        copies[key] = value.detach().clone()
                    weights[name] = copies[key]
        return state

    def _weights_are_best(self, weights: dict) -> bool:
        """Whether the model's weights are, value for value, the best weights' snapshot (as at the end of the
        epoch that made it, while no step has been taken since)."""
        best = self.best_state
        if self.tracker.best_epoch != self.epoch or weights.keys() != best.keys():
            return False
        return all(isinstance(value, torch.Tensor) and value.shape == best[name].shape
                   and value.dtype == best[name].dtype and value.device == best[name].device
                   and torch.equal(value, best[name]) for name, value in weights.items())

    def _checkpoint(self, *, final: bool = False, restoring: bool = False, start: bool = False) -> None:
        """Write the state (with a run folder), and make it the guard's rollback target: every caller
        checks the guard's window first, so a checkpointed state is a known-good one. A checkpoint costs
        at most a small share of the training time (`converge.decide.cadence`): one that comes too soon
        after the last, or while the last is still being written, is skipped; a ``final`` one (the end of
        the run, a stop) never is, and is serialized in the background while the run's end is judged
        (``restoring``: the best weights are about to be loaded over the model's); nor is one at the
        ``start`` (see `_remember_start`). Data-parallel ranks
        without a folder take part too: the epoch's loss sum is a collective."""
        folder, guard = self.record.folder, self.guard
        if folder is None:
            if guard is not None and not self._main_writes:
                self._remember_copy()
            elif self._main_writes:
                self.in_epoch.sums()  # rank 0's checkpoint sums the epoch's loss over all ranks (a collective)
            return
        state = self._checkpoint_state()
        if not (final or start or self.record.checkpoint_due(state=state)):
            self._remember_small(state)
            return
        state = self._weights_once(state)
        if final:
            state = self._settled(state, restoring=restoring)
        if self.record.save_checkpoint(state, wait=final or start, settled=final):
            if guard is not None:
                guard.remember_on_disk(folder)
        else:
            self._remember_small(state)

    def _remember_small(self, state: dict) -> None:
        """A checkpoint that was not written (put off by the cadence, or the last one still being written):
        a small state becomes the guard's target in memory all the same. Which checkpoints are written
        follows the wall clock (a loaded machine's slow writes put some off), and a rollback to an older one
        would make the same command give other weights from one run to the next; a copy of a state this
        small costs less than the checkpoint that was put off. A large state's copy would sit beside
        training's peak memory: its target stays the newest checkpoint. One process only (the ranks of a
        data-parallel run share rank 0's target)."""
        if self.guard is None or self.world is not None:
            return
        if negligible(estimated_cost(ckpt.state_bytes(state))):
            self._remember_copy()

    def _remember_start(self) -> None:
        """The guard's first target: the checkpoint resumed from, or (before the first checkpoint) a copy
        of the state, cheap at the start of a run (the optimizer holds no state yet). But a large state that
        this process alone writes is checkpointed now instead: the cadence may put its next checkpoint off
        for many epochs, and the copy's weights would be held that long, beside training's peak (a
        25M-parameter model: 96 MiB more, where this checkpoint holds its weights once, for 0.1-0.3 s)."""
        folder = self.record.folder
        if self._resumed and folder is not None:
            self.guard.remember_on_disk(folder)
        elif folder is not None and self.world is None and self.step == 0 and \
                not negligible(estimated_cost(ckpt.state_bytes(self._checkpoint_state()))):
            self._checkpoint(start=True)
        elif not (self.guard.from_main and not self.world.is_main):
            self._remember_copy()

    def _remember_copy(self) -> None:
        """Make the state as it is now the guard's rollback target (a copy on the CPU)."""
        self.guard.remember_now(model=self.weights, optimizer=self.optimizer, scaler=self.scaler, epoch=self.epoch,
                                step=self.step, in_epoch=self.in_epoch,
                                start_weights=self.best_state if self.step == 0 else None)


def _rows(targets) -> int:
    """Samples in a batch (the first dimension of its targets; of the first of targets given per head)."""
    if isinstance(targets, torch.Tensor):
        return targets.shape[0]
    rows = rows_in(targets)
    return rows if rows is not None else len(targets)
