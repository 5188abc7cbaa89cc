"""Input standardization, z = (x - mean) / std per flattened feature, and how a trained model keeps taking
raw inputs afterwards: folded into its first nn.Linear (W' = W / std per input column, b' = b - W' mean),
or, when the first layer is not an nn.Linear, applied by a forward pre-hook from statistics saved beside
the weights (``standardize.json``, read by `converge.load_weights`).

Plain tensor functions: `converge doctor`'s remedies use them, and so does loading weights."""

from __future__ import annotations

import torch
from torch import nn


def standardization(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std of the (flattened) training inputs; a constant feature gets std 1."""
    x = inputs.reshape(inputs.shape[0], -1).double()
    mean, std = x.mean(0), x.std(0) if x.shape[0] > 1 else torch.ones(x.shape[1], dtype=torch.float64)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean.to(inputs.dtype), std.to(inputs.dtype)


def standardize(inputs: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    shape = inputs.shape
    flat = inputs.reshape(shape[0], -1)
    return ((flat - mean.to(flat.device)) / std.to(flat.device)).reshape(shape)


def first_linear(model: nn.Module, features: int) -> tuple[str, nn.Linear] | None:
    """The nn.Linear that sees the inputs first, when that is unambiguous: the model itself, or the
    first layer of (nested) nn.Sequential, after any nn.Flatten / nn.Identity; and it takes
    ``features`` inputs."""
    name, module = "", model
    while isinstance(module, nn.Sequential):
        children = [(n, c) for n, c in module.named_children() if not isinstance(c, (nn.Flatten, nn.Identity))]
        if not children:
            return None
        child_name, module = children[0]
        name = f"{name}.{child_name}" if name else child_name
    if isinstance(module, nn.Linear) and module.in_features == features:
        return name or "(model)", module
    return None


@torch.no_grad()
def fold_standardization(model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> str | None:
    """Fold z = (x - mean) / std into the first nn.Linear, in place; the layer's name, or None when the
    model has no such layer (then nothing changes)."""
    found = first_linear(model, mean.numel())
    if found is None:
        return None
    name, layer = found
    scale = (1.0 / std).to(layer.weight.device, layer.weight.dtype)
    shift = mean.to(layer.weight.device, layer.weight.dtype)
    layer.weight.mul_(scale)                       # W' = W / std
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(layer.out_features, device=layer.weight.device,
                                              dtype=layer.weight.dtype))
    layer.bias.sub_(layer.weight @ shift)          # b' = b - W' mean
    return name


def add_standardize_hook(model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Standardize the model's first positional input on every call (once, however often it is added)."""
    old = getattr(model, "_converge_standardize", None)
    if old is not None:
        old.remove()

    def hook(module, args):
        if not args:
            return None
        return (standardize(args[0], mean.to(args[0].dtype), std.to(args[0].dtype)), *args[1:])

    model._converge_standardize = model.register_forward_pre_hook(hook)
