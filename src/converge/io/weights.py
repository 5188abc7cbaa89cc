"""Weights as safetensors: a format that holds tensors only, so loading one can never run code."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as _save_bytes

from converge.io.atomic import atomic_write_bytes, commit, temporary_beside
from converge.io.runfolder import STANDARDIZE
from converge.standardize import add_standardize_hook


def snapshot(state_dict: dict) -> dict[str, torch.Tensor]:
    """Detached copies of every tensor, sharing no storage (tied weights are written twice, which
    safetensors needs) and not affected by later training steps."""
    return {name: tensor.detach().clone().contiguous() for name, tensor in state_dict.items()
            if isinstance(tensor, torch.Tensor)}


COMPILED_PREFIX = "_orig_mod."   # what torch.compile's wrapper puts before every name of the model's tensors


def module_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The names the model gives its tensors itself: a torch.compile'd model's state names each with
    ``_orig_mod.`` first, which the plain model (served without compiling) does not know."""
    if state and all(name.startswith(COMPILED_PREFIX) for name in state):
        return {name[len(COMPILED_PREFIX):]: tensor for name, tensor in state.items()}
    return state


_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


def write_weights(path: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """``state`` as a safetensors file, written atomically tensor by tensor from the tensors' own memory (no
    serialized copy of the whole state is built, as :func:`weights_bytes` does). The names are the model's own
    (`module_keys`), so a compiled model's weights load into the plain one."""
    state = module_keys(state)
    if any(tensor.dtype not in _DTYPES for tensor in state.values()):
        atomic_write_bytes(path, weights_bytes(state, metadata))
        return
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, tensor in state.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _DTYPES[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    tmp = temporary_beside(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(len(text).to_bytes(8, "little") + text)
            for tensor in state.values():
                flat = tensor.detach().cpu().contiguous().reshape(-1)
                if flat.numel():
                    handle.write(memoryview(flat.view(torch.uint8).numpy()))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    commit(tmp, path)


def weights_bytes(state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    return _save_bytes({name: tensor.cpu() for name, tensor in state.items()}, metadata=metadata)


def weights_readable(path: str | Path) -> bool:
    """Whether a safetensors file loads whole (a truncated or garbled one does not)."""
    try:
        load_file(str(path))
    except Exception:  # safetensors raises its own error types for every kind of damage
        return False
    return True


def load_weights(path: str | Path, model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Read a ``best.safetensors``; with ``model``, also load the weights into it (strictly; a torch.compile'd
    model takes them too, its wrapper's ``_orig_mod.`` put before each name). When a
    ``standardize.json`` lies beside the weights (`converge train --fix` on a model whose first layer could
    not absorb the input standardization), the model standardizes its inputs with it from then on."""
    state = load_file(str(path))
    if model is not None:
        device = next(model.parameters(), torch.empty(0)).device
        wanted = model.state_dict()
        compiled = bool(wanted) and all(name.startswith(COMPILED_PREFIX) for name in wanted)
        names = {k: (COMPILED_PREFIX + k if compiled and not k.startswith(COMPILED_PREFIX) else k) for k in state}
        model.load_state_dict({names[k]: v.to(device) for k, v in state.items()})
        stats = Path(path).with_name(STANDARDIZE)
        if stats.exists():
            values = json.loads(stats.read_text(encoding="utf-8"))
            add_standardize_hook(model, torch.tensor(values["mean"]), torch.tensor(values["std"]))
    return state
