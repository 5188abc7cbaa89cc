"""Scoring a model on one split: its mean loss and metrics, as the decisions and the summary read them."""

from __future__ import annotations

import torch
from torch import nn

from converge.engine import device as dev
from converge.engine.distributed import World
from converge.engine.objective import Objective


@torch.no_grad()
def evaluate(model: nn.Module, split, objective: Objective, *, batch_size: int, amp: str, device: torch.device,
             world: World | None = None, prefix: str = "") -> dict[str, float]:
    """Mean loss and metrics over ``split`` in eval mode: each batch's values weighted by what counts in it (its
    samples, or its tokens that are not padding); then the values derived from the means (perplexity). Under
    torchrun every rank returns rank 0's numbers, since decisions read them."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(1 + len(objective.metric_fns), dtype=torch.float64, device=device)
    seen = 0
    for inputs, targets in split.batches(batch_size):
        with dev.autocast(amp, device):
            outputs, loss = objective.forward(model, inputs, targets)
            values = [loss]
            values += [fn(outputs, targets) for fn in objective.metric_fns.values()]
        weight = objective.weight(targets)
        sums += torch.stack([torch.as_tensor(v, device=device).double().reshape(()) for v in values]) * weight
        seen = seen + weight
    model.train(was_training)
    total = seen.clamp(min=1) if isinstance(seen, torch.Tensor) else max(seen, 1)
    means = (sums / total).tolist()  # sync point: once per evaluation
    if world is not None:
        means = world.from_main(means, device)
    values = dict(zip(["loss", *objective.metric_fns], means))
    values.update({name: fn(values) for name, fn in objective.derived.items()})
    return {f"{prefix}{name}": value for name, value in values.items()}
