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


SPLIT_PARTS = 16   # fixed parts a split's loss is also given on, to measure how much it moves with the samples


@torch.no_grad()
def evaluate(model: nn.Module, split, objective: Objective, *, batch_size: int, amp: str, device: torch.device,
             world: World | None = None, prefix: str = "", notes: list[str] | None = None,
             parts: list[float] | None = None) -> dict[str, float]:
    """The loss and metrics over ``split`` in eval mode: the loss is each batch's loss weighted by what counts
    in it (its samples, or its tokens that are not padding), which is the loss of the whole split for a loss
    that is a mean over them; each metric is the metric of the whole split (`converge.engine.metrics`;
    ``notes`` receives what is not); then the values derived from these (perplexity). With standardized
    regression targets, everything is scored in the user's units. Under torchrun every rank scores the
    whole split and returns rank 0's numbers, since decisions read them.

    ``parts``: receives the loss on (up to) `SPLIT_PARTS` fixed parts of the split, runs of neighbouring
    batches, for free: the split is then scored in batches no larger than a part (a user's DataLoader in its
    own; a loss that is not a mean over the samples at the batch it has, whose value depends on it). Two sets
    of weights scored this way pair up part by part (`converge.decide.significance`)."""
    if parts is not None and objective.mean_over_samples:   # a loss summed over a batch keeps its batch
        batch_size = min(batch_size, _part_size(split, batch_size))
    was_training = model.training
    model.eval()
    scores = SplitScores(objective.metric_fns, metric_ways(objective), device,
                         on_outputs=objective.metrics_on_outputs, batch_losses=parts is not None)
    for inputs, targets in split.batches(batch_size):
        with dev.autocast(amp, device):
            outputs, loss = objective.forward(model, inputs, targets)
            if objective.target_scale is not None:
                outputs, targets = objective.user_units(outputs), objective.user_units(targets)
                loss = objective.loss_fn(outputs, targets)
            scores.add(outputs, targets, loss, objective.weight(targets))
    model.train(was_training)
    means = scores.values()  # sync point: once per evaluation
    batch_losses = scores.read_batch_losses
    if world is not None:
        flat = world.from_main(means + [v for pair in batch_losses for v in pair], device)
        means, rest = flat[:len(means)], flat[len(means):]
        batch_losses = list(zip(rest[0::2], rest[1::2]))
    if parts is not None:
        parts.extend(_parts_of(batch_losses, SPLIT_PARTS))
    if notes is not None:
        notes.extend(note for note in scores.notes if note not in notes)
    values = dict(zip(["loss", *objective.metric_fns], means))
    values.update({name: fn(values) for name, fn in objective.derived.items()})
    return {f"{prefix}{name}": value for name, value in values.items()}


def _part_size(split, batch_size: int) -> int:
    """The batch that cuts ``split`` into `SPLIT_PARTS` parts (``batch_size`` when its size is unknown)."""
    try:
        return max(1, math.ceil(len(split) / SPLIT_PARTS))
    except TypeError:
        return batch_size


def _parts_of(batch_losses: list[tuple[float, float]], count: int) -> list[float]:
    """The loss of ``count`` runs of neighbouring batches (fewer with fewer batches), each the weighted mean of
    its batches' losses; ``batch_losses``: (loss x weight, weight) per batch."""
    return [sum(s for s, _ in run) / w for run in _runs(batch_losses, count) if (w := sum(w for _, w in run)) > 0]


def _runs(items: list, count: int) -> list[list]:
    """``items`` cut in order into ``count`` runs of neighbours as equal as can be (fewer with fewer items)."""
    cuts = [round(i * len(items) / count) for i in range(count + 1)]
    return [items[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]


class _OneBatch:
    """One batch posing as a split, for `evaluate`."""

    def __init__(self, inputs, targets) -> None:
        self.inputs, self.targets = inputs, targets

    def batches(self, batch_size: int):
        yield self.inputs, self.targets


def scored_in_parts(model: nn.Module, split, objective: Objective, key: str, *, amp: str, device: torch.device,
                    parts: int = SPLIT_PARTS) -> list[float] | None:
    """The value ``key`` (a name `evaluate` returns, without prefix: the loss or any metric) of ``model`` on
    ``split`` cut in order into ``parts`` parts of equal size (a user's DataLoader: its own batches, grouped
    into ``parts`` runs of neighbours), each scored whole. What `converge tune` reports a trial by (the
    monitored value of its kept weights, once); a run's validation loss comes in parts for free
    (`evaluate`'s ``parts``). None when the split has no size or fewer than 2 x ``parts`` samples, or a part
    is not finite."""
    try:
        size = len(split)
    except TypeError:
        return None
    if size < 2 * parts:
        return None
    values = []
    for inputs, targets in split.batches(math.ceil(size / parts)):
        scored = evaluate(model, _OneBatch(inputs, targets), objective, batch_size=size, amp=amp, device=device)
        values.append(float(scored[key]))
    if len(values) > parts:  # a DataLoader with its own batch size: neighbouring batches averaged together
        values = [statistics.fmean(run) for run in _runs(values, parts)]
    return values if len(values) >= 2 and all(math.isfinite(v) for v in values) else None
