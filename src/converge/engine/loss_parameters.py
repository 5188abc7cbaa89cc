"""A task's loss that holds trainable parameters of its own: an ArcFace or CosFace margin's class centres, the
learned uncertainty weights of a multi-task loss, a centre loss, ``nn.AdaptiveLogSoftmaxWithLoss``. A loop
written by hand gives them to the optimizer beside the model's (``AdamW([*model.parameters(),
*loss.parameters()])``); converge trains them the same way, and keeps them with the weights wherever the
weights are kept: the best epoch's snapshot, the guard's rollback target, the checkpoint. The user's own loss
object is trained in place, so a metric of the task that reads it (the ArcFace centres) sees them trained.

A parameter with ``requires_grad`` off, or held by a module in eval mode (a frozen or pretrained feature
network inside a perceptual loss, put in eval mode as such networks are), is left alone, as is one the model
holds too. The task line says which parameters train."""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Callable, Iterator

import torch
from torch import nn

# Keys of the loss's parameters in a state dict that also holds the model's: no module name has brackets.
LOSS_KEY = "[loss]."


def loss_module(loss: Callable) -> nn.Module | None:
    """The module a task's loss is: the loss itself, or a bound method's module, seen through the loss a wrapper
    holds in ``.loss`` (`AlignedLoss`) or a ``functools.partial`` wraps. None for a plain function."""
    inner = _unwrapped(loss)
    if isinstance(inner, nn.Module):
        return inner
    owner = getattr(inner, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def _unwrapped(loss: Callable) -> Any:
    inner = loss
    while True:
        if isinstance(inner, functools.partial):
            inner = inner.func
        elif not isinstance(inner, nn.Module) and callable(getattr(inner, "loss", None)):
            inner = inner.loss
        else:
            return inner


def _owners(loss: Callable) -> list[nn.Module]:
    """The modules behind a task's loss: its own (`loss_module`), or, for a plain function, the modules it names
    as globals or closes over (``centres = ArcFace(); def loss(e, y): return centres(e, y)``)."""
    module = loss_module(loss)
    if module is not None:
        return [module]
    inner = _unwrapped(loss)
    code = getattr(inner, "__code__", None)
    if code is None:
        return []
    named = [getattr(inner, "__globals__", {}).get(name) for name in code.co_names]
    try:
        named += [cell.cell_contents for cell in inner.__closure__ or ()]
    except ValueError:  # an empty cell
        pass
    return [value for value in named if isinstance(value, nn.Module)]


def loss_parameters(loss: Callable | None, model: nn.Module | None = None) -> dict[str, nn.Parameter]:
    """The trainable parameters a task's loss holds that the model does not, by name (``ArcFace.centres``):
    those with ``requires_grad`` of its modules in training mode."""
    if loss is None or inspect.isclass(loss):
        return {}
    held = {id(p) for p in model.parameters()} if model is not None else set()
    found: dict[str, nn.Parameter] = {}
    for owner in _owners(loss):
        for prefix, module in owner.named_modules():
            if not module.training:
                continue
            for name, param in module.named_parameters(recurse=False):
                if param.requires_grad and id(param) not in held:
                    held.add(id(param))
                    found[".".join(part for part in (type(owner).__name__, prefix, name) if part)] = param
    return found


def place_loss(loss: Callable | None, device: torch.device) -> None:
    """The modules behind a task's loss on the run's device, as a loop written by hand puts its criterion
    there (``criterion.to(device)``): a task file does not know the device converge picks, and a class-weighted
    ``nn.CrossEntropyLoss`` built on the CPU refuses CUDA logits."""
    if loss is None or inspect.isclass(loss):
        return
    for owner in _owners(loss):
        owner.to(device)


def trained_with_model(params: dict[str, nn.Parameter]) -> str:
    """What the task line says of them."""
    count = sum(p.numel() for p in params.values())
    names = ", ".join(list(params)[:4]) + (f" and {len(params) - 4} more" if len(params) > 4 else "")
    return (f"the loss's own {count:,} parameter{'s' if count != 1 else ''} ({names}) train with the model's "
            f"(requires_grad_(False) keeps them fixed)")


class WithLossParameters:
    """The model's state and the loss's parameters as one state dict (the loss's under `LOSS_KEY`), for what
    snapshots and restores the weights: ``state_dict``, ``load_state_dict`` and ``parameters`` (for the
    optimizer and gradient clipping) as a module has them."""

    def __init__(self, model: nn.Module, params: dict[str, nn.Parameter]) -> None:
        self.model, self.params = model, params

    def parameters(self) -> Iterator[nn.Parameter]:
        yield from self.model.parameters()
        yield from self.params.values()

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = self.model.state_dict()
        state.update({LOSS_KEY + name: param.detach() for name, param in self.params.items()})
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(model_part(state))
        missing = [name for name in self.params if LOSS_KEY + name not in state]
        if len(missing) == len(self.params):
            return   # a checkpoint from before converge trained them: they stayed as built, as they are now
        if missing:
            raise KeyError(f"the state holds no value for the loss's parameters {', '.join(missing)}")
        for name, param in self.params.items():
            param.copy_(state[LOSS_KEY + name])


def model_part(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict without the loss's parameters (what best.safetensors holds)."""
    return {key: value for key, value in state.items() if not key.startswith(LOSS_KEY)}


def loss_part(state: dict[str, Any]) -> dict[str, Any]:
    """The loss's parameters in a state dict, by their own names (what loss_parameters.safetensors holds)."""
    return {key[len(LOSS_KEY):]: value for key, value in state.items() if key.startswith(LOSS_KEY)}


@contextlib.contextmanager
def left_as_they_are(params: dict[str, nn.Parameter]) -> Iterator[None]:
    """The loss's parameters put back as they were, their gradients dropped, after a trial run (an arm of the
    tuning race) that trained them."""
    kept = {name: param.detach().clone() for name, param in params.items()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(kept[name])
                param.grad = None
