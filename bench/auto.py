"""Automatic hyperparameters: converge's full auto mode against the classic recipe and a tuned ceiling.

Small tasks of different kinds, nothing downloaded (scikit-learn's bundled digits and breast cancer and
generated data). The train/val/test split (60/20/20) follows the seed (``--fixed-split``: seed 0's split
for every seed), so that no choice is tuned to one split; the test metric is reported per seed:

* ``digits_mlp``: digits (8x8 pixels / 16), a 64-128-128-10 MLP, classification.
* ``digits_cnn``: the same digits as 1x8x8 images, conv 16 -> conv 32 -> max-pool -> linear.
* ``friedman_scaled``: make_friedman1 (2,000 samples, 10 features, noise 1), each raw feature
  multiplied by its own scale from 1e-3 to 1e4 and *not* standardized; targets standardized with the
  training statistics, so the MSE reads as a fraction of the target variance. A 10-64-64-1 MLP.
* ``tabular_cls``: make_classification (3,000 samples, 20 standardized features, 4 classes, 3% flipped
  labels), a 20-128-128-4 MLP.
* ``breast_cancer_raw`` (not in the default set; ``--tasks breast_cancer_raw``): load_breast_cancer with
  its raw features (569 samples, 30 features from ~1e-3 to ~4e3), a 30-32-2 MLP: the new user's task.

Contenders, run side by side for every seed (the model is initialised from the seed in the same way
for all of them):

* ``classic``: a plain hand-written loop, not converge: AdamW(lr 1e-3, weight decay 1e-2), batch 64,
  ReduceLROnPlateau(factor 0.1, patience 5) on the validation loss, early stopping with patience 10 on
  the validation loss, the best weights restored, at most 500 epochs.
* ``converge``: ``converge.fit(model, train, val, test, seed=seed)`` in full auto mode; its epochs
  are the training epochs plus ``tuning_epochs`` (the training-set passes spent choosing).
* ``tpe``: 40 Optuna TPE trials over optimizer {adamw, sgd}, LR (log-uniform), weight decay
  (log-uniform with a 1e-6 floor) and batch size {16, 32, 64, 128, 256}; every trial is the classic
  loop with the trial's values; the objective is the best validation loss; the test metric reported
  is the best trial's (by validation loss) and the epochs are those of all the trials together.

Targets (from the issue), checked from the measured numbers: converge's mean test metric is at least
the classic recipe's, within 0.5 accuracy points (classification) or 5% MSE (regression) of the
ceiling, and converge spends at most 2x the classic recipe's epochs (tuning included).

    .venv/bin/python bench/auto.py                       # or: make bench-auto
    .venv/bin/python bench/auto.py --tasks digits_mlp --seeds 2 --trials 20 --json auto.json
    .venv/bin/python bench/auto.py --quick               # smoke run: 1 seed, 3 trials
    .venv/bin/python bench/auto.py --tpe-from auto.json  # re-measure converge, reuse the saved TPE searches
    .venv/bin/python bench/auto.py --report auto.json    # print the tables and verdicts of a saved run

Defaults: 10 seeds for classic and converge, TPE on the first 3 of them (about 13 minutes on 2 CPUs).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import converge

CLASSIC = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-2, "batch_size": 64}
MAX_EPOCHS = 500
PLATEAU_FACTOR, PLATEAU_PATIENCE, STOP_PATIENCE = 0.1, 5, 10
BATCH_CHOICES = (16, 32, 64, 128, 256)
LR_RANGE = (1e-5, 1.0)
WD_RANGE = (1e-6, 1e-1)        # log-uniform; 1e-6 is the "small floor" (no decay to speak of)
ACC_MARGIN, MSE_MARGIN, EPOCH_FACTOR = 0.005, 0.05, 2.0
TIE = 1e-6                     # test metrics closer than this count as equal
DIVERGED_LOSS = 1e10           # what a trial that never produced a finite validation loss reports to TPE


# --- tasks ---------------------------------------------------------------------------------------
@dataclass
class Task:
    name: str
    kind: str                                   # "classification" or "regression"
    description: str
    splits: dict                                # name -> (inputs, targets)
    make_model: Callable[[], nn.Module]


def _split(n: int, seed: int = 0, fractions=(0.6, 0.2)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.random.RandomState(seed).permutation(n)
    a, b = int(n * fractions[0]), int(n * (fractions[0] + fractions[1]))
    return order[:a], order[a:b], order[b:]


def _tensors(x: np.ndarray, y: np.ndarray, parts, regression: bool) -> dict:
    out = {}
    for name, idx in zip(("train", "val", "test"), parts):
        xt = torch.tensor(x[idx], dtype=torch.float32)
        yt = torch.tensor(y[idx], dtype=torch.float32).reshape(-1, 1) if regression else \
            torch.tensor(y[idx], dtype=torch.long)
        out[name] = (xt.contiguous(), yt.contiguous())
    return out


def _mlp(*sizes: int) -> nn.Module:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def task_digits_mlp(split_seed: int = 0) -> Task:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    splits = _tensors(x / 16.0, y, _split(len(y), split_seed), regression=False)
    return Task("digits_mlp", "classification", "digits /16, 64-128-128-10 MLP", splits,
                lambda: _mlp(64, 128, 128, 10))


def task_digits_cnn(split_seed: int = 0) -> Task:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    splits = _tensors((x / 16.0).reshape(-1, 1, 8, 8), y, _split(len(y), split_seed), regression=False)

    def model() -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 10))
    return Task("digits_cnn", "classification", "digits 1x8x8, conv16-conv32-pool-linear CNN", splits, model)


# Informative features (x0..x4) and noise features (x5..x9) both get a spread of scales.
FRIEDMAN_SCALES = np.array([1e-3, 1e4, 1e-1, 1e3, 1.0, 1e2, 1e-2, 1e1, 1e4, 1e-3])


def task_friedman_scaled(split_seed: int = 0) -> Task:
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=2000, n_features=10, noise=1.0, random_state=0)
    x = x * FRIEDMAN_SCALES
    parts = _split(len(y), split_seed)
    mean, std = y[parts[0]].mean(), y[parts[0]].std()
    splits = _tensors(x, (y - mean) / std, parts, regression=True)
    return Task("friedman_scaled", "regression",
                "make_friedman1 n=2000, raw features scaled 1e-3..1e4, 10-64-64-1 MLP", splits,
                lambda: _mlp(10, 64, 64, 1))


def task_tabular_cls(split_seed: int = 0) -> Task:
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=3000, n_features=20, n_informative=8, n_redundant=4, n_classes=4,
                               n_clusters_per_class=2, class_sep=1.0, flip_y=0.03, random_state=0)
    parts = _split(len(y), split_seed)
    mean, std = x[parts[0]].mean(axis=0), x[parts[0]].std(axis=0)
    splits = _tensors((x - mean) / std, y, parts, regression=False)
    return Task("tabular_cls", "classification", "make_classification n=3000, 20 std. features, 4 classes, "
                "20-128-128-4 MLP", splits, lambda: _mlp(20, 128, 128, 4))


def task_breast_cancer_raw(split_seed: int = 0) -> Task:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    splits = _tensors(x, y, _split(len(y), split_seed), regression=False)
    return Task("breast_cancer_raw", "classification", "load_breast_cancer raw features (area ~1e3, "
                "smoothness ~1e-1), 30-32-2 MLP", splits, lambda: _mlp(30, 32, 2))


TASKS = {"digits_mlp": task_digits_mlp, "digits_cnn": task_digits_cnn, "friedman_scaled": task_friedman_scaled,
         "tabular_cls": task_tabular_cls, "breast_cancer_raw": task_breast_cancer_raw}
DEFAULT_TASKS = ("digits_mlp", "digits_cnn", "friedman_scaled", "tabular_cls")


def fresh_model(task: Task, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return task.make_model()


# --- the classic recipe (a plain hand-written loop) ----------------------------------------------
def _loss_fn(kind: str):
    return F.cross_entropy if kind == "classification" else F.mse_loss


@torch.no_grad()
def evaluate(model: nn.Module, split, kind: str) -> dict:
    model.eval()
    x, y = split
    out = model(x)
    result = {"loss": float(_loss_fn(kind)(out, y))}
    if kind == "classification":
        result["accuracy"] = float((out.argmax(dim=1) == y).float().mean())
    model.train()
    return result


def classic_loop(task: Task, model: nn.Module, *, optimizer: str, lr: float, weight_decay: float,
                 batch_size: int, seed: int, max_epochs: int = MAX_EPOCHS) -> dict:
    """AdamW/SGD, ReduceLROnPlateau(0.1, 5) and early stopping (10) on the validation loss, best weights
    restored. Batches are slices of a shuffled index (the data are small tensors in memory)."""
    x, y = task.splits["train"]
    n = len(y)
    loss_fn = _loss_fn(task.kind)
    g = torch.Generator().manual_seed(seed)
    if optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=PLATEAU_FACTOR,
                                                       patience=PLATEAU_PATIENCE)
    best, best_state, best_epoch, bad, epochs, diverged = math.inf, copy.deepcopy(model.state_dict()), 0, 0, 0, False
    model.train()
    for epoch in range(1, max_epochs + 1):
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        epochs = epoch
        val_loss = evaluate(model, task.splits["val"], task.kind)["loss"]
        if not math.isfinite(val_loss):
            diverged = True
            break
        sched.step(val_loss)
        if val_loss < best:
            best, best_epoch, bad = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= STOP_PATIENCE:
                break
    model.load_state_dict(best_state)
    test = evaluate(model, task.splits["test"], task.kind)
    return {"epochs": epochs, "best_epoch": best_epoch, "val_loss": best, "diverged": diverged,
            "test": test, "test_metric": _metric(task, test)}


def _metric(task: Task, test: dict) -> float:
    return test["accuracy"] if task.kind == "classification" else test["loss"]


def run_classic(task: Task, seed: int) -> dict:
    model = fresh_model(task, seed)
    start = time.perf_counter()
    result = classic_loop(task, model, seed=seed, **CLASSIC)
    return {**result, "seconds": time.perf_counter() - start, "hyperparameters": dict(CLASSIC)}


# --- converge in full auto mode ------------------------------------------------------------------
def run_converge(task: Task, seed: int) -> dict:
    model = fresh_model(task, seed)
    s = task.splits
    start = time.perf_counter()
    result = converge.fit(model, s["train"], s["val"], s["test"], verbose=False, seed=seed)
    seconds = time.perf_counter() - start
    summary = result.summary
    test = dict(summary.get("test", {}))
    return {"epochs": summary["epochs"] + summary["tuning_epochs"], "train_epochs": summary["epochs"],
            "tuning_epochs": summary["tuning_epochs"], "best_epoch": summary["best_epoch"],
            "status": summary["status"], "val_loss": summary["best"].get("val_loss"), "test": test,
            "test_metric": _metric(task, test) if test else math.nan, "seconds": seconds,
            "hyperparameters": summary["hyperparameters"], "lr_reductions": summary.get("lr_reductions"),
            "warmup_steps": summary.get("config", {}).get("warmup_steps")}


# --- the tuned ceiling: Optuna TPE over the same four knobs ---------------------------------------
def run_tpe(task: Task, seed: int, trials: int) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    total_epochs = 0
    start = time.perf_counter()

    def objective(trial) -> float:
        nonlocal total_epochs
        hp = {"optimizer": trial.suggest_categorical("optimizer", ["adamw", "sgd"]),
              "lr": trial.suggest_float("lr", *LR_RANGE, log=True),
              "weight_decay": trial.suggest_float("weight_decay", *WD_RANGE, log=True),
              "batch_size": trial.suggest_categorical("batch_size", list(BATCH_CHOICES))}
        result = classic_loop(task, fresh_model(task, seed), seed=seed, **hp)
        total_epochs += result["epochs"]
        trial.set_user_attr("epochs", result["epochs"])
        trial.set_user_attr("test", result["test"])
        trial.set_user_attr("test_metric", result["test_metric"])
        trial.set_user_attr("diverged", result["diverged"])
        return result["val_loss"] if math.isfinite(result["val_loss"]) else DIVERGED_LOSS

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials)
    seconds = time.perf_counter() - start
    best = study.best_trial
    return {"epochs": total_epochs, "seconds": seconds, "trials": trials, "val_loss": best.value,
            "test": best.user_attrs["test"], "test_metric": best.user_attrs["test_metric"],
            "best_trial_epochs": best.user_attrs["epochs"], "hyperparameters": dict(best.params),
            "diverged_trials": sum(bool(t.user_attrs.get("diverged")) for t in study.trials),
            "all_trials": [{"params": t.params, "val_loss": t.value, "epochs": t.user_attrs.get("epochs"),
                            "test_metric": t.user_attrs.get("test_metric")} for t in study.trials]}


# --- reporting -----------------------------------------------------------------------------------
def _stats(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": math.nan, "sd": math.nan, "min": math.nan, "max": math.nan}
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def aggregate(runs: list[dict]) -> dict:
    return {"n": len(runs), "test_metric": _stats([r["test_metric"] for r in runs]),
            "epochs": _stats([r["epochs"] for r in runs]), "seconds": _stats([r["seconds"] for r in runs])}


def _fmt_metric(kind: str, value: float) -> str:
    return f"{100 * value:.2f}" if kind == "classification" else f"{value:.4f}"


def _hp(hp: dict) -> str:
    return (f"{hp.get('optimizer')} lr {float(hp.get('lr')):.3g} wd {float(hp.get('weight_decay')):.2g} "
            f"bs {hp.get('batch_size')}")


def print_task_table(task: Task, results: dict) -> None:
    kind = task.kind
    label = "test acc %" if kind == "classification" else "test MSE"
    print(f"\n== {task.name}: {task.description} ({kind}; train/val/test "
          f"{'/'.join(str(len(task.splits[k][1])) for k in ('train', 'val', 'test'))})")
    header = (f"{'contender':<10} {'seeds':>5} {label + ' mean':>15} {'sd':>7} {'min':>8} {'max':>8} "
              f"{'epochs':>9} {'seconds':>8}")
    print(header)
    print("-" * len(header))
    for name in ("classic", "converge", "tpe"):
        if name not in results:
            continue
        agg = aggregate(results[name])
        m = agg["test_metric"]
        print(f"{name:<10} {agg['n']:>5} {_fmt_metric(kind, m['mean']):>15} {_fmt_metric(kind, m['sd']):>7} "
              f"{_fmt_metric(kind, m['min']):>8} "
              f"{_fmt_metric(kind, m['max']):>8} {agg['epochs']['mean']:>9.1f} {agg['seconds']['mean']:>8.2f}")
    print("per seed:")
    for name in ("classic", "converge", "tpe"):
        for seed, run in zip(results.get(f"{name}_seeds", []), results.get(name, [])):
            extra = ""
            if name == "converge":
                extra = (f" = {run['train_epochs']} train + {run['tuning_epochs']:.1f} tuning; {run['status']}, "
                         f"{run['lr_reductions']} LR cuts, warmup {run['warmup_steps']}")
            elif name == "tpe":
                extra = f"; best trial {run['best_trial_epochs']} epochs, {run['diverged_trials']} diverged trials"
            print(f"  {name:<9} seed {seed}: {_fmt_metric(kind, run['test_metric'])}  val loss "
                  f"{run['val_loss']:.4f}  epochs {run['epochs']:.1f}{extra}  [{_hp(run['hyperparameters'])}]")


def verdicts(task: Task, results: dict) -> dict:
    kind = task.kind
    conv = aggregate(results["converge"])
    classic = aggregate(results["classic"])
    out: dict = {}
    c, k = conv["test_metric"]["mean"], classic["test_metric"]["mean"]
    # Same seed = same initial weights: count the seeds on which converge did better, as a noise check.
    sign = 1 if kind == "classification" else -1
    # converge and this loop average accuracy differently (float64 over batches vs float32 at once): the
    # same count of right answers can differ in the 8th digit, so a difference below TIE is a tie.
    pairs = [sign * (a["test_metric"] - b["test_metric"]) for a, b in zip(results["converge"], results["classic"])]
    paired = (f"; better on {sum(p > TIE for p in pairs)}, tied on {sum(abs(p) <= TIE for p in pairs)}, worse on "
              f"{sum(p < -TIE for p in pairs)} of {len(pairs)} seeds")
    if kind == "classification":
        out["vs_classic"] = {"ok": c >= k,
                             "detail": f"{100 * c:.2f} vs {100 * k:.2f} ({100 * (c - k):+.2f} pt{paired})"}
    else:
        out["vs_classic"] = {"ok": c <= k, "detail": f"MSE {c:.4f} vs {k:.4f} ({100 * (c / k - 1):+.1f}%{paired})"}
    if "tpe" in results:
        t = aggregate(results["tpe"])["test_metric"]["mean"]
        if kind == "classification":
            gap = t - c
            out["vs_ceiling"] = {"ok": gap <= ACC_MARGIN + 1e-12,
                                 "detail": f"{100 * c:.2f} vs ceiling {100 * t:.2f} ({100 * -gap:+.2f} pt; "
                                           f"allowed -{100 * ACC_MARGIN:.1f})"}
        else:
            out["vs_ceiling"] = {"ok": c <= (1 + MSE_MARGIN) * t,
                                 "detail": f"MSE {c:.4f} vs ceiling {t:.4f} ({100 * (c / t - 1):+.1f}%; "
                                           f"allowed +{100 * MSE_MARGIN:.0f}%)"}
    ce, ke = conv["epochs"]["mean"], classic["epochs"]["mean"]
    out["epochs"] = {"ok": ce <= EPOCH_FACTOR * ke,
                     "detail": f"{ce:.1f} vs {ke:.1f} classic ({ce / ke:.2f}x; allowed {EPOCH_FACTOR:g}x)"}
    return out


def print_verdicts(all_verdicts: dict) -> None:
    names = {"vs_classic": "converge >= classic", "vs_ceiling": "within margin of ceiling",
             "epochs": "epochs <= 2x classic"}
    print("\n== verdicts (means over seeds)")
    for task_name, v in all_verdicts.items():
        for key, label in names.items():
            if key in v:
                print(f"{task_name:<16} {label:<26} {'met ' if v[key]['ok'] else 'MISSED'}  {v[key]['detail']}")
    every = [v[key]["ok"] for v in all_verdicts.values() for key in v]
    print(f"\n{sum(every)}/{len(every)} targets met")


# --- provenance ----------------------------------------------------------------------------------
def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


def provenance() -> dict:
    diff = _git("diff", "HEAD", "--", "src")
    return {"commit": _git("log", "-1", "--format=%h").strip(),
            "src_uncommitted_changes": bool(diff.strip()),
            "src_diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:12] if diff.strip() else None,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "converge": converge.__version__,
            "optuna": _version("optuna"), "scikit-learn": _version("sklearn"), "load_avg_start": _load()}


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _reused_tpe(reused: dict, task: str, seed: int, trials: int) -> dict:
    results = reused["tasks"].get(task, {})
    for run_seed, run in zip(results.get("tpe_seeds", []), results.get("tpe", [])):
        if run_seed == seed and run["trials"] == trials:
            return run
    raise SystemExit(f"{reused['path']} has no {trials}-trial TPE search for {task} seed {seed}")


def report_from(path: str) -> int:
    """Print the tables and verdicts again from a saved --json file (the verdicts are recomputed)."""
    with open(path) as fh:
        saved = json.load(fh)
    info = saved["info"]
    print(f"from {path}: commit {info['commit']}, {info['date']}, {info['cpus']} CPUs {info['machine']}, "
          f"torch {info['torch']}, total {info.get('total_seconds', math.nan):.0f} s")
    all_verdicts = {}
    for name, entry in saved["tasks"].items():
        task = Task(name, entry["kind"], entry["description"], TASKS[name]().splits, lambda: nn.Identity())
        print_task_table(task, entry["results"])
        all_verdicts[name] = verdicts(task, entry["results"])
    print_verdicts(all_verdicts)
    return 0


# --- main ----------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(DEFAULT_TASKS))
    parser.add_argument("--fixed-split", action="store_true",
                        help="one train/val/test split (seed 0) for every seed, as before; by default the split "
                             "follows the seed, so that no choice is tuned to one split")
    parser.add_argument("--seeds", type=int, default=10, help="seeds for classic and converge (default 10)")
    parser.add_argument("--tpe-seeds", type=int, default=3,
                        help="seeds for the TPE ceiling, the first of --seeds (default 3)")
    parser.add_argument("--trials", type=int, default=40, help="TPE trials per search (default 40)")
    parser.add_argument("--no-tpe", action="store_true", help="skip the TPE ceiling")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 3 TPE trials")
    parser.add_argument("--json", metavar="PATH", help="save every run's numbers here")
    parser.add_argument("--tpe-from", metavar="PATH",
                        help="reuse the TPE searches of a saved --json run (same tasks, seeds and trials) instead "
                             "of running them: they do not involve converge, so they stay valid when only "
                             "converge changes")
    parser.add_argument("--report", metavar="PATH", help="print the tables and verdicts of a saved --json run")
    args = parser.parse_args(argv)
    if args.report:
        return report_from(args.report)
    if args.quick:
        args.seeds, args.tpe_seeds, args.trials = 1, 1, 3
    torch.set_num_threads(1)
    args.tpe_seeds = max(0, min(args.tpe_seeds, args.seeds))
    args.no_tpe = args.no_tpe or args.tpe_seeds == 0 or args.trials < 1
    reused: dict = {}
    if args.tpe_from and not args.no_tpe:
        with open(args.tpe_from) as fh:
            saved = json.load(fh)
        reused = {"path": args.tpe_from, "commit": saved["info"]["commit"], "date": saved["info"]["date"],
                  "tasks": {name: entry["results"] for name, entry in saved["tasks"].items()}}
    if not args.no_tpe and not reused:
        try:
            import optuna  # noqa: F401
        except ImportError:
            print("optuna is not installed: pip install -e '.[bench]' (or make bench-auto), or pass --no-tpe",
                  file=sys.stderr)
            return 2
    info = provenance()
    dirty = f" + uncommitted src changes (diff {info['src_diff_sha256']})" if info["src_uncommitted_changes"] else ""
    print(f"bench/auto.py at commit {info['commit']}{dirty}, {info['date']}")
    print(f"{info['cpus']} CPUs {info['machine']}, Python {info['python']}, torch {info['torch']} "
          f"({info['torch_threads']} thread), optuna {info['optuna']}, scikit-learn {info['scikit-learn']}, "
          f"load average {info['load_avg_start']}")
    print(f"seeds {args.seeds} (TPE: {'none' if args.no_tpe else f'{args.tpe_seeds} seed(s) x {args.trials} trials'})")
    started = time.perf_counter()
    if reused:
        print(f"TPE searches reused from {reused['path']} (run at commit {reused['commit']}, {reused['date']})")
        info["tpe_reused_from"] = {k: reused[k] for k in ("path", "commit", "date")}
    report: dict = {"info": info, "args": vars(args), "tasks": {}}
    all_verdicts = {}
    for name in args.tasks:
        task = TASKS[name]()
        results: dict = {"classic": [], "converge": [], "classic_seeds": [], "converge_seeds": []}
        for seed in range(args.seeds):
            task = TASKS[name](0 if args.fixed_split else seed)   # the split follows the seed
            results["classic"].append(run_classic(task, seed))
            results["classic_seeds"].append(seed)
            results["converge"].append(run_converge(task, seed))
            results["converge_seeds"].append(seed)
            print(f"  [{name} seed {seed}] classic {_fmt_metric(task.kind, results['classic'][-1]['test_metric'])} "
                  f"in {results['classic'][-1]['epochs']} epochs, converge "
                  f"{_fmt_metric(task.kind, results['converge'][-1]['test_metric'])} in "
                  f"{results['converge'][-1]['epochs']:.1f} epochs  ({time.perf_counter() - started:.0f} s)",
                  flush=True)
        if not args.no_tpe:
            results["tpe"], results["tpe_seeds"] = [], []
            for seed in range(args.tpe_seeds):
                task = TASKS[name](0 if args.fixed_split else seed)
                if reused:
                    results["tpe"].append(_reused_tpe(reused, name, seed, args.trials))
                    results["tpe_seeds"].append(seed)
                    continue
                results["tpe"].append(run_tpe(task, seed, args.trials))
                results["tpe_seeds"].append(seed)
                print(f"  [{name} seed {seed}] tpe {_fmt_metric(task.kind, results['tpe'][-1]['test_metric'])} in "
                      f"{results['tpe'][-1]['epochs']} epochs  ({time.perf_counter() - started:.0f} s)", flush=True)
        print_task_table(task, results)
        all_verdicts[name] = verdicts(task, results)
        report["tasks"][name] = {"kind": task.kind, "description": task.description, "results": results,
                                 "summary": {k: aggregate(results[k]) for k in ("classic", "converge", "tpe")
                                             if k in results},
                                 "verdicts": all_verdicts[name]}
    print_verdicts(all_verdicts)
    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f} s, load average at the end {_load()}")
    report["info"]["total_seconds"] = total
    report["info"]["load_avg_end"] = _load()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1, default=float)
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
