"""Metrics over a whole split: the value reported and monitored is the metric of the whole split, as
torchmetrics (Lightning), Keras' stateful metrics and Hugging Face's ``compute_metrics`` compute it, never
a mean of per-batch values (the macro-F1 of a split is not the mean of its batches' macro-F1s).

A metric in ``Objective.metric_fns`` is scored over a split in one of three ways (`metric_way`):

* **stateful** -- an object with ``update(outputs, targets)``, ``compute()`` and ``reset()``: a
  torchmetrics ``Metric``, or converge's own `MacroF1` / `BalancedAccuracy` (a confusion matrix summed on
  the device). Reset before the pass, updated per batch, computed once at the end;
* **per-sample mean** -- converge's accuracies (`converge.engine.objective.is_sample_mean`): the mean over
  the samples (or tokens) that count, so the batch values weighted by their counts give the whole
  split's value exactly;
* **whole split** -- any other ``fn(outputs, targets)``: the outputs and targets of the whole split are
  kept (detached, on the device) and ``fn`` is called once on all of them, while they fit in
  ``METRIC_MEMORY_BYTES``. Past it (or for outputs whose shape changes between batches, or that are not
  tensors) the value is the mean of the per-batch values weighted by the batches' sizes, and a note
  says so (the run's ``metric_note`` event and the summary's ``metric_notes``).

Nothing here reads a value on the host while the pass runs: a stateful metric's ``compute`` and the
final ``fn`` call are the evaluation's one sync point.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from converge.data import is_tensor_tree, joined, map_tensors, tensors_of

# Outputs and targets kept per evaluation for whole-split metrics: 256 MiB holds 5.6M rows of 10-class float32
# scores with int64 labels. Measured on the loaded 2-core CPU of the issue-20 session
# (scripts/issue20/measure_metric_memory.py): keeping, concatenating and scoring them with scikit-learn's
# f1_score costs about one forward pass of a small MLP over the same rows (4.0 s against 4.2 s at 183 MiB,
# 1.1 s against 1.6 s at 46 MiB: linear in the rows), so the whole-split value at most about doubles an
# evaluation's time; the bound is on memory, a small share of a GPU's or a host's.
METRIC_MEMORY_BYTES = 256 * 2**20

# Largest over smallest class count at or above which balanced accuracy and macro-F1 are reported by
# default (the doctor's `class_imbalance` warning level, IMBALANCE_WARN in converge.doctor.thresholds).
IMBALANCED_RATIO = 3.0

STATEFUL, SAMPLE_MEAN, WHOLE_SPLIT = "stateful", "per-sample mean", "whole split"


def scores_of(outputs: Any) -> Any:
    """The score tensor in what a model returned: itself, ``.logits`` / ``["logits"]``, or a tuple's first item."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    return outputs


def is_stateful(metric: Any) -> bool:
    """A metric with update / compute / reset (a torchmetrics ``Metric``, or converge's own)."""
    return all(callable(getattr(metric, name, None)) for name in ("update", "compute", "reset"))


def prepare_stateful(metric: Any, device: torch.device) -> None:
    """Put a stateful metric on the device, and, for a torchmetrics ``Metric`` under torchrun, compute it
    without syncing across ranks: every rank scores the whole split (rank 0's values are then broadcast),
    so a sync would count every sample once per rank."""
    to = getattr(metric, "to", None)
    if callable(to):
        to(device)
    if hasattr(metric, "distributed_available_fn"):
        metric.distributed_available_fn = _not_distributed


def _not_distributed() -> bool:
    return False


class OneBatchValue:
    """For a stateful metric whose running state is the attribute ``STATE`` (None when reset): calling it gives
    the value on one batch alone (what a plain metric function would give), its running state untouched."""

    STATE = ""

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        saved = getattr(self, self.STATE)
        setattr(self, self.STATE, None)
        try:
            self.update(outputs, targets)
            return self.compute()
        finally:
            setattr(self, self.STATE, saved)


# --- converge's own stateful metrics: from a confusion matrix ---------------------------------------------
class ConfusionMetric(OneBatchValue):
    """A metric of the confusion matrix of the whole split, summed batch by batch on the device. Predictions
    are the argmax over ``class_dim`` (multi-class) or a score above ``threshold`` (binary, one output);
    labels equal to ``ignore_index`` are left out."""

    STATE = "counts"

    def __init__(self, classes: int, *, threshold: float | None = None, ignore_index: int | None = None) -> None:
        self.classes, self.threshold, self.ignore_index = int(classes), threshold, ignore_index
        self.counts: torch.Tensor | None = None   # [true, predicted] -> samples

    def reset(self) -> None:
        self.counts = None

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        if self.threshold is not None:
            predicted = (outputs.reshape(-1) > self.threshold).long()
            labels = (targets.reshape(-1) > 0.5).long()
        else:
            predicted = outputs.argmax(dim=1).reshape(-1)
            labels = targets.reshape(-1).long()
        if self.ignore_index is not None:
            counted = labels != self.ignore_index
            predicted, labels = predicted[counted], labels[counted]
        pairs = torch.bincount(labels * self.classes + predicted, minlength=self.classes ** 2)
        pairs = pairs.reshape(self.classes, self.classes)
        self.counts = pairs if self.counts is None else self.counts + pairs

    def compute(self) -> torch.Tensor:
        if self.counts is None:
            return torch.tensor(float("nan"))
        return self.of_counts(self.counts.double())

    @staticmethod
    def of_counts(counts: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError



class MacroF1(ConfusionMetric):
    """The unweighted mean of the per-class F1 over the classes that occur in the labels or the
    predictions (scikit-learn's ``f1_score(average="macro")``)."""

    @staticmethod
    def of_counts(counts: torch.Tensor) -> torch.Tensor:
        hits = counts.diagonal()
        true, predicted = counts.sum(1), counts.sum(0)
        present = (true + predicted) > 0
        f1 = 2 * hits / (true + predicted).clamp(min=1)
        return f1[present].mean() if bool(present.any()) else torch.tensor(float("nan"))


class BalancedAccuracy(ConfusionMetric):
    """The unweighted mean of the per-class recall over the classes that occur in the labels
    (scikit-learn's ``balanced_accuracy_score``)."""

    @staticmethod
    def of_counts(counts: torch.Tensor) -> torch.Tensor:
        true = counts.sum(1)
        present = true > 0
        recall = counts.diagonal() / true.clamp(min=1)
        return recall[present].mean() if bool(present.any()) else torch.tensor(float("nan"))


# --- regression ------------------------------------------------------------------------------------------
# Target columns that get an R2 of their own besides the mean over them: a handful of quantities a person reads
# one by one (a price and a number of days); a wide output (an autoencoder's 64 pixels) gets the mean alone.
R2_COLUMNS_MAX = 8


class R2Score(OneBatchValue):
    """The coefficient of determination of the whole split, 1 - SSE / SST per target column with the split's
    own column means (scikit-learn's ``r2_score``), averaged over the columns (``column=None``) or of one
    column. Unit-free, so it reads the same for a price in dollars and a count of days, where the MSE of
    several columns is that of the largest. Columns whose targets are constant on the split are left out
    (their R2 is undefined); none left: NaN. Missing targets (NaN) are left out of their column's sums.
    Sums are kept per column in float64 on the device."""

    STATE = "sums"

    def __init__(self, column: int | None = None) -> None:
        self.column = column
        self.sums: torch.Tensor | None = None   # [4, columns]: count, sum y, sum y^2, sum (y - prediction)^2

    def reset(self) -> None:
        self.sums = None

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        y = targets.reshape(len(targets), -1).double()
        predicted = outputs.reshape(y.shape).double()
        # a target not measured (NaN, which the task's own loss masks) counts in no sum of its column
        known = ~torch.isnan(y)
        y, errors = y.where(known, 0.0), (y - predicted).where(known, 0.0)
        batch = torch.stack([known.sum(0).double(), y.sum(0), y.pow(2).sum(0), errors.pow(2).sum(0)])
        self.sums = batch if self.sums is None else self.sums + batch

    def compute(self) -> torch.Tensor:
        if self.sums is None:
            return torch.tensor(float("nan"))
        count, total, squares, errors = self.sums
        spread = squares - total.pow(2) / count
        varying = spread > 1e-12 * squares.clamp(min=1e-300)
        r2 = 1 - errors / spread.where(varying, torch.ones_like(spread))
        if self.column is not None:
            return r2[self.column] if bool(varying[self.column]) else torch.tensor(float("nan"))
        return r2[varying].mean() if bool(varying.any()) else torch.tensor(float("nan"))


def regression_metrics(columns: int) -> dict[str, R2Score]:
    """``r2`` (the mean over the target columns) and, for 2 to ``R2_COLUMNS_MAX`` columns, ``r2_0``, ``r2_1``..."""
    metrics = {"r2": R2Score()}
    if 2 <= columns <= R2_COLUMNS_MAX:
        metrics.update({f"r2_{column}": R2Score(column) for column in range(columns)})
    return metrics


def imbalance_ratio(targets: torch.Tensor, kind: str, ignore_index: int | None) -> float | None:
    """Largest over smallest count of the classes present in training labels (multi-class integer labels
    or binary 0/1 targets); None when it does not apply."""
    if kind == "binary":
        labels = (targets.reshape(-1) > 0.5).long()
    elif kind == "classification" and not targets.dtype.is_floating_point:
        labels = targets.reshape(-1).long()
        labels = labels[labels != ignore_index] if ignore_index is not None else labels
        labels = labels[labels >= 0]
    else:
        return None
    counts = torch.bincount(labels)
    present = counts[counts > 0]
    return float(present.max() / present.min()) if present.numel() >= 2 else None


# --- scoring a split -------------------------------------------------------------------------------------
class SplitScores:
    """The loss and the metrics of one pass over a split: fed batch by batch (`add`), read once (`values`).
    ``ways``: name -> one of STATEFUL, SAMPLE_MEAN, WHOLE_SPLIT; ``budget``: bytes of outputs and targets
    kept for the whole-split metrics. ``on_outputs``: the metrics given everything the model returned (a
    tuple or dict of tensors), as the task's loss is (`Objective.metrics_on_outputs`); the others get the
    score tensor in it (`scores_of`). Outputs and targets may be tuples or dicts of tensors (one per head):
    they are kept and joined leaf by leaf. ``batch_losses``: also keep each batch's weighted loss and weight
    (read with the rest, at the one sync)."""

    def __init__(self, metric_fns: dict[str, Callable], ways: dict[str, str], device: torch.device,
                 budget: int = METRIC_MEMORY_BYTES, on_outputs: frozenset[str] = frozenset(),
                 batch_losses: bool = False) -> None:
        self.metric_fns, self.ways, self.device, self.budget = metric_fns, ways, device, budget
        self.on_outputs = on_outputs
        self.batch_losses: list[torch.Tensor] | None = [] if batch_losses else None
        self.read_batch_losses: list[tuple[float, float]] = []
        self.names = ["loss", *metric_fns]
        self.sums = torch.zeros(len(self.names), dtype=torch.float64, device=device)
        self.seen: Any = 0
        self.kept: list[tuple[torch.Tensor, torch.Tensor, Any]] | None = [] if WHOLE_SPLIT in ways.values() else None
        self.kept_bytes = 0
        self.notes: list[str] = []
        for name, fn in metric_fns.items():
            if ways[name] == STATEFUL:
                prepare_stateful(fn, device)
                fn.reset()

    def _given(self, name: str, outputs: Any, scores: Any) -> Any:
        return outputs if name in self.on_outputs else scores

    def add(self, outputs: Any, targets: Any, loss: torch.Tensor, weight: Any) -> None:
        values = [loss]
        scores = scores_of(outputs)
        for name, fn in self.metric_fns.items():
            way = self.ways[name]
            if way == STATEFUL:
                fn.update(self._given(name, outputs, scores), targets)
            if way == SAMPLE_MEAN or (way == WHOLE_SPLIT and self.kept is None):
                values.append(fn(self._given(name, outputs, scores), targets))
            else:
                values.append(0.0)
        weighted = torch.stack([_scalar(v, self.device) for v in values]) * weight
        self.sums += weighted
        self.seen = self.seen + weight
        if self.batch_losses is not None:
            self.batch_losses.append(torch.stack([weighted[0], _scalar(weight, self.device)]))
        if self.kept is not None:
            self._keep(outputs, targets, weight)

    def _keep(self, outputs: Any, targets: Any, weight: Any) -> None:
        """Keep a batch for the whole-split metrics, or give up keeping (batch means from here on)."""
        reason = None
        if not (is_tensor_tree(outputs) and is_tensor_tree(targets)):
            reason = "the outputs or targets are not tensors"
        elif self.kept and not (_same_rows(outputs, self.kept[0][0]) and _same_rows(targets, self.kept[0][1])):
            reason = "the outputs' shape changes between batches"
        elif self.kept_bytes + _nbytes(outputs) + _nbytes(targets) > self.budget:
            reason = f"the split's outputs and targets exceed METRIC_MEMORY_BYTES ({self.budget / 2**20:g} MiB)"
        if reason is None:
            self.kept.append((map_tensors(torch.Tensor.detach, outputs), map_tensors(torch.Tensor.detach, targets),
                              weight))
            self.kept_bytes += _nbytes(outputs) + _nbytes(targets)
            return
        kept, self.kept = self.kept, None
        for old_outputs, old_targets, old_weight in kept:   # those batches' values, as the batches to come
            self._add_batch_values(old_outputs, old_targets, old_weight)
        self._add_batch_values(outputs, targets, weight)
        names = ", ".join(name for name, way in self.ways.items() if way == WHOLE_SPLIT)
        self.notes.append(f"{names}: the mean of the per-batch values weighted by batch size, not the value on "
                          f"the whole split ({reason})")

    def _add_batch_values(self, outputs: Any, targets: Any, weight: Any) -> None:
        scores = scores_of(outputs)
        for index, (name, fn) in enumerate(self.metric_fns.items(), start=1):
            if self.ways[name] == WHOLE_SPLIT:
                value = _scalar(fn(self._given(name, outputs, scores), targets), self.device)
                self.sums[index] += value * weight

    def values(self) -> list[float]:
        """The loss (the weighted mean of the batches' losses: exact for a loss that is a mean over what
        counts) and every metric, in ``["loss", *metric_fns]`` order; each batch's (loss x weight, weight),
        when kept, is read with them into ``read_batch_losses``. The pass's sync point."""
        total = self.seen.clamp(min=1) if isinstance(self.seen, torch.Tensor) else max(self.seen, 1)
        means = self.sums / total
        if self.kept:
            outputs, targets = joined([part[0] for part in self.kept]), joined([part[1] for part in self.kept])
            scores = scores_of(outputs)
        for index, (name, fn) in enumerate(self.metric_fns.items(), start=1):
            way = self.ways[name]
            if way == STATEFUL:
                means[index] = _scalar(fn.compute(), self.device)
                fn.reset()
            elif way == WHOLE_SPLIT and self.kept:
                means[index] = _scalar(fn(self._given(name, outputs, scores), targets), self.device)
        self.kept = None
        if not self.batch_losses:
            return means.tolist()
        flat = torch.cat([means, torch.stack(self.batch_losses).flatten()]).tolist()
        count = len(self.names)
        self.read_batch_losses = list(zip(flat[count::2], flat[count + 1::2]))
        return flat[:count]


def _scalar(value: Any, device: torch.device) -> torch.Tensor:
    """A metric's value as a float64 scalar on the device (a Python float stays exact: not through float32)."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.float64).reshape(())
    return torch.tensor(float(value), dtype=torch.float64, device=device)


def _nbytes(value: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors_of(value))


def _same_rows(value: Any, kept: Any) -> bool:
    """Whether a batch has the structure and the per-row shapes of the first batch kept."""
    leaves, first = tensors_of(value), tensors_of(kept)
    return len(leaves) == len(first) and all(a.shape[1:] == b.shape[1:] for a, b in zip(leaves, first))
