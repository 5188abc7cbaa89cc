"""`converge tune` (with pruning) against a 40-trial Optuna TPE search without pruning.

The tasks are bench/auto.py's (scikit-learn's bundled digits and generated data). The split varies with the
seed (``--split seed``, the default): seed 0 is bench/auto.py's fixed split, the one converge's defaults were
chosen on; seed k > 0 shuffles the same samples into train/val/test in the same proportions with seed k, so
the other seeds measure splits the defaults never saw (``--split fixed`` keeps split 0 for every seed). For
each task and seed, side by side:

* ``tune``: ``converge tune`` on a task file that serves the same model and splits: TPE over optimizer,
  LR, weight decay and batch size, every trial trained by the converge engine to convergence, the best
  validation loss so far reported every epoch and unpromising trials stopped by the pruner
  (Hyperband by default); trial 0 is converge's automatic choice (warm start). Epochs are those of every
  trial, pruned ones included, plus the epochs the warm start spent choosing trial 0.
* ``tpe``: bench/auto.py's ``run_tpe``: 40 TPE trials over the same four knobs (LR log-uniform in
  [1e-5, 1], weight decay in [1e-6, 1e-1], batch size in {16, ..., 256}), no pruning, each trial the
  classic recipe (a hand-written loop: ReduceLROnPlateau 0.1/5, early stopping 10, best weights
  restored, at most 500 epochs).

Reported: the best validation loss found (the objective of both searches), the total epochs, the test
metric of the best trial (accuracy, or MSE for the regression) and the seconds, per seed and as means. Target (from the issue): the tune search's best validation
loss at least as good as the TPE search's, with at most 30 % of its epochs.

    .venv/bin/python bench/tune.py                  # or: make bench-tune
    .venv/bin/python bench/tune.py --tasks digits_mlp --seeds 1 --trials 20 --json tune.json
    .venv/bin/python bench/tune.py --quick          # smoke run: 1 task, 1 seed, 4 + 4 trials
    .venv/bin/python bench/tune.py --first-seed 1 --seeds 2   # seeds 1 and 2: two splits the defaults never saw
    .venv/bin/python bench/tune.py --reuse-tpe before.json     # converge tune again, the TPE ceiling from a saved run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import auto  # noqa: E402  (bench/auto.py: the tasks, the classic recipe, the TPE search)

EPOCH_SHARE = 0.30   # the tune search may spend at most this share of the TPE search's epochs

TASK_FILE = '''
import sys
sys.path.insert(0, {bench!r})
import auto

import tune as _bench

_TASK = _bench.make_task({name!r}, {split_seed!r})


def model():
    return _TASK.make_model()


def data():
    s = _TASK.splits
    return s["train"], s["val"], s["test"]
'''


def make_task(name: str, split_seed: int = 0) -> "auto.Task":
    """bench/auto.py's task ``name`` with its samples split by ``split_seed`` (0: auto.py's own split).
    The samples are those of split 0, already scaled as auto.py scales them (with split 0's training
    statistics), shuffled again into parts of the same sizes."""
    task = auto.TASKS[name]()
    if split_seed == 0:
        return task
    parts = [task.splits[k] for k in ("train", "val", "test")]
    x = torch.cat([p[0] for p in parts])
    y = torch.cat([p[1] for p in parts])
    order = torch.from_numpy(np.random.RandomState(split_seed).permutation(len(y)))
    sizes = [len(p[1]) for p in parts]
    cuts = order.split(sizes)
    task.splits = {k: (x[i].contiguous(), y[i].contiguous()) for k, i in zip(("train", "val", "test"), cuts)}
    return task


def run_tune(task_name: str, seed: int, trials: int, pruner: str, folder: Path, warm_start: bool = True,
             split_seed: int = 0) -> dict:
    from converge.tune.search import tune_task

    task_file = folder / f"{task_name}-split{split_seed}.py"
    task_file.write_text(TASK_FILE.format(bench=os.path.dirname(os.path.abspath(__file__)), name=task_name,
                                          split_seed=split_seed))
    start = time.perf_counter()
    result = tune_task(task_file, trials=trials, out=folder / f"{task_name}-{seed}", seed=seed, pruner=pruner,
                       max_epochs=auto.MAX_EPOCHS, warm_start=warm_start, verbose=False)
    seconds = time.perf_counter() - start
    s = result.summary
    test = (s.get("best_summary") or {}).get("test") or {}
    kind = "classification" if "accuracy" in test else "regression"
    metric = test.get("accuracy") if kind == "classification" else test.get("loss")
    return {"val_loss": s["best_value"], "epochs": s["epochs_total"], "seconds": seconds, "trials": trials,
            "complete": s["trials"]["complete"], "pruned": s["trials"]["pruned"], "test_metric": metric,
            "hyperparameters": s["best_hyperparameters"], "best_epochs": s.get("best_epochs"),
            "tuning_epochs": s.get("tuning_epochs", 0.0), "best_trial": s.get("best_trial")}


def run_tpe(task_name: str, seed: int, trials: int, split_seed: int = 0) -> dict:
    task = make_task(task_name, split_seed)
    result = auto.run_tpe(task, seed, trials)
    return {k: result[k] for k in ("val_loss", "epochs", "seconds", "trials", "test_metric", "hyperparameters")}


def reused_tpe(saved: dict, task_name: str, seed: int, split: int, trials: int) -> dict:
    for row in saved["tasks"].get(task_name, {}).get("rows", []):
        if row["seed"] == seed and row.get("split", 0) == split and row["tpe"]["trials"] == trials:
            return {**row["tpe"], "reused": True}
    raise SystemExit(f"the saved run has no {trials}-trial TPE search for {task_name} seed {seed} split {split}")


def _fmt_metric(kind: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{100 * value:.2f} %" if kind == "classification" else f"{value:.4f}"


def _mean_of(values: list) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(values) if values else math.nan


def print_table(name: str, kind: str, rows: list[dict]) -> dict:
    label = "test acc" if kind == "classification" else "test MSE"
    print(f"\n== {name} ({kind})")
    header = (f"{'seed':>4} {'split':>5} {'contender':<22} {'best val loss':>13} {'epochs':>7} {label:>9} {'seconds':>8}  "
              f"best hyperparameters")
    print(header)
    print("-" * (len(header) + 30))
    for row in rows:
        for key, label_ in (("tune", f"converge tune ({row['tune']['trials']}, pruned)"),
                            ("tpe", f"TPE {row['tpe']['trials']} (no pruning)" + ("*" if row["tpe"].get("reused") else ""))):
            r = row[key]
            print(f"{row['seed']:>4} {row['split']:>5} {label_:<22} {r['val_loss']:>13.5f} {r['epochs']:>7.0f} "
                  f"{_fmt_metric(kind, r['test_metric']):>9} {r['seconds']:>8.1f}  {auto._hp(r['hyperparameters'])}")
        share = row["tune"]["epochs"] / row["tpe"]["epochs"]
        better = row["tune"]["val_loss"] <= row["tpe"]["val_loss"] * (1 + 1e-9)
        print(f"{'':>10} -> tune/TPE epochs {100 * share:.1f} %, best val loss "
              f"{'as good or better' if better else 'worse'} ({row['tune']['val_loss'] / row['tpe']['val_loss']:.3f}x); "
              f"tune trials: {row['tune']['complete']} complete, {row['tune']['pruned']} pruned")
    if any(row["tpe"].get("reused") for row in rows):
        print("* taken from the --reuse-tpe file (TPE does not depend on converge; its seconds are as measured then)")
    shares = [row["tune"]["epochs"] / row["tpe"]["epochs"] for row in rows]
    met = [r["tune"]["val_loss"] <= r["tpe"]["val_loss"] * (1 + 1e-9) and s <= EPOCH_SHARE for r, s in zip(rows, shares)]
    mean = {k: statistics.fmean(r[k]["val_loss"] for r in rows) for k in ("tune", "tpe")}
    test = {k: _mean_of([r[k]["test_metric"] for r in rows]) for k in ("tune", "tpe")}
    print(f"mean over {len(rows)} seed(s): {label} tune {_fmt_metric(kind, test['tune'])} vs TPE "
          f"{_fmt_metric(kind, test['tpe'])}; best val loss tune {mean['tune']:.5f} vs TPE {mean['tpe']:.5f}; "
          f"epochs {statistics.fmean(r['tune']['epochs'] for r in rows):.0f} vs "
          f"{statistics.fmean(r['tpe']['epochs'] for r in rows):.0f} ({100 * statistics.fmean(shares):.1f} %); "
          f"target met on {sum(met)} of {len(rows)} seed(s)")
    return {"met": sum(met), "of": len(rows)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=list(auto.TASKS), default=["digits_mlp", "tabular_cls",
                                                                                 "friedman_scaled"])
    parser.add_argument("--seeds", type=int, default=2, help="how many seeds per task (default 2)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the first seed (default 0: seeds 0..N-1; 0 is the split the defaults were chosen on)")
    parser.add_argument("--split", choices=("seed", "fixed"), default="seed",
                        help="seed (default): seed k uses split k (0: bench/auto.py's split); fixed: split 0 always")
    parser.add_argument("--trials", type=int, default=40, help="converge tune trials (default 40)")
    parser.add_argument("--tpe-trials", type=int, default=40, help="TPE trials without pruning (default 40)")
    parser.add_argument("--pruner", choices=("hyperband", "asha", "none"), default="hyperband")
    parser.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                        help="converge tune without its warm start (trial 0 from TPE like the others)")
    parser.add_argument("--quick", action="store_true", help="smoke run: first task, 1 seed, 4 + 4 trials")
    parser.add_argument("--json", metavar="PATH", help="save every number here")
    parser.add_argument("--reuse-tpe", metavar="PATH",
                        help="take the TPE searches from a saved --json run (same task, seed, split and trials) "
                             "instead of running them again: they do not depend on converge")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.seeds, args.trials, args.tpe_trials = args.tasks[:1], 1, 4, 4
    torch.set_num_threads(1)
    info = auto.provenance()
    print(f"bench/tune.py: commit {info['commit']}{' (+ uncommitted src changes)' if info['src_uncommitted_changes'] else ''}, "
          f"{info['date']}, {info['cpus']} CPUs, torch {info['torch']} ({info['torch_threads']} thread), "
          f"optuna {info['optuna']}, load {info['load_avg_start']}")
    reused = json.loads(Path(args.reuse_tpe).read_text()) if args.reuse_tpe else None
    started = time.perf_counter()
    saved = {"info": info, "args": vars(args), "tasks": {}}
    verdicts = {}
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        for name in args.tasks:
            kind = auto.TASKS[name]().kind
            rows = []
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                split = seed if args.split == "seed" else 0
                tune = run_tune(name, seed, args.trials, args.pruner, Path(tmp), args.warm_start, split)
                tpe = reused_tpe(reused, name, seed, split, args.tpe_trials) if reused else \
                    run_tpe(name, seed, args.tpe_trials, split)
                rows.append({"seed": seed, "split": split, "tune": tune, "tpe": tpe})
                print(f"  {name} seed {seed} split {split}: tune {tune['val_loss']:.5f} in {tune['epochs']:.0f} "
                      f"epochs, test {_fmt_metric(kind, tune['test_metric'])} ({tune['seconds']:.0f} s); TPE "
                      f"{tpe['val_loss']:.5f} in {tpe['epochs']} epochs, test {_fmt_metric(kind, tpe['test_metric'])} "
                      f"({tpe['seconds']:.0f} s)", flush=True)
            verdicts[name] = print_table(name, kind, rows)
            saved["tasks"][name] = {"kind": kind, "rows": rows}
    info["total_seconds"] = time.perf_counter() - started
    info["load_avg_end"] = auto._load()
    met = sum(v["met"] for v in verdicts.values())
    total = sum(v["of"] for v in verdicts.values())
    print(f"\ntarget (best val loss at least as good with at most {100 * EPOCH_SHARE:.0f} % of the epochs) met "
          f"on {met} of {total} task-seed pairs; total {info['total_seconds']:.0f} s, load {info['load_avg_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(saved, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
