"""The divergence guard's device side: step losses collect in a small on-device window that the host
reads every ``CHECK_EVERY`` batches (one sync per window, never one per step), and the last known-good
training state is kept in memory so a blow-up can be undone.

What counts as a blow-up and how hard to react is decided purely in `converge.decide.divergence`;
the Trainer acts on it (restores the state, cuts the LR, skips the bad batches).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch

from converge.decide.divergence import Alarm, GuardPolicy, LossWatch

CHECK_EVERY = 32          # batches per window: one host sync each
GRAD_NORM_EVERY = 8       # optimizer steps between gradient-norm samples when clipping does not give it free
RECENT_GRAD_NORMS = 32    # samples kept to know the typical gradient norm


@dataclass(frozen=True)
class Incident:
    """An alarm located in the run: which batch of the epoch, which optimizer step, what evidence."""

    alarm: Alarm
    batch: int
    step: int
    grad_norm: float | None


class DivergenceGuard:
    def __init__(self, policy: GuardPolicy, device: torch.device, clip_grad: float | None, *, world=None) -> None:
        self.watch = LossWatch(policy)
        self.world = world              # data-parallel: each rank's losses are its slice's; judge their mean
        self.policy = policy
        # Row 0: the loss of each batch in the window; row 1: a gradient norm where one was sampled, else -1.
        self.window = torch.full((2, CHECK_EVERY), -1.0, dtype=torch.float32, device=device)
        self.filled = 0
        self.first_batch = 0
        self.steps: list[int] = []      # optimizer step count after each batch of the window
        self.clip_grad = clip_grad      # may be tightened after a rollback
        self.streak = 0                 # rollbacks since the last new best
        self.total = 0
        self.lr_scale = 1.0             # product of the guard's LR cuts (the LR floor moves with it)
        self.recent_grad_norms: list[float] = []
        self.good_state: bytes | None = None   # a serialized checkpoint taken right after a clean check

    # --- per batch: device work only ------------------------------------------------------------
    def record_loss(self, batch: int, loss: torch.Tensor) -> None:
        if self.filled == 0:
            self.first_batch = batch
        self.window[0, self.filled].copy_(loss.detach(), non_blocking=True)
        self.filled += 1

    def record_step(self, step: int, grad_norm: torch.Tensor | None) -> None:
        """After an optimizer step that consumed the batches recorded so far."""
        if grad_norm is not None and self.filled:
            self.window[1, self.filled - 1].copy_(grad_norm.detach(), non_blocking=True)
        self.steps.extend([step] * (self.filled - len(self.steps)))

    def wants_grad_norm(self, step: int) -> bool:
        return step % GRAD_NORM_EVERY == 0

    @property
    def due(self) -> bool:
        return self.filled >= CHECK_EVERY

    # --- per window: one sync -------------------------------------------------------------------
    def check(self) -> Incident | None:
        """Read the window (sync point) and judge its losses in order; the first alarm is the incident."""
        if self.filled == 0:
            return None
        window = self.window[:, :self.filled]
        if self.world is not None:
            window = self.world.sum_(window.contiguous()) / self.world.size
        losses, norms = window.tolist()
        steps = self.steps + [self.steps[-1] if self.steps else 0] * (self.filled - len(self.steps))
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
        self.window.fill_(-1.0)
        self.filled = 0
        self.steps = []

    @property
    def typical_grad_norm(self) -> float | None:
        return statistics.median(self.recent_grad_norms) if self.recent_grad_norms else None

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
