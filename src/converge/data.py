"""Turn what a user hands us into batches: in-memory tensors are sliced on the device, datasets go
through a DataLoader. Shapes, emptiness and non-finite values are checked where the data enters."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, TensorDataset

from converge.rng import capture_rng, restore_rng, seed_everything
from converge.errors import ConvergeError

def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for one epoch that depends only on the run's seed and the epoch number, so an epoch can be
    replayed after a crash without knowing anything that happened before it."""
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**63 - 1)


def _shuffle_seed(seed: int) -> int:
    # The data order gets its own stream, apart from the global one that dropout draws from.
    return seed ^ 0x5DEECE66D


def _as_tensor(array: Any, name: str, role: str) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        tensor = array
    elif isinstance(array, np.ndarray):
        if array.dtype == object:
            raise ConvergeError(f"{name} {role} is a NumPy array of Python objects; convert it to numbers")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    else:
        try:
            tensor = torch.as_tensor(np.asarray(array))
        except Exception as exc:  # the message below names the split and role
            raise ConvergeError(f"{name} {role} cannot be turned into a tensor: {exc}") from None
    if tensor.dtype == torch.float64:
        tensor = tensor.to(torch.get_default_dtype())
    return tensor


def _prepare_targets(targets: torch.Tensor) -> torch.Tensor:
    if targets.dtype.is_floating_point:
        return targets.to(torch.get_default_dtype())
    if targets.dtype == torch.bool:
        return targets.to(torch.get_default_dtype())
    return targets.long()


def check_finite(tensor: Any, what: str) -> None:
    if isinstance(tensor, torch.Tensor) and tensor.dtype.is_floating_point and tensor.numel():
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ConvergeError(f"{what} contain {bad} NaN or Inf value(s); clean or impute them first")


class TensorSplit:
    """An (inputs, targets) pair kept whole on the device; batches are slices of it, shuffled once per epoch."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, name: str) -> None:
        self.inputs, self.targets, self.name = inputs, targets, name

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def to(self, device: torch.device) -> "TensorSplit":
        return TensorSplit(self.inputs.to(device), self.targets.to(device), self.name)

    def num_batches(self, batch_size: int, train: bool) -> int:
        n = len(self)
        return n // batch_size + (_keep_remainder(n % batch_size, train))

    def batches(self, batch_size: int, *, seed: int | None = None, start: int = 0, world=None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches from ``start`` on; with an epoch ``seed`` they are shuffled (training), else in order.
        With a ``world`` (data-parallel training) each batch is this rank's slice of the global batch."""
        inputs, targets = self.inputs, self.targets
        train = seed is not None
        if train:
            generator = torch.Generator().manual_seed(_shuffle_seed(seed))
            order = torch.randperm(len(self), generator=generator).to(inputs.device)
            inputs, targets = inputs.index_select(0, order), targets.index_select(0, order)
        total = self.num_batches(batch_size, train)
        for index in range(start, total):
            lo = index * batch_size
            hi = min(lo + batch_size, len(self))
            if world is not None:
                if hi - lo < world.size:
                    continue  # too small to give every rank a sample: skipped on every rank alike
                part = world.slice_of(hi - lo)
                lo, hi = lo + part.start, lo + part.stop
            yield inputs[lo:hi], targets[lo:hi]

    def probe(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[:size], self.targets[:size]


def _keep_remainder(remainder: int, train: bool) -> int:
    # A one-sample training batch breaks BatchNorm and is mostly noise: it is dropped (a different sample
    # each epoch). Evaluation always sees every sample.
    return int(remainder > 1 or (remainder == 1 and not train))


class _EpochSampler(Sampler):
    """Indices of one epoch's permutation, from a position onwards (to resume inside an epoch)."""

    def __init__(self, length: int, seed: int | None, start: int) -> None:
        self.length, self.seed, self.start = length, seed, start

    def __iter__(self):
        if self.seed is None:
            order = range(self.length)
        else:
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed)).tolist()
        return iter(order[self.start:])

    def __len__(self) -> int:
        return self.length - self.start


class _RankSlices(Sampler):
    """Global batches of a sampler's indices, each cut to this rank's slice (only this rank's samples are
    loaded); a last batch too small to give every rank a sample is skipped on every rank."""

    def __init__(self, sampler: Sampler, batch_size: int, world) -> None:
        self.sampler, self.batch_size, self.world = sampler, batch_size, world

    def __iter__(self):
        batch: list[int] = []
        for index in self.sampler:
            batch.append(index)
            if len(batch) == self.batch_size:
                yield batch[self.world.slice_of(len(batch))]
                batch = []
        if len(batch) >= self.world.size:
            yield batch[self.world.slice_of(len(batch))]

    def __len__(self) -> int:
        full, rest = divmod(len(self.sampler), self.batch_size)
        return full + int(rest >= self.world.size)


class LoaderSplit:
    """A Dataset (batched by our own DataLoader) or a user's DataLoader (used as it is)."""

    def __init__(self, source: Dataset | DataLoader, name: str, num_workers: int = 0) -> None:
        self.source, self.name, self.num_workers = source, name, num_workers
        self.user_loader = isinstance(source, DataLoader)
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        dataset = self.source.dataset if self.user_loader else self.source
        return len(dataset)

    def to(self, device: torch.device) -> "LoaderSplit":
        moved = LoaderSplit(self.source, self.name, self.num_workers)
        moved.device = device
        return moved

    def num_batches(self, batch_size: int, train: bool) -> int | None:
        if self.user_loader:
            try:
                return len(self.source)
            except TypeError:
                return None
        n = len(self)
        return n // batch_size + _keep_remainder(n % batch_size, train)

    def batches(self, batch_size: int, *, seed: int | None = None, start: int = 0, world=None):
        train = seed is not None
        if self.user_loader:
            if world is not None:
                raise ConvergeError(f"data-parallel training needs the {self.name} data as tensors or a Dataset "
                                    f"(converge cuts every global batch into one slice per process); a "
                                    f"DataLoader cannot be cut so")
            iterator = self._replay_user_loader(seed, start)
        else:
            n = len(self)
            drop_last = train and n % batch_size == 1
            shuffle_seed = _shuffle_seed(seed) if train else None
            sampler = _EpochSampler(n, shuffle_seed, start * batch_size)
            generator = torch.Generator().manual_seed(shuffle_seed if train else 0)
            batching = dict(batch_size=batch_size, sampler=sampler, drop_last=drop_last) if world is None else \
                dict(batch_sampler=_RankSlices(sampler, batch_size, world))
            iterator = iter(DataLoader(self.source, **batching, num_workers=self.num_workers, generator=generator,
                                       pin_memory=self.device.type == "cuda"))
        non_blocking = self.device.type == "cuda"
        for batch in iterator:
            inputs, targets = _split_batch(batch, self.name)
            yield move_to(inputs, self.device, non_blocking), move_to(targets, self.device, non_blocking)

    def _replay_user_loader(self, seed: int | None, start: int):
        """A user's DataLoader draws its order from the global RNG, which at an epoch's start is seeded
        with the epoch seed. Resuming inside the epoch, replay that: seed, skip
        the batches already trained on, then put back the RNG state the checkpoint saved."""
        if seed is None or start == 0:
            return iter(self.source)
        saved = capture_rng()
        seed_everything(seed)
        try:
            iterator = iter(self.source)  # a DataLoader draws its workers' base seed here
            for _ in range(start):
                next(iterator)
        finally:
            restore_rng(saved)
        return iterator

    def whole_tensors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The (inputs, targets) tensors behind a TensorDataset, else None."""
        dataset = self.source.dataset if self.user_loader else self.source
        if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
            return dataset.tensors[0], dataset.tensors[1]
        return None

    def probe(self, size: int):
        loader = self.source if self.user_loader else DataLoader(self.source, batch_size=size)
        inputs, targets = _split_batch(next(iter(loader)), self.name)
        return inputs, targets


def _split_batch(batch: Any, name: str):
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, dict) and {"inputs", "targets"} <= batch.keys():
        return batch["inputs"], batch["targets"]
    raise ConvergeError(f"{name} data must yield (inputs, targets) pairs, got {type(batch).__name__}")


def move_to(value: Any, device: torch.device, non_blocking: bool = False) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, (tuple, list)):
        return type(value)(move_to(v, device, non_blocking) for v in value)
    if isinstance(value, dict):
        return {k: move_to(v, device, non_blocking) for k, v in value.items()}
    return value


def make_split(data: Any, name: str, num_workers: int = 0) -> TensorSplit | LoaderSplit:
    """Check one split as handed over and wrap it."""
    if data is None:
        raise ConvergeError(f"the {name} split is missing (got None)")
    if isinstance(data, (DataLoader, Dataset)):
        split = LoaderSplit(data, name, num_workers)
        dataset = data.dataset if isinstance(data, DataLoader) else data
        if not isinstance(dataset, IterableDataset):
            try:
                length = len(dataset)
            except TypeError:
                raise ConvergeError(f"the {name} dataset has no len(); give a map-style Dataset") from None
            if length == 0:
                raise ConvergeError(f"the {name} split is empty")
        try:
            inputs, targets = split.probe(8)
        except ConvergeError:
            raise
        except StopIteration:  # an IterableDataset (or a DataLoader over one) that yields nothing
            raise ConvergeError(f"the {name} split is empty") from None
        except Exception as exc:
            raise ConvergeError(f"the {name} split cannot be read: {type(exc).__name__}: {exc}") from exc
        whole = split.whole_tensors()  # a TensorDataset can be checked completely, not just sampled
        check_finite(whole[0] if whole else inputs, f"{name} inputs")
        return split
    if isinstance(data, (tuple, list)) and len(data) == 2:
        inputs = _as_tensor(data[0], name, "inputs")
        targets = _prepare_targets(_as_tensor(data[1], name, "targets"))
        if inputs.ndim == 0 or targets.ndim == 0:
            raise ConvergeError(f"{name} inputs and targets must have a sample dimension, "
                                f"got shapes {tuple(inputs.shape)} and {tuple(targets.shape)}")
        if inputs.shape[0] != targets.shape[0]:
            raise ConvergeError(f"{name} inputs and targets disagree in length: "
                                f"{inputs.shape[0]} inputs, {targets.shape[0]} targets")
        if inputs.shape[0] == 0:
            raise ConvergeError(f"the {name} split is empty")
        check_finite(inputs, f"{name} inputs")
        check_finite(targets, f"{name} targets")
        return TensorSplit(inputs, targets, name)
    raise ConvergeError(f"the {name} split must be an (inputs, targets) pair, a Dataset or a DataLoader, "
                        f"got {type(data).__name__}")


def make_splits(train: Any, val: Any, test: Any = None, num_workers: int = 0) -> dict:
    splits = {"train": make_split(train, "train", num_workers), "val": make_split(val, "val", num_workers)}
    if test is not None:
        splits["test"] = make_split(test, "test", num_workers)
    return splits


def is_classification(targets: Any) -> bool:
    return isinstance(targets, torch.Tensor) and not targets.dtype.is_floating_point and targets.dtype != torch.bool
