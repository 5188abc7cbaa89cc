"""Per-epoch overhead of converge against the hand-written PyTorch loop, measured side by side.

Workload: a small MLP (64-256-256-10) on generated in-memory tensors, CPU, one thread, AdamW
(lr 1e-3, decoupled weight decay 1e-2 on weights only), batch size 64, the same number of epochs for
every contender, validation every epoch.

Contenders (run interleaved, several rounds, a discarded warm-up round first):

* ``hand (DataLoader)``: the classic hand-written loop: TensorDataset + DataLoader(shuffle=True),
  ``loss.item()`` per batch, validation through a DataLoader under ``torch.no_grad`` (loss and
  accuracy), ReduceLROnPlateau on the validation loss, ``copy.deepcopy(model.state_dict())`` on a new
  best, best weights loaded at the end.
* ``hand (in-memory)``: the same loop with batches sliced from a shuffled copy of the tensors, the
  loss summed on the device and read once per epoch: the tightest loop one would write by hand.
* ``converge (run folder)``: ``converge.fit(..., out=<temp dir>)``: checkpoint every epoch, metrics,
  events, best weights, summary and curves written, as a user gets it.
* ``converge (out=None)``: ``converge.fit(..., out=None)``: nothing written.

Every contender is timed from the call that trains to the return with the best weights loaded
(setup, all epochs, validation and, for converge, writing the run folder); the figure reported is
that wall time divided by the number of epochs.

    .venv/bin/python bench/overhead.py [--epochs 8] [--rounds 5] [--json results.json]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import converge

FEATURES, CLASSES, HIDDEN = 64, 10, 256
N_TRAIN, N_VAL = 20_000, 4_000
BATCH_SIZE, LR, WEIGHT_DECAY = 64, 1e-3, 1e-2
TARGET = 1.03


# --- workload ------------------------------------------------------------------------------------
def make_data(seed: int = 1234):
    """Features from a standard normal, labels from a fixed random linear teacher plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N_TRAIN + N_VAL, FEATURES, generator=g)
    teacher = torch.randn(FEATURES, CLASSES, generator=g)
    logits = x @ teacher + 0.5 * torch.randn(N_TRAIN + N_VAL, CLASSES, generator=g)
    y = logits.argmax(dim=1)
    return (x[:N_TRAIN].contiguous(), y[:N_TRAIN].contiguous()), (x[N_TRAIN:].contiguous(), y[N_TRAIN:].contiguous())


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, CLASSES))


def make_optimizer(model: nn.Module, fused: bool | None = None) -> torch.optim.Optimizer:
    """AdamW with decoupled weight decay on weights (ndim >= 2) only: the same groups converge builds.
    converge uses the fused kernel; the classic loop uses torch's default, as the classic answer does."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                              {"params": no_decay, "weight_decay": 0.0}], lr=LR, fused=fused)


def make_scheduler(optimizer):
    # converge's defaults: factor 0.1, patience 5, relative threshold 1e-3, min LR 1e-3 x the start.
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=5,
                                                      threshold=1e-3, min_lr=LR * 1e-3)


# --- contenders ----------------------------------------------------------------------------------
def hand_dataloader(model, train, val, epochs: int) -> dict:
    """The classic answer: DataLoader, validation every epoch, best state_dict deep-copied."""
    criterion = nn.CrossEntropyLoss()
    optimizer = make_optimizer(model)
    scheduler = make_scheduler(optimizer)
    train_loader = DataLoader(TensorDataset(*train), batch_size=BATCH_SIZE, shuffle=True)
    val_loader = DataLoader(TensorDataset(*val), batch_size=BATCH_SIZE, shuffle=False)
    best_loss, best_state, best_acc = float("inf"), copy.deepcopy(model.state_dict()), 0.0
    for _ in range(epochs):
        model.train()
        running_loss, seen = 0.0, 0
        for inputs, targets in train_loader:
            outputs = model(inputs)
            loss = criterion(outputs, targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            running_loss += loss.item() * inputs.size(0)
            seen += inputs.size(0)
        train_loss = running_loss / seen  # noqa: F841  (the classic loop prints it)
        model.eval()
        val_loss, correct, total = 0.0, 0, 0
        with torch.no_grad():
            for inputs, targets in val_loader:
                outputs = model(inputs)
                val_loss += criterion(outputs, targets).item() * inputs.size(0)
                correct += (outputs.argmax(dim=1) == targets).sum().item()
                total += inputs.size(0)
        val_loss /= total
        scheduler.step(val_loss)
        if val_loss < best_loss:
            best_loss, best_acc = val_loss, correct / total
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return {"epochs": epochs, "best_val_loss": best_loss, "best_val_accuracy": best_acc}


def hand_inmemory(model, train, val, epochs: int) -> dict:
    """The tightest hand-written loop: slices of in-memory tensors, no per-step host sync, and the same
    fused AdamW as converge, so that the ratio against it is converge's own overhead."""
    criterion = nn.CrossEntropyLoss()
    optimizer = make_optimizer(model, fused=True)
    scheduler = make_scheduler(optimizer)
    x, y = train
    xv, yv = val
    n = x.shape[0]
    best_loss, best_state, best_acc = float("inf"), copy.deepcopy(model.state_dict()), 0.0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n)
        xs, ys = x.index_select(0, order), y.index_select(0, order)
        loss_sum = torch.zeros((), dtype=torch.float64)
        for lo in range(0, n, BATCH_SIZE):
            inputs, targets = xs[lo:lo + BATCH_SIZE], ys[lo:lo + BATCH_SIZE]
            loss = criterion(model(inputs), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum.add_(loss.detach(), alpha=targets.shape[0])
        train_loss = float(loss_sum) / n  # noqa: F841
        model.eval()
        sums = torch.zeros(2, dtype=torch.float64)
        with torch.no_grad():
            for lo in range(0, xv.shape[0], BATCH_SIZE):
                inputs, targets = xv[lo:lo + BATCH_SIZE], yv[lo:lo + BATCH_SIZE]
                outputs = model(inputs)
                sums[0] += criterion(outputs, targets) * targets.shape[0]
                sums[1] += (outputs.argmax(dim=1) == targets).sum()
        val_loss, val_acc = (sums / xv.shape[0]).tolist()
        scheduler.step(val_loss)
        if val_loss < best_loss:
            best_loss, best_acc = val_loss, val_acc
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return {"epochs": epochs, "best_val_loss": best_loss, "best_val_accuracy": best_acc}


def _converge(model, train, val, epochs: int, out) -> dict:
    result = converge.fit(model, train, val, out=out, verbose=False, optimizer="adamw", lr=LR,
                          weight_decay=WEIGHT_DECAY, batch_size=BATCH_SIZE, max_epochs=epochs,
                          patience=10**6, unproductive_cuts=10**6, seed=0, device="cpu")
    summary = result.summary
    if summary["epochs"] != epochs:
        raise RuntimeError(f"converge stopped after {summary['epochs']} of {epochs} epochs "
                           f"({summary['status']}: {summary['stop_reason']}); the comparison needs all of them")
    in_epochs = sum(record["seconds"] for record in result.history)
    return {"epochs": summary["epochs"], "best_val_loss": summary["best"].get("val_loss"),
            "best_val_accuracy": summary["best"].get("val_accuracy"), "in_epoch_seconds": in_epochs}


def converge_run_folder(model, train, val, epochs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="converge-bench-") as tmp:
        return _converge(model, train, val, epochs, out=os.path.join(tmp, "run"))


def converge_no_files(model, train, val, epochs: int) -> dict:
    return _converge(model, train, val, epochs, out=None)


CONTENDERS = {
    "hand (DataLoader)": hand_dataloader,
    "hand (in-memory)": hand_inmemory,
    "converge (run folder)": converge_run_folder,
    "converge (out=None)": converge_no_files,
}
BASELINE, STRICT = "hand (DataLoader)", "hand (in-memory)"


# --- measurement ---------------------------------------------------------------------------------
def time_one(fn, train, val, epochs: int) -> tuple[float, dict]:
    model = make_model()
    gc.collect()
    started = time.perf_counter()
    info = fn(model, train, val, epochs)
    wall = time.perf_counter() - started
    if info["epochs"] != epochs:
        raise RuntimeError(f"{fn.__name__} ran {info['epochs']} epochs, not {epochs}")
    return wall, info


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    train, val = make_data()
    names = list(CONTENDERS)
    per_epoch: dict[str, list[float]] = {name: [] for name in names}
    last_info: dict[str, dict] = {}
    fixed: list[float] = []  # converge (run folder): wall time outside its epochs (setup and the end)
    steps = -(-N_TRAIN // BATCH_SIZE)
    print(f"converge {getattr(converge, '__version__', '?')}, torch {torch.__version__}, "
          f"Python {platform.python_version()}, {platform.machine()}, torch threads {torch.get_num_threads()}")
    print(f"MLP {FEATURES}-{HIDDEN}-{HIDDEN}-{CLASSES}, {N_TRAIN} train / {N_VAL} val samples, batch {BATCH_SIZE} "
          f"({steps} steps/epoch), AdamW lr {LR:g} wd {WEIGHT_DECAY:g}, {args.epochs} epochs per run, "
          f"1 warm-up + {args.rounds} timed rounds, order alternating")
    load_start = _load()
    for round_index in range(args.rounds + 1):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            wall, info = time_one(CONTENDERS[name], train, val, args.epochs)
            if round_index == 0:
                continue  # warm-up: imports, allocator, caches
            per_epoch[name].append(wall / args.epochs)
            last_info[name] = info
            if name == "converge (run folder)":
                fixed.append(wall - info["in_epoch_seconds"])
        label = "warm-up" if round_index == 0 else f"round {round_index}/{args.rounds}"
        print(f"  {label} done", file=sys.stderr, flush=True)

    load_end = _load()
    base = statistics.median(per_epoch[BASELINE])
    strict = statistics.median(per_epoch[STRICT])
    rows = []
    print()
    header = (f"{'contender':<24}{'median s/epoch':>15}{'min s/epoch':>13}{'ms/step':>9}"
              f"{'vs DataLoader':>15}{'vs in-memory':>14}{'best val loss':>15}{'val acc':>9}")
    print(header)
    print("-" * len(header))
    for name in names:
        med, low = statistics.median(per_epoch[name]), min(per_epoch[name])
        info = last_info[name]
        row = {"contender": name, "median_s_per_epoch": med, "min_s_per_epoch": low,
               "ms_per_step": 1000 * med / steps, "ratio_vs_dataloader": med / base,
               "ratio_vs_inmemory": med / strict, "best_val_loss": info["best_val_loss"],
               "best_val_accuracy": info["best_val_accuracy"], "s_per_epoch_runs": per_epoch[name]}
        rows.append(row)
        print(f"{name:<24}{med:>15.4f}{low:>13.4f}{row['ms_per_step']:>9.3f}{med / base:>14.3f}x"
              f"{med / strict:>13.3f}x{info['best_val_loss']:>15.4f}{info['best_val_accuracy']:>9.4f}")
    print()
    fixed_median = statistics.median(fixed)
    print(f"converge (run folder) time outside its epochs (set-up, final checkpoint, summary, curves): "
          f"median {fixed_median:.3f} s per run ({fixed_median / args.epochs:.4f} s per epoch at {args.epochs} epochs)")
    ratio = statistics.median(per_epoch["converge (run folder)"]) / base
    ratio_nofiles = statistics.median(per_epoch["converge (out=None)"]) / base
    ratio_strict = statistics.median(per_epoch["converge (run folder)"]) / strict
    verdict = "met" if ratio <= TARGET else "NOT met"
    if load_start is not None:
        print(f"1-minute load average at start / end: {load_start:.2f} / {load_end:.2f} on {os.cpu_count()} CPUs "
              "(other busy processes make every figure slower and noisier)")
    print(f"converge (out=None) / hand-written loop (DataLoader): {ratio_nofiles:.2f}x")
    print(f"converge / hand-written loop (in-memory): {ratio_strict:.2f}x")
    print(f"converge / hand-written loop (DataLoader): {ratio:.2f}x (target <= {TARGET:.2f}x: {verdict})")

    if args.json:
        results = {
            "converge_version": getattr(converge, "__version__", None), "torch_version": torch.__version__,
            "python_version": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_start": load_start, "load_average_end": load_end,
            "workload": {"model": f"MLP {FEATURES}-{HIDDEN}-{HIDDEN}-{CLASSES}", "train_samples": N_TRAIN,
                         "val_samples": N_VAL, "batch_size": BATCH_SIZE, "steps_per_epoch": steps,
                         "optimizer": "adamw", "lr": LR, "weight_decay": WEIGHT_DECAY, "epochs": args.epochs,
                         "rounds": args.rounds},
            "results": rows,
            "converge_fixed_seconds_per_run": fixed,
            "ratio_converge_vs_dataloader": ratio,
            "ratio_converge_no_files_vs_dataloader": ratio_nofiles,
            "ratio_converge_vs_inmemory": ratio_strict,
            "target": TARGET, "target_met": ratio <= TARGET,
        }
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
