"""How a model is called on a batch of inputs: ``model(x)``, ``model(*x)`` for several inputs, and for a dict
of inputs ``model(**x)`` (the Hugging Face convention) or ``model(x)`` for a ``forward`` that takes the batch
dict whole. Every place that runs a model on inputs (training, evaluation, the probes, the doctor, the
standardization's probe) calls it this one way. And how a structure of tensors (inputs, outputs, a state) is
walked and rebuilt: `map_tensors`, `move_to`, `like`."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import torch
from torch import nn


def call_model(model: nn.Module, inputs: Any, extra: dict | None = None):
    """``model(x)``, ``model(*x)`` for a tuple or list of inputs, and for a dict ``model(**x)`` (with the
    ``extra`` keywords: the targets, for a model that computes its own loss), or ``model(x)`` when the model's
    ``forward`` takes the batch dict whole (`takes_dict_whole`)."""
    if isinstance(inputs, dict):
        if takes_dict_whole(model, frozenset(inputs)):
            return model(inputs)
        return model(**inputs, **(extra or {}))
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def takes_dict_whole(model: nn.Module, keys: frozenset) -> bool:
    """Whether ``model.forward`` takes a dict of inputs as one argument (``def forward(self, batch)``, reading
    ``batch["num"]``) rather than its entries by name, as a Hugging Face model does (``input_ids=...``): its
    first positional parameter is none of the keys, the keys are not all its parameters' names, and it takes no
    ``**kwargs``. Read once per model class and set of keys (the DDP or ``torch.compile`` wrapper's module)."""
    module = getattr(model, "module", model)          # DistributedDataParallel
    module = getattr(module, "_orig_mod", module)     # torch.compile
    return _forward_takes_dict(type(module), keys)


@functools.lru_cache(maxsize=256)
def _forward_takes_dict(cls: type, keys: frozenset) -> bool:
    try:
        params = list(inspect.signature(cls.forward).parameters.values())[1:]   # after self
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return False
    named = {p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                  inspect.Parameter.KEYWORD_ONLY)}
    positional = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                  inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    return not keys <= named and bool(positional) and positional[0].name not in keys


def like(value: tuple | list, items: Any) -> tuple | list:
    """``items`` as a tuple or list of ``value``'s own type: a namedtuple (torchvision's Inception returns one)
    takes its fields one by one, where a plain tuple or list takes one iterable."""
    items = list(items)
    return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)


def map_tensors(fn: Callable[[torch.Tensor], Any], value: Any) -> Any:
    """``fn`` applied to every tensor of a tensor, tuple/list or dict of them (other values kept)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return like(value, (map_tensors(fn, v) for v in value))
    if isinstance(value, dict):
        return {k: map_tensors(fn, v) for k, v in value.items()}
    return value


def move_to(value: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """Every tensor of ``value`` on ``device``."""
    return map_tensors(lambda t: t.to(device, non_blocking=non_blocking), value)
