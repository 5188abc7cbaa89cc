"""Scoring a model on one split: its loss and metrics, as the decisions and the summary read them."""

from __future__ import annotations

import math
import statistics

import torch
from torch import nn

from converge.engine import device as dev
from converge.engine.distributed import World
from converge.engine.metrics import SAMPLE_MEAN, STATEFUL, WHOLE_SPLIT, SplitScores, is_stateful
from converge.engine.objective import Objective, is_sample_mean


CPU_EVAL_BATCH_FACTOR = 4


def evaluation_batch_size(train_batch_size: int, device: torch.device, objective: Objective) -> int:
    """The batch a split is scored in. On the CPU, 4x the training batch when the loss is a mean over the
    samples: scoring keeps no activations for a backward pass, and a small model's evaluation is mostly
    per-batch overhead (an LSTM forecaster's 57 evaluations took 0.80 s at its batch of 32, 0.54 s at 128,
    0.52 s at 256; the same epochs and decisions, the losses equal to 8 significant digits). Otherwise the
    training batch: on an accelerator it may have been sized to fit the memory, and a loss of the user's own
    that sums over the batch is only comparable with training's at the batch it trains with."""
    if device.type == "cpu" and objective.mean_over_samples:
        return train_batch_size * CPU_EVAL_BATCH_FACTOR
    return train_batch_size


def metric_ways(objective: Objective) -> dict[str, str]:
    """How each metric is scored over a split (`converge.engine.metrics`)."""
    return {name: STATEFUL if is_stateful(fn) else SAMPLE_MEAN if is_sample_mean(fn) else WHOLE_SPLIT
            for name, fn in objective.metric_fns.items()}


@torch.no_grad()
def evaluate(model: nn.Module, split, objective: Objective, *, batch_size: int, amp: str, device: torch.device,
             world: World | None = None, prefix: str = "", notes: list[str] | None = None) -> dict[str, float]:
    """The loss and metrics over ``split`` in eval mode: the loss is each batch's loss weighted by what counts
    in it (its samples, or its tokens that are not padding), which is the loss of the whole split for a loss
    that is a mean over them; each metric is the metric of the whole split (`converge.engine.metrics`;
    ``notes`` receives what is not); then the values derived from these (perplexity). With standardized
    regression targets, everything is scored in the user's units. Under torchrun every rank scores the
    whole split and returns rank 0's numbers, since decisions read them."""
    was_training = model.training
    model.eval()
    scores = SplitScores(objective.metric_fns, metric_ways(objective), device,
                         on_outputs=objective.metrics_on_outputs)
    for inputs, targets in split.batches(batch_size):
        with dev.autocast(amp, device):
            outputs, loss = objective.forward(model, inputs, targets)
            if objective.target_scale is not None:
                outputs, targets = objective.user_units(outputs), objective.user_units(targets)
                loss = objective.loss_fn(outputs, targets)
            scores.add(outputs, targets, loss, objective.weight(targets))
    model.train(was_training)
    means = scores.values()  # sync point: once per evaluation
    if world is not None:
        means = world.from_main(means, device)
    if notes is not None:
        notes.extend(note for note in scores.notes if note not in notes)
    values = dict(zip(["loss", *objective.metric_fns], means))
    values.update({name: fn(values) for name, fn in objective.derived.items()})
    return {f"{prefix}{name}": value for name, value in values.items()}


SPLIT_PARTS = 16   # fixed parts a split is cut into to measure how much a value moves with its samples


class _OneBatch:
    """One batch posing as a split, for `evaluate`."""

    def __init__(self, inputs, targets) -> None:
        self.inputs, self.targets = inputs, targets

    def batches(self, batch_size: int):
        yield self.inputs, self.targets


def scored_in_parts(model: nn.Module, split, objective: Objective, key: str, *, amp: str, device: torch.device,
                    parts: int = SPLIT_PARTS, fewest: int | None = None, batch_size: int | None = None,
                    world: World | None = None) -> list[float] | None:
    """The value ``key`` (a name `evaluate` returns, without prefix) of ``model`` on ``split`` cut in order into
    ``parts`` parts of equal size (a user's DataLoader: its own batches, grouped into ``parts`` runs of
    neighbours); two sets of weights scored this way pair up part by part (`converge.decide.significance`).
    A split of fewer than 2 x ``parts`` samples is cut into parts of two samples, when that still makes at
    least ``fewest`` parts (default: ``parts``, no fewer). ``batch_size``: the most samples scored in one
    forward (a part of a large split is scored in pieces, averaged). None when the split has no size or too
    few samples, or a part is not finite."""
    try:
        size = len(split)
    except TypeError:
        return None
    wanted = parts
    parts = min(parts, size // 2)
    if parts < max(2, fewest if fewest is not None else wanted):
        return None
    values = []
    piece = math.ceil(size / parts) if batch_size is None else min(math.ceil(size / parts), batch_size)
    for inputs, targets in split.batches(piece):
        scored = evaluate(model, _OneBatch(inputs, targets), objective, batch_size=size, amp=amp, device=device,
                          world=world)
        values.append(float(scored[key]))
    if len(values) > parts:  # pieces, or a DataLoader's own batches: neighbours averaged together
        values = [statistics.fmean(group) for group in _groups(values, parts)]
    return values if len(values) >= 2 and all(math.isfinite(v) for v in values) else None


def _groups(values: list[float], count: int) -> list[list[float]]:
    cuts = [round(i * len(values) / count) for i in range(count + 1)]
    return [values[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
