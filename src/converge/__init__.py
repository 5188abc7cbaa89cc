"""converge: train a PyTorch model to convergence in one command, and say what happened and why."""

from converge._version import __version__
from converge.api import fit, resume_run, train_task
from converge.config import TrainConfig
from converge.doctor import Finding, diagnose, run_doctor
from converge.engine.result import FitResult
from converge.errors import ConvergeError, StorageError
from converge.io.weights import load_weights
from converge.monitor import Monitor

__all__ = ["ConvergeError", "FitResult", "Finding", "Monitor", "StorageError", "TrainConfig", "__version__", "diagnose",
           "fit", "load_weights", "resume_run", "run_doctor", "train_task"]
