"""converge: train a PyTorch model to convergence in one command, and say what happened and why."""

__version__ = "0.1.0"

from converge.api import fit, resume_run, train_task  # noqa: E402
from converge.config import TrainConfig  # noqa: E402
from converge.doctor import Finding, diagnose, run_doctor  # noqa: E402
from converge.engine.loop import FitResult  # noqa: E402
from converge.errors import ConvergeError  # noqa: E402
from converge.io.weights import load_weights  # noqa: E402
from converge.monitor import Monitor  # noqa: E402

__all__ = ["ConvergeError", "FitResult", "Finding", "Monitor", "TrainConfig", "__version__", "diagnose", "fit",
           "load_weights", "resume_run", "run_doctor", "train_task"]
