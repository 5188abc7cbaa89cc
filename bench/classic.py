"""The classic hand-written recipe on any task file: the yardstick converge is measured against.

    python bench/classic.py TASK [--seeds 0 1 2] [--json OUT] [--max-epochs 300]
    python bench/classic.py TASK --seeds 0 --evaluate RUN/best.safetensors --json OUT

What a competent user writes by hand, the same for every task:

* the seed (``random``, NumPy, ``torch.manual_seed``) is set before ``model()`` and ``data()`` are called;
* AdamW, LR 1e-3, weight decay 1e-2 (on every parameter, as ``AdamW(model.parameters())`` does; a loss with
  parameters of its own has them trained too, and kept with the best weights);
* batch size 64 for in-memory splits and Datasets; a DataLoader the task returns is used as it is;
* ReduceLROnPlateau(factor 0.1, patience 5) on the validation loss, early stopping with patience 10 on
  the validation loss, the best weights restored; at most 300 epochs;
* an endless stream (IterableDataset) trains 100 steps per epoch from one running iterator.

The loss is the task's own ``loss``; without one it follows from the targets and outputs of the first
training batch (``kind``):

==============  =============================================  ===============================
kind            targets / outputs                              loss
==============  =============================================  ===============================
``multiclass``  integer [N] / [N, C]                           cross-entropy
``sequence``    integer [N, T] / [N, T, V]                     cross-entropy over V, -100 ignored
``binary``      0/1 float or bool, one output per sample       BCEWithLogits
``multilabel``  0/1 float or bool [N, L] / [N, L], L > 1       BCEWithLogits
``regression``  anything else                                  MSE ([N] matched to [N, 1])
==============  =============================================  ===============================

Test metric by kind: accuracy (multiclass), accuracy at logit 0 (binary), exact match and per-label
accuracy (multilabel), per-token accuracy ignoring -100 (sequence), MSE (regression); plus the test
loss and the epochs. Binary and multilabel also report the accuracy / exact match thresholded at 0.5
(``*_at_half``), which is what fits a model trained with MSE on 0/1 targets (outputs near 0 and 1, not
logits); it is informative only. Batches may be (inputs, targets) pairs, tuples whose last item is the target
(``model(*inputs)``), or dicts with the target under ``labels`` (``model(**inputs)``); outputs may be
tensors, objects with ``.logits``, dicts with ``"logits"`` or tuples (first item); a task's own loss written
for everything the model returns (a VAE's tuple) gets all of it.

``--evaluate WEIGHTS`` trains nothing: it builds the task's model and data with the seed, loads the
weights (``converge.load_weights``: a converge run's ``best.safetensors``) and scores the test split
with the same metric, so converge and the classic recipe are judged by one piece of code.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from converge.engine.loss_parameters import WithLossParameters, loss_parameters
from converge.rng import seed_everything
from converge.task import load_task

LR, WEIGHT_DECAY, BATCH_SIZE = 1e-3, 1e-2, 64
PLATEAU_FACTOR, PLATEAU_PATIENCE, STOP_PATIENCE, MAX_EPOCHS = 0.1, 5, 10, 300
STREAM_STEPS = 100                       # steps per "epoch" on an endless stream
LABEL_KEYS = ("labels", "label", "targets", "target", "y")
HIGHER_IS_BETTER = {"multiclass": True, "binary": True, "multilabel": True, "sequence": True, "regression": False}
PRIMARY = {"multiclass": "accuracy", "binary": "accuracy", "multilabel": "exact_match",
           "sequence": "token_accuracy", "regression": "mse", "custom": "loss"}


# --- data ----------------------------------------------------------------------------------------
def _tensor(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return type(value)(_tensor(v) for v in value)
    if isinstance(value, dict):
        return {k: _tensor(v) for k, v in value.items()}
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    return tensor.to(FLOAT_DTYPE) if tensor.dtype == torch.float64 else tensor


# float64 data becomes float32, as for the usual float32 model; a task whose model is made .double() keeps it
# float64, as the user's own loop would (set by build)
FLOAT_DTYPE = torch.float32


def _index(value: Any, idx: torch.Tensor) -> Any:
    if isinstance(value, (tuple, list)):
        return type(value)(_index(v, idx) for v in value)
    if isinstance(value, dict):
        return {k: _index(v, idx) for k, v in value.items()}
    return value[idx]


def _length(value: Any) -> int:
    if isinstance(value, (tuple, list)):
        return _length(value[0])
    if isinstance(value, dict):
        return _length(next(iter(value.values())))
    return len(value)


class InMemory:
    """An (inputs, targets) pair batched by slicing, reshuffled every epoch like DataLoader(shuffle=True)."""

    def __init__(self, inputs: Any, targets: Any, shuffle: bool, seed: int) -> None:
        self.inputs, self.targets, self.shuffle = _tensor(inputs), _tensor(targets), shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator:
        n = _length(self.targets)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for lo in range(0, n, BATCH_SIZE):
            idx = order[lo:lo + BATCH_SIZE]
            yield _index(self.inputs, idx), _index(self.targets, idx)


class Endless:
    """A fixed number of steps per epoch drawn from one running iterator over a stream."""

    def __init__(self, loader: DataLoader, steps: int) -> None:
        self.loader, self.steps, self.iterator = loader, steps, None

    def __iter__(self) -> Iterator:
        for _ in range(self.steps):
            try:
                if self.iterator is None:
                    raise StopIteration
                batch = next(self.iterator)
            except StopIteration:  # a finite stream starts over
                self.iterator = iter(self.loader)
                batch = next(self.iterator)
            yield batch


def make_batches(split: Any, train: bool, seed: int):
    if isinstance(split, DataLoader):
        if train and isinstance(split.dataset, IterableDataset):
            return Endless(split, STREAM_STEPS)
        return split
    if isinstance(split, IterableDataset):
        loader = DataLoader(split, batch_size=BATCH_SIZE)
        return Endless(loader, STREAM_STEPS) if train else loader
    if isinstance(split, Dataset):
        return DataLoader(split, batch_size=BATCH_SIZE, shuffle=train,
                          generator=torch.Generator().manual_seed(seed))
    if isinstance(split, (tuple, list)) and len(split) == 2:
        return InMemory(split[0], split[1], shuffle=train, seed=seed)
    raise TypeError(f"cannot batch a split of type {type(split).__name__}")


def unpack(batch: Any) -> tuple[Any, torch.Tensor]:
    """(inputs, targets) from a batch: a dict with the target under `labels`, a pair, or a longer tuple."""
    if isinstance(batch, dict):
        key = next((k for k in LABEL_KEYS if k in batch), None)
        if key is None:
            raise KeyError(f"a dict batch needs the targets under one of {LABEL_KEYS}; got keys {list(batch)}")
        return {k: v for k, v in batch.items() if k != key}, batch[key]
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1]
        return tuple(batch[:-1]), batch[-1]
    raise TypeError(f"cannot tell inputs from targets in a batch of type {type(batch).__name__}")


def call(model: nn.Module, inputs: Any) -> Any:
    """What the model returns for ``inputs``."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def scores(out: Any) -> torch.Tensor:
    """The score tensor in what a model returned."""
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, dict):   # a dict of heads without "logits": the first head
        return out["logits"] if "logits" in out else next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


# --- loss and metrics by kind --------------------------------------------------------------------
def _is_01(targets: torch.Tensor) -> bool:
    if targets.dtype == torch.bool:
        return True
    return targets.dtype.is_floating_point and bool(((targets == 0) | (targets == 1)).all())


def infer_kind(outputs: torch.Tensor, targets: Any) -> str:
    if not isinstance(targets, torch.Tensor):   # a tuple or dict of targets, one per head: the task's own loss
        return "custom"
    if not targets.dtype.is_floating_point and targets.dtype != torch.bool:
        if targets.ndim == 2 and outputs.ndim == 3:
            return "sequence"
        return "multiclass"
    if _is_01(targets):
        if outputs.numel() == targets.shape[0]:
            return "binary"
        if targets.ndim == 2 and targets.shape[1] > 1 and outputs.shape == targets.shape:
            return "multilabel"
    return "regression"


def inferred_loss(kind: str) -> Callable:
    if kind == "multiclass":
        return lambda out, y: F.cross_entropy(out, y)
    if kind == "sequence":
        return lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=-100)
    if kind in ("binary", "multilabel"):
        return lambda out, y: F.binary_cross_entropy_with_logits(out.reshape(y.shape), y.float())
    return lambda out, y: F.mse_loss(out.reshape(y.shape) if out.numel() == y.numel() else out, y.float())


@torch.no_grad()
def batch_counts(kind: str, out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Sums for one batch; divided by their counts at the end."""
    if kind == "custom":
        return {}
    if kind == "multiclass":
        # per sample, or per position for [N, C, ...] scores against [N, ...] labels (a segmentation's pixels)
        return {"correct": float((out.argmax(dim=1) == y).sum()), "n": y.numel()}
    if kind == "sequence":
        keep = y != -100
        # [N, T, V] scores, or [N, V, T] as torch's cross-entropy wants them: the class dimension is the one
        # the targets do not have
        class_dim = -1 if out.shape[:-1] == y.shape else 1
        return {"correct": float((out.argmax(dim=class_dim)[keep] == y[keep]).sum()), "n": float(keep.sum())}
    if kind == "binary":
        truth = y.reshape(-1) > 0.5
        return {"correct": float(((out.reshape(-1) > 0) == truth).sum()), "n": y.shape[0],
                "correct_half": float(((out.reshape(-1) > 0.5) == truth).sum())}
    if kind == "multilabel":
        right = (out.reshape(y.shape) > 0) == (y > 0.5)
        right_half = (out.reshape(y.shape) > 0.5) == (y > 0.5)
        return {"exact": float(right.all(dim=1).sum()), "labels_right": float(right.sum()), "n": y.shape[0],
                "labels": float(y.numel()), "exact_half": float(right_half.all(dim=1).sum())}
    if out.numel() != y.numel():   # outputs that are not one prediction per target (quantiles [N, 3] of [N])
        return {"n_other": float(y.shape[0])}
    diff = out.reshape(y.shape).float() - y.float()
    return {"sq": float((diff ** 2).sum()), "n": float(diff.numel())}


def finish(kind: str, sums: dict[str, float]) -> dict[str, float]:
    # *_at_half: thresholded at 0.5 instead of 0, for outputs trained as 0/1 regression values (MSE), not
    # logits; informative only, the primary metric stays the one for logits.
    if kind == "multiclass":
        return {"accuracy": sums["correct"] / sums["n"]}
    if kind == "binary":
        return {"accuracy": sums["correct"] / sums["n"], "accuracy_at_half": sums["correct_half"] / sums["n"]}
    if kind == "sequence":
        return {"token_accuracy": sums["correct"] / sums["n"]}
    if kind == "multilabel":
        return {"exact_match": sums["exact"] / sums["n"], "label_accuracy": sums["labels_right"] / sums["labels"],
                "exact_match_at_half": sums["exact_half"] / sums["n"]}
    return {"mse": sums["sq"] / sums["n"]} if "sq" in sums else {}


@torch.no_grad()
def evaluate(model: nn.Module, batches, loss_fn: Callable, kind: str) -> dict[str, float]:
    model.eval()
    total, seen, sums = 0.0, 0, {}
    for batch in batches:
        inputs, y = unpack(batch)
        out = call(model, inputs)
        n = _length(y)
        total += float(loss_fn(out, y)) * n
        seen += n
        for key, value in batch_counts(kind, scores(out), y).items():
            sums[key] = sums.get(key, 0.0) + value
    model.train()
    return {"loss": total / seen, **finish(kind, sums)}


# --- the recipe ----------------------------------------------------------------------------------
def build(task_path: str, seed: int):
    task = load_task(task_path)
    seed_everything(seed)              # before model() and data(), as converge does
    model = task.build_model()
    train, val, test = task.build_data()
    global FLOAT_DTYPE
    floats = {p.dtype for p in model.parameters() if p.is_floating_point()}
    FLOAT_DTYPE = torch.float64 if floats == {torch.float64} else torch.float32
    return task, model, train, val, test


def probe_kind(task, model: nn.Module, train_batches) -> tuple[str, Callable]:
    """The kind, and the loss as the loop calls it: on what the model returns. The task's own loss gets all of
    it when it was written for that (a VAE's (reconstruction, mu, logvar)), as a hand loop would pass it;
    any other loss gets the score tensor."""
    inputs, y = unpack(next(iter(train_batches)))
    with torch.no_grad():
        model.eval()
        raw = call(model, inputs)
        model.train()
        out = scores(raw)
        if task.loss is not None and raw is not out:
            try:
                value = task.loss(raw, y)
            except Exception:
                value = None
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                return _own_kind(task.loss, out, y), task.loss
    if task.loss is None and not isinstance(y, torch.Tensor):
        return "custom", _sum_of_heads(raw, y)
    kind = _own_kind(task.loss, out, y) if task.loss is not None else infer_kind(out, y)
    base = task.loss if task.loss is not None else inferred_loss(kind)
    return kind, lambda raw, y: base(scores(raw), y)


def _sum_of_heads(raw: Any, y: Any) -> Callable:
    """Targets per head and no loss: each head's standard loss, summed in raw units, as a hand loop adds a
    cross-entropy and an MSE (scored by that sum)."""
    keys = list(y) if isinstance(y, dict) else list(range(len(y)))
    losses = {key: inferred_loss(infer_kind(raw[key], y[key])) for key in keys}
    return lambda raw, y: sum(losses[key](raw[key], y[key]) for key in keys)


def _own_kind(loss: Callable, out: torch.Tensor, y: Any) -> str:
    """The kind under the task's own loss: not multi-class when its outputs are not class scores to it (an
    embedding under a margin loss) or are fewer than the labels (CORAL's threshold logits), whose argmax is no
    prediction: scored by the loss."""
    kind = infer_kind(out, y)
    if kind == "multiclass" and out.ndim == 2:
        from converge.engine.loss_probe import reads_class_scores
        if int(y.max()) >= out.shape[1] or reads_class_scores(loss, out, y) is False:
            return "custom"
    return kind


def early_stopping_loop(model, train_b, val_b, loss_fn, kind: str, optimizer, scheduler, max_epochs: int,
                        on_epoch=None, weights=None) -> tuple[float, int, int]:
    """The recipe's loop: train an epoch, validate, step ``scheduler`` (if any) on the validation loss, keep
    the best weights, stop after STOP_PATIENCE epochs without a better one; the best weights are loaded at
    the end. An optimizer with train()/eval() (schedule-free AdamW keeps averaged weights) is switched to
    eval around each validation. ``on_epoch(val_loss)`` after each validation. ``weights``: what the best
    state is kept of (the model, or the model and a loss's own parameters). Returns (best validation loss, its
    epoch, the epochs run)."""
    to_train, to_eval = getattr(optimizer, "train", lambda: None), getattr(optimizer, "eval", lambda: None)
    weights = weights if weights is not None else model
    best, best_state, best_epoch, bad, epoch = math.inf, copy.deepcopy(weights.state_dict()), 0, 0, 0
    for epoch in range(1, max_epochs + 1):
        model.train()
        to_train()
        for batch in train_b:
            inputs, y = unpack(batch)
            loss = loss_fn(call(model, inputs), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        to_eval()
        val_loss = evaluate(model, val_b, loss_fn, kind)["loss"]
        if on_epoch is not None:
            on_epoch(val_loss)
        if scheduler is not None:
            scheduler.step(val_loss)
        if val_loss < best:
            best, best_state, best_epoch, bad = val_loss, copy.deepcopy(weights.state_dict()), epoch, 0
        else:
            bad += 1
            if bad >= STOP_PATIENCE:
                break
    weights.load_state_dict(best_state)
    return best, best_epoch, epoch


def train_classic(task_path: str, seed: int, max_epochs: int = MAX_EPOCHS) -> dict:
    started = time.perf_counter()
    task, model, train, val, test = build(task_path, seed)
    train_b, val_b = make_batches(train, True, seed), make_batches(val, False, seed)
    test_b = make_batches(test, False, seed) if test is not None else None
    if isinstance(train_b, Endless):  # the probe must not use up the stream's first batch
        kind, loss_fn = probe_kind(task, model, DataLoader(train.dataset if isinstance(train, DataLoader)
                                                           else train, batch_size=BATCH_SIZE))
    else:
        kind, loss_fn = probe_kind(task, model, train_b)
    # A loss with parameters of its own (ArcFace centres, learned loss weights): a hand loop hands them to the
    # optimizer beside the model's, and keeps them with the best weights.
    own = loss_parameters(task.loss, model)
    weights = WithLossParameters(model, own) if own else model
    optimizer = torch.optim.AdamW([*model.parameters(), *own.values()], lr=LR, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=PLATEAU_FACTOR,
                                                           patience=PLATEAU_PATIENCE)
    best, best_epoch, epoch = early_stopping_loop(model, train_b, val_b, loss_fn, kind, optimizer, scheduler,
                                                  max_epochs, weights=weights)
    result = {"seed": seed, "kind": kind, "epochs": epoch, "best_epoch": best_epoch, "best_val_loss": best,
              "own_loss": task.loss is not None, "seconds": time.perf_counter() - started}
    if test_b is not None:
        test_scores = evaluate(model, test_b, loss_fn, kind)
        primary = primary_metric(kind, test_scores)
        result.update(test=test_scores, primary=primary, test_metric=test_scores[primary])
    return result


def evaluate_weights(task_path: str, seed: int, weights: str) -> dict:
    """Score a converge run's best weights on the test split with the classic recipe's metric."""
    from converge import load_weights

    task, model, train, val, test = build(task_path, seed)
    train_b = make_batches(train, False, seed)
    if isinstance(train_b, Endless):
        train_b = DataLoader(train.dataset if isinstance(train, DataLoader) else train, batch_size=BATCH_SIZE)
    load_weights(weights, model)
    beside = Path(weights).with_name("loss_parameters.safetensors")   # a loss with parameters of its own
    if beside.is_file():
        from safetensors.torch import load_file
        saved = load_file(str(beside))
        with torch.no_grad():
            for name, param in loss_parameters(task.loss, model).items():
                param.copy_(saved[name])
    kind, loss_fn = probe_kind(task, model, train_b)
    test_scores = evaluate(model, make_batches(test, False, seed), loss_fn, kind)
    primary = primary_metric(kind, test_scores)
    return {"seed": seed, "kind": kind, "weights": weights, "test": test_scores, "primary": primary,
            "test_metric": test_scores[primary]}


def primary_metric(kind: str, test_scores: dict) -> str:
    """The kind's metric, or the loss when the outputs are not one prediction per target (no MSE)."""
    return PRIMARY[kind] if PRIMARY[kind] in test_scores else "loss"


def _fmt(result: dict) -> str:
    test = " ".join(f"{k} {v:.4f}" for k, v in result.get("test", {}).items())
    extra = f"  epochs {result['epochs']} (best {result['best_epoch']})  {result['seconds']:.1f} s" \
        if "epochs" in result else ""
    return f"seed {result['seed']}: {result['kind']:<10} test {test}{extra}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", help="a task file")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-epochs", type=int, default=MAX_EPOCHS)
    parser.add_argument("--evaluate", metavar="WEIGHTS", help="score these weights on the test split, no training")
    parser.add_argument("--json", metavar="OUT", help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for seed in args.seeds:
        result = evaluate_weights(args.task, seed, args.evaluate) if args.evaluate else \
            train_classic(args.task, seed, args.max_epochs)
        results.append(result)
        print(_fmt(result), flush=True)
    scored = [r for r in results if "test_metric" in r]
    if scored:
        primary = scored[0]["primary"]
        line = f"mean over {len(scored)} seed(s): test {primary} {statistics.fmean(r['test_metric'] for r in scored):.4f}"
        if not args.evaluate:
            line += f", epochs {statistics.fmean(r['epochs'] for r in results):.1f}"
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"task": str(Path(args.task).resolve()), "results": results},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
