"""What the data allows: the validation loss of a small reference model, the yardstick of "underfitting".

The constant prediction says whether a model learned anything; it cannot say whether a model learned what
the data allows (a linear model on a nonlinear target beats a constant easily). The reference here is a
cheap proxy of known capacity: a one-hidden-layer MLP (``HIDDEN`` ReLU units) on standardized, flattened
inputs, trained with AdamW for a fixed budget (about a second on a CPU) on (at most ``MAX_ROWS`` of) the
training split; its best validation loss, scored by the task's own loss, is the reference. It is built only
when both splits are tensors in memory with one floating-point input tensor of at most ``MAX_FEATURES``
features, for the classification, binary, multilabel and regression kinds, under converge's own loss or the
task's standard loss, with its options or without (a ``pos_weight``, class weights, label smoothing: the
reference trains and is scored under the same loss); otherwise there is none (None).

The reference is never wider than the user's model where that model is deliberately narrow: when one of
the model's layers outputs fewer values per sample than both its input and its output have (a bottleneck,
as in an autoencoder's code layer), the reference's hidden layer gets that width (``bottleneck_width``).
A 64-unit reference can copy 64 inputs to 64 outputs; through an 8-unit code it cannot, and the model was
built so that it cannot (an 8-unit autoencoder on digits: 0.0262 validation MSE against 0.0011 for the
64-unit reference, "24x worse"; against an 8-unit reference, 0.0257, it is as good as the yardstick).

Every random draw (its subset of rows, its initial weights, its batches) comes from a generator of its
own, seeded from ``seed``: the run's random streams are untouched, and it may train in a thread beside the
run's (`converge.engine.judge` starts it there while the run trains on the CPU).
"""

from __future__ import annotations

import math
import threading

import torch
from torch import nn

from converge.data import TensorSplit
from converge.engine.objective import Objective, output_link
from converge.engine.optim import adamw

MAX_ROWS = 4000          # training rows the reference sees (a random subset beyond)
MAX_FEATURES = 4096      # flattened input features, at most
HIDDEN = 64
EPOCHS = 40
MAX_STEPS = 1000         # optimizer steps in all (fewer epochs on more rows)
LR = 1e-2
WEIGHT_DECAY = 1e-2
BATCH_DIV = 10          # batches per epoch, about (batches of 32 to 256 rows)
EVAL_EVERY = 5           # epochs between validation checks
CLIP = 10.0             # standardized inputs are clipped to +-CLIP (a feature constant on the rows seen)
KINDS = ("classification", "binary", "multilabel", "regression")


def _tensors(split) -> tuple[torch.Tensor, torch.Tensor] | None:
    if isinstance(split, TensorSplit):
        pair = split.inputs, split.targets
    else:
        whole = getattr(split, "whole_tensors", None)
        pair = whole() if whole is not None else None
    if pair is None or not all(isinstance(t, torch.Tensor) for t in pair):
        return None
    x, y = pair
    if not x.dtype.is_floating_point or x.ndim < 2 or len(x) != len(y) or len(x) < 2:
        return None
    return x, y


@torch.no_grad()
def _val_loss(model, x, y, objective, shift, scale, link=None) -> float:
    model.eval()
    losses = [objective.loss_fn(_predict(model, xb, shift, scale, y, link), yb).double() * len(yb)
              for xb, yb in zip(x.split(1024), y.split(1024))]
    model.train()
    return float(torch.stack(losses).sum() / len(y))


def _predict(model, x, shift, scale, y_like, link=None):
    out = model(x) * scale + shift
    out = out if link is None else link(out)
    return out if y_like.ndim > 1 or out.shape[1] != 1 else out.squeeze(1)


def bottleneck_width(model: nn.Module | None, x: torch.Tensor) -> int | None:
    """The fewest values per sample that a leaf module of ``model`` outputs on the rows ``x`` (run once in
    eval mode, without gradients), when that is fewer than both the input's and the model's output's values
    per sample; None when there is no such layer (or the model cannot be run on ``x`` alone). Widths made by
    tensor operations outside modules (slicing in forward) are not seen."""
    if model is None:
        return None
    widths: list[int] = []

    def record(module, args, output):
        if isinstance(output, torch.Tensor) and output.ndim >= 1 and output.shape[0] == len(x):
            widths.append(output[0].numel())

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            device = next((p.device for p in model.parameters()), x.device)
            output = model(x.to(device))
    except Exception:   # a model that needs more than one tensor (or another dtype): no width known
        return None
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if not isinstance(output, torch.Tensor) or output.shape[0] != len(x) or not widths:
        return None
    narrowest = min(widths)
    return narrowest if narrowest < min(x[0].numel(), output[0].numel()) else None


def applies(splits: dict, objective: Objective) -> bool:
    """Whether there can be a reference for this task (see the module text; some cases are only known once
    the data is looked at: then `reference_loss` says None)."""
    return objective.standard_loss and objective.kind in KINDS and "val" in splits and \
        _tensors(splits["train"]) is not None and _tensors(splits["val"]) is not None


def reference_width(splits: dict, model: nn.Module | None) -> int:
    """The reference's hidden units: ``HIDDEN``, or fewer where ``model`` has a narrower bottleneck (it runs
    ``model`` on two training rows: from the run's own thread, between its steps)."""
    train = _tensors(splits["train"])
    width = bottleneck_width(model, train[0][:2]) if train is not None else None
    return min(HIDDEN, width or HIDDEN)


def reference_loss(splits: dict, objective: Objective, *, seed: int = 0, model: nn.Module | None = None,
                   width: int | None = None, stop: threading.Event | None = None) -> float | None:
    """The reference model's best validation loss, or None when it does not apply (see the module text) or
    ``stop`` was set while it trained. ``model``: the user's model, whose bottleneck (if any) bounds the
    reference's width; or ``width``: that bound, found before (`reference_width`)."""
    if not applies(splits, objective):
        return None
    (x, y), (vx, vy) = _tensors(splits["train"]), _tensors(splits["val"])
    hidden = width if width is not None else reference_width(splits, model)
    x, vx = x.reshape(len(x), -1).float(), vx.reshape(len(vx), -1).float()
    if x.shape[1] > MAX_FEATURES or x.shape[1] != vx.shape[1]:
        return None
    y, vy = objective.user_units(y), objective.user_units(vy)   # standardized targets: scored in the user's units
    generator = torch.Generator().manual_seed(seed)
    if len(x) > MAX_ROWS:
        keep = torch.randperm(len(x), generator=generator)[:MAX_ROWS].to(x.device)
        x, y = x[keep], y[keep]
    mean, std = x.mean(0), x.std(0)
    std = torch.where(std > 1e-6 * mean.abs().clamp(min=1.0), std, torch.ones_like(std))  # constant: left as is
    x, vx = ((x - mean) / std).clamp(-CLIP, CLIP), ((vx - mean) / std).clamp(-CLIP, CLIP)
    if objective.kind == "classification":
        if y.dtype.is_floating_point or y.ndim != 1:
            return None
        outputs = int(max(int(y.max()), int(vy.max()))) + 1
        shift, scale = 0.0, 1.0
    else:
        flat = y.reshape(len(y), -1).float()
        outputs = flat.shape[1]
        if objective.kind == "regression":   # the proxy predicts standardized targets
            shift, scale = flat.mean(0), flat.std(0).clamp(min=1e-8)
        else:
            shift, scale = 0.0, 1.0
    # A second generator for the weights and batches, as a seeded global stream was before (same numbers).
    draws = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    with torch.enable_grad():
        return _train(x, y, vx, vy, outputs, objective, shift, scale, hidden, draws, stop)


def _linear(inputs: int, outputs: int, generator: torch.Generator) -> nn.Linear:
    """nn.Linear with its default initialization drawn from ``generator`` (not the global one)."""
    layer = nn.utils.skip_init(nn.Linear, inputs, outputs)
    with torch.no_grad():
        nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
        bound = 1 / math.sqrt(inputs)
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer


def _train(x, y, vx, vy, outputs, objective, shift, scale, hidden, generator, stop=None) -> float | None:
    model = nn.Sequential(_linear(x.shape[1], hidden, generator), nn.ReLU(),
                          _linear(hidden, outputs, generator)).to(x.device)
    optimizer = adamw(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    batch = max(32, min(256, len(y) // BATCH_DIV))
    steps_per_epoch = math.ceil(len(y) / batch)
    epochs = max(EVAL_EVERY, min(EPOCHS, MAX_STEPS // steps_per_epoch))
    best = math.inf
    link = output_link(objective)
    for epoch in range(1, epochs + 1):
        if stop is not None and stop.is_set():
            return None
        for rows in torch.randperm(len(y), generator=generator).to(x.device).split(batch):
            optimizer.zero_grad(set_to_none=True)
            objective.loss_fn(_predict(model, x[rows], shift, scale, y, link), y[rows]).backward()
            optimizer.step()
        if epoch % EVAL_EVERY == 0 or epoch == epochs:
            best = min(best, _val_loss(model, vx, vy, objective, shift, scale, link))
    return best if math.isfinite(best) else None
