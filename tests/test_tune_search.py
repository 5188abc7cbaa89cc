"""`converge tune`: the Optuna search over converge runs, with the embedded journal storage.

Fast checks on tiny tasks (a few trials of a few epochs); the PostgreSQL ones are in test_tune_postgres.py."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from converge.errors import ConvergeError  # noqa: E402
from converge.tune import storage as st  # noqa: E402
from converge.decide import laggard, reported_trial  # noqa: E402
from converge.decide.laggard import Finished  # noqa: E402
from converge.tune.export import reproduce_command  # noqa: E402
from converge.engine.optim import OPTIMIZERS  # noqa: E402
from converge.tune.search import EpochJudge, batch_choices, warm_start_params  # noqa: E402

# Tiny tasks: the conftest header's 200 x 8 three-class data. SEARCHED adds a model knob and a data knob
# that turns the labels into noise (a bad trial the pruner should stop early).
SEARCHED = '''
def model(hidden=16):
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def data(noisy_labels=False):
    x, y = _xy()
    if noisy_labels:
        y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    return (x[:120], y[:120]), (x[120:160], y[120:160]), (x[160:], y[160:])


def search_space(trial):
    return {"model": {"hidden": trial.suggest_categorical("hidden", [8, 32])},
            "data": {"noisy_labels": trial.suggest_categorical("noisy_labels", [False, True])}}
'''

# Slow enough to be killed in the middle of a trial: every forward pass sleeps 5 ms.
SLOW = '''
import time


class _Slow(nn.Module):
    def forward(self, x):
        time.sleep(0.005)
        return x


def model():
    return nn.Sequential(_Slow(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
'''


def _converge(*args, env=None, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "converge", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def _study(out: Path, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=st._journal_storage(out / st.JOURNAL))


def _states(study) -> dict[int, str]:
    return {t.number: t.state.name for t in study.get_trials()}


# --- pure pieces -----------------------------------------------------------------------------------
@pytest.mark.parametrize("url, shown", [
    ("postgresql://user:s3cret@db.example:5432/optuna", "postgresql://user:***@db.example:5432/optuna"),
    ("postgresql+psycopg://u:p%40ss@127.0.0.1/db", "postgresql+psycopg://u:***@127.0.0.1/db"),
    ("postgresql://u:we@ird:pw@host/db", "postgresql://u:***@host/db"),
    ("mysql://u@host/db?password=hunter2&x=1", "mysql://u@host/db?password=***&x=1"),
    ("sqlite:///tmp/a.db", "sqlite:///tmp/a.db"),
    ("postgresql://host/db", "postgresql://host/db"),
])
def test_redact_hides_every_password(url, shown):
    assert st.redact(url) == shown
    for secret in st.secrets_of(url):
        assert secret not in st.redact(url)


def test_scrub_removes_the_password_from_any_text():
    url = "postgresql://user:p%40ss@host/db"
    text = f"could not connect to {url}: password p@ss rejected (p%40ss)"
    assert "p@ss" not in st.scrub(text, url) and "p%40ss" not in st.scrub(text, url)
    assert "postgresql://user:***@host/db" in st.scrub(text, url)


def test_storage_comes_from_flag_then_file_then_environment(tmp_path):
    url_file = tmp_path / "url"
    url_file.write_text("postgresql://a:file@h/db\n")
    env = {st.ENV_VAR: "postgresql://a:env@h/db"}
    assert st.resolve_storage(tmp_path, storage="postgresql://a:flag@h/db", environ=env).url.endswith("flag@h/db")
    assert st.resolve_storage(tmp_path, storage_file=url_file, environ=env).url == "postgresql://a:file@h/db"
    assert st.resolve_storage(tmp_path, environ=env).source == st.ENV_VAR
    embedded = st.resolve_storage(tmp_path, environ={})
    assert embedded.url is None and embedded.journal == tmp_path / st.JOURNAL
    with pytest.raises(ConvergeError, match="not both"):
        st.resolve_storage(tmp_path, storage="postgresql://h/db", storage_file=url_file, environ={})
    for where, bad in (("storage", "nope:x:secretpw@h"), ("environ", {st.ENV_VAR: "postgresql:/x:secretpw@h"})):
        with pytest.raises(ConvergeError, match=r"must be an SQLAlchemy URL.*:\*\*\*@h'") as info:
            st.resolve_storage(tmp_path, **{where: bad}) if where == "storage" else \
                st.resolve_storage(tmp_path, environ=bad)
        assert "secretpw" not in str(info.value)


@pytest.mark.parametrize("n_train, expected", [(5000, [16, 32, 64, 128, 256, 512]), (120, [16, 32, 64]),
                                                (16, [16]), (10, [8]), (1, [1])])
def test_batch_sizes_are_powers_of_two_within_the_training_set(n_train, expected):
    assert batch_choices(n_train) == expected


class _FinishedTrial:
    def __init__(self, value: float, epochs: int) -> None:
        self.value, self.user_attrs = value, {"epochs": epochs}


class _Study:
    def __init__(self, finished: list) -> None:
        self.finished = finished

    def get_trials(self, deepcopy, states):
        return [_FinishedTrial(*f) for f in self.finished]


class _ScriptedTrial:
    """Stands in for an Optuna trial: records reports, prunes from a scripted epoch on; its study holds
    the scripted finished trials (value, epochs)."""

    def __init__(self, prune_from: int, finished: list | None = None) -> None:
        self.reports, self.prune_from = [], prune_from
        self.study = _Study(finished or [])

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return self.reports[-1][0] >= self.prune_from


@pytest.mark.parametrize("mode, values, reported", [
    ("min", [1.0, 0.8, 0.9, 0.7], [1.0, 0.8, 0.8, 0.7]),
    ("max", [0.5, 0.7, 0.6, float("nan"), 0.8], [0.5, 0.7, 0.7, 0.8]),
])
def test_epoch_judge_reports_the_best_value_so_far(mode, values, reported):
    trial = _ScriptedTrial(prune_from=99)
    judge = EpochJudge(trial, "val_loss", mode)
    for epoch, value in enumerate(values, start=1):
        assert judge({"epoch": epoch, "val_loss": value}) is None
    assert [v for _, v in trial.reports] == reported


def test_epoch_judge_stops_the_run_when_the_pruner_says_so():
    judge = EpochJudge(_ScriptedTrial(prune_from=2), "val_accuracy", "max")
    assert judge({"epoch": 1, "val_accuracy": 0.5}) is None
    assert "pruned by the search at epoch 2" in judge({"epoch": 2, "val_accuracy": 0.4})


def test_a_queued_starting_point_reports_but_is_never_pruned():
    trial = _ScriptedTrial(prune_from=1, finished=[(0.1, 4)] * 3)   # the pruner and the laggard rule would stop it
    judge = EpochJudge(trial, "val_loss", "min", prunable=False)
    assert all(judge({"epoch": epoch, "val_loss": 0.9}) is None for epoch in range(1, 40))
    assert len(trial.reports) == 39


def _race_rung(*arms):
    return {"event": "race_rung", "arms": [{"optimizer": o, "lr": lr, "best": best, "collapsed": collapsed}
                                           for o, lr, best, collapsed in arms]}


@pytest.mark.parametrize("events, expected", [
    # each optimizer's best arm in the last rung it ran in; the chosen optimizer first
    ([_race_rung(("adamw", 3e-3, 0.8, False), ("adamw", 1e-3, 0.85, False), ("sgd", 0.05, 0.9, False),
                 ("sgd", 0.017, 1.0, False)),
      _race_rung(("adamw", 1e-3, 0.6, False), ("adamw", 3e-3, 0.7, False)),
      {"event": "chose_optimizer", "value": "adamw"}],
     [("adamw", 1e-3), ("sgd", 0.05)]),
    ([_race_rung(("sgd", 0.05, 0.8, False), ("adamw", 3e-3, 0.85, False), ("adamw", 1e-3, 0.9, False)),
      {"event": "chose_optimizer", "value": "sgd"}],
     [("sgd", 0.05), ("adamw", 3e-3)]),
    # an optimizer whose arms all collapsed or blew up has no best arm
    ([_race_rung(("adamw", 3e-3, 0.8, False), ("sgd", 0.5, None, False), ("sgd", 0.17, 2.3, True)),
      {"event": "chose_optimizer", "value": "adamw"}],
     [("adamw", 3e-3)]),
    ([], []),   # no race (one arm): nothing
])
def test_best_arm_per_optimizer(events, expected):
    from converge.choose.auto import best_arm_per_optimizer

    assert list(best_arm_per_optimizer(events).items()) == expected


def test_strong_decay_starts_follow_the_race_and_keep_a_weight_decay_the_user_set():
    from converge.choose.auto import Tuning
    from converge.config import TrainConfig
    from converge.tune.search import strong_decay_starts

    chosen = TrainConfig(optimizer="adamw", lr=3e-3, weight_decay=1e-2, batch_size=32, warmup_steps=40)
    arms = {"adamw": {"lr": 3e-3, "warmup_steps": 40}, "sgd": {"lr": 0.05, "warmup_steps": 0}}
    automatic = Tuning(chosen, events=[{"event": "chose_weight_decay", "value": 1e-2}], best_arms=arms)
    assert strong_decay_starts(automatic) == [
        {"optimizer": "adamw", "lr": 3e-3, "batch_size": 32, "weight_decay": 0.1, "warmup_steps": 40},
        {"optimizer": "sgd", "lr": 0.05, "batch_size": 32, "weight_decay": 0.05, "warmup_steps": 0}]
    assert strong_decay_starts(Tuning(chosen, events=[], best_arms=arms)) == []   # --weight-decay was given


@pytest.mark.parametrize("chosen, expected", [
    ({"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-2, "batch_size": 32},
     {"optimizer": "adamw", "lr_adamw": 3e-3, "weight_decay": 1e-2, "batch_size": 32}),
    ({"optimizer": "sgd", "lr": 5.0, "weight_decay": 0.0, "batch_size": 256},  # clipped to the space
     {"optimizer": "sgd", "lr_sgd": 1.0, "weight_decay": 1e-6, "batch_size": 64}),
    ({"optimizer": "adamw", "lr": 1e-7, "weight_decay": 0.5, "batch_size": 16},
     {"optimizer": "adamw", "lr_adamw": 1e-5, "weight_decay": 1e-1, "batch_size": 16}),
])
def test_warm_start_params_are_the_automatic_choice_within_the_search_space(chosen, expected):
    assert warm_start_params(chosen, [16, 32, 64]) == expected


def test_reproduce_command_quotes_floats_exactly():
    command = reproduce_command(Path("/t/my task.py"), {"optimizer": "sgd", "lr": 0.1 + 0.2, "weight_decay": 1e-6,
                                                        "batch_size": 32},
                                seed=3, task_args={"model": {"h": 8}, "data": {}}, options={"max_epochs": 9})
    words = shlex.split(command)
    assert words[:3] == ["converge", "train", "/t/my task.py"]
    assert float(words[words.index("--lr") + 1]) == 0.1 + 0.2
    assert json.loads(words[words.index("--task-args") + 1]) == {"model": {"h": 8}}
    assert words[words.index("--max-epochs") + 1] == "9" and words[words.index("--seed") + 1] == "3"


# --- one finished study, shared by the read-only checks ----------------------------------------------
@pytest.fixture(scope="module")
def tuned(tmp_path_factory, default_task_source):
    from converge.cli import main

    root = tmp_path_factory.mktemp("tune")
    task = root / "task.py"
    header = default_task_source.split("\ndef model(")[0]
    task.write_text(header + textwrap.dedent(SEARCHED))
    out = root / "out"
    code = main(["tune", str(task), "--trials", "6", "--out", str(out), "--max-epochs", "12", "--quiet"])
    assert code == 0
    return task, out, json.loads((out / "summary.json").read_text())


def test_tune_runs_the_study_and_exports_the_best_trial(tuned):
    task, out, summary = tuned
    assert summary["status"] == "finished"
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == 6
    assert summary["trials"]["running"] == 0 and summary["trials"]["fail"] == 0
    best = summary["best_trial"]
    assert (out / "best.safetensors").read_bytes() == (out / "trials" / f"{best:04d}" / "best.safetensors").read_bytes()
    trial_summary = json.loads((out / "trials" / f"{best:04d}" / "summary.json").read_text())
    assert trial_summary["best"]["val_loss"] == summary["best_value"]
    assert summary["best_hyperparameters"] == trial_summary["hyperparameters"]
    assert str(task) in summary["reproduce"] and summary["best_reason"]
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"{n:04d}" for n in range(6)]
    trials = _study(out, task.stem).trials
    first = trials[0]  # the warm start: converge's automatic choice, with the task's own defaults
    assert first.user_attrs["warm_start"] and round(first.user_attrs["tuning_epochs"], 3) == summary["tuning_epochs"] > 0
    assert set(first.params) == {"optimizer", "lr_adamw", "weight_decay", "batch_size"} or \
        set(first.params) == {"optimizer", "lr_sgd", "weight_decay", "batch_size"}
    # Then each raced optimizer's best arm with its strong weight decay, on the task's defaults too.
    queued = [t for t in trials if t.user_attrs.get("queued")]
    assert 1 <= len(queued) <= 2 and [t.number for t in queued] == list(range(1, len(queued) + 1))
    for t in queued:
        knobs = t.user_attrs["exact_knobs"]
        assert knobs["weight_decay"] == OPTIMIZERS[knobs["optimizer"]].strong_weight_decay
        assert knobs["batch_size"] == first.user_attrs["automatic"]["batch_size"]
        assert t.user_attrs["knobs"] == knobs and t.user_attrs["task_args"] == {"model": {}, "data": {}}
    assert queued[0].user_attrs["exact_knobs"]["optimizer"] == first.user_attrs["automatic"]["optimizer"]
    searched = trials[len(queued) + 1:]
    assert all(set(t.params) >= {"optimizer", "weight_decay", "batch_size", "hidden", "noisy_labels"} for t in searched)
    for t in trials:  # every complete trial's kept weights, scored on fixed parts of the validation split
        if t.state.name == "COMPLETE":
            parts = t.user_attrs["val_parts"]
            assert len(parts) >= 10 and min(parts) <= t.value <= max(parts)
    searched = summary["best_trial"] > len(queued)  # a searched trial reported carries its task arguments
    assert set(summary["best_params"]) == set(trials[summary["best_trial"]].params)
    assert ("--task-args" in summary["reproduce"]) == searched


def test_pruned_trials_stop_early_with_their_run_folder_saying_so(tuned):
    _, out, summary = tuned
    assert summary["trials"]["pruned"] >= 1
    pruned = [json.loads(p.read_text()) for p in sorted((out / "trials").glob("*/summary.json"))
              if json.loads(p.read_text())["status"] == "pruned"]
    assert pruned and all(s["epochs"] < 12 for s in pruned)
    assert all(s["stop_reason"].startswith("pruned by the search") for s in pruned)
    assert 0 < summary["tuning_epochs"] < summary["epochs_total"]  # the warm start's choosing counts too
    assert summary["epochs_total"] - summary["tuning_epochs"] < 6 * 12


def test_tune_report_is_one_self_contained_page(tuned):
    _, out, summary = tuned
    page = (out / "tune_report.html").read_text()
    for needle in ("Optimization history", "Parameter importances", "Best configuration", "pruned", "complete",
                   "data:image/png;base64,", summary["study"]):
        assert needle in page
    assert "converge train" in page and "src=\"http" not in page and "src='http" not in page
    assert summary["importance_method"]  # fANOVA or the rank-correlation fallback, said which


def test_the_reproduce_command_gives_the_same_best_value(tuned, tmp_path):
    _, _, summary = tuned
    words = shlex.split(summary["reproduce"])
    assert words[0] == "converge"
    run = tmp_path / "again"
    proc = _converge(*words[1:], "--out", run, "--quiet")
    assert proc.returncode == 0, proc.stderr
    again = json.loads((run / "summary.json").read_text())
    assert again["best"][summary["monitor"]] == summary["best_value"]  # same seed: identical on CPU


def test_a_second_run_with_more_trials_runs_only_the_missing_ones(tuned, cli):
    task, out, summary = tuned
    result = cli("tune", task, "--trials", "7", "--out", out, "--max-epochs", "12")
    assert result.code == 0, result.err
    assert result.out.count("\ntrial ") + result.out.startswith("trial ") == 1
    again = json.loads((out / "summary.json").read_text())
    assert again["trials"]["complete"] + again["trials"]["pruned"] == 7
    result = cli("tune", task, "--trials", "7", "--out", out, "--max-epochs", "12")  # nothing left to do
    assert result.code == 0 and "\ntrial " not in result.out


# --- a worker killed mid-trial ------------------------------------------------------------------------
@pytest.mark.slow   # 15-30 s (processes started and killed): the slow CI step
def test_a_killed_tune_continues_where_it_stopped(make_task, tmp_path):
    task = make_task(SLOW)
    out = tmp_path / "out"
    args = ["tune", task, "--trials", "3", "--out", out, "--max-epochs", "40", "--pruner", "none", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "converge", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = out / "trials" / "0001" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "trial 1 never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _states(_study(out, task.stem))[1] == "RUNNING"

    again = _converge(*args[:-1])
    assert again.returncode == 0, again.stderr
    assert "trial 1: its worker died; failed and queued again" in again.stdout
    study = _study(out, task.stem)
    states = _states(study)
    assert states[0] == "COMPLETE" and states[1] == "FAIL" and "RUNNING" not in states.values()
    assert sum(s in ("COMPLETE", "PRUNED") for s in states.values()) == 3
    retried = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == 1]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"
    assert retried[0].params == study.trials[1].params
    assert not list((out / "workers").iterdir())  # every worker's lock is gone


# --- bad input ----------------------------------------------------------------------------------------
def test_bad_input_is_one_line_and_leaves_nothing(cli, task_file, tmp_path, monkeypatch):
    out = tmp_path / "out"
    cli("tune", task_file, "--trials", "0", "--out", out).single_error("--trials", "'0'")
    cli("tune", task_file, "--out", out).single_error("--trials")
    cli("tune", tmp_path / "missing.py", "--trials", "2", "--out", out).single_error("does not exist")
    cli("tune", task_file, "--trials", "2", "--out", out, "--storage", "not a url").single_error("SQLAlchemy URL")
    cli("tune", task_file, "--trials", "2", "--out", out, "--storage-file", tmp_path / "nope").single_error(
        "--storage-file", "cannot be read")
    cli("tune", task_file, "--trials", "2", "--out", out, "--storage", "sqlite:///x.db",
        "--storage-file", task_file).single_error("not both")
    cli("tune", task_file, "--trials", "2", "--out", out, "--pruner", "magic").single_error("--pruner")
    assert not out.exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("x")
    cli("tune", task_file, "--trials", "2", "--out", tmp_path / "busy").single_error("not a converge tune folder")
    monkeypatch.setitem(sys.modules, "optuna", None)
    cli("tune", task_file, "--trials", "2", "--out", out).single_error("needs optuna", "[tune]")


def test_a_bad_search_space_is_reported(cli, make_task, tmp_path):
    task = make_task("def search_space(trial):\n    return {'optimizer': 'sgd'}\n")
    cli("tune", task, "--trials", "1", "--out", tmp_path / "o").single_error("search_space(trial)", "'optimizer'")


def test_a_folder_belongs_to_one_study(cli, task_file, tmp_path):
    out = tmp_path / "out"
    assert cli("tune", task_file, "--trials", "1", "--out", out, "--max-epochs", "2", "--quiet").code == 0
    cli("tune", task_file, "--trials", "1", "--out", out, "--study", "other").single_error("'other'", "another --out")


def test_an_unreachable_database_is_reported_without_the_password(task_file, tmp_path):
    out = tmp_path / "out"
    url = "postgresql+psycopg://tuner:Very$ecretPw@127.0.0.1:1/studies"
    proc = _converge("tune", task_file, "--trials", "2", "--out", out, env={st.ENV_VAR: url}, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: cannot use storage postgresql+psycopg://tuner:***@127.0.0.1:1/studies")
    assert len(proc.stderr.splitlines()) == 1
    assert "Very$ecretPw" not in proc.stdout + proc.stderr
    assert not out.exists()
    debug = _converge("--debug", "tune", task_file, "--trials", "2", "--out", out, "--storage", url, timeout=60)
    assert debug.returncode == 2 and "Very$ecretPw" not in debug.stdout + debug.stderr


def test_train_passes_task_args_and_resume_keeps_them(cli, make_task, tmp_path):
    task = make_task("def model(hidden=16):\n    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), "
                     "nn.Linear(hidden, 3))\n")
    out = tmp_path / "run"
    result = cli("train", task, "--out", out, "--quiet", "--optimizer", "adamw", "--lr", "0.01", "--weight-decay",
                 "0", "--batch-size", "32", "--max-epochs", "2", "--task-args", '{"model": {"hidden": 5}}')
    assert result.code == 0, result.err
    assert json.loads((out / "run.json").read_text())["task_args"] == {"model": {"hidden": 5}, "data": {}}
    assert cli("resume", out, "--max-epochs", "3", "--quiet").code == 0
    from safetensors.torch import load_file

    assert load_file(str(out / "best.safetensors"))["0.weight"].shape[0] == 5
    cli("train", task, "--out", tmp_path / "x", "--task-args", "[1]").single_error("--task-args")
    cli("train", task, "--out", tmp_path / "x", "--task-args", '{"loss": {}}').single_error("--task-args")


def test_timeout_starts_no_new_trial_and_still_exports(cli, task_file, tmp_path):
    out = tmp_path / "out"
    result = cli("tune", task_file, "--trials", "5", "--out", out, "--timeout", "0.001")
    assert result.code == 0, result.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "timeout" and summary["best_trial"] is None and summary["reproduce"] is None
    assert "No trial has completed yet" in (out / "tune_report.html").read_text()
    assert "no trial completed yet" in result.out


def test_workers_racing_to_create_the_tables_both_open_the_storage(monkeypatch):
    """Two workers on a new database: the one that loses the CREATE TABLE race tries again (and finds the
    tables); any other database error is the one-line storage error at once."""
    import optuna

    calls = []

    class Racing:
        def __init__(self, url, **kwargs):
            calls.append(url)
            if len(calls) == 1:
                raise type("IntegrityError", (Exception,), {})(
                    'duplicate key value violates unique constraint "pg_type_typname_nsp_index"')

    monkeypatch.setattr(optuna.storages, "RDBStorage", Racing)
    monkeypatch.setattr(st.time, "sleep", lambda seconds: None)
    spec = st.StorageSpec("postgresql://u:secret@127.0.0.1/db", journal=None)
    assert isinstance(st.open_storage(spec), Racing) and len(calls) == 2

    def refused(url, **kwargs):
        raise type("OperationalError", (Exception,), {})("password authentication failed for user u")

    monkeypatch.setattr(optuna.storages, "RDBStorage", refused)
    with pytest.raises(ConvergeError, match="cannot use storage") as error:
        st.open_storage(spec)
    assert "secret" not in str(error.value)


# --- the laggard rule (converge.decide.laggard) ------------------------------------------------------
FIELD = [Finished(0.10, 20), Finished(0.20, 30), Finished(0.50, 40)]   # median: value 0.20 after 30 epochs


@pytest.mark.parametrize("best, epoch, finished, mode, stops", [
    (0.30, 60, FIELD, "min", True),            # 2x the median epochs, still worse than the median value
    (0.30, 59, FIELD, "min", False),           # one epoch short of 2x: a slow starter gets its time
    (0.20, 200, FIELD, "min", False),          # as good as the middle of the field: never stopped
    (0.15, 60, FIELD, "min", False),
    (0.30, 40, FIELD[:1], "min", True),        # one finished trial is enough: behind it after 2x its epochs
    (0.30, 500, [], "min", False),             # nothing finished yet: no reference
    (0.70, 60, [Finished(0.9, 20), Finished(0.8, 30), Finished(0.5, 40)], "max", True),   # accuracy
    (0.85, 60, [Finished(0.9, 20), Finished(0.8, 30), Finished(0.5, 40)], "max", False),
])
def test_a_trial_is_stopped_only_when_it_lags_the_finished_ones_for_twice_their_epochs(best, epoch, finished,
                                                                                       mode, stops):
    assert (laggard.lags_behind(best, epoch, finished, mode) is not None) == stops


def test_the_laggard_rule_constants_are_the_documented_ones():
    assert (laggard.LAG_FACTOR, laggard.MIN_FINISHED) == (2.0, 1)
    with pytest.raises(ValueError, match="mode"):
        laggard.lags_behind(0.1, 1, FIELD, "minimize")


def test_epoch_judge_stops_a_trial_that_crawls_behind_the_finished_ones():
    finished = [(f.value, f.epochs) for f in FIELD]
    judge = EpochJudge(_ScriptedTrial(prune_from=999, finished=finished), "val_loss", "min")
    for epoch in range(1, 60):
        assert judge({"epoch": epoch, "val_loss": 1.0 - epoch / 100}) is None  # improving, slowly
    reason = judge({"epoch": 60, "val_loss": 0.39})
    assert reason.startswith("pruned by the search at epoch 60: best val_loss 0.39 is still behind the median")
    # Without pruning (--pruner none) the rule does not apply either.
    plain = EpochJudge(_ScriptedTrial(prune_from=999, finished=finished), "val_loss", "min", laggards=False)
    assert plain({"epoch": 60, "val_loss": 0.39}) is None


# --- which trial the search reports (converge.decide.reported_trial) ------------------------------------
# Trial 0 is the automatic choice; its validation loss on four parts of the validation split is AUTO.
AUTO = (0.50, 0.40, 0.60, 0.50)


def _scored(number, value, shift=None, spread=0.0):
    """A trial whose parts are the automatic trial's shifted by ``shift``, alternately +/- ``spread``."""
    parts = None if shift is None else tuple(a + shift + (spread if i % 2 else -spread) for i, a in enumerate(AUTO))
    return reported_trial.Scored(number, value, parts)


@pytest.mark.parametrize("trials, automatic, mode, expected", [
    # Better by 0.05 with the same shift on every part (no noise): reported.
    ([_scored(0, 0.50, 0.0), _scored(1, 0.45, -0.05)], 0, "min", 1),
    # Better by 0.05 but the parts disagree by +/-0.1: within 2 standard errors (0.058 x 2), the automatic one.
    ([_scored(0, 0.50, 0.0), _scored(1, 0.45, -0.05, spread=0.1)], 0, "min", 0),
    # The best by value is within the noise, the second best is clearly better: the second best.
    ([_scored(0, 0.50, 0.0), _scored(1, 0.40, -0.10, spread=0.3), _scored(2, 0.45, -0.05)], 0, "min", 2),
    # The automatic trial is the best: itself.
    ([_scored(0, 0.40, 0.0), _scored(1, 0.45, 0.05)], 0, "min", 0),
    # No automatic trial (--no-warm-start, or it was pruned): the best value, as before.
    ([_scored(1, 0.50, 0.0), _scored(2, 0.45, -0.05, spread=0.3)], None, "min", 2),
    # A trial without parts (a study begun by an older converge): the best value, as before.
    ([_scored(0, 0.50, 0.0), _scored(1, 0.45)], 0, "min", 1),
    # A metric to maximize: the higher, by more than the noise.
    ([_scored(0, 0.90, 0.0), _scored(1, 0.95, 0.05)], 0, "max", 1),
    ([_scored(0, 0.90, 0.0), _scored(1, 0.95, 0.05, spread=0.2)], 0, "max", 0),
    # Non-finite values never win; nothing finite: nothing to report.
    ([_scored(0, float("nan"), 0.0), _scored(1, 0.45, -0.05, spread=0.3)], 0, "min", 1),
    ([_scored(0, float("inf"))], 0, "min", None),
    ([], None, "min", None),
])
def test_the_automatic_trial_is_reported_unless_another_beats_it_by_more_than_the_noise(trials, automatic, mode,
                                                                                         expected):
    chosen = reported_trial.reported_trial(trials, automatic, mode)
    assert (None if chosen is None else chosen.number) == expected


def test_the_reported_trial_says_why_and_checks_its_arguments():
    beaten = reported_trial.reported_trial([_scored(0, 0.50, 0.0), _scored(1, 0.45, -0.05)], 0, "min")
    assert beaten.reason.startswith("better than the automatic choice (trial 0) by 0.05")
    kept = reported_trial.reported_trial([_scored(0, 0.50, 0.0), _scored(1, 0.45, -0.05, spread=0.1)], 0, "min")
    assert kept.reason.startswith("no trial beats the automatic choice") and "best trial 1 by 0.05" in kept.reason
    # z = 0: any gain larger than nothing counts (the search's plain best value when the parts agree on it).
    assert reported_trial.reported_trial([_scored(0, 0.50, 0.0), _scored(1, 0.45, -0.05, spread=0.1)], 0, "min",
                                         z=0).number == 1
    assert reported_trial.MARGIN_Z == 2.0
    with pytest.raises(ValueError, match="mode"):
        reported_trial.reported_trial([], None, "minimize")
    with pytest.raises(ValueError, match="z"):
        reported_trial.reported_trial([], None, "min", z=-1)


def test_the_warm_start_trial_is_the_run_converge_train_makes(cli, task_file, tmp_path):
    """Trial 0 trains with the automatic choice exactly (LR, batch size, warmup, the task's defaults), so its
    result is `converge train`'s, number for number; and its reproduce command gives it again."""
    tuned, trained = tmp_path / "tune", tmp_path / "train"
    assert cli("tune", task_file, "--trials", "1", "--out", tuned, "--max-epochs", "6", "--quiet").code == 0
    assert cli("train", task_file, "--out", trained, "--max-epochs", "6", "--quiet").code == 0
    trial = json.loads((tuned / "trials" / "0000" / "summary.json").read_text())
    train = json.loads((trained / "summary.json").read_text())
    for key in ("epochs", "best_epoch", "best", "test", "hyperparameters"):
        assert trial[key] == train[key], key
    assert trial["config"]["warmup_steps"] == train["config"]["warmup_steps"]
    summary = json.loads((tuned / "summary.json").read_text())
    assert summary["best_trial"] == 0 and summary["best_value"] == train["best"]["val_loss"]
    assert summary["best_reason"] == "the automatic choice has the best validation value"
    warmup = train["config"]["warmup_steps"]
    assert ("--warmup-steps" in summary["reproduce"]) == (warmup > 0)


def test_validation_parts_are_scored_on_the_inputs_the_trial_trained_on(cli, make_task, tmp_path):
    """Unscaled features and targets are standardized for training, and the standardizations are folded into
    the model at the end: the parts are scored before that, so they agree with the trial's value (scored
    after it, they were 1e14 times it)."""
    task = make_task('''
        def model():
            return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


        def data():
            x, _ = _xy()
            y = (x[:, :1] * 3 + x[:, 1:2]) * 1000 + 5000
            x = x * torch.tensor([1e-3, 1e4, 1.0, 1.0, 10.0, 1.0, 1.0, 1e3])
            return (x[:120], y[:120]), (x[120:160], y[120:160]), (x[160:], y[160:])
        ''')
    out = tmp_path / "tune"
    assert cli("tune", task, "--trials", "1", "--out", out, "--max-epochs", "4", "--quiet").code == 0
    events = (out / "trials" / "0000" / "events.jsonl").read_text()
    assert '"remedy": "standardize_features"' in events  # the features were standardized for training
    trial = _study(out, task.stem).trials[0]
    parts = trial.user_attrs["val_parts"]
    assert min(parts) <= trial.value <= max(parts)
