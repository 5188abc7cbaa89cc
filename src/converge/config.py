"""Training options: one validated record shared by the CLI, `fit` and the checkpoint."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from converge.errors import ConvergeError

AUTO = "auto"
TUNED = ("optimizer", "lr", "weight_decay", "batch_size")
AMP_MODES = ("off", "bf16", "fp16")
# The optimizers the engine can build (`converge.engine.optim.OPTIMIZERS` has one entry for each, in this
# order; a test holds the two together). Names, not the specs, so that the options are checked below the engine.
OPTIMIZER_NAMES = ("adamw", "sgd")
# The plateau cut's default multiplier. 0.3, not ReduceLROnPlateau's 0.1: a gentler cut leaves more epochs at
# the middle LRs where slow, noisy losses still improve. Measured by bench/alternatives.py (issue 22): on the
# LSTM forecaster a 10x cut went from 5.6e-4, where the validation loss still crept down, straight to 5.6e-5,
# where it stalled (test MSE 0.01339 / 0.01351 / 0.01329, seeds 0-2); cuts of 0.3 gave 0.01334 / 0.01338 /
# 0.01324 in as many epochs (46-48 against 37-47). Patience 10 instead did as well but took 60-85 % more epochs.
LR_FACTOR = 0.3


# converge's own metrics (`converge.engine.objective`), all higher-is-better: monitoring one needs no --mode.
# A task's own metric, whose direction converge cannot know, still does.
MAXIMIZED_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "token_accuracy", "label_accuracy", "exact_match",
                     "r2")


def inferred_mode(monitor: str) -> str | None:
    """The direction of a monitored validation value converge computes itself ("val_loss": "min", "val_r2_1":
    "max"); None for any other."""
    name = monitor[len("val_"):] if monitor.startswith("val_") else None
    if name == "loss":
        return "min"
    if name is not None and (name in MAXIMIZED_METRICS or (name.startswith("r2_") and name[3:].isdigit())):
        return "max"
    return None


@dataclass
class TrainConfig:
    """Everything that decides how a run trains. Flags of `converge train` map 1:1 onto these fields, and so
    do `converge.fit`'s keywords: each field means what its flag does (the table in docs/cli.md). "auto" (the
    default for the four tuned knobs) lets converge choose the value before training."""

    optimizer: str = AUTO
    lr: float | str = AUTO
    weight_decay: float | str = AUTO
    batch_size: int | str = AUTO
    max_epochs: int = 1000
    patience: int = 5
    seed: int = 0
    device: str | None = None            # None: CUDA when present, else CPU
    amp: str = "off"
    clip_grad: float | None = None       # max gradient norm; None: no clipping
    accumulate: int = 1                  # micro-batches per optimizer step
    lr_factor: float = LR_FACTOR         # LR multiplier at each plateau cut (measured: see LR_FACTOR)
    threshold: float = 1e-3              # relative improvement that counts as progress
    cooldown: int = 0
    min_lr: float | None = None          # None: 1e-3 x the starting LR
    warmup_steps: int = 0                # linear LR warmup over this many optimizer steps
    unproductive_cuts: int = 1           # LR cuts without progress before the run is declared converged
    monitor: str = "val_loss"
    mode: str | None = None              # "min" or "max"; required for a metric other than val_loss
    checkpoint_seconds: float = 300.0    # also checkpoint inside an epoch this often
    num_workers: int = 0                 # DataLoader workers for Dataset splits
    steps_per_epoch: int | None = None   # a streamed training split: batches per epoch (None: 200)
    guard: bool = True                   # roll back and cut the LR on a NaN or a loss spike
    max_rollbacks: int = 5               # rollbacks in a row (no new best between) before giving up
    tensorboard: bool = False            # also write TensorBoard event files into the run folder
    mlflow: bool = False                 # also log to MLflow (MLFLOW_TRACKING_URI, else ./mlruns)
    standardize: bool = True             # standardize unscaled feature matrices (folded into the exported model)

    def __post_init__(self) -> None:
        self.optimizer = str(self.optimizer).lower()
        _check(self.optimizer in (*OPTIMIZER_NAMES, AUTO), "optimizer", self.optimizer,
               f"one of {', '.join(OPTIMIZER_NAMES)}, auto")
        _check(self.amp in AMP_MODES, "amp", self.amp, f"one of {', '.join(AMP_MODES)}")
        _check(self.lr == AUTO or _positive(self.lr), "lr", self.lr, "a positive number or auto")
        _check(self.weight_decay == AUTO or (_finite(self.weight_decay) and self.weight_decay >= 0),
               "weight-decay", self.weight_decay, "a number >= 0 or auto")
        _check(self.batch_size == AUTO or (_int(self.batch_size) and self.batch_size >= 1), "batch-size",
               self.batch_size, "an integer >= 1 or auto")
        for name in ("max_epochs", "patience", "accumulate"):
            value = getattr(self, name)
            _check(_int(value) and value >= 1, name.replace("_", "-"), value, "an integer >= 1")
        _check(isinstance(self.guard, bool), "guard", self.guard, "true or false")
        _check(isinstance(self.tensorboard, bool), "tensorboard", self.tensorboard, "true or false")
        _check(isinstance(self.mlflow, bool), "mlflow", self.mlflow, "true or false")
        _check(isinstance(self.standardize, bool), "standardize", self.standardize, "true or false")
        _check(_int(self.seed) and 0 <= self.seed < 2**63, "seed", self.seed, "an integer between 0 and 2**63 - 1")
        for name in ("cooldown", "unproductive_cuts", "num_workers", "warmup_steps", "max_rollbacks"):
            value = getattr(self, name)
            _check(_int(value) and value >= 0, name.replace("_", "-"), value, "an integer >= 0")
        _check(self.steps_per_epoch is None or (_int(self.steps_per_epoch) and self.steps_per_epoch >= 1),
               "steps-per-epoch", self.steps_per_epoch, "an integer >= 1")
        _check(self.clip_grad is None or _positive(self.clip_grad), "clip-grad", self.clip_grad,
               "a positive number")
        _check(_finite(self.lr_factor) and 0 < self.lr_factor < 1, "lr-factor", self.lr_factor,
               "a number between 0 and 1")
        _check(_finite(self.threshold) and self.threshold >= 0, "threshold", self.threshold, "a number >= 0")
        if self.min_lr is None and self.lr != AUTO:
            self.min_lr = self.lr * 1e-3
        if self.min_lr is not None:
            _check(_finite(self.min_lr) and self.min_lr >= 0 and (self.lr == AUTO or self.min_lr <= self.lr),
                   "min-lr", self.min_lr, f"a number between 0 and the LR ({self.lr})")
        _check(_positive(self.checkpoint_seconds), "checkpoint-seconds", self.checkpoint_seconds,
               "a positive number")
        if self.mode is None:
            self.mode = inferred_mode(self.monitor)
            _check(self.mode is not None, "mode", None,
                   f"'min' or 'max' (monitor {self.monitor!r} needs an explicit direction)")
        _check(self.mode in ("min", "max"), "mode", self.mode, "'min' or 'max'")

    @property
    def auto_knobs(self) -> list[str]:
        """The tuned knobs still left to converge to choose."""
        return [name for name in TUNED if getattr(self, name) == AUTO]

    def with_values(self, **values) -> "TrainConfig":
        """A copy with some fields replaced (derived defaults such as min_lr are worked out again)."""
        return TrainConfig.from_dict({**self.to_dict(), **values})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def _check(ok: bool, name: str, value, expected: str) -> None:
    if not ok:
        raise ConvergeError(f"--{name} must be {expected}, got {value!r}")


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value) -> bool:
    return _finite(value) and value > 0
