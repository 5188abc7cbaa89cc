"""Where the run trains and in what precision."""

from __future__ import annotations

import contextlib
import os

import torch

from converge.errors import ConvergeError


def pick_device(requested: str | None) -> torch.device:
    """CUDA when present, else CPU; an explicit request must be usable."""
    from converge.engine.distributed import launched_by_torchrun

    local = int(os.environ.get("LOCAL_RANK", "0")) if launched_by_torchrun() else None
    if requested in (None, "", "auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local)  # under torchrun, each process on its own GPU
    if requested in (None, "", "auto"):
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConvergeError(f"--device must be auto, cpu, cuda or cuda:N, got {requested!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConvergeError(f"--device {requested!r} asks for CUDA, but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConvergeError(f"--device {requested!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ConvergeError(f"--device must be auto, cpu, cuda or cuda:N, got {requested!r}")
    return device


def check_amp(amp: str, device: torch.device) -> None:
    if amp == "fp16" and device.type != "cuda":
        raise ConvergeError("--amp fp16 needs a CUDA device (use --amp bf16 on CPU, or --amp off)")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConvergeError("--amp bf16 is not supported by this GPU; use --amp fp16")


def autocast(amp: str, device: torch.device):
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(amp: str, device: torch.device):
    """fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 does not."""
    if amp == "fp16":
        return torch.amp.GradScaler(device.type)
    return None
