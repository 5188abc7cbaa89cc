"""The end of a `converge tune` worker: the best trial's weights, the summary with the command that
reproduces it, and tune_report.html."""

from __future__ import annotations

import json
import math
import shlex
import socket
import warnings
from pathlib import Path
from typing import Callable

from converge.decide.reported_trial import Scored, reported_trial
from converge.engine.optim import OPTIMIZERS
from converge.io.atomic import atomic_write_bytes
from converge.io.runfolder import BEST_WEIGHTS, LOSS_PARAMETERS, SUMMARY, TUNE_REPORT, RunFolder

MIN_TRIALS_FOR_IMPORTANCE = 4


def knobs_of(params: dict) -> dict:
    """The four training knobs of a trial from its Optuna parameters (the LR is named per optimizer)."""
    optimizer = params["optimizer"]
    return {"optimizer": optimizer, "lr": params[f"lr_{optimizer}"], "weight_decay": params["weight_decay"],
            "batch_size": params["batch_size"]}


def trial_rows(trials) -> list[dict]:
    rows = []
    for t in trials:
        epochs = t.user_attrs.get("epochs", len(t.intermediate_values) or None)
        state = "surplus (not run)" if t.user_attrs.get("surplus") else t.state.name.lower()
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        rows.append({"number": t.number, "state": state, "value": _finite(t.value),
                     "epochs": epochs, "params": dict(t.params), "task_args": t.user_attrs.get("task_args"),
                     "retry_of": t.system_attrs.get("failed_trial"), "seconds": seconds,
                     "status": t.user_attrs.get("status"), "run_dir": t.user_attrs.get("run_dir"),
                     "worker": t.user_attrs.get("worker")})
    return rows


def _finite(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def export_study(study, out: Path, *, task, base, wanted: int, status: str, storage_shown: str, options: dict,
                 wall_seconds: float, print_fn: Callable[[str], None]) -> dict:
    from converge.report.tune_report import write_tune_report

    trials = study.get_trials(deepcopy=False)
    counts = trial_counts(trials)
    done = counts["COMPLETE"] + counts["PRUNED"]
    # A failed trial that was queued again (its worker died, or Ctrl-C stopped it) is retried, not lost.
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    counts["REQUEUED"] = sum(1 for t in trials if t.state.name == "FAIL" and t.number in retried)
    counts["FAIL"] -= counts["REQUEUED"]
    rows = trial_rows(trials)
    # The warm start's epochs spent choosing trial 0, once (a retried trial copies its user attributes).
    tuning = sum(t.user_attrs.get("tuning_epochs", 0.0) for t in trials if "failed_trial" not in t.system_attrs)
    summary = {
        "status": status if status != "finished" or done >= wanted else "incomplete",
        "task": str(task.path), "study": study.study_name, "storage": storage_shown,
        "monitor": f"val_{base.monitor.removeprefix('val_')}", "mode": base.mode, "seed": base.seed,
        "trials_wanted": wanted, "trials": {k.lower(): v for k, v in counts.items()},
        "epochs_total": round(sum(r["epochs"] or 0 for r in rows) + tuning, 3), "tuning_epochs": round(tuning, 3),
        "wall_seconds": round(wall_seconds, 3),
        "best_trial": None, "best_value": None, "best_params": None, "best_hyperparameters": None,
        "task_args": None, "reproduce": None, "best_weights": None, "best_run_dir": None,
    }
    best, reason = reported_trial_of(trials, base.mode)
    if best is not None:
        summary.update(_best_fields(best, out, task=task, base=base, options=options))
        summary["best_reason"] = reason
        summary["best_by_value"] = _best_by_value(study)
    importances, method = param_importances(trials, study.direction.name.lower())
    summary["importances"], summary["importance_method"] = importances, method
    folder = RunFolder(out)
    folder.write_json(SUMMARY, summary)
    histories = {t.number: dict(sorted(t.intermediate_values.items())) for t in trials}
    write_tune_report(out / TUNE_REPORT, summary, rows, histories)
    _print_end(summary, out, print_fn)
    return summary


def reported_trial_of(trials, mode: str):
    """The trial to report and why (`converge.decide.reported_trial`): the automatic choice (the warm start)
    unless another complete trial beats it by more than the validation noise. (None, None): none complete."""
    from optuna.trial import TrialState

    complete = [t for t in trials if t.state == TrialState.COMPLETE and _finite(t.value) is not None]
    scored = [Scored(t.number, float(t.value), tuple(t.user_attrs["val_parts"]) if t.user_attrs.get("val_parts")
                     else None) for t in complete]
    automatic = next((t.number for t in complete if t.user_attrs.get("warm_start")), None)
    chosen = reported_trial(scored, automatic, mode)
    if chosen is None:
        return None, None
    return next(t for t in complete if t.number == chosen.number), chosen.reason


def _best_by_value(study) -> int | None:
    try:
        return study.best_trial.number
    except ValueError:  # no complete trial yet
        return None


def trial_knobs(trial) -> dict:
    """The knobs a trial trained with: as recorded (the warm start's are the automatic choice's exact values,
    warmup included), else from its Optuna parameters (a study begun by an older converge)."""
    return dict(trial.user_attrs.get("knobs") or knobs_of(trial.params))


def _best_fields(best, out: Path, *, task, base, options: dict) -> dict:
    knobs = trial_knobs(best)
    task_args = best.user_attrs.get("task_args") or {"model": {}, "data": {}}
    run_dir = Path(best.user_attrs.get("run_dir", ""))
    fields = {"best_trial": best.number, "best_value": best.value, "best_params": dict(best.params),
              # The four searched knobs, as the trial's summary.json names them; the warmup is in the command.
              "best_hyperparameters": {k: knobs[k] for k in ("optimizer", "lr", "weight_decay", "batch_size")},
              "task_args": task_args, "best_run_dir": str(run_dir),
              "best_epochs": best.user_attrs.get("epochs"), "best_host": best.user_attrs.get("host"),
              "reproduce": reproduce_command(task.path, knobs, seed=base.seed, task_args=task_args,
                                             options=options)}
    weights = run_dir / BEST_WEIGHTS
    # The best trial may have run on another machine (a shared database): its weights are there.
    if best.user_attrs.get("host") == socket.gethostname() and weights.is_file():
        atomic_write_bytes(out / BEST_WEIGHTS, weights.read_bytes())
        fields["best_weights"] = BEST_WEIGHTS
        if (run_dir / LOSS_PARAMETERS).is_file():   # a loss with parameters of its own: they go with the weights
            atomic_write_bytes(out / LOSS_PARAMETERS, (run_dir / LOSS_PARAMETERS).read_bytes())
            fields["best_loss_parameters"] = LOSS_PARAMETERS
    summary_path = run_dir / SUMMARY
    if summary_path.is_file():
        trial_summary = RunFolder(run_dir).read_json(SUMMARY)
        fields["best_summary"] = {k: trial_summary.get(k) for k in
                                  ("status", "stop_reason", "epochs", "best_epoch", "best", "test")}
    return fields


def _print_end(summary: dict, out: Path, print_fn) -> None:
    t = summary["trials"]
    requeued = f", {t['requeued']} queued again" if t.get("requeued") else ""
    print_fn(f"tune: {summary['status']}: {t['complete']} complete, {t['pruned']} pruned, {t['fail']} failed"
             f"{requeued} of {summary['trials_wanted']} wanted; {summary['epochs_total']} epochs in all")
    if summary["best_trial"] is None:
        print_fn("tune: no trial completed yet")
    else:
        print_fn(f"tune: best trial {summary['best_trial']}: {summary['monitor']} {summary['best_value']:.6g} "
                 f"({summary['best_reason']})")
        print_fn(f"reproduce: {summary['reproduce']}")
        if summary["best_weights"] is None:
            print_fn(f"tune: the best trial ran on {summary.get('best_host')}; its weights are in "
                     f"{summary['best_run_dir']} there")
    print_fn(f"tune folder: {out} (report: {out / TUNE_REPORT})")


# --- parameter importances -------------------------------------------------------------------------
def _unified(params: dict) -> dict:
    """One ``lr`` for both optimizers (their LR parameters have separate names and ranges)."""
    out = {k: v for k, v in params.items() if not k.startswith("lr_")}
    if "optimizer" in params and f"lr_{params['optimizer']}" in params:
        out["lr"] = params[f"lr_{params['optimizer']}"]
    return out


def param_importances(trials, direction: str) -> tuple[dict, str]:
    """Optuna's fANOVA importances over the complete trials; with too few of them (or no variation), the
    absolute Spearman rank correlation of each parameter with the value, pruned trials counted at their
    last reported value. Returns ({param: share}, how it was computed)."""
    from optuna.trial import TrialState

    complete = [t for t in trials if t.state == TrialState.COMPLETE and _finite(t.value) is not None]
    reason = f"only {len(complete)} complete trial(s)"
    if len(complete) >= MIN_TRIALS_FOR_IMPORTANCE:
        try:
            return _optuna_importances(complete, direction), \
                f"fANOVA (optuna.importance) over {len(complete)} complete trials"
        except Exception as exc:  # noqa: BLE001 - e.g. every value equal, or scikit-learn missing
            reason = f"optuna.importance failed ({type(exc).__name__}: {exc})"
    valued = [(t, _finite(t.value) if t.state == TrialState.COMPLETE else _last(t)) for t in trials
              if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    valued = [(t, v) for t, v in valued if v is not None]
    return _rank_importances(valued), (f"{reason}: |Spearman rank correlation| with the value over "
                                       f"{len(valued)} trial(s), pruned ones at their last reported value")


def _last(trial):
    if not trial.intermediate_values:
        return None
    return _finite(trial.intermediate_values[max(trial.intermediate_values)])


def _optuna_importances(complete, direction: str) -> dict:
    import optuna
    from optuna.distributions import FloatDistribution

    study = optuna.create_study(direction=direction)
    for t in complete:
        params = _unified(t.params)
        dists = {k: v for k, v in t.distributions.items() if not k.startswith("lr_")}
        if "lr" in params:
            dists["lr"] = FloatDistribution(min(spec.search_lr[0] for spec in OPTIMIZERS.values()),
                                            max(spec.search_lr[1] for spec in OPTIMIZERS.values()), log=True)
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=t.value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return {k: float(v) for k, v in found.items()}


def _rank_importances(valued) -> dict:
    import numpy as np

    if len(valued) < 3:
        return {}
    values = np.array([v for _, v in valued], dtype=float)
    names = sorted({k for t, _ in valued for k in _unified(t.params)})
    scores = {}
    for name in names:
        xs = [_unified(t.params).get(name) for t, _ in valued]
        keep = [i for i, x in enumerate(xs) if x is not None]
        if len(keep) < 3:
            continue
        column = [xs[i] for i in keep]
        if any(isinstance(x, str) for x in column):
            order = {c: i for i, c in enumerate(sorted(set(map(str, column))))}
            column = [order[str(x)] for x in column]
        rho = _spearman(np.array(column, dtype=float), values[keep])
        scores[name] = abs(rho) if math.isfinite(rho) else 0.0
    total = sum(scores.values())
    return {k: v / total for k, v in sorted(scores.items(), key=lambda kv: -kv[1])} if total > 0 else scores


def _spearman(x, y) -> float:
    import numpy as np

    def ranks(a):
        order = a.argsort(kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a))
        for value in np.unique(a):  # ties share their mean rank
            r[a == value] = r[a == value].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def reproduce_command(task: Path, knobs: dict, *, seed: int, task_args: dict, options: dict) -> str:
    """The exact `converge train` command line of a trial (floats as repr: they read back identically)."""
    words = ["converge", "train", str(task), "--optimizer", knobs["optimizer"], "--lr", repr(float(knobs["lr"])),
             "--weight-decay", repr(float(knobs["weight_decay"])), "--batch-size", str(int(knobs["batch_size"])),
             "--seed", str(seed)]
    if knobs.get("warmup_steps"):  # the automatic choice's warmup (the warm start); searched trials have none
        words += ["--warmup-steps", str(int(knobs["warmup_steps"]))]
    for name, value in options.items():
        if value is False:                 # an on-by-default switch turned off: --no-standardize
            words.append(f"--no-{name.replace('_', '-')}")
        elif value is not None and value is not True:
            words += [f"--{name.replace('_', '-')}", str(value)]
    if any(task_args.values()):
        words += ["--task-args", json.dumps({k: v for k, v in task_args.items() if v}, sort_keys=True)]
    return shlex.join(words)


def trial_counts(trials) -> dict[str, int]:
    counts = {"COMPLETE": 0, "PRUNED": 0, "RUNNING": 0, "WAITING": 0, "FAIL": 0}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts
