"""The loss and the metrics: inferred when the task leaves them out."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from converge.errors import ConvergeError


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
