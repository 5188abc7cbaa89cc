"""Weights as safetensors: a format that holds tensors only, so loading one can never run code."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as _save_bytes


def snapshot(state_dict: dict) -> dict[str, torch.Tensor]:
    """Detached copies of every tensor, sharing no storage (tied weights are written twice, which
    safetensors needs) and not affected by later training steps."""
    return {name: tensor.detach().clone().contiguous() for name, tensor in state_dict.items()
            if isinstance(tensor, torch.Tensor)}


def weights_bytes(state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    return _save_bytes({name: tensor.cpu() for name, tensor in state.items()}, metadata=metadata)


def load_weights(path: str | Path, model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Read a ``best.safetensors``; with ``model``, also load the weights into it (strictly)."""
    state = load_file(str(path))
    if model is not None:
        device = next(model.parameters(), torch.empty(0)).device
        model.load_state_dict({k: v.to(device) for k, v in state.items()})
    return state
