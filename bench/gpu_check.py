"""Check converge's CUDA paths on a GPU machine: each precision trains, and host syncs stay per epoch.

    python bench/gpu_check.py            # needs a CUDA device

For every AMP mode (off, bf16, fp16) it trains a small CNN on generated images and prints the final
losses, the epoch time, and how many host-device synchronizations PyTorch saw per epoch (from
torch.cuda.set_sync_debug_mode("warn")) next to the number of optimizer steps per epoch. A loop that
syncs every step would show syncs >= steps. Then two losses built on the CPU, as a task file builds them
(a class-weighted cross-entropy, a loss with a parameter of its own), must train on CUDA under bf16.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import torch
from torch import nn

import converge


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(64, 10))


def images(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    # The class is a fixed linear function of local colour statistics: learnable by a small CNN.
    colours = torch.randn(10, 3, generator=torch.Generator().manual_seed(99))
    y = (nn.functional.avg_pool2d(x, 4).mean((2, 3)) @ colours.T).argmax(1)
    return x, y


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    train, val = images(20_000, 0), images(4_000, 1)
    results = []
    epochs, batch = 4, 256
    steps = -(-len(train[0]) // batch)
    for amp in ("off", "bf16", "fp16"):
        torch.manual_seed(0)
        model = cnn()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            start = time.perf_counter()
            # Fixed hyperparameters: the range test's per-step reads belong to tuning, not to the loop.
            result = converge.fit(model, train, val, max_epochs=epochs, batch_size=batch, amp=amp,
                                  optimizer="adamw", lr=1e-3, weight_decay=1e-2, verbose=False, patience=100)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message).lower() for w in caught)
        row = {"amp": amp, "device": result.summary["device"], "epochs": result.summary["epochs"],
               "val_loss": round(result.summary["best"]["val_loss"], 4),
               "val_accuracy": round(result.summary["best"]["val_accuracy"], 4),
               "seconds_per_epoch": round(seconds / epochs, 3), "steps_per_epoch": steps,
               "host_syncs_per_epoch": round(syncs / epochs, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)
    ok = all(r["host_syncs_per_epoch"] < r["steps_per_epoch"] / 4 for r in results if r["amp"] != "fp16")
    print("syncs per epoch independent of steps (off, bf16):", "yes" if ok else "NO")
    return 0 if ok and losses_on_the_device(train, val) else 1


class _Temperature(nn.Module):
    """A loss with a parameter of its own (a learned logit scale) and a class-weight buffer, built on the CPU."""

    def __init__(self):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(1))
        self.register_buffer("weight", torch.linspace(0.5, 1.5, 10))

    def forward(self, logits, y):
        return nn.functional.cross_entropy(logits * self.log_scale.exp(), y, weight=self.weight)


def losses_on_the_device(train, val) -> bool:
    """Losses a task file builds on the CPU (it does not know the device): a class-weighted cross-entropy, and
    a loss with a parameter of its own, under bf16; each must train on CUDA, and the parameter move."""
    ok = True
    for name, loss in (("weighted_ce", nn.CrossEntropyLoss(weight=torch.linspace(0.5, 1.5, 10))),
                       ("own_parameter", _Temperature())):
        torch.manual_seed(0)
        try:
            result = converge.fit(cnn(), train, val, loss=loss, max_epochs=2, batch_size=256, amp="bf16",
                                  optimizer="adamw", lr=1e-3, weight_decay=1e-2, verbose=False)
            row = {"loss": name, "device": result.summary["device"],
                   "val_loss": round(result.summary["best"]["val_loss"], 4)}
            if name == "own_parameter":
                row["log_scale"] = round(float(loss.log_scale), 4)
                ok = ok and row["log_scale"] != 0.0
        except Exception as exc:  # noqa: BLE001 -- reported, and the check fails
            row, ok = {"loss": name, "error": f"{type(exc).__name__}: {exc}"}, False
        print(json.dumps(row), flush=True)
    return ok


if __name__ == "__main__":
    sys.exit(main())
