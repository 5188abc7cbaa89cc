"""The training loop. One explicit loop owns the counters; decisions come from the pure tracker in
`converge.decide`, and this module acts on them (LR cuts, saving, stopping).

Per step the loop does only device work: forward, backward, optimizer step and an on-device sum of the
loss. The host reads values once per epoch (marked "sync point" below).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from converge.config import TrainConfig
from converge.console import Console
from converge.data import epoch_seed
from converge.decide import ConvergencePolicy, ConvergenceTracker
from converge.decide.diagnosis import diagnose, live_findings
from converge.decide.divergence import Alarm, GuardPolicy, clip_after_rollback, rollback_verdict
from converge.engine import device as dev
from converge.engine.objective import resolve_objective
from converge.engine.distributed import current_world
from converge.engine.guard import CHECK_EVERY, DivergenceGuard, Incident
from converge.engine.objective import constant_prediction_loss
from converge.engine.optim import WARMUP_BASE, build_optimizer, current_lr, scale_lr, warm_up
from converge.rng import capture_rng, restore_rng, seed_everything
from converge.errors import ConvergeError
from converge.io import checkpoint as ckpt
from converge.io.runfolder import BEST_WEIGHTS, SUMMARY, RunFolder
from converge.io.weights import snapshot, weights_bytes

PROGRESS_UPDATES_PER_EPOCH = 25


@dataclass
class FitResult:
    """What a run hands back: the model with its best weights loaded, the summary and the history."""

    model: nn.Module
    summary: dict
    history: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    run_dir: Path | None = None

    @property
    def status(self) -> str:
        return self.summary["status"]


class _StopSignals:
    """First Ctrl-C (or SIGTERM) asks the loop to checkpoint and stop; a second one stops at once."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            # Under torchrun each process has a session of its own: a terminal's Ctrl-C reaches torchrun only,
            # which passes the same signal on to every process, once.
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    def __init__(self, model: nn.Module, splits: dict, config: TrainConfig, *, loss: Callable | None = None,
                 metrics: dict[str, Callable] | None = None, folder: RunFolder | None = None,
                 console: Console | None = None, run_info: dict | None = None, restore_best: bool = True,
                 tuning=None, epoch_judge: Callable[[dict], str | None] | None = None) -> None:
        self.config = config
        self.restore_best = restore_best
        self.folder = folder
        self.console = console or Console()
        self.run_info = run_info or {}
        # An outside judge (a hyperparameter search's pruner) sees every epoch's record after the run's own
        # decisions; a reason string back stops the run with status "pruned".
        self.epoch_judge = epoch_judge
        if config.auto_knobs:
            raise ValueError(f"choose {', '.join(config.auto_knobs)} before building a Trainer (converge.tune)")
        self.device = dev.pick_device(config.device)
        dev.check_amp(config.amp, self.device)
        self.model = model.to(self.device)
        # Under torchrun: forward/backward go through DDP (it averages gradients across ranks); everything
        # else (state, evaluation, export) uses the plain module.
        self.world = current_world(self.device)
        self.train_model = self.model if self.world is None else nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.splits = {name: split.to(self.device) for name, split in splits.items()}
        objective = resolve_objective(self.model, self.splits, loss, metrics or {}, amp=config.amp,
                                      device=self.device, probe_size=config.batch_size)
        self.loss_fn, self.kind, self.metric_fns = objective.loss_fn, objective.kind, objective.metric_fns
        self.default_loss = loss is None   # then the constant-prediction baseline of the diagnosis applies
        self.monitor_key = monitor_key(config.monitor, self.metric_fns)
        self.optimizer = build_optimizer(self.model, config.optimizer, config.lr, config.weight_decay)
        self.scaler = dev.make_grad_scaler(config.amp, self.device)
        self.tracker = ConvergenceTracker(ConvergencePolicy(
            mode=config.mode, patience=config.patience, threshold=config.threshold,
            cooldown=config.cooldown, unproductive_cuts=config.unproductive_cuts))
        self.guard = DivergenceGuard(GuardPolicy(max_rollbacks=config.max_rollbacks), self.device,
                                     config.clip_grad, world=self.world) if config.guard else None
        self.tensorboard = None   # a converge.io.tensorboard.TensorBoardLog when asked for
        # What best.safetensors holds, from the best state: e.g. `--fix` folds its input standardization into
        # the first layer so the exported model takes raw inputs (converge.doctor.in_train).
        self.export_state: Callable[[dict], dict] | None = None
        # Counters and records the loop owns.
        self.epoch = 0            # finished epochs
        self.step = 0             # optimizer steps
        self.batch = 0            # next batch inside an unfinished epoch (0 at an epoch boundary)
        self.partial_loss: torch.Tensor | None = None
        self.partial_seen = 0
        self.epoch_rollbacks = 0
        self.history: list[dict] = []
        # Tuning (converge.tune) happens before the loop; its choices are the run's first events.
        self.tuning_epochs = float(tuning.epochs) if tuning is not None else 0.0
        self.events: list[dict] = list(tuning.events) if tuning is not None else []
        self.best_state = snapshot(self.model.state_dict())
        self.best_record: dict = {}
        self.status: str | None = None
        self.stop_reason = ""
        self.elapsed_before = 0.0
        self._last_checkpoint = time.monotonic()

    # --- the loop --------------------------------------------------------------------------------
    def run(self) -> FitResult:
        self._run_started = time.monotonic()
        self.console.start(self.config.max_epochs)
        if self.folder is not None and not self.history and self.step == 0:
            self.folder.events.rewrite(self.events)  # a fresh run: tuning's events come first
        if self.config.tensorboard and self.folder is not None and self.tensorboard is None:
            from converge.io.tensorboard import TENSORBOARD_DIR, TensorBoardLog

            self.tensorboard = TensorBoardLog(self.folder.path / TENSORBOARD_DIR, first_epoch=self.epoch + 1)
        try:
            with _StopSignals() as signals:
                while self.status is None:
                    if self._stop_agreed(signals):  # arrived between epochs; _finish writes the checkpoint
                        self._interrupted(signals)
                        break
                    if self.epoch >= self.config.max_epochs:
                        self.status = "max_epochs"
                        self.stop_reason = f"reached --max-epochs {self.config.max_epochs} before converging"
                        self._event("max_epochs", reason=self.stop_reason)
                        break
                    train_loss = self._train_epoch(signals)
                    if train_loss is None:  # interrupted inside the epoch, or the guard gave up
                        if self.status is None:
                            self._interrupted(signals)
                        break
                    self._end_epoch(train_loss)
            return self._finish()
        finally:
            self.console.close()
            if self.folder is not None:
                self.folder.close()

    def extend(self, epochs: int) -> FitResult:
        """Train ``epochs`` more epochs from where the run stands (the tuning race continues its arms so)."""
        self.config = self.config.with_values(max_epochs=self.epoch + epochs)
        self.status, self.stop_reason = None, ""
        return self.run()

    def _interrupted(self, signals: _StopSignals) -> None:
        self.status = "interrupted"
        self.stop_reason = f"stopped by {signals.requested}; continue with `converge resume`"
        self._event("interrupted", reason=self.stop_reason, batch=self.batch)

    def _train_epoch(self, signals: _StopSignals) -> float | None:
        """One pass over the training split. Returns the mean training loss, or None when the run must stop
        (a stop was requested: the state is checkpointed at an optimizer-step boundary first; or the
        divergence guard gave up)."""
        cfg, epoch = self.config, self.epoch + 1
        self._epoch_started = time.monotonic()
        if self.batch == 0:
            seed_everything(epoch_seed(cfg.seed, epoch))
            self.partial_loss, self.partial_seen = None, 0
            self.epoch_rollbacks = 0
        follow_schedule = getattr(self.loss_fn, "set_lr_cuts", None)
        if follow_schedule is not None:  # a loss that changes with the schedule (deferred re-weighting)
            follow_schedule(self.tracker.total_cuts)
        if self.guard is not None and self.guard.good_state is None:
            self.guard.good_state = self._serialized_state()  # the start (or resume point) is known-good
        train = self.splits["train"]
        total = train.num_batches(cfg.batch_size, train=True)
        self.console.start_epoch(epoch, total, completed=self.batch)
        outcome = "rolled_back"
        while outcome == "rolled_back":  # after a rollback the pass goes on past the offending batch
            outcome = self._train_batches(signals, total, epoch)
        if outcome == "stop":
            return None
        total_loss, seen = self._epoch_sums()
        loss = float(total_loss / seen) if seen else None  # sync point: once per epoch
        self.batch, self.partial_loss, self.partial_seen = 0, None, 0
        if seen == 0 and not self.epoch_rollbacks:
            raise ConvergeError("the train split produced no batches")
        return loss if loss is not None else math.nan

    def _train_batches(self, signals: _StopSignals, total: int | None, epoch: int) -> str:
        """Train from batch ``self.batch`` to the end of the epoch. Returns "done", "stop" or "rolled_back"."""
        cfg = self.config
        report_every = max(1, (total or 1000) // PROGRESS_UPDATES_PER_EPOCH)
        if self.partial_loss is None:
            self.partial_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        loss_sum, seen = self.partial_loss, self.partial_seen
        model, scaler, loss_fn, guard = self.train_model, self.scaler, self.loss_fn, self.guard
        accumulate = cfg.accumulate
        model.train()
        pending_step = False
        batches = self.splits["train"].batches(cfg.batch_size, seed=epoch_seed(cfg.seed, epoch), start=self.batch,
                                               world=self.world)
        for index, (inputs, targets) in enumerate(batches, start=self.batch):
            with dev.autocast(cfg.amp, self.device):
                loss = loss_fn(model(inputs), targets)
            if scaler is not None:
                scaler.scale(loss / accumulate if accumulate > 1 else loss).backward()
            else:
                (loss / accumulate if accumulate > 1 else loss).backward()
            n = targets.shape[0]
            loss_sum.add_(loss.detach(), alpha=n)
            seen += n
            if guard is not None:
                guard.record_loss(index, loss)
            if (index + 1) % report_every == 0:
                self.console.advance(report_every)
            if (index + 1) % accumulate and index + 1 != total:
                pending_step = True
                continue
            self._optimizer_step()
            pending_step = False
            self.batch, self.partial_seen = index + 1, seen
            if guard is not None and guard.due and (outcome := self._guard_check()):
                return outcome
            stop, checkpoint_due = self._pause_wanted(signals, index)
            if stop or checkpoint_due:
                if guard is not None and (outcome := self._guard_check()):
                    return outcome
                if stop:
                    return "stop"  # _finish writes the checkpoint
                self._checkpoint()
        if pending_step:  # a DataLoader without len(): the last micro-batches still need their step
            self._optimizer_step()
        self.partial_seen = seen
        if guard is not None and (outcome := self._guard_check()):
            return outcome
        return "done"

    def _epoch_sums(self) -> tuple[torch.Tensor, int]:
        """The loss summed over the epoch so far and the samples it covers, over every rank's slices."""
        if self.world is None:
            return self.partial_loss, self.partial_seen
        seen = torch.tensor(float(self.partial_seen), dtype=torch.float64, device=self.device)
        summed = self.world.sum_(torch.stack([self.partial_loss, seen]))
        return summed[0], int(summed[1])

    def _stop_agreed(self, signals: _StopSignals) -> bool:
        return self._agreed(signals, checkpoint_due=False)[0]

    def _pause_wanted(self, signals: _StopSignals, index: int) -> tuple[bool, bool]:
        """(stop requested, checkpoint due). Data-parallel ranks agree on both at window boundaries, so that
        all of them stop, or checkpoint, after the same step."""
        if self.world is not None and (index + 1) % CHECK_EVERY:
            return False, False
        return self._agreed(signals, time.monotonic() - self._last_checkpoint > self.config.checkpoint_seconds)

    def _agreed(self, signals: _StopSignals, checkpoint_due: bool) -> tuple[bool, bool]:
        """(stop, checkpoint) as this process sees them, or, data-parallel, as any rank does."""
        stop = signals.requested is not None
        if self.world is None:
            return stop, checkpoint_due
        stop, checkpoint_due = self.world.any_flags([stop, checkpoint_due], self.device)
        if stop and signals.requested is None:
            signals.requested = "a stop request to another process"
        return stop, checkpoint_due

    def _optimizer_step(self) -> None:
        cfg, optimizer, scaler, guard = self.config, self.optimizer, self.scaler, self.guard
        clip = guard.clip_grad if guard is not None else cfg.clip_grad
        if self.step < cfg.warmup_steps:
            warm_up(optimizer, self.step, cfg.warmup_steps)
        grad_norm = None
        if scaler is not None:
            if clip is not None:
                scaler.unscale_(optimizer)
                grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            if clip is not None:
                grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            elif guard is not None and guard.wants_grad_norm(self.step):
                grad_norm = nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if guard is not None:
            guard.record_step(self.step, grad_norm)

    # --- the divergence guard: decisions in converge.decide.divergence, actions here ---------------
    def _guard_check(self) -> str | None:
        """Judge the losses recorded since the last check (a sync point). None when all is well."""
        incident = self.guard.check()
        return self._roll_back(incident) if incident is not None else None

    def _roll_back(self, incident) -> str:
        """Undo a blow-up: back to the last known-good state, a lower LR (and tighter clipping), and on
        past the offending batch. Gives up (status diverged) after too many rollbacks in a row."""
        guard, alarm = self.guard, incident.alarm
        verdict = rollback_verdict(guard.streak, guard.policy)
        lr = current_lr(self.optimizer)
        evidence = dict(kind=alarm.kind, batch=incident.batch, loss=_finite_or_text(alarm.loss),
                        typical_loss=_finite_or_text(alarm.typical), grad_norm=_finite_or_text(incident.grad_norm),
                        lr=lr, at_step=incident.step)
        lrs = [(group["lr"], group.get(WARMUP_BASE)) for group in self.optimizer.param_groups]
        to_step = self._restore_good_state()
        for group, (group_lr, base) in zip(self.optimizer.param_groups, lrs):  # cuts made since stay made
            group["lr"] = group_lr
            if base is not None:
                group[WARMUP_BASE] = base
        if verdict.give_up:
            self.status = "diverged"
            self.stop_reason = (f"{alarm.reason} at step {incident.step} and the guard {verdict.reason}; "
                                f"the best weights (epoch {self.tracker.best_epoch}) are kept")
            self._event("diverged", reason=self.stop_reason, rollbacks=guard.total, **evidence)
            return "stop"
        # A blow-up may need an LR below the plateau rule's floor: the floor moves down with the cut.
        guard.lr_scale *= verdict.lr_factor
        new_lr = scale_lr(self.optimizer, verdict.lr_factor, self._min_lr())
        old_clip, guard.clip_grad = guard.clip_grad, clip_after_rollback(guard.clip_grad, guard.typical_grad_norm)
        guard.streak += 1
        guard.total += 1
        self.epoch_rollbacks += 1
        self.batch = incident.batch + 1 if incident.batch is not None else 0
        self._event("rollback", reason=alarm.reason, **evidence, to_step=to_step, new_lr=new_lr,
                    clip_grad=guard.clip_grad, previous_clip_grad=old_clip, skipped_to_batch=self.batch,
                    rollbacks_in_a_row=guard.streak)
        where = f"batch {incident.batch}" if incident.batch is not None else "validation"
        self.console.warning(f"{alarm.reason} (epoch {self.epoch + (incident.batch is not None)}, {where}); "
                             f"rolled back to step {to_step}, LR {lr:.3g} -> {new_lr:.3g}")
        return "rolled_back"

    def _restore_good_state(self) -> int:
        """Model, optimizer and scaler as they were at the last clean check; the epoch's loss sum with them.
        Returns the step restored to."""
        state = ckpt.deserialize(self.guard.good_state, self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        progress = state["progress"]
        self.step = progress["step"]
        same_epoch = progress["epoch"] == self.epoch and progress["batch"] > 0
        partial = progress["partial_loss"] if same_epoch else None
        self.partial_loss = partial.to(self.device) if partial is not None else None
        self.partial_seen = progress["partial_seen"] if same_epoch else 0
        self._keep_share()
        self.optimizer.zero_grad(set_to_none=True)
        return self.step

    def _serialized_state(self) -> bytes:
        state = self.state_dict(self._wall_seconds())
        if self.world is not None and self.partial_loss is not None:
            # A checkpoint inside an epoch holds the loss summed so far over all ranks (rank 0 writes it);
            # loading it, rank 0 takes the whole sum and the others start from zero (_keep_share).
            state["progress"]["partial_loss"], state["progress"]["partial_seen"] = self._epoch_sums()
        return ckpt.serialize(state)

    def _keep_share(self) -> None:
        if self.world is not None and not self.world.is_main and self.partial_loss is not None:
            self.partial_loss, self.partial_seen = torch.zeros_like(self.partial_loss), 0

    @torch.no_grad()
    def evaluate(self, split_name: str, prefix: str = "") -> dict[str, float]:
        """Mean loss and metrics over a split (metrics are averaged per sample over batches)."""
        split = self.splits[split_name]
        model = self.model
        was_training = model.training
        model.eval()
        sums = torch.zeros(1 + len(self.metric_fns), dtype=torch.float64, device=self.device)
        seen = 0
        for inputs, targets in split.batches(self.config.batch_size):
            with dev.autocast(self.config.amp, self.device):
                outputs = model(inputs)
                values = [self.loss_fn(outputs, targets)]
                values += [fn(outputs, targets) for fn in self.metric_fns.values()]
            n = targets.shape[0]
            sums += torch.stack([torch.as_tensor(v, device=self.device).double().reshape(()) for v in values]) * n
            seen += n
        model.train(was_training)
        means = (sums / max(seen, 1)).tolist()  # sync point: once per evaluation
        if self.world is not None:  # decisions read these: every rank must read rank 0's numbers
            means = self.world.from_main(means, self.device)
        names = ["loss", *self.metric_fns]
        return {f"{prefix}{name}": value for name, value in zip(names, means)}

    def _end_epoch(self, train_loss: float) -> None:
        self.epoch += 1
        lr = current_lr(self.optimizer)
        val = self.evaluate("val", prefix="val_")
        record = {"epoch": self.epoch, "step": self.step, "lr": lr, "train_loss": train_loss, **val,
                  "rollbacks": self.epoch_rollbacks, "seconds": round(time.monotonic() - self._epoch_started, 4)}
        self.history.append(record)
        notes = []
        if self.guard is not None and not all(math.isfinite(record[k]) for k in ("val_loss", self.monitor_key)):
            # The weights went bad without a bad training loss (e.g. inf activations on validation inputs).
            alarm = Alarm("nonfinite", record["val_loss"], math.nan,
                          f"the validation {self.monitor_key[4:]} became {record[self.monitor_key]}")
            notes.append("rolled back" if self._roll_back(Incident(alarm, None, self.step, None)) != "stop"
                         else "diverged")
        if self.status is None:
            notes += self._decide(record, lr)
        if self.status is None:
            notes += self._live_diagnosis()
        if self.status is None and self.epoch_judge is not None:
            reason = self.epoch_judge(dict(record))
            if reason:
                self.status, self.stop_reason = "pruned", str(reason)
                self._event("pruned", reason=self.stop_reason)
                notes.append("pruned")
        self.console.end_epoch(record, notes)
        if self.folder is not None:
            self.folder.metrics.append(record)
        if self.tensorboard is not None:
            # The first epoch also carries what happened before training (tuning choices, doctor findings).
            self.tensorboard.log_epoch(record, [e for e in self.events if e.get("epoch") == self.epoch
                                                or (self.epoch == 1 and e.get("epoch") == 0)])
        self._checkpoint()

    def _decide(self, record: dict, lr: float) -> list[str]:
        """Turn the tracker's verdict into actions: keep best weights, cut the LR, stop."""
        notes = []
        value = record[self.monitor_key]
        if self.guard is None and not math.isfinite(record["train_loss"]):
            self.status = "diverged"
            self.stop_reason = (f"training loss became {record['train_loss']} in epoch {self.epoch}; "
                                f"the best weights (epoch {self.tracker.best_epoch}) are kept")
            self._event("diverged", reason=self.stop_reason, train_loss=record["train_loss"], lr=lr)
            return ["diverged"]
        previous_best = self.tracker.best
        verdict = self.tracker.update(value, lr_at_minimum=lr <= self._min_lr() * (1 + 1e-9))
        if verdict.new_best:
            if self.guard is not None and self.epoch_rollbacks == 0:  # progress that needed no rescue
                self.guard.streak = 0
            self.best_state = snapshot(self.model.state_dict())
            self.best_record = {k: v for k, v in record.items() if k.startswith("val_")}
            if self.folder is not None:
                self.folder.write_bytes_later(BEST_WEIGHTS, weights_bytes(self._exported_best()))
            self._event("new_best", monitor=self.monitor_key, value=value,
                        previous=previous_best if math.isfinite(previous_best) else None,
                        significant=verdict.significant)
            notes.append("new best")
        if verdict.reduce_lr:
            new_lr = scale_lr(self.optimizer, self.config.lr_factor, self._min_lr())
            self._event("lr_reduced", old_lr=lr, new_lr=new_lr, reason=verdict.reason,
                        bad_epochs=verdict.bad_epochs, best=self.tracker.best, best_epoch=self.tracker.best_epoch)
            notes.append(f"lr -> {new_lr:.3g}")
        if verdict.stop:
            self.status, self.stop_reason = "converged", verdict.reason
            self._event("converged", reason=verdict.reason, bad_epochs=verdict.bad_epochs, lr=lr,
                        best=self.tracker.best, best_epoch=self.tracker.best_epoch)
            notes.append("converged")
        return notes

    def _exported_best(self) -> dict:
        return self.export_state(self.best_state) if self.export_state is not None else self.best_state

    def add_event(self, kind: str, /, **values) -> None:
        """Record an event of the caller's own (e.g. a doctor finding) in the run's log."""
        self._event(kind, **values)

    def _min_lr(self) -> float:
        return self.config.min_lr * (self.guard.lr_scale if self.guard is not None else 1.0)

    def _live_diagnosis(self) -> list[str]:
        """Tell a problem (overfitting, an LR too high) the first epoch it shows, not only at the end."""
        told = {e.get("code") for e in self.events if e.get("event") == "diagnosis"}
        notes = []
        for found in live_findings(self.history, self.events, weight_decay=self.config.weight_decay):
            if found["code"] not in told:
                self._event("diagnosis", code=found["code"], message=found["message"], fix=found["fix"])
                notes.append(found["code"])
        return notes

    def _event(self, kind: str, /, **values) -> None:
        event = {"event": kind, "epoch": self.epoch, "step": self.step, **values}
        self.events.append(event)
        if self.folder is not None:
            self.folder.events.append(event)

    # --- the end ---------------------------------------------------------------------------------
    def _finish(self) -> FitResult:
        finished = self.status != "interrupted"
        # The final checkpoint holds the last weights, so `resume --max-epochs` can carry on from them.
        self._checkpoint()
        if finished and self.restore_best:
            self.model.load_state_dict(self.best_state)
            self._event("restored_best", best_epoch=self.tracker.best_epoch, monitor=self.monitor_key,
                        value=self.tracker.best)
        test = self.evaluate("test") if "test" in self.splits and finished else None
        summary = self._summary(test, self._wall_seconds())
        summary["diagnosis"] = self._diagnosis() if finished else []
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.folder is not None:
            if finished:
                self.folder.write_bytes_later(BEST_WEIGHTS, weights_bytes(self._exported_best()))
            _plot_curves(self.folder, self.history, self.events, self.monitor_key)
            self.folder.flush()
            self._write_report(summary)
            self.folder.write_json(SUMMARY, summary)  # last: a final summary means every file is complete
        return FitResult(self.model, summary, list(self.history), list(self.events),
                         self.folder.path if self.folder else None)

    def _diagnosis(self) -> list[dict]:
        cfg = self.config
        baseline = constant_prediction_loss(self.splits["train"], self.kind) if self.default_loss else None
        return diagnose(self.history, self.events, status=self.status, monitor=self.monitor_key, mode=cfg.mode,
                        patience=cfg.patience, max_epochs=cfg.max_epochs, weight_decay=cfg.weight_decay,
                        baseline_loss=baseline)

    def _write_report(self, summary: dict) -> None:
        try:
            from converge.report.html import write_report

            write_report(self.folder.path, summary=summary)
        except Exception as exc:  # the report is derived from files already safe; it must not cost the run
            self.console.warning(f"could not write report.html ({type(exc).__name__}: {exc}); "
                                 f"try `converge report {self.folder.path}`")

    def _wall_seconds(self) -> float:
        return self.elapsed_before + time.monotonic() - self._run_started

    def _summary(self, test: dict | None, wall: float) -> dict:
        cfg = self.config
        summary = {
            "status": self.status,
            "stop_reason": self.stop_reason,
            "epochs": self.epoch,
            "steps": self.step,
            "best_epoch": self.tracker.best_epoch,
            "monitor": self.monitor_key,
            "mode": cfg.mode,
            "best": dict(self.best_record),
            "hyperparameters": {"optimizer": cfg.optimizer, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                                "batch_size": cfg.batch_size},
            "final_lr": current_lr(self.optimizer),
            "lr_reductions": self.tracker.total_cuts,
            "rollbacks": self.guard.total if self.guard is not None else 0,
            "tuning_epochs": round(self.tuning_epochs, 3),
            "task_kind": self.kind,
            "device": str(self.device),
            "wall_seconds": round(wall, 3),
            "config": cfg.to_dict(),
        }
        if test is not None:
            summary["test"] = test
        return {**summary, **{k: v for k, v in self.run_info.items() if k not in summary}}

    # --- state -----------------------------------------------------------------------------------
    def state_dict(self, wall_seconds: float | None = None) -> dict:
        return {
            "format": ckpt.FORMAT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "tracker": self.tracker.state_dict(),
            "guard": self.guard.state_dict() if self.guard is not None else None,
            "best_model": self.best_state,
            "best_record": self.best_record,
            "progress": {"epoch": self.epoch, "step": self.step, "batch": self.batch,
                         "partial_loss": self.partial_loss, "partial_seen": self.partial_seen,
                         "epoch_rollbacks": self.epoch_rollbacks,
                         "status": self.status, "stop_reason": self.stop_reason,
                         "tuning_epochs": self.tuning_epochs,
                         "wall_seconds": wall_seconds if wall_seconds is not None else self.elapsed_before},
            "rng": capture_rng(),
            "history": self.history,
            "logs": {"events": self.events},
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.tracker.load_state_dict(state["tracker"])
        if self.guard is not None and state.get("guard") is not None:
            self.guard.load_state_dict(state["guard"])
        self.best_state = {k: v.to(self.device) for k, v in state["best_model"].items()}
        self.best_record = dict(state["best_record"])
        progress = state["progress"]
        self.epoch, self.step, self.batch = progress["epoch"], progress["step"], progress["batch"]
        partial = progress["partial_loss"]
        self.partial_loss = partial.to(self.device) if partial is not None else None
        self.partial_seen = progress["partial_seen"]
        self._keep_share()
        self.epoch_rollbacks = int(progress.get("epoch_rollbacks", 0))
        self.status, self.stop_reason = progress["status"], progress["stop_reason"]
        self.tuning_epochs = float(progress.get("tuning_epochs", 0.0))
        self.elapsed_before = float(progress["wall_seconds"] or 0.0)
        self.history = [dict(r) for r in state["history"]]
        self.events = [dict(e) for e in state["logs"]["events"]]
        restore_rng(state["rng"])

    def _checkpoint(self) -> None:
        """Write the state (with a run folder), and keep it as the guard's rollback target: every caller
        checks the guard's window first, so a checkpointed state is a known-good one."""
        if self.folder is None and self.guard is None and self.world is None:
            return
        data = self._serialized_state()
        if self.guard is not None:
            self.guard.good_state = data
        if self.folder is not None:
            self.folder.write_checkpoint_later(data)
        self._last_checkpoint = time.monotonic()


def _finite_or_text(value: float | None) -> float | str | None:
    """Evidence values for JSON: non-finite numbers as text ("nan", "inf"), so no log line is invalid JSON."""
    if value is None or math.isfinite(value):
        return value
    return str(value)


def monitor_key(monitor: str, metric_fns: dict) -> str:
    name = monitor[4:] if monitor.startswith("val_") else monitor
    if name != "loss" and name not in metric_fns:
        known = ", ".join(["val_loss", *(f"val_{m}" for m in metric_fns)])
        raise ConvergeError(f"--monitor {monitor!r} is not a reported value; choose one of {known}")
    return f"val_{name}"


def _plot_curves(folder: RunFolder, history: list[dict], events: list[dict], monitor: str) -> None:
    from converge.report.curves import plot_curves

    if history:
        plot_curves(folder.path / "curves.png", history, events, monitor)
