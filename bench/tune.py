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

* ``auto``: one ``converge train`` of the same task file, every knob automatic, same seed and epoch cap:
  what a user gets without searching (tune's trial 0 is this very run).

Reported: the best validation loss found (the objective of both searches), the total epochs, the test
metric of the trial tune reports (accuracy, or MSE for the regression) and the seconds, per seed and as
means. Targets (issue 22), a verdict per task and seed: tune's test metric within 0.5 points of accuracy
(5 % of the MSE) of the TPE ceiling's with at most 30 % of its epochs; and at least as good as the
automatic run's.

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
ACC_MARGIN = 0.005   # test accuracy within 0.5 points of the ceiling's counts as reaching it
MSE_MARGIN = 0.05    # test MSE within 5 % of the ceiling's counts as reaching it
TIE = 1e-9           # test metrics closer than this count as equal

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
             split_seed: int = 0, strong_decay: bool = True) -> dict:
    from converge.tune.search import tune_task

    task_file = folder / f"{task_name}-split{split_seed}.py"
    task_file.write_text(TASK_FILE.format(bench=os.path.dirname(os.path.abspath(__file__)), name=task_name,
                                          split_seed=split_seed))
    start = time.perf_counter()
    result = tune_task(task_file, trials=trials, out=folder / f"{task_name}-{seed}", seed=seed, pruner=pruner,
                       max_epochs=auto.MAX_EPOCHS, warm_start=warm_start, verbose=False,
                       strong_decay=strong_decay)
    seconds = time.perf_counter() - start
    s = result.summary
    test = (s.get("best_summary") or {}).get("test") or {}
    return {"val_loss": s["best_value"], "epochs": s["epochs_total"], "seconds": seconds, "trials": trials,
            "complete": s["trials"]["complete"], "pruned": s["trials"]["pruned"], "test_metric": _test_metric(test),
            "hyperparameters": s["best_hyperparameters"], "best_epochs": s.get("best_epochs"),
            "tuning_epochs": s.get("tuning_epochs", 0.0), "best_trial": s.get("best_trial"),
            "best_by_value": s.get("best_by_value"), "best_reason": s.get("best_reason"),
            "all_trials": trial_records(result.out, s["study"])}


def _test_metric(test: dict):
    """Accuracy for a classification, the MSE (the test loss) for the regression."""
    return test.get("accuracy") if "accuracy" in test else test.get("loss")


def trial_records(out: Path, study_name: str) -> list[dict]:
    """Every trial of a finished tune folder: state, value, validation parts, epochs, test metric (from its
    run folder), so that the choice of the reported trial can be studied afterwards without training again."""
    import optuna

    from converge.tune import storage as st

    study = optuna.load_study(study_name=study_name, storage=st.open_storage(st.resolve_storage(out, environ={})))
    records = []
    for t in study.get_trials(deepcopy=False):
        summary = out / "trials" / f"{t.number:04d}" / "summary.json"
        test = json.loads(summary.read_text()).get("test") if summary.is_file() else None
        records.append({"number": t.number, "state": t.state.name.lower(), "value": t.value,
                        "val_parts": t.user_attrs.get("val_parts"), "epochs": t.user_attrs.get("epochs"),
                        "warm_start": bool(t.user_attrs.get("warm_start")),
                        "test_metric": _test_metric(test) if test else None})
    return records


def run_auto(task_name: str, seed: int, folder: Path, split_seed: int = 0) -> dict:
    """One `converge train` of the same task file, every knob automatic, the same seed and epoch cap as the
    tune's trials: what a user gets without searching."""
    from converge.api import train_task

    task_file = folder / f"{task_name}-split{split_seed}.py"
    start = time.perf_counter()
    result = train_task(task_file, out=folder / f"{task_name}-{seed}-auto", force=True, verbose=False, seed=seed,
                        max_epochs=auto.MAX_EPOCHS)
    s = result.summary
    return {"val_loss": s["best"]["val_loss"], "epochs": s["epochs"] + s["tuning_epochs"],
            "seconds": time.perf_counter() - start, "test_metric": _test_metric(s.get("test") or {}),
            "hyperparameters": s["hyperparameters"]}


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


def reaches_ceiling(kind: str, tune, ceiling) -> bool:
    """The tune's test metric within the target's margin of the TPE ceiling's (0.5 points of accuracy, 5 % of
    the MSE), or better."""
    if tune is None or ceiling is None or not (math.isfinite(tune) and math.isfinite(ceiling)):
        return False
    if kind == "classification":
        return tune >= ceiling - ACC_MARGIN - TIE
    return tune <= ceiling * (1 + MSE_MARGIN) + TIE


def not_worse(kind: str, tune, automatic) -> bool:
    """The tune's test metric at least as good as one automatic run's."""
    if tune is None or automatic is None or not (math.isfinite(tune) and math.isfinite(automatic)):
        return False
    return tune >= automatic - TIE if kind == "classification" else tune <= automatic * (1 + TIE)


def pair_verdicts(kind: str, row: dict) -> dict:
    share = row["tune"]["epochs"] / row["tpe"]["epochs"]
    quality = reaches_ceiling(kind, row["tune"]["test_metric"], row["tpe"]["test_metric"])
    return {"epoch_share": share, "reaches_ceiling_quality": quality,
            "ceiling_target": quality and share <= EPOCH_SHARE,
            "not_worse_than_auto": not_worse(kind, row["tune"]["test_metric"], row["auto"]["test_metric"]),
            "val_loss_as_good": row["tune"]["val_loss"] <= row["tpe"]["val_loss"] * (1 + 1e-9)}


def _gap(kind: str, tune, other) -> str:
    if tune is None or other is None:
        return "n/a"
    if kind == "classification":
        return f"{100 * (tune - other):+.2f} pts"
    return f"{tune / other:.3f}x"


def print_table(name: str, kind: str, rows: list[dict]) -> dict:
    label = "test acc" if kind == "classification" else "test MSE"
    print(f"\n== {name} ({kind})")
    header = (f"{'seed':>4} {'split':>5} {'contender':<26} {'best val loss':>13} {'epochs':>7} {label:>9} "
              f"{'seconds':>8}  best hyperparameters")
    print(header)
    print("-" * (len(header) + 30))
    for row in rows:
        for key, label_ in (("tune", f"converge tune ({row['tune']['trials']}, pruned)"),
                            ("auto", "converge train (auto)"),
                            ("tpe", f"TPE {row['tpe']['trials']} (no pruning)" + ("*" if row["tpe"].get("reused") else ""))):
            r = row[key]
            print(f"{row['seed']:>4} {row['split']:>5} {label_:<26} {r['val_loss']:>13.5f} {r['epochs']:>7.0f} "
                  f"{_fmt_metric(kind, r['test_metric']):>9} {r['seconds']:>8.1f}  {auto._hp(r['hyperparameters'])}")
        v = row["verdicts"] = pair_verdicts(kind, row)
        t = row["tune"]
        print(f"{'':>10} -> reported trial {t['best_trial']} (lowest val loss: trial {t['best_by_value']}); "
              f"{t['complete']} complete, {t['pruned']} pruned")
        print(f"{'':>10} -> vs TPE ceiling: test {_gap(kind, t['test_metric'], row['tpe']['test_metric'])}, epochs "
              f"{100 * v['epoch_share']:.1f} %: {'met' if v['ceiling_target'] else 'missed'}; vs one automatic "
              f"run: test {_gap(kind, t['test_metric'], row['auto']['test_metric'])}: "
              f"{'met' if v['not_worse_than_auto'] else 'missed'}; best val loss "
              f"{t['val_loss'] / row['tpe']['val_loss']:.3f}x TPE's")
    if any(row["tpe"].get("reused") for row in rows):
        print("* taken from the --reuse-tpe file (TPE does not depend on converge; its seconds are as measured then)")
    test = {k: _mean_of([r[k]["test_metric"] for r in rows]) for k in ("tune", "auto", "tpe")}
    shares = [r["verdicts"]["epoch_share"] for r in rows]
    met = sum(r["verdicts"]["ceiling_target"] for r in rows)
    kept = sum(r["verdicts"]["not_worse_than_auto"] for r in rows)
    print(f"mean over {len(rows)} seed(s): {label} tune {_fmt_metric(kind, test['tune'])}, auto "
          f"{_fmt_metric(kind, test['auto'])}, TPE {_fmt_metric(kind, test['tpe'])}; epochs "
          f"{statistics.fmean(r['tune']['epochs'] for r in rows):.0f} vs "
          f"{statistics.fmean(r['tpe']['epochs'] for r in rows):.0f} ({100 * statistics.fmean(shares):.1f} %); "
          f"ceiling target met on {met} of {len(rows)}, not worse than auto on {kept} of {len(rows)}")
    return {"met": met, "kept": kept, "of": len(rows)}


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
    parser.add_argument("--no-strong-decay", dest="strong_decay", action="store_false",
                        help="converge tune without trial 1 (the automatic choice with 10x its weight decay)")
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
                tune = run_tune(name, seed, args.trials, args.pruner, Path(tmp), args.warm_start, split,
                                args.strong_decay)
                automatic = run_auto(name, seed, Path(tmp), split)
                tpe = reused_tpe(reused, name, seed, split, args.tpe_trials) if reused else \
                    run_tpe(name, seed, args.tpe_trials, split)
                rows.append({"seed": seed, "split": split, "tune": tune, "auto": automatic, "tpe": tpe})
                print(f"  {name} seed {seed} split {split}: tune {tune['val_loss']:.5f} in {tune['epochs']:.0f} "
                      f"epochs, test {_fmt_metric(kind, tune['test_metric'])} ({tune['seconds']:.0f} s); auto "
                      f"test {_fmt_metric(kind, automatic['test_metric'])}; TPE "
                      f"{tpe['val_loss']:.5f} in {tpe['epochs']} epochs, test {_fmt_metric(kind, tpe['test_metric'])} "
                      f"({tpe['seconds']:.0f} s)", flush=True)
            verdicts[name] = print_table(name, kind, rows)
            saved["tasks"][name] = {"kind": kind, "rows": rows}
    info["total_seconds"] = time.perf_counter() - started
    info["load_avg_end"] = auto._load()
    met = sum(v["met"] for v in verdicts.values())
    kept = sum(v["kept"] for v in verdicts.values())
    total = sum(v["of"] for v in verdicts.values())
    print(f"\ntargets, of {total} task-seed pairs: the TPE ceiling's test quality (within "
          f"{100 * ACC_MARGIN:.1f} points of accuracy or {100 * MSE_MARGIN:.0f} % of the MSE) with at most "
          f"{100 * EPOCH_SHARE:.0f} % of its epochs: met on {met}; test at least as good as one automatic run: "
          f"met on {kept}; total {info['total_seconds']:.0f} s, load {info['load_avg_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(saved, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
