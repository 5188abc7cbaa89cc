"""Training options: one validated record shared by the CLI, `fit` and the checkpoint."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from converge.errors import ConvergeError

OPTIMIZERS = ("adamw", "sgd")
AMP_MODES = ("off", "bf16", "fp16")
DEFAULT_LR = {"adamw": 1e-3, "sgd": 1e-2}
DEFAULT_WEIGHT_DECAY = {"adamw": 1e-2, "sgd": 5e-4}


@dataclass
class TrainConfig:
    """Everything that decides how a run trains. Flags of `converge train` map 1:1 onto these fields."""

    optimizer: str = "adamw"
    lr: float | None = None              # None: 1e-3 for AdamW, 1e-2 for SGD
    weight_decay: float | None = None    # None: 1e-2 for AdamW, 5e-4 for SGD
    batch_size: int = 64
    max_epochs: int = 1000
    patience: int = 5
    seed: int = 0
    device: str | None = None            # None: CUDA when present, else CPU
    amp: str = "off"
    clip_grad: float | None = None       # max gradient norm; None: no clipping
    accumulate: int = 1                  # micro-batches per optimizer step
    lr_factor: float = 0.1
    threshold: float = 1e-3              # relative improvement that counts as progress
    cooldown: int = 0
    min_lr: float | None = None          # None: 1e-3 x the starting LR
    unproductive_cuts: int = 1           # LR cuts without progress before the run is declared converged
    monitor: str = "val_loss"
    mode: str | None = None              # "min" or "max"; required for a metric other than val_loss
    checkpoint_seconds: float = 300.0    # also checkpoint inside an epoch this often
    num_workers: int = 0                 # DataLoader workers for Dataset splits

    def __post_init__(self) -> None:
        self.optimizer = str(self.optimizer).lower()
        _check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {', '.join(OPTIMIZERS)}")
        _check(self.amp in AMP_MODES, "amp", self.amp, f"one of {', '.join(AMP_MODES)}")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]
        if self.weight_decay is None:
            self.weight_decay = DEFAULT_WEIGHT_DECAY[self.optimizer]
        _check(_positive(self.lr), "lr", self.lr, "a positive number")
        _check(_finite(self.weight_decay) and self.weight_decay >= 0, "weight-decay", self.weight_decay,
               "a number >= 0")
        for name in ("batch_size", "max_epochs", "patience", "accumulate"):
            value = getattr(self, name)
            _check(_int(value) and value >= 1, name.replace("_", "-"), value, "an integer >= 1")
        for name in ("seed", "cooldown", "unproductive_cuts", "num_workers"):
            value = getattr(self, name)
            _check(_int(value) and value >= 0, name.replace("_", "-"), value, "an integer >= 0")
        _check(self.clip_grad is None or _positive(self.clip_grad), "clip-grad", self.clip_grad,
               "a positive number")
        _check(_finite(self.lr_factor) and 0 < self.lr_factor < 1, "lr-factor", self.lr_factor,
               "a number between 0 and 1")
        _check(_finite(self.threshold) and self.threshold >= 0, "threshold", self.threshold, "a number >= 0")
        if self.min_lr is None:
            self.min_lr = self.lr * 1e-3
        _check(_finite(self.min_lr) and 0 <= self.min_lr <= self.lr, "min-lr", self.min_lr,
               f"a number between 0 and the LR ({self.lr:g})")
        _check(_positive(self.checkpoint_seconds), "checkpoint-seconds", self.checkpoint_seconds,
               "a positive number")
        if self.mode is None:
            _check(self.monitor == "val_loss", "mode", self.mode,
                   f"'min' or 'max' (monitor {self.monitor!r} needs an explicit direction)")
            self.mode = "min"
        _check(self.mode in ("min", "max"), "mode", self.mode, "'min' or 'max'")

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
