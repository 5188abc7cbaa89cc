"""A loss that presses Ctrl-C for the tests of exact resume."""

from __future__ import annotations

import os
import signal

import torch.nn.functional as F


class InterruptAt:
    """Cross-entropy (or ``loss``) that sends this process SIGINT at its ``at``-th training call, as Ctrl-C would (``at`` None:
    never). Every run a test compares uses it, interrupted or not: converge does not recognize it as the
    cross-entropy it is, so it scores splits in the training batch (a recognized mean loss is scored in larger
    batches on the CPU, equal to 8 digits only), and the runs must differ by the interruption alone."""

    def __init__(self, at: int | None = None, loss=F.cross_entropy) -> None:
        self.at, self.calls, self.loss = at, 0, loss

    def __call__(self, outputs, targets):
        if outputs.requires_grad:
            self.calls += 1
            if self.calls == self.at:
                os.kill(os.getpid(), signal.SIGINT)
        return self.loss(outputs, targets)
