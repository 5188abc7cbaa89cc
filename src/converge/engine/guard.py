"""The divergence guard: it watches the training loss and undoes blow-ups.

* Watching: step losses collect in a small on-device window that the host reads every ``CHECK_EVERY``
  batches (one sync per window, never one per step); `converge.decide.divergence` judges them.
* Undoing: the last known-good training state (a checkpoint taken right after a clean check) is the
  rollback target; on an alarm :meth:`DivergenceGuard.roll_back` puts model, optimizer and scaler back to
  it, cuts the LR (harder for each rollback in a row) and tightens gradient clipping, or gives up after
  too many. The target costs no second copy of the state where it can be helped: with a run folder it is
  the newest checkpoint on disk (read back only on a rollback, which is rare); without one it is a copy of
  the tensors (model, optimizer, scaler) on the CPU, never two at once. Data-parallel ranks all take
  rank 0's target when rank 0 writes the folder.

The Trainer skips past the offending batch, logs the rollback and, when the guard gives up, stops the
run as diverged.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass

import torch
from torch import nn

from converge.calling import map_tensors
from converge.decide.divergence import Alarm, GuardPolicy, LossWatch, clip_after_rollback, rollback_verdict
from converge.engine.optim import WARMUP_BASE, current_lr, per_group, scale_lr
from converge.engine.progress import EpochProgress

CHECK_EVERY = 32          # batches per window: one host sync each
GRAD_NORM_EVERY = 16      # optimizer steps between gradient-norm samples when clipping does not give it free
RECENT_GRAD_NORMS = 32    # samples kept to know the typical gradient norm


@dataclass(frozen=True)
class Incident:
    """An alarm located in the run: which batch of the epoch, which optimizer step, what evidence."""

    alarm: Alarm
    batch: int | None    # None: found on validation, after the epoch
    step: int
    grad_norm: float | None

    def evidence(self, lr: float) -> dict:
        """The numbers behind the alarm, for the run's log (non-finite values as text: valid JSON)."""
        return dict(kind=self.alarm.kind, batch=self.batch, loss=_finite_or_text(self.alarm.loss),
                    typical_loss=_finite_or_text(self.alarm.typical), grad_norm=_finite_or_text(self.grad_norm),
                    lr=lr, at_step=self.step)


@dataclass(frozen=True)
class Rollback:
    """What :meth:`DivergenceGuard.roll_back` did about an incident."""

    evidence: dict             # see Incident.evidence
    progress: dict             # the restored state's counters (its checkpoint "progress" record)
    gave_up: bool              # too many rollbacks in a row: the run must stop as diverged
    reason: str = ""           # why it gave up
    new_lr: float | None = None
    clip_grad: float | None = None
    previous_clip_grad: float | None = None


class DivergenceGuard:
    def __init__(self, policy: GuardPolicy, device: torch.device, clip_grad: float | None, *, world=None) -> None:
        self.watch = LossWatch(policy)
        self.world = world              # data-parallel: each rank's losses are its slice's; judge their mean
        self.policy = policy
        # The window: each batch's loss tensor (kept as is: no kernel per step), and the gradient norms
        # sampled, by position in the window. Stacked and read at once by check().
        self.device = device
        self.losses: list[torch.Tensor] = []
        self.grad_norms: dict[int, torch.Tensor] = {}
        self.first_batch = 0
        self.steps: list[int] = []      # optimizer step count after each batch of the window
        self.clip_grad = clip_grad      # may be tightened after a rollback
        self.streak = 0                 # rollbacks since the last new best
        self.total = 0
        self.lr_scale = 1.0             # product of the guard's LR cuts (the LR floor moves with it)
        self.recent_grad_norms: list[float] = []
        # The rollback target (a state taken right after a clean check): tensors in memory, or the newest
        # checkpoint of a run folder; from_main: rank 0 holds it and sends it to every rank.
        self.good_state: dict | None = None
        self.good_folder = None
        self.from_main = False

    @property
    def has_target(self) -> bool:
        return self.good_state is not None or self.good_folder is not None or self.from_main

    def remember(self, state: dict) -> None:
        """Roll back to ``state`` (its "model", "optimizer", "scaler" and "progress"; tensors the loop will
        not change: a copy). The previous target is let go first."""
        self.good_state, self.good_folder = None, None
        self.good_state = state

    def remember_now(self, *, model: nn.Module, optimizer, scaler, epoch: int, step: int, in_epoch: EpochProgress,
                     start_weights: dict | None = None) -> None:
        """Roll back to the state as it is now, copied to the CPU (the loop goes on changing the originals); the
        old copy goes first: never two at once. ``start_weights``: the run's starting weights (a snapshot never
        changed in place), taken as they are when the model still holds them. Under torchrun every rank takes
        part (the epoch's loss is summed over the ranks)."""
        self.remember({})
        progress = {"epoch": epoch, "step": step, **in_epoch.position()}
        target = copied({"optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict() if scaler is not None else None,
                         "progress": progress}, "cpu")
        weights = model.state_dict()
        same = start_weights is not None and _same_tensors(weights, start_weights)
        target["model"] = start_weights if same else copied(weights, "cpu")
        self.remember(target)

    def remember_on_disk(self, folder) -> None:
        """Roll back to ``folder``'s newest checkpoint (a `RunFolder`; every checkpoint is a known-good state)."""
        self.good_state, self.good_folder = None, folder

    def share_from_main(self) -> None:
        """Data-parallel with rank 0 writing the run folder: every rank rolls back to rank 0's target."""
        self.from_main = self.world is not None

    def _target(self) -> dict:
        if self.from_main:
            local = self._local_target() if self.world.is_main else None
            return self.world.object_from_main(local)
        return self._local_target()

    def _local_target(self) -> dict:
        if self.good_folder is not None:
            state = self.good_folder.read_checkpoint()
        elif self.good_state is not None:
            state = self.good_state
        else:
            raise RuntimeError("the divergence guard has no state to roll back to")
        # The model copies what it loads; the optimizer and the loop would use these tensors as they are
        # (and change them in place): they get their own copies, so the target stays intact.
        return {"model": state["model"], **{key: copied(state.get(key)) for key in ("optimizer", "scaler", "progress")}}

    def know_baseline(self, baseline: float | None) -> None:
        """Turn on the collapse test once the constant prediction's loss is known (after the first epoch of a
        Dataset's targets); a baseline already given is kept. The policy is checkpointed with the watch."""
        if self.policy.baseline is None and baseline is not None and math.isfinite(baseline) and baseline > 0:
            self.policy = self.watch.policy = dataclasses.replace(self.policy, baseline=baseline)

    # --- per batch: device work only ------------------------------------------------------------
    @property
    def filled(self) -> int:
        return len(self.losses)

    def record_loss(self, batch: int, loss: torch.Tensor) -> None:
        if not self.losses:
            self.first_batch = batch
        self.losses.append(loss.detach())

    def record_step(self, step: int, grad_norm: torch.Tensor | None) -> None:
        """After an optimizer step that consumed the batches recorded so far."""
        if grad_norm is not None and self.losses:
            self.grad_norms[len(self.losses) - 1] = grad_norm.detach()
        self.steps.extend([step] * (len(self.losses) - len(self.steps)))

    def wants_grad_norm(self, step: int) -> bool:
        return step % GRAD_NORM_EVERY == 0

    @property
    def due(self) -> bool:
        return self.filled >= CHECK_EVERY

    # --- per window: one sync -------------------------------------------------------------------
    def check(self) -> Incident | None:
        """Read the window (sync point) and judge its losses in order; the first alarm is the incident."""
        if not self.losses:
            return None
        unsampled = torch.tensor(-1.0, device=self.device)
        norms = [self.grad_norms.get(i, unsampled) for i in range(len(self.losses))]
        window = torch.stack([torch.stack(self.losses).float(), torch.stack(norms).float()])
        if self.world is not None:
            window = self.world.sum_(window.contiguous()) / self.world.size
        losses, norms = window.tolist()
        steps = self.steps + [self.steps[-1] if self.steps else 0] * (len(self.losses) - len(self.steps))
        incident = None
        for index, (loss, norm) in enumerate(zip(losses, norms)):
            grad_norm = None if norm == -1.0 else norm
            alarm = self.watch.update(loss, grad_norm)
            if alarm is not None:
                incident = Incident(alarm, self.first_batch + index, steps[index], grad_norm)
                break
            if grad_norm is not None:
                self.recent_grad_norms = (self.recent_grad_norms + [grad_norm])[-RECENT_GRAD_NORMS:]
        self.reset_window()
        return incident

    def reset_window(self) -> None:
        self.losses, self.grad_norms, self.steps = [], {}, []

    @property
    def typical_grad_norm(self) -> float | None:
        return statistics.median(self.recent_grad_norms) if self.recent_grad_norms else None

    # --- acting on an incident ------------------------------------------------------------------
    def roll_back(self, incident: Incident, *, model, optimizer, scaler, min_lr, epoch: int | None = None,
                  in_epoch: EpochProgress | None = None) -> Rollback:
        """Back to the last known-good state, with a lower LR (its floor ``min_lr``, one number or one per
        parameter group as `Monitor` keeps them, moves down with the
        cut: a blow-up may need an LR below the plateau rule's floor) and tighter clipping. LR cuts made
        since that state stay made. With ``in_epoch`` (the loop's position in epoch ``epoch``), the epoch's loss
        sum is taken back with the state when it is of the same epoch, and the pass goes on past the offending
        batch. Gives up after ``policy.max_rollbacks`` rollbacks in a row."""
        verdict = rollback_verdict(self.streak, self.policy)
        evidence = incident.evidence(current_lr(optimizer))
        kept = [(group["lr"], group.get(WARMUP_BASE)) for group in optimizer.param_groups]
        state = self._target()
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        optimizer.zero_grad(set_to_none=True)
        for group, (lr, base) in zip(optimizer.param_groups, kept):
            group["lr"] = lr
            if base is not None:
                group[WARMUP_BASE] = base
        progress = state["progress"]
        if in_epoch is not None:
            same_epoch = progress["epoch"] == epoch and progress["batch"] > 0
            in_epoch.restore(in_epoch.batch, progress["partial_loss"] if same_epoch else None,
                             progress["partial_seen"] if same_epoch else 0)
        if verdict.give_up:
            return Rollback(evidence, state["progress"], gave_up=True, reason=verdict.reason)
        self.lr_scale *= verdict.lr_factor
        floors = [floor * self.lr_scale for floor in per_group(min_lr, len(optimizer.param_groups))]
        new_lr = scale_lr(optimizer, verdict.lr_factor, floors)
        previous_clip, self.clip_grad = self.clip_grad, clip_after_rollback(self.clip_grad, self.typical_grad_norm)
        self.streak += 1
        self.total += 1
        if in_epoch is not None:
            in_epoch.rollbacks += 1
            in_epoch.batch = incident.batch + 1 if incident.batch is not None else 0
        return Rollback(evidence, state["progress"], gave_up=False, new_lr=new_lr, clip_grad=self.clip_grad,
                        previous_clip_grad=previous_clip)

    def validation_incident(self, record: dict, monitor: str, step: int) -> Incident | None:
        """Weights gone bad without a bad training loss (e.g. inf activations on validation inputs): the
        epoch's validation loss or monitored value is not finite."""
        if all(math.isfinite(record[key]) for key in ("val_loss", monitor)):
            return None
        alarm = Alarm("nonfinite", record["val_loss"], math.nan,
                      f"the validation {monitor[4:]} became {record[monitor]}")
        return Incident(alarm, None, step, None)

    def rebase(self) -> None:
        """The run went on from its best weights on purpose: the loss watch learns the loss's level again."""
        self.watch.rebase()

    def new_best(self, clean: bool) -> None:
        """A new best value: progress that needed no rescue (``clean``) ends a streak of rollbacks."""
        if clean:
            self.streak = 0

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"watch": self.watch.state_dict(), "clip_grad": self.clip_grad, "streak": self.streak,
                "total": self.total, "lr_scale": self.lr_scale, "recent_grad_norms": list(self.recent_grad_norms)}

    def load_state_dict(self, state: dict) -> None:
        self.watch.load_state_dict(state["watch"])
        self.policy = self.watch.policy
        self.clip_grad = state["clip_grad"]
        self.streak, self.total = int(state["streak"]), int(state["total"])
        self.lr_scale = float(state["lr_scale"])
        self.recent_grad_norms = [float(v) for v in state["recent_grad_norms"] if math.isfinite(v)]
        self.reset_window()


def copied(value, device: torch.device | str | None = None):
    """``value`` (a state: nested dicts, lists and tuples) with every tensor copied (onto ``device``)."""
    return map_tensors(lambda t: t.detach().to(device if device is not None else t.device, copy=True), value)


def _same_tensors(state: dict, other: dict) -> bool:
    return state.keys() == other.keys() and all(
        isinstance(v, torch.Tensor) and v.shape == other[k].shape and torch.equal(v, other[k]) for k, v in state.items())


def _finite_or_text(value: float | None) -> float | str | None:
    """Evidence values for JSON: non-finite numbers as text ("nan", "inf"), so no log line is invalid JSON."""
    if value is None or math.isfinite(value):
        return value
    return str(value)
