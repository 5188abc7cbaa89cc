"""converge against what a user would run instead: the classic recipe and two learning-rate-free optimizers.

    python bench/alternatives.py                                    # the default tasks, seeds 0 1 2
    python bench/alternatives.py --tasks raw_wine --seeds 0         # one task file of bench/newuser/
    python bench/alternatives.py --contenders classic schedulefree  # some contenders only
    python bench/alternatives.py --report bench/results/alternatives.json   # print a saved run's tables again
    python bench/alternatives.py --report old.json new_converge.json        # several runs' records together
    python bench/alternatives.py --contenders converge --reuse old.json     # rerun converge only, keep the rest
    python bench/alternatives.py --one schedulefree TASK SEED       # one run in this process (used by the above)

The contenders, each in its own process (``python ...``, Python start-up and imports included), one after
another; the order rotates with the seed so no contender always runs first on a cold cache:

* **classic**: ``bench/classic.py``'s recipe (AdamW 1e-3, weight decay 1e-2, batch 64, ReduceLROnPlateau
  0.1 / 5 on the validation loss, early stopping with patience 10, the best weights restored, <= 300 epochs).
* **schedulefree**: ``schedulefree.AdamWScheduleFree`` at the package's defaults (LR 0.0025, no warmup, no
  weight decay), ``optimizer.train()`` / ``optimizer.eval()`` around training and evaluation as its README
  asks, early stopping with patience 10 on the validation loss, best weights, no scheduler.
* **prodigy**: ``prodigyopt.Prodigy`` at the package's defaults (LR 1.0), the same early stopping, no scheduler.
* **converge**: ``python -m converge train TASK --seed S --out DIR --quiet``; its best weights are scored on
  the test split by ``bench/classic.py``'s metric, so every contender is judged by one piece of code.

Everything else (batches, loss by kind, metric by kind) is ``bench/classic.py``'s. Per run the table keeps the
test metric, the epochs, the whole process's wall time and the **time to target**: the seconds from starting
the process to the end of the first epoch whose validation loss is at or below the classic recipe's best
validation loss for the same seed (the value classic ends with). converge's epochs are timed as they appear
in its ``metrics.jsonl`` (polled every 50 ms), the others' from inside the process.

Under the table, per task, the **quality verdict** against the best alternative (the one with the best mean
test metric over converge's seeds), by ``quality_verdict``: converge is *at least as good within seed noise*
when the mean of the paired per-seed differences (positive: converge worse) is at most the seed-to-seed
spread, the pooled standard deviation of the two contenders' per-seed results; otherwise it is *worse*.

Results go to ``bench/results/alternatives.json`` (git-ignored). Needs the ``bench`` extra
(``pip install -e '.[bench]'``: schedulefree, prodigyopt, scikit-learn).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TASK_DIR = HERE / "newuser"
RESULTS = HERE / "results"
PYTHON = sys.executable
CONTENDERS = ("classic", "schedulefree", "prodigy", "converge")
DEFAULT_TASKS = ("lstm_forecast", "raw_diabetes", "raw_wine", "clean_digits")
POLL_SECONDS = 0.05


# --- one run in this process ---------------------------------------------------------------------
def _optimizer(name: str, model):
    """The contender's optimizer at its package's defaults, and a scheduler (classic only)."""
    import torch

    sys.path.insert(0, str(HERE))
    import classic

    if name == "classic":
        opt = torch.optim.AdamW(model.parameters(), lr=classic.LR, weight_decay=classic.WEIGHT_DECAY)
        return opt, torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=classic.PLATEAU_FACTOR, patience=classic.PLATEAU_PATIENCE)
    if name == "schedulefree":
        import schedulefree
        return schedulefree.AdamWScheduleFree(model.parameters()), None
    if name == "prodigy":
        import prodigyopt
        return prodigyopt.Prodigy(model.parameters()), None
    raise ValueError(f"unknown contender {name!r}")


def train_one(name: str, task_path: str, seed: int, max_epochs: int) -> dict:
    """The classic loop with ``name``'s optimizer; per epoch the wall clock (time.time) and val loss."""
    import torch

    sys.path.insert(0, str(HERE))
    import classic

    torch.set_num_threads(1)
    task, model, train, val, test = classic.build(task_path, seed)
    train_b, val_b = classic.make_batches(train, True, seed), classic.make_batches(val, False, seed)
    kind, loss_fn = classic.probe_kind(task, model, train_b)
    optimizer, scheduler = _optimizer(name, model)
    epochs = []
    train_started = time.time()
    best, best_epoch, _ = classic.early_stopping_loop(model, train_b, val_b, loss_fn, kind, optimizer, scheduler,
                                                      max_epochs, on_epoch=lambda v: epochs.append([time.time(), v]))
    scores = classic.evaluate(model, classic.make_batches(test, False, seed), loss_fn, kind)
    return {"kind": kind, "epochs": len(epochs), "best_epoch": best_epoch, "best_val_loss": best,
            "epoch_log": epochs, "train_started": train_started, "test": scores, "primary": classic.PRIMARY[kind],
            "test_metric": scores[classic.PRIMARY[kind]]}


# --- the runs, each in its own process -----------------------------------------------------------
def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))


class MetricsWatcher(threading.Thread):
    """Timestamps each line of a run folder's metrics.jsonl as it appears (converge writes one per epoch)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.seen, self.stopped = path, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self._read()
            self.stopped.wait(POLL_SECONDS)
        self._read()

    def _read(self) -> None:
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return
        now = time.time()
        for line in lines[len(self.seen):]:
            try:
                self.seen.append([now, json.loads(line).get("val_loss")])
            except json.JSONDecodeError:  # a line being written: read it next time
                break


def run_process(cmd: list[str], timeout: float, watch: Path | None = None) -> dict:
    watcher = MetricsWatcher(watch) if watch is not None else None
    started = time.time()
    if watcher:
        watcher.start()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=_env(), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        timed_out = True
    wall = time.time() - started
    if watcher:
        watcher.stopped.set()
        watcher.join()
    return {"cmd": shlex.join(cmd), "rc": proc.returncode, "timed_out": timed_out, "started": started,
            "wall_seconds": round(wall, 3), "stdout": out[-2000:], "stderr": err[-2000:],
            "epoch_log": watcher.seen if watcher else None}


def run_contender(name: str, task: str, seed: int, max_epochs: int, timeout: float, runs: Path) -> dict:
    task_path = str(TASK_DIR / f"{task}.py")
    if name != "converge":
        out = runs / f"{task}_{name}_{seed}.json"
        proc = run_process([PYTHON, str(HERE / "alternatives.py"), "--one", name, task_path, str(seed),
                            "--max-epochs", str(max_epochs), "--json", str(out)], timeout)
        record = {**proc, **(json.loads(out.read_text()) if proc["rc"] == 0 else {})}
    else:
        folder = runs / f"{task}_converge_{seed}"
        shutil.rmtree(folder, ignore_errors=True)
        proc = run_process([PYTHON, "-m", "converge", "train", task_path, "--seed", str(seed), "--out", str(folder),
                            "--quiet", "--max-epochs", str(max_epochs)], timeout, watch=folder / "metrics.jsonl")
        record = dict(proc)
        if proc["rc"] == 0:
            summary = json.loads((folder / "summary.json").read_text())
            sys.path.insert(0, str(HERE))
            import classic
            scored = classic.evaluate_weights(task_path, seed, str(folder / "best.safetensors"))
            record.update(scored, epochs=summary["epochs"], best_epoch=summary["best_epoch"],
                          status=summary["status"], tuning_epochs=summary.get("tuning_epochs"),
                          train_seconds=summary.get("train_seconds"), run_seconds=summary.get("wall_seconds"),
                          hyperparameters=summary.get("hyperparameters"))
    record.update(contender=name, task=task, seed=seed)
    print(f"  {task} seed {seed} {name:<12} rc {record['rc']}  test {record.get('test_metric', math.nan):.4g}"
          f"  epochs {record.get('epochs', '-')}  {record['wall_seconds']:.1f} s", flush=True)
    return record


def time_to_target(record: dict, target: float) -> float | None:
    """Seconds from the process's start to the end of its first epoch with val loss <= target."""
    for stamp, val_loss in record.get("epoch_log") or []:
        if val_loss is not None and val_loss <= target * (1 + 1e-9):
            return round(stamp - record["started"], 3)
    return None


# --- the quality rule ----------------------------------------------------------------------------
AT_LEAST_AS_GOOD, WORSE = "at least as good", "worse"


def quality_verdict(converge: dict[int, float], best: dict[int, float], *, higher_is_better: bool) -> dict:
    """Is converge at least as good as the best alternative, within seed noise? Both map seed -> test metric.

    The rule, on the seeds both have (at least two):

    * ``deficit``: the mean of the paired per-seed differences, signed so that a positive deficit means
      converge is worse (a seed fixes the same data order and initial weights for both, so the pair
      takes out what the seed does to both alike);
    * ``noise``: the seed-to-seed spread, the pooled standard deviation of the two contenders' per-seed
      results, ``sqrt((sd_converge**2 + sd_best**2) / 2)``: how far one run moves when only its seed
      changes;
    * converge is **at least as good within seed noise** when ``deficit <= noise``: its mean trails the
      best alternative's by no more than what changing the seed does to a single run. Otherwise it is
      **worse**. ``worse_on`` counts the seeds where converge is worse, for the reader.

    With three seeds a paired t-test (t = 4.30 for 95 %, two-sided) would call a deficit of up to
    about 2.5 standard errors "noise"; this rule is stricter. It is a bench rule, not a statistical
    test: it says whether the gap is larger than the seed spread a user sees between two runs.
    """
    seeds = sorted(set(converge) & set(best))
    if len(seeds) < 2:
        raise ValueError(f"the quality rule needs at least 2 common seeds, got {seeds}")
    sign = -1.0 if higher_is_better else 1.0
    diffs = [sign * (converge[s] - best[s]) for s in seeds]
    deficit = statistics.fmean(diffs)
    noise = math.sqrt((statistics.variance([converge[s] for s in seeds])
                       + statistics.variance([best[s] for s in seeds])) / 2)
    return {"seeds": seeds, "deficit": deficit, "noise": noise, "worse_on": sum(d > 0 for d in diffs),
            "verdict": AT_LEAST_AS_GOOD if deficit <= noise else WORSE}


# --- the time rule -------------------------------------------------------------------------------
LONG_TRAINING_SECONDS = 5.0   # the line between tasks that train for seconds and longer ones
SHORT_ALLOWANCE_SECONDS = 1.0  # what converge's whole command may take over the classic process on short tasks


def training_seconds(record: dict) -> float | None:
    """A loop's own training time: from its first step to the end of its last epoch (imports and data left out)."""
    log, started = record.get("epoch_log") or [], record.get("train_started")
    return round(log[-1][0] - started, 3) if log and started is not None else None


def time_verdict(converge: dict, classic: dict) -> dict:
    """Issue 22's time targets for one task and seed, from the two runs' records (side by side, same seed):

    * the classic loop trains for ``LONG_TRAINING_SECONDS`` or more ("long"): converge first reaches the
      classic recipe's final (best) validation loss no later, from its process's start, than the classic
      process ended, and converge's whole command takes no longer than the classic process;
    * otherwise ("short"): converge's whole command takes at most ``SHORT_ALLOWANCE_SECONDS`` more than the
      classic process.

    ``met`` is None when the classic run has no training time to classify it (an older record)."""
    trained = training_seconds(classic)
    wall, classic_wall = converge["wall_seconds"], classic["wall_seconds"]
    to_target = time_to_target(converge, classic["best_val_loss"]) if "best_val_loss" in classic else None
    if trained is None:
        return {"kind": None, "met": None, "wall": wall, "classic_wall": classic_wall, "to_target": to_target}
    if trained >= LONG_TRAINING_SECONDS:
        met = to_target is not None and to_target <= classic_wall and wall <= classic_wall
        kind = "long"
    else:
        met = wall <= classic_wall + SHORT_ALLOWANCE_SECONDS
        kind = "short"
    return {"kind": kind, "met": met, "wall": wall, "classic_wall": classic_wall, "to_target": to_target,
            "classic_training": trained}


def time_rows(records: list[dict]) -> list[dict]:
    """Per task: the time verdict of every seed both converge and classic finished."""
    rows = []
    for task in dict.fromkeys(r["task"] for r in records):
        runs = {(r["contender"], r["seed"]): r for r in records if r["task"] == task and r.get("rc") == 0}
        seeds = sorted(seed for name, seed in runs if name == "converge" and ("classic", seed) in runs)
        verdicts = [time_verdict(runs[("converge", seed)], runs[("classic", seed)]) for seed in seeds]
        if verdicts:
            rows.append({"task": task, "seeds": seeds, "verdicts": verdicts})
    return rows


def _metrics(records: list[dict], task: str, name: str) -> dict[int, float]:
    """seed -> test metric of ``name``'s finished runs on ``task``."""
    return {r["seed"]: r["test_metric"] for r in records
            if r["task"] == task and r["contender"] == name and "test_metric" in r}


def best_alternative(records: list[dict], task: str, *, higher_is_better: bool) -> str | None:
    """The alternative (not converge) with the best mean test metric on ``task``, over converge's seeds; only an
    alternative that finished on every one of them counts. None when there is none to compare with."""
    mine = _metrics(records, task, "converge")
    means = {}
    for name in CONTENDERS:
        theirs = _metrics(records, task, name)
        if name != "converge" and mine and set(mine) <= set(theirs):
            means[name] = statistics.fmean(theirs[s] for s in mine)
    if not means:
        return None
    return (max if higher_is_better else min)(means, key=means.get)


def quality_rows(records: list[dict]) -> list[dict]:
    """Per task: the best alternative and converge's verdict against it (tasks with fewer than 2 seeds of
    converge, or with no alternative on all of them, are left out)."""
    sys.path.insert(0, str(HERE))
    import classic

    rows = []
    for task in dict.fromkeys(r["task"] for r in records):
        kind = next((r["kind"] for r in records if r["task"] == task and "kind" in r), None)
        if kind is None:
            continue
        higher = classic.HIGHER_IS_BETTER[kind]
        best = best_alternative(records, task, higher_is_better=higher)
        mine = _metrics(records, task, "converge")
        if best is None or len(mine) < 2:
            continue
        verdict = quality_verdict(mine, _metrics(records, task, best), higher_is_better=higher)
        rows.append({"task": task, "best": best, "higher_is_better": higher, **verdict})
    return rows


# --- the table -----------------------------------------------------------------------------------
def _mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(records: list[dict]) -> list[dict]:
    rows = []
    for task in dict.fromkeys(r["task"] for r in records):
        targets = {r["seed"]: r["best_val_loss"] for r in records
                   if r["task"] == task and r["contender"] == "classic" and "best_val_loss" in r}
        for name in CONTENDERS:
            mine = [r for r in records if r["task"] == task and r["contender"] == name]
            if not mine:
                continue
            ok = [r for r in mine if "test_metric" in r]
            reached = [time_to_target(r, targets[r["seed"]]) for r in ok if r["seed"] in targets]
            rows.append({
                "task": task, "contender": name, "runs": len(mine), "failed": len(mine) - len(ok),
                "primary": ok[0]["primary"] if ok else None,
                "test": _mean_sd([r["test_metric"] for r in ok]),
                "epochs": _mean_sd([r["epochs"] for r in ok])[0],
                "wall": _mean_sd([r["wall_seconds"] for r in mine])[0],
                "to_target": _mean_sd([t for t in reached if t is not None])[0],
                "reached": f"{sum(t is not None for t in reached)}/{len(reached)}"})
    return rows


def merge_reports(reports: list[dict]) -> dict:
    """Several saved runs as one: every meta, and the records, a later report's run of the same contender, task
    and seed replacing an earlier one's."""
    records = {}
    for report in reports:
        records.update({(r["contender"], r["task"], r["seed"]): r for r in report["records"]})
    return {"metas": [report["meta"] for report in reports], "records": list(records.values())}


def print_tables(report: dict) -> None:
    for meta in report.get("metas", [report.get("meta")]):
        print(f"\n{meta['date']}  commit {meta['commit']}  {meta['cpus']} CPUs  load {meta['load_start']:.1f} -> "
              f"{meta.get('load_end', math.nan):.1f}  seeds {meta['seeds']}")
    width = max([15] + [len(r["task"]) + 2 for r in report["records"]])
    header = (f"{'task':<{width}}{'contender':<14}{'test (mean ± sd)':<22}{'epochs':>7}{'wall s':>9}"
              f"{'to target s':>13}{'reached':>9}")
    print(header + "\n" + "-" * len(header))
    for row in summarize(report["records"]):
        mean, sd = row["test"]
        metric = f"{row['primary'] or '-'} {mean:.4g} ± {sd:.2g}"
        failed = f" ({row['failed']} failed)" if row["failed"] else ""
        print(f"{row['task']:<{width}}{row['contender']:<14}{metric:<22}{row['epochs']:>7.1f}{row['wall']:>9.1f}"
              f"{row['to_target']:>13.1f}{row['reached']:>9}{failed}")
    verdicts = quality_rows(report["records"])
    if verdicts:
        print("\nconverge against the best alternative (mean paired deficit, positive = converge worse, against "
              "the pooled seed-to-seed sd)")
        for row in verdicts:
            print(f"{row['task']:<{width}}best {row['best']:<13} deficit {row['deficit']:+.4g}  noise {row['noise']:.4g}"
                  f"  worse on {row['worse_on']}/{len(row['seeds'])} seeds  -> {row['verdict']}")
    timing = time_rows(report["records"])
    if timing:
        print(f"\ntime against the classic process, per seed (converge wall / classic wall, s; long: the classic loop "
              f"trains >= {LONG_TRAINING_SECONDS:g} s, then converge must reach its final validation loss and end "
              f"no later; short: converge may take {SHORT_ALLOWANCE_SECONDS:g} s more)")
        for row in timing:
            cells = []
            for seed, v in zip(row["seeds"], row["verdicts"]):
                target = "" if v["kind"] != "long" else (
                    f", target at {v['to_target']:.1f}" if v["to_target"] is not None else ", target not reached")
                verdict = {True: "met", False: "MISSED", None: "?"}[v["met"]]
                cells.append(f"seed {seed} {v['kind'] or '?'} {v['wall']:.1f}/{v['classic_wall']:.1f}{target} {verdict}")
            met = sum(v["met"] is True for v in row["verdicts"])
            print(f"{row['task']:<{width}}met on {met}/{len(row['verdicts'])}: " + "; ".join(cells))


def meta(seeds: list[int]) -> dict:
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return {"commit": git("log", "-1", "--format=%h"), "src_dirty": bool(git("status", "--porcelain", "--", "src")),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
            "cpus": os.cpu_count(), "load_start": os.getloadavg()[0], "seeds": seeds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="task files of bench/newuser/")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    parser.add_argument("--max-epochs", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--json", default=str(RESULTS / "alternatives.json"))
    parser.add_argument("--report", metavar="JSON", nargs="+", help="print the tables of saved runs (several: "
                        "their records together; a later file's run of a contender, task and seed replaces an "
                        "earlier one's, e.g. converge rerun after a change)")
    parser.add_argument("--reuse", metavar="JSON", help="take the runs of the contenders not named in "
                        "--contenders from this saved run (e.g. rerun only converge after a change)")
    parser.add_argument("--one", nargs=3, metavar=("CONTENDER", "TASK", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        name, task_path, seed = args.one
        Path(args.json).write_text(json.dumps(train_one(name, task_path, int(seed), args.max_epochs)))
        return 0
    if args.report:
        print_tables(merge_reports([json.loads(Path(path).read_text()) for path in args.report]))
        return 0
    contenders = list(args.contenders)
    if "converge" in contenders and "classic" not in contenders and not args.reuse:
        print("note: without classic there is no target; time to target stays empty", file=sys.stderr)
    runs = RESULTS / "alternatives_runs"
    runs.mkdir(parents=True, exist_ok=True)
    report = {"meta": meta(args.seeds), "records": []}
    if args.reuse:
        saved = json.loads(Path(args.reuse).read_text())
        report["meta"]["reused"] = {"from": args.reuse, **saved["meta"]}
        report["records"] = [r for r in saved["records"] if r["contender"] not in contenders
                             and r["task"] in args.tasks and r["seed"] in args.seeds]
    for task in args.tasks:
        for seed in args.seeds:
            shift = seed % len(contenders)
            for name in contenders[shift:] + contenders[:shift]:
                report["records"].append(run_contender(name, task, seed, args.max_epochs, args.timeout, runs))
                report["meta"]["load_end"] = os.getloadavg()[0]
                Path(args.json).write_text(json.dumps(report, indent=1))
    print_tables(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
