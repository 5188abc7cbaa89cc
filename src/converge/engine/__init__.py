"""The training engine: the loop, device and precision, optimizers, the objective."""

from converge.engine.loop import FitResult, Trainer

__all__ = ["FitResult", "Trainer"]
