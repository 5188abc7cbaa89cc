"""Turn what a user hands us into batches: in-memory tensors are sliced on the device, datasets go
through a DataLoader, streams are read a fixed number of batches per epoch. Shapes, emptiness and
non-finite values are checked where the data enters.

A batch is ``(inputs, targets)``. The inputs are a tensor, a tuple of tensors (a model with several
inputs: ``model(*inputs)``) or a dict of tensors (``model(**inputs)``, the Hugging Face convention, whose
targets are the ``target_key`` entry, "labels" by default). A split may be given as

* an ``(inputs, targets)`` pair of tensors or arrays (the inputs may be a tuple of them);
* a dict of tensors or arrays (the targets are its ``target_key`` entry);
* a map-style Dataset or a DataLoader yielding ``(inputs, targets)``, ``(input, ..., targets)`` or dicts;
* an IterableDataset, or a DataLoader over one: a stream, read ``steps_per_epoch`` batches per epoch and
  continued across epochs (validation and test streams must end).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import (BatchSampler, DataLoader, Dataset, IterableDataset, RandomSampler, Sampler,
                              SequentialSampler, TensorDataset)

from converge.calling import like, map_tensors, move_to  # noqa: F401 -- their home is calling; re-exported
from converge.errors import ConvergeError
from converge.rng import capture_rng, restore_rng, seed_everything

TARGET_KEY = "labels"
STREAM_STEPS = 200        # batches per epoch of a stream, unless --steps-per-epoch says otherwise
STREAM_BATCH = 64         # a stream's batch size when "auto" (its size is unknown)


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for one epoch that depends only on the run's seed and the epoch number, so an epoch can be
    replayed after a crash without knowing anything that happened before it."""
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**63 - 1)


def _shuffle_seed(seed: int) -> int:
    # The data order gets its own stream, apart from the global one that dropout draws from.
    return seed ^ 0x5DEECE66D


# --- structures of tensors -------------------------------------------------------------------------------
def one_row_per_sample(inputs: Any, targets: Any) -> bool:
    """Whether every input tensor of a batch holds one row per sample, as its targets do. An nn.EmbeddingBag's
    inputs do not: the token ids of the whole batch, concatenated, and the offset where each text starts
    (the PyTorch text tutorial's batches)."""
    samples = [t.shape[0] for t in tensors_of(targets) if t.ndim]
    return not samples or all(t.ndim and t.shape[0] == samples[0] for t in tensors_of(inputs))


def first_rows(inputs: Any, targets: Any, rows: int) -> tuple[Any, Any]:
    """The first ``rows`` samples of a batch; a batch whose inputs are not one row per sample cannot be cut,
    and comes whole."""
    if not one_row_per_sample(inputs, targets):
        return inputs, targets
    return map_tensors(lambda t: t[:rows], inputs), map_tensors(lambda t: t[:rows], targets)


def tensors_of(value: Any) -> list[torch.Tensor]:
    """Every tensor in a structure, in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors_of(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors_of(v)]
    return []


def is_tensor_tree(value: Any) -> bool:
    """A tensor, or a tuple/list or dict of them at any depth, and nothing else (no None, no object)."""
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return bool(value) and all(is_tensor_tree(v) for v in value)
    if isinstance(value, dict):
        return bool(value) and all(is_tensor_tree(v) for v in value.values())
    return False


def joined(parts: list) -> Any:
    """Batches of one structure (`is_tensor_tree`) joined along their first dimension, leaf by leaf, where
    they lie."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {key: joined([p[key] for p in parts]) for key in first}
    if isinstance(first, (tuple, list)):
        return like(first, (joined([p[i] for p in parts]) for i in range(len(first))))
    raise TypeError(f"cannot join batches of type {type(first).__name__}")


def rows_in(value: Any) -> int | None:
    """Samples in a batch or split of targets (a tensor, or a tuple or dict of them, one per head): the first
    dimension of its first tensor; None when it has no tensor with one."""
    parts = tensors_of(value)
    return int(parts[0].shape[0]) if parts and parts[0].ndim else None


def _as_tensor(array: Any, name: str, role: str) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        tensor = array
    elif isinstance(array, np.ndarray):
        if array.dtype == object:
            raise ConvergeError(f"{name} {role} is a NumPy array of Python objects; convert it to numbers")
        if array.dtype.kind in "USV":
            raise ConvergeError(f"{name} {role} hold text ({array.dtype}); encode them as numbers first "
                                f"(class labels as integers 0..C-1)")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    else:
        try:
            tensor = torch.as_tensor(np.asarray(array))
        except Exception as exc:  # the message below names the split and role
            raise ConvergeError(f"{name} {role} cannot be turned into a tensor: {exc}") from None
    if tensor.dtype == torch.float64:
        tensor = tensor.to(torch.get_default_dtype())
    return tensor


def prepare_targets(targets: torch.Tensor) -> torch.Tensor:
    if targets.dtype.is_floating_point:
        return targets.to(torch.get_default_dtype())
    if targets.dtype == torch.bool:
        return targets.to(torch.get_default_dtype())
    return targets.long()


def check_finite(tensor: Any, what: str, *, missing: bool = False, targets: bool = False) -> None:
    """Raise on NaN or Inf values; with ``missing``, NaN passes (a target not measured, which the task's own
    loss masks: `converge.engine.objective.check_missing_targets` then asks the loss). ``targets``: the
    message names that way out for NaN targets."""
    for part in tensors_of(tensor):
        if part.dtype.is_floating_point and part.numel() and not bool(torch.isfinite(part).all()):
            nan_only = not bool(torch.isinf(part).any())
            if missing and nan_only:
                continue
            bad = int((~torch.isfinite(part)).sum())
            way_out = ", or give a loss of your own that masks them (missing targets)" if targets and nan_only else ""
            raise ConvergeError(f"{what} contain {bad} NaN or Inf value(s); clean or impute them first{way_out}")


def _targets_as_tensors(targets: Any, inputs: Any, name: str) -> Any:
    """The targets as one tensor, or, for a model with several heads, as the tuple or dict of per-sample
    tensors they were given as (each then reaches the task's own loss in that form)."""
    if isinstance(targets, dict):
        if not targets:
            raise ConvergeError(f"{name} targets are an empty dict")
        return {key: prepare_targets(_as_tensor(value, name, f"targets {key!r}")) for key, value in targets.items()}
    rows = _rows_of(inputs)
    if rows is not None and _per_head(targets, rows):
        return tuple(prepare_targets(_as_tensor(value, name, f"targets {i}")) for i, value in enumerate(targets))
    return prepare_targets(_as_tensor(targets, name, "targets"))


def _per_head(targets: Any, rows: int) -> bool:
    """Whether ``targets`` is a tuple/list of separate target tensors (one per head; their lengths are
    checked after), rather than one target given as a list of rows."""
    return isinstance(targets, (tuple, list)) and 1 < len(targets) < rows and all(
        isinstance(t, (torch.Tensor, np.ndarray)) and t.ndim >= 1 for t in targets)


def _rows_of(inputs: Any) -> int | None:
    """How many samples the inputs hold, read before they are converted (None: cannot tell)."""
    if isinstance(inputs, dict):
        inputs = next(iter(inputs.values()), None)
    elif isinstance(inputs, (tuple, list)) and inputs and isinstance(inputs[0], (torch.Tensor, np.ndarray)):
        inputs = inputs[0]
    shape = getattr(inputs, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) else None


def _several_inputs(value: Any, n: int) -> bool:
    """Whether ``value`` is a tuple/list of separate inputs (each with one row per sample), rather than
    one input given as a list of rows."""
    return isinstance(value, (tuple, list)) and 1 < len(value) < n and all(
        isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim >= 1 and v.shape[0] == n for v in value)


# --- in memory -------------------------------------------------------------------------------------------
class TensorSplit:
    """(inputs, targets) kept whole on the device; batches are slices of them, shuffled once per epoch.
    The inputs may be a tensor, a tuple of tensors or a dict of tensors, all with one row per sample."""

    def __init__(self, inputs: Any, targets: Any, name: str) -> None:
        self.inputs, self.targets, self.name = inputs, targets, name

    def __len__(self) -> int:
        return int(tensors_of(self.targets)[0].shape[0])

    def to(self, device: torch.device) -> "TensorSplit":
        return TensorSplit(move_to(self.inputs, device), move_to(self.targets, device), self.name)

    def num_batches(self, batch_size: int, train: bool) -> int:
        n = len(self)
        return n // batch_size + (_keep_remainder(n % batch_size, train))

    def batches(self, batch_size: int, *, seed: int | None = None, start: int = 0, world=None
                ) -> Iterator[tuple[Any, Any]]:
        """Batches from ``start`` on; with an epoch ``seed`` they are shuffled (training), else in order.
        With a ``world`` (data-parallel training) each batch is this rank's slice of the global batch."""
        inputs, targets = self.inputs, self.targets
        train = seed is not None
        if train:
            generator = torch.Generator().manual_seed(_shuffle_seed(seed))
            order = torch.randperm(len(self), generator=generator).to(tensors_of(targets)[0].device)
            inputs, targets = (map_tensors(lambda t: t.index_select(0, order), part) for part in (inputs, targets))
        total = self.num_batches(batch_size, train)
        for index in range(start, total):
            lo = index * batch_size
            hi = min(lo + batch_size, len(self))
            if world is not None:
                if hi - lo < world.size:
                    continue  # too small to give every rank a sample: skipped on every rank alike
                part = world.slice_of(hi - lo)
                lo, hi = lo + part.start, lo + part.stop
            yield map_tensors(lambda t: t[lo:hi], inputs), map_tensors(lambda t: t[lo:hi], targets)

    def probe(self, size: int) -> tuple[Any, Any]:
        return first_rows(self.inputs, self.targets, size)


def _keep_remainder(remainder: int, train: bool) -> int:
    # A one-sample training batch breaks BatchNorm and is mostly noise: it is dropped (a different sample
    # each epoch). Evaluation always sees every sample.
    return int(remainder > 1 or (remainder == 1 and not train))


# --- Datasets and DataLoaders ----------------------------------------------------------------------------
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
    """A Dataset (batched by our own DataLoader), a user's DataLoader (used as it is), or a stream."""

    def __init__(self, source: Dataset | DataLoader, name: str, num_workers: int = 0, *,
                 target_key: str = TARGET_KEY, steps_per_epoch: int | None = None) -> None:
        self.source, self.name, self.num_workers = source, name, num_workers
        self.target_key = target_key
        self.user_loader = isinstance(source, DataLoader)
        dataset = source.dataset if self.user_loader else source
        self.stream = isinstance(dataset, IterableDataset)
        self.steps_per_epoch = (steps_per_epoch or STREAM_STEPS) if self.stream else None
        self.device = torch.device("cpu")
        self.position = 0          # a training stream: batches drawn from it so far (resume replays them)
        self._iterator = None

    def __len__(self) -> int:
        if self.stream:
            raise TypeError(f"the {self.name} split is a stream: it has no length")
        dataset = self.source.dataset if self.user_loader else self.source
        return len(dataset)

    def to(self, device: torch.device) -> "LoaderSplit":
        moved = LoaderSplit(self.source, self.name, self.num_workers, target_key=self.target_key,
                            steps_per_epoch=self.steps_per_epoch)
        moved.device = device
        return moved

    def num_batches(self, batch_size: int, train: bool) -> int | None:
        if self.stream:
            return self.steps_per_epoch if train else None
        if self.user_loader:
            try:
                return len(self.source) - int(train and self._single_last_batch())
            except TypeError:
                return None
        n = len(self)
        return n // batch_size + _keep_remainder(n % batch_size, train)

    def batches(self, batch_size: int, *, seed: int | None = None, start: int = 0, world=None):
        train = seed is not None
        if self.stream:
            if world is not None:
                raise ConvergeError(f"data-parallel training cannot cut the {self.name} stream into one part per "
                                    f"process; give a map-style Dataset or tensors, or train in one process")
            iterator = self._stream_batches(batch_size, self.steps_per_epoch - start) if train else \
                iter(self._loader(batch_size))
        elif self.user_loader:
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
        # A user's DataLoader whose last training batch holds one sample: dropped, as converge's own batching
        # drops it (BatchNorm refuses it: "Expected more than 1 value per channel when training"). Only for
        # its standard batching, where such a batch can only come last (a resumed epoch replays by count).
        single_dropped = train and self._standard_batches()
        for batch in iterator:
            inputs, targets = split_batch(batch, self.name, self.target_key)
            if single_dropped and rows_in(targets) == 1:
                continue
            yield move_to(inputs, self.device, non_blocking), move_to(targets, self.device, non_blocking)

    def _standard_batches(self) -> bool:
        """Whether this is a user's DataLoader batching with torch's BatchSampler, more than one sample a batch."""
        return self.user_loader and not self.stream and (self.source.batch_size or 1) > 1

    def _single_last_batch(self) -> bool:
        """Whether a user's DataLoader of standard batches ends each epoch with a batch of one sample."""
        loader = self.source
        return self._standard_batches() and not loader.drop_last and len(loader.sampler) % loader.batch_size == 1

    def _loader(self, batch_size: int) -> DataLoader:
        if self.user_loader:
            return self.source
        return DataLoader(self.source, batch_size=batch_size, num_workers=self.num_workers,
                          pin_memory=self.device.type == "cuda")

    # --- streams: one iterator continued across epochs, isolated from the run's random numbers ---------
    def stream_seed(self, seed: int) -> None:
        """The seed a training stream's iterator is created under (set by the Trainer from the run's seed)."""
        self._seed = _shuffle_seed(seed) ^ 0x57EA

    def _stream_batches(self, batch_size: int, count: int):
        """The next ``count`` batches of the training stream. A new process (a resumed run) creates the
        iterator again and skips the ``position`` batches already drawn. The stream draws from random
        numbers of its own, so what it yields depends only on the seed and the position."""
        if self._iterator is None:
            saved = capture_rng()
            seed_everything(getattr(self, "_seed", 0))
            self._iterator = iter(self._loader(batch_size))
            self._stream_rng = capture_rng()
            restore_rng(saved)
            skipped, self.position = self.position, 0
            for _ in range(skipped):
                self._next()
        for _ in range(count):
            batch = self._next()
            if batch is None:
                raise ConvergeError(f"the {self.name} stream ended after {self.position} batches; a training "
                                    f"stream must not end (or give a map-style Dataset)")
            yield batch

    def _next(self):
        saved = capture_rng()
        restore_rng(self._stream_rng)
        try:
            batch = next(self._iterator, None)
        finally:
            self._stream_rng = capture_rng()
            restore_rng(saved)
        if batch is not None:
            self.position += 1
        return batch

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

    @property
    def own_batch_size(self) -> int | None:
        """The batch size of a user's DataLoader, whose batches are used as they are (None: not one, or a
        stream): its ``batch_size``, or for a batch sampler of its own the mean batch it gives."""
        if not self.user_loader or self.stream:
            return None
        if self.source.batch_size is not None:
            return int(self.source.batch_size)
        try:
            return max(1, round(len(self) / len(self.source)))
        except (TypeError, ZeroDivisionError):
            return None

    @property
    def resampled(self) -> bool:
        """Whether a user's DataLoader draws its samples other than once each in turn or at random (a
        WeightedRandomSampler that balances classes, a sampler or batch sampler of its own): its batches'
        mix of targets is then not the dataset's."""
        if not self.user_loader or self.stream:
            return False
        plain = isinstance(self.source.sampler, (SequentialSampler, RandomSampler))
        return not plain or type(self.source.batch_sampler) is not BatchSampler

    def whole_tensors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The (inputs, targets) tensors behind a TensorDataset of two tensors, else None."""
        dataset = self.source.dataset if self.user_loader else self.source
        if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
            return dataset.tensors[0], dataset.tensors[1]
        return None

    def probe(self, size: int):
        loader = self.source if self.user_loader else DataLoader(self.source, batch_size=size)
        batch = next(iter(loader))
        return split_batch(batch, self.name, self.target_key)


# Entry names that hold targets in datasets people write: a dict without `target_key` naming one is told so.
_TARGET_NAMES = ("label", "labels", "target", "targets", "y", "class", "category")


def _target_key_advice(entries: dict) -> str:
    likely = next((key for key in entries if str(key).lower() in _TARGET_NAMES), None)
    if likely is None:
        return "set `target_key` in the task to the entry that holds the targets"
    return f"set `target_key = {likely!r}` in the task (or fit(target_key={likely!r}))"


def split_batch(batch: Any, name: str, target_key: str = TARGET_KEY):
    """(inputs, targets) of one batch: a pair; several inputs then the targets; or a dict whose
    ``target_key`` entry is the targets (the rest are the inputs, passed by name)."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, (tuple, list)) and len(batch) > 2:
        return tuple(batch[:-1]), batch[-1]
    if isinstance(batch, dict):
        if {"inputs", "targets"} <= batch.keys() and target_key not in batch:
            return batch["inputs"], batch["targets"]
        if target_key in batch:
            return {k: v for k, v in batch.items() if k != target_key}, batch[target_key]
        raise ConvergeError(f"{name} data yields dicts without a {target_key!r} entry (keys: "
                            f"{', '.join(map(str, batch))}); {_target_key_advice(batch)}")
    raise ConvergeError(f"{name} data must yield (inputs, targets) pairs or dicts with a {target_key!r} entry, "
                        f"got {type(batch).__name__}")


def in_model_precision(model: Any, splits: dict) -> dict:
    """The in-memory splits with their float32 tensors made float64 when the model's floating-point
    parameters all are (a model made ``.double()`` beside float64 NumPy data, which the splits turned into
    float32): without it the first forward fails on "mat1 and mat2 must have the same dtype". Other splits,
    and splits for any other model, are returned as they are."""
    if not wants_float64(model):
        return splits
    return {name: TensorSplit(as_float64(split.inputs), as_float64(split.targets), split.name)
            if isinstance(split, TensorSplit) else split for name, split in splits.items()}


def wants_float64(model: Any) -> bool:
    """Whether every floating-point parameter of the model is float64."""
    return {p.dtype for p in model.parameters() if p.is_floating_point()} == {torch.float64}


def as_float64(value: Any) -> Any:
    """The float32 tensors of a structure made float64 (others kept)."""
    return map_tensors(lambda t: t.double() if t.dtype == torch.float32 else t, value)


# --- checking what was handed over ----------------------------------------------------------------------
def make_split(data: Any, name: str, num_workers: int = 0, *, target_key: str = TARGET_KEY,
               steps_per_epoch: int | None = None, check_values: bool = True,
               missing_targets: bool = False) -> TensorSplit | LoaderSplit:
    """Check one split as handed over and wrap it. ``check_values`` False lets NaN and Inf through (the
    doctor reports them instead); ``missing_targets`` lets NaN targets through (the task has a loss of its
    own, which may mask them: `converge.engine.objective.check_missing_targets` asks it)."""
    if data is None:
        raise ConvergeError(f"the {name} split is missing (got None)")
    if isinstance(data, (DataLoader, Dataset)):
        return _loader_split(data, name, num_workers, target_key, steps_per_epoch, check_values)
    if isinstance(data, dict):
        if target_key not in data:
            raise ConvergeError(f"the {name} split is a dict without a {target_key!r} entry (keys: "
                                f"{', '.join(map(str, data))}); {_target_key_advice(data)}")
        inputs = {k: v for k, v in data.items() if k != target_key}
        return _tensor_split(inputs, data[target_key], name, check_values, missing_targets)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return _tensor_split(data[0], data[1], name, check_values, missing_targets)
    raise ConvergeError(f"the {name} split must be an (inputs, targets) pair, a dict of tensors, a Dataset or a "
                        f"DataLoader, got {type(data).__name__}")


def _tensor_split(inputs: Any, targets: Any, name: str, check_values: bool = True,
                  missing_targets: bool = False) -> TensorSplit:
    targets = _targets_as_tensors(targets, inputs, name)
    first = tensors_of(targets)[0]
    if first.ndim == 0 or (isinstance(inputs, (torch.Tensor, np.ndarray)) and inputs.ndim == 0):
        raise ConvergeError(f"{name} inputs and targets must have a sample dimension, got shapes "
                            f"{tuple(np.shape(inputs))} and {tuple(first.shape)}")
    n = first.shape[0]
    for part in tensors_of(targets):
        if part.ndim == 0 or part.shape[0] != n:
            raise ConvergeError(f"{name} targets disagree in length: {n} and "
                                f"{part.shape[0] if part.ndim else 'no'} rows")
    if isinstance(inputs, dict):
        inputs = {key: _as_tensor(value, name, f"input {key!r}") for key, value in inputs.items()}
    elif _several_inputs(inputs, n):
        inputs = tuple(_as_tensor(value, name, f"input {i}") for i, value in enumerate(inputs))
    else:
        inputs = _as_tensor(inputs, name, "inputs")
    for part in tensors_of(inputs) or [None]:
        if part is None or part.ndim == 0:
            raise ConvergeError(f"{name} inputs must have a sample dimension")
        if part.shape[0] != n:
            raise ConvergeError(f"{name} inputs and targets disagree in length: "
                                f"{part.shape[0]} inputs, {n} targets")
    if n == 0:
        raise ConvergeError(f"the {name} split is empty")
    if check_values:
        check_finite(inputs, f"{name} inputs")
        check_finite(targets, f"{name} targets", missing=missing_targets, targets=True)
    return TensorSplit(inputs, targets, name)


def _loader_split(data, name: str, num_workers: int, target_key: str, steps_per_epoch: int | None,
                  check_values: bool = True) -> LoaderSplit:
    split = LoaderSplit(data, name, num_workers, target_key=target_key, steps_per_epoch=steps_per_epoch)
    if not split.stream:
        try:
            length = len(split)
        except TypeError:
            raise ConvergeError(f"the {name} dataset has no len(); give a map-style Dataset, or an "
                                f"IterableDataset for a stream") from None
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
    if check_values:
        check_finite(whole[0] if whole else inputs, f"{name} inputs")
    return split


def make_splits(train: Any, val: Any, test: Any = None, num_workers: int = 0, *, target_key: str = TARGET_KEY,
                steps_per_epoch: int | None = None, missing_targets: bool = False) -> dict:
    options = dict(target_key=target_key, missing_targets=missing_targets)
    splits = {"train": make_split(train, "train", num_workers, steps_per_epoch=steps_per_epoch, **options),
              "val": make_split(val, "val", num_workers, **options)}
    if test is not None:
        splits["test"] = make_split(test, "test", num_workers, **options)
    if steps_per_epoch is not None and not getattr(splits["train"], "stream", False):
        raise ConvergeError("--steps-per-epoch applies to a streamed training split (an IterableDataset); "
                            "an epoch of this training data is one pass over it")
    return splits


def epoch_samples(split: TensorSplit | LoaderSplit, batch_size: int) -> int:
    """Samples in one epoch: the split's size, or what a stream's epoch reads."""
    return split.steps_per_epoch * batch_size if getattr(split, "stream", False) else len(split)


def is_classification(targets: Any) -> bool:
    return isinstance(targets, torch.Tensor) and not targets.dtype.is_floating_point and targets.dtype != torch.bool
