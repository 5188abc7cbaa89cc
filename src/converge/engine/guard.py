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
GRAD_NORM_EVERY = 16      # optimizer steps between gradient-norm samples when clipping does not give it free
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
        self.good_state: bytes | None = None   # a serialized checkpoint taken right after a clean check

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
