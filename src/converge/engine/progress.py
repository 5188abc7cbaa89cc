"""Where a run stands inside the epoch it is training: the next batch, the training loss summed so far (on the
device: no sync per step) and the samples it covers, and the epoch's rollbacks.

Under torchrun each rank sums the loss of its own slices. A checkpoint or a rollback target holds the sum over
all ranks (a collective: every rank takes part); when a rank starts again from such a sum, rank 0 takes the
whole sum back and the others start from zero, so that the epoch's mean stays right."""

from __future__ import annotations

import torch

from converge.engine.distributed import World


class EpochProgress:
    def __init__(self, device: torch.device, world: World | None = None) -> None:
        self.device, self.world = device, world
        self.batch = 0            # the next batch (0 at an epoch boundary)
        self.loss_sum: torch.Tensor | None = None
        self.seen = 0
        self.rollbacks = 0

    def begin(self) -> None:
        """A new epoch."""
        self.loss_sum, self.seen, self.rollbacks = None, 0, 0

    def running_sum(self) -> torch.Tensor:
        """The on-device sum the training loop adds each batch's loss to."""
        if self.loss_sum is None:
            self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        return self.loss_sum

    def sums(self) -> tuple[torch.Tensor | None, int]:
        """The loss summed over the epoch so far and the samples it covers, over every rank's slices."""
        if self.world is None or self.loss_sum is None:
            return self.loss_sum, self.seen
        seen = torch.tensor(float(self.seen), dtype=torch.float64, device=self.device)
        summed = self.world.sum_(torch.stack([self.loss_sum, seen]))
        return summed[0], int(summed[1])

    def end(self) -> tuple[float | None, int]:
        """The epoch's mean training loss (a sync point: once per epoch) and its samples; back to batch 0."""
        total, seen = self.sums()
        self.batch, self.loss_sum, self.seen = 0, None, 0
        return (float(total / seen) if seen else None), seen

    def position(self) -> dict:
        """The checkpoint's record of it ("batch", "partial_loss", "partial_seen"), summed over the ranks."""
        loss_sum, seen = self.sums()
        return {"batch": self.batch, "partial_loss": loss_sum, "partial_seen": seen}

    def restore(self, batch: int, loss_sum: torch.Tensor | None, seen: int) -> None:
        """Start again from a recorded position (a checkpoint's, or the guard's rollback target's)."""
        self.batch = batch
        self.loss_sum = loss_sum.to(self.device) if loss_sum is not None else None
        self.seen = seen
        if self.world is not None and not self.world.is_main and self.loss_sum is not None:
            self.loss_sum, self.seen = torch.zeros_like(self.loss_sum), 0
