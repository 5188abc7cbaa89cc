"""Optimizers with decoupled weight decay on weights only."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and kernels (ndim >= 2); leave biases and normalization scales/shifts (ndim < 2)
    alone: decaying them only pulls the network away from its own normalization."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def _adamw(groups: list[dict], lr: float) -> torch.optim.Optimizer:
    # The fused kernel is faster (about a fifth of a small MLP's step on CPU) and, on CUDA, lets a
    # GradScaler skip inf/NaN steps on the device instead of syncing with the host every step.
    # Older torch releases have no fused CPU kernel: fall back to the default implementation there.
    if all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for g in groups for p in g["params"]):
        try:
            return adamw(groups, lr=lr, fused=True)
        except (RuntimeError, ValueError):
            pass
    return adamw(groups, lr=lr)


def adamw(params, **options) -> torch.optim.AdamW:
    """torch's AdamW (``options`` as it takes them) without its torch._dynamo import (:class:`EagerAdamW`),
    where this torch allows; also for converge's own small models (the reference model, the doctor's probes)."""
    if _PLAIN_ADAM_STEP is not None:
        return EagerAdamW(params, **options)
    return torch.optim.AdamW(params, **options)


def _plain_methods() -> dict:
    """torch.optim.Optimizer's methods that torch wraps against ``torch.compile`` tracing them (``add_param_group``,
    ``zero_grad``, ``state_dict``, ``load_state_dict`` in torch 2.13), unwrapped: the wrapper imports torch._dynamo
    at its first call (1.2-1.5 s) and, outside a compiled region, then runs the same function."""
    import torch._compile

    wrapper_code = torch._compile._disable_dynamo(lambda: None).__code__
    return {name: method.__wrapped__ for name, method in vars(torch.optim.Optimizer).items()
            if getattr(method, "__code__", None) is wrapper_code and hasattr(method, "__wrapped__")}


class WithoutDynamo:
    """Mixed into converge's optimizers, before torch's class: its methods without their guard against
    ``torch.compile``, which imports torch._dynamo (1.2-1.5 s of a short run) for nothing here: converge
    never steps its optimizer inside a compiled region."""


for _name, _method in _plain_methods().items():
    setattr(WithoutDynamo, _name, _method)

# torch's Adam step without its decorator, whose other work is two torch._dynamo.graph_break() calls
_PLAIN_ADAM_STEP = getattr(torch.optim.Adam.step, "__wrapped__", None)


class EagerAdamW(WithoutDynamo, torch.optim.AdamW):
    """torch's AdamW without the guards against ``torch.compile`` (see :class:`WithoutDynamo`), its step
    included: the same update, state and ``state_dict`` as ``torch.optim.AdamW``."""

    def step(self, closure=None):
        return _undecorated_step(self, _PLAIN_ADAM_STEP, closure)


class EagerLBFGS(WithoutDynamo, torch.optim.LBFGS):
    """torch's L-BFGS without the guards against ``torch.compile`` (see :class:`WithoutDynamo`): for the few
    numbers of a constant baseline (`converge.engine.objective.searched_constant_loss`), which must not cost
    a short run torch._dynamo's import."""


def _undecorated_step(optimizer: torch.optim.Optimizer, plain_step, closure):
    """torch's step function without its decorator: what the decorator does, less the graph breaks that import
    torch._dynamo."""
    with torch.set_grad_enabled(optimizer.defaults["differentiable"]):
        return plain_step(optimizer, closure)


def _sgdw(groups: list[dict], lr: float) -> torch.optim.Optimizer:
    return SGDW(groups, lr=lr)


@dataclass(frozen=True)
class OptimizerSpec:
    """Everything converge knows about one optimizer. Adding an optimizer is one entry in OPTIMIZERS.

    Cost: with ``--optimizer auto`` every entry is tried, so each one adds an LR range test (at most 100
    steps) and two arms of the race (the suggested LR and a third of it, rungs of about 40 steps) to every
    automatic choice (converge.choose.auto)."""

    build: Callable[[list[dict], float], torch.optim.Optimizer]   # (parameter groups, lr) -> optimizer
    default_lr: float            # when the range test gives no usable evidence
    default_weight_decay: float  # "auto" weight decay (decoupled, on weights only)
    search_lr: tuple[float, float]   # `converge tune`: the log-uniform LR range searched
    strong_weight_decay: float   # `converge tune`: the strong decay its queued starting points try
    description: str


OPTIMIZERS: dict[str, OptimizerSpec] = {
    # Strong decay: AdamW's 0.1 is the top of tune's range and a common strong setting; SGD's 0.05,
    # decoupled, decays as much as a classic coupled 5e-3 under momentum 0.9 (lr x wd per step against
    # lr x wd / (1 - momentum)), the strong end of the classic SGD recipes.
    "adamw": OptimizerSpec(_adamw, default_lr=1e-3, default_weight_decay=1e-2, search_lr=(1e-5, 1e-1),
                           strong_weight_decay=1e-1,
                           description="AdamW (decoupled weight decay, fused kernel where available)"),
    "sgd": OptimizerSpec(_sgdw, default_lr=1e-2, default_weight_decay=5e-4, search_lr=(1e-4, 1.0),
                         strong_weight_decay=5e-2,
                         description="SGD with Nesterov momentum 0.9 and decoupled weight decay"),
}


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    groups = parameter_groups(model, weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}")
    return OPTIMIZERS[name].build(groups, lr)


class SGDW(WithoutDynamo, torch.optim.SGD):
    """SGD with Nesterov momentum 0.9 and *decoupled* weight decay (Loshchilov & Hutter): weights shrink
    by ``lr * weight_decay`` each step instead of the decay being added to the gradient, where momentum
    would amplify it and mix it into the update direction."""

    def __init__(self, params, lr: float) -> None:
        groups = [dict(group) for group in params]
        for group in groups:
            group["decoupled_weight_decay"] = group.pop("weight_decay", 0.0)
        super().__init__(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=0.0)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            decay = group["decoupled_weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if decay and params:
                torch._foreach_mul_(params, 1.0 - group["lr"] * decay)
        if _PLAIN_SGD_STEP is None:
            return super().step(closure)
        return _undecorated_step(self, _PLAIN_SGD_STEP, closure)


_PLAIN_SGD_STEP = getattr(torch.optim.SGD.step, "__wrapped__", None)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The first parameter group's LR, as a float (also when the group holds it as a tensor)."""
    return float(optimizer.param_groups[0]["lr"])


def group_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    """Every parameter group's LR, as floats."""
    return [float(group["lr"]) for group in optimizer.param_groups]


def per_group(min_lr: float | Sequence[float], groups: int) -> list[float]:
    """One floor per parameter group: a single number applies to every group; a sequence must have one
    entry per group."""
    if isinstance(min_lr, numbers.Real):
        return [float(min_lr)] * groups
    floors = [float(v) for v in min_lr]
    if len(floors) != groups:
        raise ValueError(f"min_lr has {len(floors)} entries {floors!r} for {groups} parameter groups")
    return floors


# A "cut" smaller than this share of the LR is rounding, not a cut: the floor 1e-3 x lr and lr cut three
# times by 0.1 differ in the last bits (1.7886495290574438e-05 -> ...434e-05 was once logged as a cut, and
# the run went on 5 epochs at an unchanged LR). Such an LR is at its floor.
ROUNDING = 1e-9


def cut_value(lr: float, factor: float, floor: float, eps: float = 0.0) -> float:
    """The LR after one cut: ``lr * factor``, not below ``floor``. A cut never raises an LR (a group already
    at or below its floor, a frozen group at 0, keeps its LR), and a cut of ``eps`` or less, or of less than
    ``ROUNDING`` of the LR, is skipped (the LR is at its floor)."""
    new = max(lr * factor, floor)
    return new if lr - new > max(eps, ROUNDING * lr) else lr


def planned_lrs(optimizer: torch.optim.Optimizer, factor: float, min_lr: float | Sequence[float],
                eps: float = 0.0) -> list[float]:
    """What :func:`scale_lr` would set each group's LR to, without changing anything."""
    floors = per_group(min_lr, len(optimizer.param_groups))
    return [cut_value(lr, factor, floor, eps) for lr, floor in zip(group_lrs(optimizer), floors)]


def scale_lr(optimizer: torch.optim.Optimizer, factor: float, min_lr: float | Sequence[float], *,
             eps: float = 0.0) -> float:
    """Multiply every group's LR by ``factor``, never below its floor and never upwards (see
    :func:`cut_value`). ``min_lr`` is one floor for every group or one per group. A tensor LR is updated
    in place (so a compiled optimizer step sees the same tensor and is not recompiled). Returns the first
    group's LR."""
    floors = per_group(min_lr, len(optimizer.param_groups))
    for group, floor in zip(optimizer.param_groups, floors):
        _set(group, "lr", cut_value(float(group["lr"]), factor, floor, eps))
        if WARMUP_BASE in group:  # a cut during warmup lowers where the warmup is heading
            _set(group, WARMUP_BASE, cut_value(float(group[WARMUP_BASE]), factor, floor, eps))
    return current_lr(optimizer)


def _set(group: dict, key: str, value: float) -> None:
    if isinstance(group[key], torch.Tensor):
        group[key].fill_(value)
    elif group[key] != value:
        group[key] = value


WARMUP_BASE = "warmup_base_lr"


def warm_up(optimizer: torch.optim.Optimizer, step: int, warmup_steps: int) -> None:
    """Linear warmup: step ``step`` (0-based) runs at (step + 1) / warmup_steps of each group's LR.
    The target LR is kept in the param group, so it travels with the optimizer's state_dict."""
    fraction = min(1.0, (step + 1) / warmup_steps)
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault(WARMUP_BASE, group["lr"]) * fraction


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler, *, clip: float | None,
                   measure_norm: bool = False) -> torch.Tensor | None:
    """One step on the accumulated gradients, then zero them: unscaled first under fp16 AMP (``scaler``),
    their norm clipped to ``clip``. Returns the gradient norm when it was measured (clipping, or
    ``measure_norm`` without a scaler), on the device: no sync."""
    grad_norm = None
    if scaler is not None:
        if clip is not None:
            scaler.unscale_(optimizer)
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        if clip is not None:
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), clip)
        elif measure_norm:
            grad_norm = nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
