"""Record real learning-rate range tests, and the LRs that actually train well, as JSON fixtures.

Run once by hand (``.venv/bin/python tests/data/lr_curves/record.py``); the tests only read the
JSON files this writes. No downloads: scikit-learn's bundled sets and generated data. Every random
draw is seeded, so a re-run on the same torch / scikit-learn / CPU reproduces the files closely
(float summation order may still differ in the last bits across machines).

For each (task, optimizer):

* the range test -- a copy of one freshly initialized model, the LR growing exponentially from
  1e-7 to 10 over ``STEPS`` steps, one mini-batch of 64 per step cycling through shuffled training
  data, ``loss.item()`` recorded each step; it stops at the first non-finite loss or one above 10x
  the minimum so far, keeping that last value in the record;
* the good LR range -- the same initial weights trained with each constant LR of a quarter-decade
  grid (1e-6..1; 1e-8..1 for the unscaled generated task) for a fixed number of epochs (15; 60 for
  diabetes, whose epoch is 6 steps), same optimizer, three data orders; a run that blows up counts
  as inf. ``good_lr_range`` is the contiguous block of grid LRs around the best whose mean final
  validation loss is within ``TOLERANCE`` (20%) of the best one -- grid points only, not
  interpolated. The measured numbers are written into ``notes`` and ``grid`` (mean per LR).

A fixed budget favours bold LRs: a smaller one that would get there in more epochs is not "good"
here. Non-finite losses are stored as the strings "nan" / "inf" (JSON has no NaN).
Runtime: ~2.5 minutes on 2 CPU cores (one torch thread).

Output: one ``<task>__<optimizer>.json`` per pair next to this script, plus ``__to_nan`` twins for
the pairs in ``TO_NAN``: the same sweep run on past 10x the minimum until the loss stops being finite.
``record.py [<task>__<optimizer> ...]`` records only the pairs named.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_diabetes, load_digits
from torch import nn

HERE = Path(__file__).resolve().parent
STEPS = 100
LR_START, LR_END = 1e-7, 10.0
BATCH = 64
TOLERANCE = 0.2          # "good" = final validation loss within 20% of the best grid LR's
GRID = [10 ** (e / 4) for e in range(-24, 1)]    # 1e-6 .. 1, quarter-decade steps (25 values)
WIDE_GRID = [10 ** (e / 4) for e in range(-32, 1)]    # 1e-8 .. 1, for the unscaled generated task
GRID_SEEDS = (0, 1, 2)   # data-order seeds per grid LR; the mean final validation loss counts (inf if any blew up)
SEED = 0

OPTIMIZERS = {
    "adamw": ("AdamW(weight_decay=1e-2)",
              lambda params, lr: torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)),
    "sgd": ("SGD(momentum=0.9, nesterov=True, weight_decay=5e-4)",
            lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)),
}


# ---------------------------------------------------------------- tasks
# Each returns (description, model, (x_train, y_train), (x_val, y_val), loss_fn, epochs).

def _split(x, y, seed=SEED, val_fraction=0.25):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    cut = int(len(x) * (1 - val_fraction))
    tr, va = order[:cut], order[cut:]
    return (x[tr], y[tr]), (x[va], y[va])


def digits_mlp():
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)      # pixels 0..16 -> [0, 1]
    y = torch.tensor(d.target, dtype=torch.long)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    return ("sklearn digits (1797 x 64, inputs scaled to [0,1]), MLP 64-128-128-10, cross-entropy",
            model, *_split(x, y), nn.CrossEntropyLoss(), 15)


def digits_cnn():
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),     # 32 x 4 x 4
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))
    return ("sklearn digits as 1x8x8 images in [0,1], CNN conv16-conv32-maxpool-fc64-fc10, cross-entropy",
            model, *_split(x, y), nn.CrossEntropyLoss(), 15)


def diabetes_raw():
    d = load_diabetes()
    x = torch.tensor(d.data, dtype=torch.float32)              # sklearn's own small-valued features
    y = torch.tensor(d.target, dtype=torch.float32).unsqueeze(1)   # RAW targets, 25..346, not scaled
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    description = "sklearn diabetes (442 x 10) with RAW targets (25..346, mean ~152, unscaled), MLP 10-64-64-1, MSE"
    return description, model, *_split(x, y), nn.MSELoss(), 60


def wild_scale_tabular():
    g = torch.Generator().manual_seed(SEED)
    n = 2000
    z = torch.randn(n, 4, generator=g)
    target = 3 * z[:, 0] - 2 * z[:, 1] + torch.tanh(2 * z[:, 2]) * z[:, 3] + 0.1 * torch.randn(n, generator=g)
    # Columns five decades apart and nothing standardized. (A 1e5 column was tried first: with it no
    # grid LR, AdamW or SGD, beat predicting the mean in 15 or even 50 epochs -- normalized validation
    # MSE >= 0.87 at best -- so it has no meaningful "good" LR and 1e2 is used instead.)
    x = z * torch.tensor([1.0, 1e3, 1e-2, 1e2])
    y = (50 + 20 * target).unsqueeze(1)                         # raw target: mean ~50, std ~74
    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    description = ("generated regression (2000 x 4), features scaled by 1, 1e3, 1e-2, 1e2, raw target 50 + 20 * "
                   "(3 z0 - 2 z1 + tanh(2 z2) z3 + noise) (std ~74), nothing standardized, MLP 4-64-64-1, MSE")
    return description, model, *_split(x, y), nn.MSELoss(), 15


def standardized_regression():
    g = torch.Generator().manual_seed(SEED + 1)
    n = 2000
    x = torch.randn(n, 8, generator=g)
    w = torch.randn(8, generator=g)
    target = x @ w + torch.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.1 * torch.randn(n, generator=g)
    y = ((target - target.mean()) / target.std()).unsqueeze(1)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    return ("generated regression (2000 x 8), standardized features and target, MLP 8-64-64-1, MSE",
            model, *_split(x, y), nn.MSELoss(), 15)


TASKS = {f.__name__: f for f in (digits_mlp, digits_cnn, diabetes_raw, wild_scale_tabular, standardized_regression)}
GRIDS = {"wild_scale_tabular": WIDE_GRID}     # SGD only survives tiny LRs there
TO_NAN = {("standardized_regression", "sgd"), ("wild_scale_tabular", "sgd")}   # also recorded up to the blow-up


# ---------------------------------------------------------------- measurements

def batches(x, y, seed):
    """Endless shuffled mini-batches of BATCH, reshuffled each pass."""
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), BATCH):
            index = order[i:i + BATCH]
            yield x[index], y[index]


def range_test(init_model, make_optimizer, train, loss_fn, stop_factor=10.0):
    """The sweep; it stops at the first non-finite loss or, when `stop_factor` is set, at the first
    loss above stop_factor x the minimum so far -- that last value is kept."""
    model = copy.deepcopy(init_model)
    model.train()
    optimizer = make_optimizer(model.parameters(), LR_START)
    ratio = (LR_END / LR_START) ** (1 / (STEPS - 1))
    lrs, losses, best = [], [], math.inf
    stream = batches(*train, seed=SEED + 100)
    for step in range(STEPS):
        lr = LR_START * ratio**step
        for group in optimizer.param_groups:
            group["lr"] = lr
        xb, yb = next(stream)
        loss = loss_fn(model(xb), yb)
        value = loss.item()
        lrs.append(lr)
        losses.append(value)
        if not math.isfinite(value) or (stop_factor is not None and value > stop_factor * best):
            break
        best = min(best, value)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return lrs, losses


def train_constant(init_model, make_optimizer, lr, train, val, loss_fn, epochs, seed):
    """Final validation loss after `epochs` epochs at a constant LR; inf when training blew up."""
    model = copy.deepcopy(init_model)
    optimizer = make_optimizer(model.parameters(), lr)
    stream = batches(*train, seed=SEED + 200 + seed)
    steps = epochs * math.ceil(len(train[0]) / BATCH)
    model.train()
    for _ in range(steps):
        xb, yb = next(stream)
        loss = loss_fn(model(xb), yb)
        if not torch.isfinite(loss):
            return math.inf
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        value = loss_fn(model(val[0]), val[1]).item()
    return value if math.isfinite(value) else math.inf


def good_range(grid_losses):
    """The contiguous block of grid LRs around the best whose loss is within TOLERANCE of it."""
    lrs = sorted(grid_losses)
    values = [grid_losses[lr] for lr in lrs]
    best_i = min(range(len(lrs)), key=values.__getitem__)
    if not math.isfinite(values[best_i]):
        return None, best_i
    limit = values[best_i] * (1 + TOLERANCE)
    lo = hi = best_i
    while lo > 0 and values[lo - 1] <= limit:
        lo -= 1
    while hi < len(lrs) - 1 and values[hi + 1] <= limit:
        hi += 1
    return (lrs[lo], lrs[hi]), best_i


def fmt(value):
    return "diverged" if not math.isfinite(value) else f"{value:.4g}"


def record(task_name, optimizer_name):
    torch.manual_seed(SEED)
    description, init_model, train, val, loss_fn, epochs = TASKS[task_name]()
    optimizer_text, make_optimizer = OPTIMIZERS[optimizer_name]

    lrs, losses = range_test(init_model, make_optimizer, train, loss_fn)
    grid_lrs = GRIDS.get(task_name, GRID)
    grid = {lr: sum(train_constant(init_model, make_optimizer, lr, train, val, loss_fn, epochs, seed)
                    for seed in GRID_SEEDS) / len(GRID_SEEDS) for lr in grid_lrs}
    good, best_i = good_range(grid)
    best_lr = sorted(grid)[best_i]
    table = ", ".join(f"{lr:.3g}: {fmt(v)}" for lr, v in sorted(grid.items()))
    if good is None:
        verdict = "every grid LR diverged, so there is no good range inside the grid"
    else:
        verdict = (f"best {best_lr:.3g} (val loss {fmt(grid[best_lr])}); contiguous grid LRs within "
                   f"{TOLERANCE:.0%} of it (<= {grid[best_lr] * (1 + TOLERANCE):.4g}): {good[0]:.3g} .. {good[1]:.3g}")
    notes = (f"{description}; {len(train[0])} train / {len(val[0])} validation samples. "
             f"Range test: {optimizer_text}, LR {LR_START:g} -> {LR_END:g} exponentially over up to {STEPS} steps, "
             f"batch {BATCH}; stopped after {len(losses)} steps ({'last loss non-finite' if not math.isfinite(losses[-1]) else 'loss > 10x minimum' if len(losses) < STEPS else 'sweep complete'}). "
             f"good_lr_range: same initial weights trained {epochs} epochs at each constant LR of a quarter-decade grid "
             f"{grid_lrs[0]:g}..{grid_lrs[-1]:g} with the same optimizer, {len(GRID_SEEDS)} data orders each, "
             f"mean final validation loss per LR: {table}; {verdict}.")
    out = {
        "task": task_name,
        "optimizer": optimizer_name,
        "lrs": lrs,
        "losses": [v if math.isfinite(v) else str(v) for v in losses],   # JSON has no NaN/inf: "nan", "inf"
        "good_lr_range": list(good) if good else None,
        "notes": notes,
        "grid": {f"{lr:.6g}": (v if math.isfinite(v) else "inf") for lr, v in sorted(grid.items())},
        "epochs": epochs,
        "tolerance": TOLERANCE,
    }
    path = HERE / f"{task_name}__{optimizer_name}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    if (task_name, optimizer_name) in TO_NAN:
        # The same sweep not stopped at 10x the minimum: it runs on until the loss is no longer finite,
        # so the record ends in a real blow-up (inf / NaN). Same grid, same good range.
        lrs, losses = range_test(init_model, make_optimizer, train, loss_fn, stop_factor=None)
        stop = "first non-finite loss" if not math.isfinite(losses[-1]) else "sweep complete, all finite"
        notes_to_nan = notes.replace(
            notes[notes.index("stopped after"):notes.index("good_lr_range:")],
            f"NOT stopped at 10x the minimum, only at the first non-finite loss: {len(losses)} steps ({stop}). ")
        out = dict(out, lrs=lrs, losses=[v if math.isfinite(v) else str(v) for v in losses], notes=notes_to_nan)
        (HERE / f"{task_name}__{optimizer_name}__to_nan.json").write_text(json.dumps(out, indent=1) + "\n")
    return path, len(losses), good, best_lr


def main():
    torch.set_num_threads(1)        # tiny models: one thread is faster, and immune to oversubscription
    torch.set_flush_denormal(True)   # AdamW state decaying into denormals made runs ~100x slower
    start = time.perf_counter()
    only = set(sys.argv[1:])            # optional: record only these "<task>__<optimizer>" pairs
    for task_name in TASKS:
        for optimizer_name in OPTIMIZERS:
            if only and f"{task_name}__{optimizer_name}" not in only:
                continue
            t0 = time.perf_counter()
            path, n, good, best_lr = record(task_name, optimizer_name)
            print(f"{path.name}: {n} range-test points, best grid LR {best_lr:.3g}, good {good}, "
                  f"{time.perf_counter() - t0:.1f}s", flush=True)
    print(f"total {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
