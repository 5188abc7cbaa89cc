"""Read a bounded sample of each split, as tensors, without the checks `make_split` makes (the doctor
reports NaN and Inf instead of refusing them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset, default_collate

from converge.data import _prepare_targets, _split_batch
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


def _tensor(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        tensor = value
    elif isinstance(value, np.ndarray) and value.dtype != object:
        tensor = torch.from_numpy(np.ascontiguousarray(value))
    else:
        try:
            tensor = torch.as_tensor(np.asarray(value))
        except Exception:
            return value
    return tensor.to(torch.get_default_dtype()) if tensor.dtype == torch.float64 else tensor


def _rows(total: int, max_rows: int, seed: int) -> torch.Tensor:
    if total <= max_rows:
        return torch.arange(total)
    picked = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:max_rows]
    return picked.sort().values


def sample_split(data: Any, name: str, *, max_rows: int = MAX_ROWS, seed: int = 0) -> Sample:
    """At most ``max_rows`` rows of a split given as (inputs, targets), a Dataset or a DataLoader."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        inputs, targets = _tensor(data[0]), _tensor(data[1])
        if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
            raise ConvergeError(f"{name} inputs and targets must be arrays or tensors")
        if inputs.ndim == 0 or targets.ndim == 0 or inputs.shape[0] != targets.shape[0]:
            raise ConvergeError(f"{name} inputs and targets disagree: shapes {tuple(inputs.shape)} and "
                                f"{tuple(targets.shape)}")
        rows = _rows(inputs.shape[0], max_rows, seed)
        return Sample(name, inputs[rows], _prepare_targets(targets[rows]), inputs.shape[0], rows)
    if isinstance(data, DataLoader):
        return _from_loader(data, name, max_rows)
    if isinstance(data, Dataset):
        if isinstance(data, IterableDataset):
            return _from_loader(DataLoader(data, batch_size=256), name, max_rows)
        if isinstance(data, TensorDataset) and len(data.tensors) == 2:
            return sample_split(data.tensors, name, max_rows=max_rows, seed=seed)
        rows = _rows(len(data), max_rows, seed)
        loader = DataLoader(Subset(data, rows.tolist()), batch_size=256)
        sample = _from_loader(loader, name, max_rows)
        return Sample(name, sample.inputs, sample.targets, len(data), rows)
    raise ConvergeError(f"the {name} split must be an (inputs, targets) pair, a Dataset or a DataLoader, "
                        f"got {type(data).__name__}")


def _from_loader(loader: DataLoader, name: str, max_rows: int) -> Sample:
    inputs, targets, seen = [], [], 0
    for batch in loader:
        x, y = _split_batch(batch, name)
        inputs.append(x)
        targets.append(y)
        seen += len(y)
        if seen >= max_rows:
            break
    if not targets:
        raise ConvergeError(f"the {name} split is empty")
    try:
        total = len(loader.dataset)
    except TypeError:
        total = None
    x, y = _concat(inputs), _tensor(_concat(targets))
    x = x[:max_rows] if isinstance(x, torch.Tensor) else x
    y = _prepare_targets(y[:max_rows]) if isinstance(y, torch.Tensor) else y
    return Sample(name, _tensor(x) if isinstance(x, torch.Tensor) else x, y, total, None)


def _concat(parts: list) -> Any:
    if all(isinstance(p, torch.Tensor) for p in parts):
        return torch.cat(parts)
    try:
        return default_collate([row for part in parts for row in part])
    except Exception:
        return parts[0]
