"""Read a bounded sample of each split, as tensors, without the checks `make_split` makes (the doctor
reports NaN and Inf instead of refusing them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Subset

from converge.calling import like
from converge.data import (TARGET_KEY, LoaderSplit, TensorSplit, prepare_targets, first_rows, make_split,
                           map_tensors, one_row_per_sample, tensors_of)
from converge.errors import ConvergeError
from converge.doctor.thresholds import MAX_ROWS


@dataclass
class Sample:
    """Up to ``max_rows`` rows of one split. ``indices`` are the rows' positions in the whole split
    (None for a DataLoader, whose order is its own)."""
    name: str
    inputs: Any                   # a tensor, or whatever the split yields (then most data checks skip it)
    targets: Any
    total: int | None             # rows in the whole split (None when it has no len())
    indices: torch.Tensor | None

    @property
    def sampled(self) -> bool:
        return self.total is None or self.total > len(self)

    def __len__(self) -> int:
        return int(self.targets.shape[0]) if isinstance(self.targets, torch.Tensor) else 0

    def evidence(self) -> dict:
        return {"rows_checked": len(self), "rows_total": self.total, "sampled": self.sampled}


def _rows(total: int, max_rows: int, seed: int) -> torch.Tensor:
    if total <= max_rows:
        return torch.arange(total)
    picked = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:max_rows]
    return picked.sort().values


def sample_split(data: Any, name: str, *, max_rows: int = MAX_ROWS, seed: int = 0,
                 target_key: str = TARGET_KEY) -> Sample:
    """At most ``max_rows`` rows of a split in any form `converge train` takes (inputs may be a tensor, a
    tuple or a dict of tensors); NaN and Inf are kept, for the checks to report."""
    return sample_of(make_split(data, name, target_key=target_key, check_values=False), max_rows=max_rows,
                     seed=seed)


def sample_of(split: TensorSplit | LoaderSplit, *, max_rows: int = MAX_ROWS, seed: int = 0) -> Sample:
    """At most ``max_rows`` rows of a split already made (`converge.data.make_split`)."""
    if isinstance(split, TensorSplit):
        rows = _rows(len(split), max_rows, seed)
        pick = (lambda t: t[rows.to(t.device)]) if len(rows) < len(split) else (lambda t: t)
        return Sample(split.name, map_tensors(pick, split.inputs), map_tensors(pick, split.targets), len(split),
                      rows)
    dataset = split.source.dataset if split.user_loader else split.source
    if not split.user_loader and not split.stream and len(dataset) > max_rows:
        rows = _rows(len(dataset), max_rows, seed)
        subset = LoaderSplit(Subset(dataset, rows.tolist()), split.name, target_key=split.target_key)
        sample = _read(subset, max_rows)
        return Sample(split.name, sample.inputs, sample.targets, len(dataset), rows)
    sample = _read(split, max_rows)
    total = None if split.stream or split.user_loader else len(dataset)
    if split.user_loader and not split.stream:
        total = len(dataset)
    indices = torch.arange(len(sample)) if total is not None and not split.user_loader else None
    return Sample(split.name, sample.inputs, sample.targets, total, indices)


def _read(split: LoaderSplit, max_rows: int) -> Sample:
    """The first ``max_rows`` rows a split yields, in its evaluation order."""
    inputs, targets, seen = [], [], 0
    for x, y in split.batches(256):
        inputs.append(x)
        targets.append(y)
        seen += int(tensors_of(y)[0].shape[0]) if tensors_of(y) else 1
        if seen >= max_rows:
            break
    if not targets:
        raise ConvergeError(f"the {split.name} split is empty")
    try:
        # inputs that are not one row per sample (token ids of a batch concatenated, with offsets) are one
        # batch that cannot be joined with others or cut: the first is kept as it is
        x, y = (_concat(inputs), _concat(targets)) if one_row_per_sample(inputs[0], targets[0]) else \
            (inputs[0], targets[0])
    except (RuntimeError, TypeError):   # batches of different widths (padded per batch): keep the first
        x, y = inputs[0], targets[0]
    x, y = first_rows(x, y, max_rows)
    return Sample(split.name, x, prepare_targets(y) if isinstance(y, torch.Tensor) else y, None, None)


def _concat(parts: list) -> Any:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, (tuple, list)):
        return like(first, (_concat([p[i] for p in parts]) for i in range(len(first))))
    if isinstance(first, dict):
        return {key: _concat([p[key] for p in parts]) for key in first}
    raise TypeError(f"cannot join batches of {type(first).__name__}")
