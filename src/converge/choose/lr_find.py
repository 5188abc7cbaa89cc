"""The learning-rate range test: train a copy of the model for a few dozen steps while the LR grows
exponentially, and record the loss at every step. The user's model and any optimizer are untouched:
the test runs on a deep copy, so there is nothing to restore afterwards."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from converge.data import epoch_seed, tensors_of
from converge.decide.lr_suggest import LrSuggestion, suggest_lr, usable_prefix
from converge.engine import device as dev
from converge.engine.optim import OPTIMIZERS, build_optimizer
from converge.report._figures import RANGE_TEST_FIGURE, figure_png
from converge.rng import seed_everything

# Range tests draw their batches from epochs numbered far past any real run, so their data order
# never coincides with a training epoch's.
_SWEEP_EPOCH_OFFSET = 1_000_000


@dataclass
class RangeTest:
    optimizer: str
    batch_size: int
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    samples: int = 0                 # training samples seen, for the tuning cost in epochs
    suggestion: LrSuggestion | None = None

    @classmethod
    def from_dict(cls, saved: dict) -> "RangeTest":
        """A test saved by `to_dict` (the run folder's tuning.json), its suggestion read again from its curve."""
        losses = [math.nan if loss is None else loss for loss in saved["losses"]]  # JSON keeps NaN as null
        test = cls(saved["optimizer"], int(saved["batch_size"]), list(saved["lrs"]), losses, int(saved["samples"]))
        test.suggestion = suggest_lr(test.lrs, test.losses, max_lr=plausible_max_lr(test.optimizer))
        return test

    def figure_args(self, chosen_lr: float | None) -> dict:
        """What lr_find.png is drawn from (`converge.report._figures.range_test_png`): plain values, so that
        the figure can also be drawn by another process."""
        return {"optimizer": self.optimizer, "batch_size": self.batch_size, "lrs": list(self.lrs),
                "losses": list(self.losses), "chosen_lr": chosen_lr,
                "min_loss_lr": self.suggestion.min_loss_lr if self.suggestion else None}

    def to_dict(self) -> dict:
        s = self.suggestion
        return {"optimizer": self.optimizer, "batch_size": self.batch_size, "lrs": self.lrs, "losses": self.losses,
                "samples": self.samples, "suggested_lr": s.lr if s else None, "ok": bool(s and s.ok),
                "reason": s.reason if s else "", "min_loss_lr": s.min_loss_lr if s else None,
                "candidates": dict(s.candidates) if s else {}}


def lr_range_test(model: nn.Module, train_split, objective, *, optimizer: str, weight_decay: float, batch_size: int,
                  device: torch.device, amp: str = "off", seed: int = 0, start_lr: float = 1e-7,
                  end_lr: float = 10.0, steps: int = 100, diverge_factor: float = 4.0) -> RangeTest:
    """Sweep the LR from ``start_lr`` to ``end_lr`` over at most ``steps`` optimizer steps; stop early once
    the loss stops being finite, or its trailing median passes ``diverge_factor`` x its best or climbs back
    above the start after a clear fall (`converge.decide.lr_suggest.usable_prefix`: both clear of the batch
    noise, so a noisy flat start does not end the sweep). ``objective``: the run's
    `converge.engine.objective.Objective` (it computes a batch's loss as training will)."""
    probe = copy.deepcopy(model).to(device)
    probe.train()
    opt = build_optimizer(probe, optimizer, start_lr, weight_decay)
    growth = (end_lr / start_lr) ** (1 / max(steps - 1, 1))
    result = RangeTest(optimizer, batch_size)
    seed_everything(epoch_seed(seed, _SWEEP_EPOCH_OFFSET))
    for inputs, targets in _endless_batches(train_split, batch_size, seed):
        lr = start_lr * growth ** len(result.lrs)
        for group in opt.param_groups:
            group["lr"] = lr
        with dev.autocast(amp, device):
            loss = objective.forward(probe, inputs, targets)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = float(loss.detach())  # the sweep needs every loss to stop at divergence: a sync per step
        result.lrs.append(lr)
        result.losses.append(value)
        result.samples += int(tensors_of(targets)[0].shape[0])
        # Stop once the rest of the sweep would tell nothing, or at the step budget.
        if usable_prefix(result.lrs, result.losses, diverge_factor) < len(result.lrs) or len(result.lrs) >= steps:
            break
    result.suggestion = suggest_lr(result.lrs, result.losses, diverge_factor=diverge_factor,
                                   max_lr=plausible_max_lr(optimizer))
    return result


def plausible_max_lr(optimizer: str) -> float | None:
    """The top of the LR range `converge tune` searches for ``optimizer`` (AdamW 0.1, SGD 1): above it a step
    moves every weight by more than any training uses (Adam's steps are about the LR in size, whatever the
    gradient's scale), so the range test never suggests more."""
    spec = OPTIMIZERS.get(optimizer)
    return spec.search_lr[1] if spec is not None else None


def _endless_batches(split, batch_size: int, seed: int):
    """Training batches epoch after epoch, each epoch in its own seeded order; ends only if an epoch is empty."""
    epoch = 0
    while True:
        epoch += 1
        empty = True
        for batch in split.batches(batch_size, seed=epoch_seed(seed, _SWEEP_EPOCH_OFFSET + epoch)):
            empty = False
            yield batch
        if empty:
            return


def plot_range_test(path, test: RangeTest, chosen_lr: float | None) -> None:
    """lr_find.png: raw and smoothed loss against LR (log scale), the chosen LR marked."""
    Path(path).write_bytes(figure_png(RANGE_TEST_FIGURE, test.figure_args(chosen_lr)))
