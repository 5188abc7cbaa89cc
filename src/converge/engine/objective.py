"""The loss and the metrics: inferred when the task leaves them out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from converge.data import check_label_range, is_classification
from converge.engine import device as dev
from converge.errors import ConvergeError


@dataclass
class Objective:
    loss_fn: Callable
    kind: str                        # "classification" or "regression"
    metric_fns: dict[str, Callable]
    inferred: bool = True            # the loss was inferred from the targets (not the task's own)


def resolve_objective(model: nn.Module, splits: dict, loss: Callable | None, metrics: dict[str, Callable], *,
                      amp: str, device: torch.device, probe_size: int | str) -> Objective:
    """Run the model once on a probe batch (eval mode, no gradient: no side effects) to infer the loss,
    check the labels against the outputs and catch shape mismatches before any training."""
    size = probe_size if isinstance(probe_size, int) else 64
    inputs, targets = splits["train"].probe(min(size, 256))
    inputs, targets = inputs.to(device), targets.to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), dev.autocast(amp, device):
            outputs = model(inputs)
    except Exception as exc:
        raise ConvergeError(f"the model fails on a batch of inputs {_shape(inputs)}: "
                            f"{type(exc).__name__}: {exc}") from exc
    finally:
        model.train(was_training)
    inferred, kind = infer_loss(targets)
    if not is_classification(targets):
        kind = "regression"
    if kind == "classification" and isinstance(outputs, torch.Tensor) and outputs.ndim >= 2:
        for split in splits.values():
            check_label_range(split, outputs.shape[1])
    loss_fn = loss if loss is not None else inferred
    check_outputs_fit(loss_fn, outputs, targets)
    metric_fns = {**default_metrics(kind, outputs), **metrics}
    for name in metric_fns:
        if name == "loss" or not name.isidentifier():
            raise ConvergeError(f"metric name {name!r} must be an identifier other than 'loss'")
    return Objective(loss_fn, kind, metric_fns, inferred=loss is None)


def monitor_key(monitor: str, metric_fns: dict) -> str:
    """The record key of the monitored value ("val_loss", "val_accuracy", ...); an error for a value that
    is not reported."""
    name = monitor[4:] if monitor.startswith("val_") else monitor
    if name != "loss" and name not in metric_fns:
        known = ", ".join(["val_loss", *(f"val_{m}" for m in metric_fns)])
        raise ConvergeError(f"--monitor {monitor!r} is not a reported value; choose one of {known}")
    return f"val_{name}"


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs.argmax(dim=1) == targets).float().mean()


def mean_squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # Targets of shape (N,) against outputs of shape (N, 1) would silently broadcast to (N, N).
    if targets.shape != outputs.shape:
        if targets.numel() != outputs.numel():
            raise ValueError(f"MSE needs outputs and targets of one shape, got {tuple(outputs.shape)} "
                             f"and {tuple(targets.shape)}")
        targets = targets.view_as(outputs)
    return F.mse_loss(outputs.float(), targets.float())


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs.float(), targets)


def infer_loss(targets: torch.Tensor) -> tuple[Callable, str]:
    """Integer class targets mean cross-entropy, float targets mean MSE."""
    if not isinstance(targets, torch.Tensor):
        raise ConvergeError(f"cannot infer a loss for targets of type {type(targets).__name__}; "
                            "define `loss` in the task")
    if targets.dtype.is_floating_point:
        return mean_squared_error, "regression"
    return cross_entropy, "classification"


def check_outputs_fit(loss_fn: Callable, outputs, targets) -> None:
    """Run the loss once on a probe batch, so a shape mismatch is reported before training starts."""
    try:
        value = loss_fn(outputs, targets)
    except Exception as exc:
        raise ConvergeError(f"the loss cannot compare the model's outputs {_shape(outputs)} with targets "
                            f"{_shape(targets)}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                            ) from exc
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise ConvergeError(f"the loss must return a scalar tensor, got {_shape(value)}")
    if isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor) and \
            outputs.shape[0] != targets.shape[0]:
        raise ConvergeError(f"the model returns {outputs.shape[0]} outputs for a batch of {targets.shape[0]}")


def _shape(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"of shape {tuple(value.shape)}"
    return f"of type {type(value).__name__}"


def default_metrics(kind: str, outputs) -> dict[str, Callable]:
    if kind == "classification" and isinstance(outputs, torch.Tensor) and outputs.ndim >= 2:
        return {"accuracy": accuracy}
    return {}


BASELINE_SAMPLES = 100_000


@torch.no_grad()
def constant_prediction_loss(split, kind: str) -> float | None:
    """The default loss of the best constant prediction on (up to BASELINE_SAMPLES of) a split's targets:
    the label entropy for cross-entropy, the mean target variance for MSE. The yardstick for "the model
    learned nothing"; None when the targets do not suit it."""
    targets, seen = [], 0
    for _, batch_targets in split.batches(4096):
        targets.append(batch_targets.detach().reshape(batch_targets.shape[0], -1).cpu())
        seen += batch_targets.shape[0]
        if seen >= BASELINE_SAMPLES:
            break
    if not targets:
        return None
    y = torch.cat(targets)
    if kind == "classification":
        if y.shape[1] != 1 or y.dtype.is_floating_point:
            return None
        counts = torch.bincount(y.reshape(-1).long()).double()
        p = counts[counts > 0] / counts.sum()
        return float(-(p * p.log()).sum())
    y = y.double()
    return float(y.var(dim=0, unbiased=False).mean()) if y.shape[0] > 1 else None
