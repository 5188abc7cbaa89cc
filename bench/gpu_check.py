"""Check converge's CUDA paths on a GPU machine: each precision trains, and host syncs stay per epoch.

    python bench/gpu_check.py            # needs a CUDA device

For every AMP mode (off, bf16, fp16) it trains a small CNN on generated images and prints the final
losses, the epoch time, and how many host-device synchronizations PyTorch saw per epoch (from
torch.cuda.set_sync_debug_mode("warn")) next to the number of optimizer steps per epoch. A loop that
syncs every step would show syncs >= steps.
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
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
