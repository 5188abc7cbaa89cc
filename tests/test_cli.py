"""`converge train` / `converge resume` end to end on tiny tasks: the run folder, flags, exit status."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import converge

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"cli_test_task_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _train(cli, task, out, *flags):
    result = cli("train", task, "--out", out, "--quiet", *flags)
    assert result.code == 0, result.err
    assert result.err == ""
    return json.loads((out / "summary.json").read_text())


# --- the run folder -------------------------------------------------------------------------------------

# The four knobs converge tunes by default, fixed: for checks that need known values.
FIXED_KNOBS = ("--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "1e-2", "--batch-size", "64")

@pytest.fixture(scope="module")
def finished(tmp_path_factory, default_task_source, train_once):
    """One 4-epoch classification run, shared by the read-only checks below."""
    task, out, code = train_once(tmp_path_factory.mktemp("cli"), default_task_source, "--max-epochs", "4",
                                 *FIXED_KNOBS)
    assert code == 0
    return task, out, json.loads((out / "summary.json").read_text())


def test_summary(finished):
    _, out, summary = finished
    for key in ("status", "stop_reason", "epochs", "best_epoch", "best", "test", "hyperparameters",
                "tuning_epochs", "wall_seconds"):
        assert key in summary, key
    assert summary["status"] == "max_epochs"
    assert "--max-epochs 4" in summary["stop_reason"]
    assert summary["epochs"] == 4
    assert 1 <= summary["best_epoch"] <= 4
    assert set(summary["best"]) >= {"val_loss"} and math.isfinite(summary["best"]["val_loss"])
    assert set(summary["test"]) == {"loss", "accuracy"}
    assert 0.0 <= summary["test"]["accuracy"] <= 1.0
    assert summary["hyperparameters"] == {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-2, "batch_size": 64}
    assert summary["tuning_epochs"] == 0
    assert summary["wall_seconds"] >= 0
    assert summary["task_kind"] == "classification"


def test_metrics_log_has_one_line_per_epoch(finished):
    _, out, summary = finished
    records = _read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    for record in records:
        for key in ("epoch", "step", "lr", "train_loss", "val_loss", "seconds"):
            assert key in record, key
        assert "val_accuracy" in record  # the task's metrics, measured on the validation split
    # 120 training samples in batches of 64: 2 optimizer steps per epoch
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    assert records[0]["lr"] == pytest.approx(1e-3)
    best = records[summary["best_epoch"] - 1]
    assert best["val_loss"] == pytest.approx(summary["best"]["val_loss"])


def test_events_log(finished):
    _, out, _ = finished
    events = _read_jsonl(out / "events.jsonl")
    kinds = [e["event"] for e in events]
    assert "new_best" in kinds and "max_epochs" in kinds
    for event in events:
        assert isinstance(event["epoch"], int) and isinstance(event["step"], int)


def test_best_weights_load_and_reproduce_the_test_scores(finished):
    from safetensors.torch import load_file

    task, out, summary = finished
    state = load_file(str(out / "best.safetensors"))
    module = _load_module(task)
    model = module.model()
    model.load_state_dict(state)  # strict: every key and shape matches
    assert converge.load_weights(out / "best.safetensors", module.model()).keys() == state.keys()
    _, _, (x_test, y_test) = module.data()
    model.eval()
    with torch.no_grad():
        outputs = model(x_test)
    assert F.cross_entropy(outputs, y_test).item() == pytest.approx(summary["test"]["loss"], rel=1e-4)
    assert (outputs.argmax(1) == y_test).float().mean().item() == pytest.approx(summary["test"]["accuracy"])


def test_checkpoint_and_curves(finished):
    _, out, summary = finished
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["progress"]["epoch"] == 4
    assert state["progress"]["status"] == "max_epochs"
    png = (out / "curves.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    import matplotlib.image

    image = matplotlib.image.imread(out / "curves.png")
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def test_summary_printed_on_stdout(cli, task_file, tmp_path):
    result = cli("train", task_file, "--out", tmp_path / "run", "--max-epochs", "1", "--quiet")
    assert result.code == 0
    assert "max_epochs" in result.out
    assert str(tmp_path / "run") in result.out


def test_without_quiet_each_epoch_is_reported(cli, task_file, tmp_path):
    result = cli("train", task_file, "--out", tmp_path / "run", "--max-epochs", "2")
    assert result.code == 0, result.err
    assert "epoch 1" in result.out and "epoch 2" in result.out


# --- flags ----------------------------------------------------------------------------------------------

def test_flags_map_onto_hyperparameters(cli, task_file, tmp_path):
    out = tmp_path / "run"
    summary = _train(cli, task_file, out, "--optimizer", "sgd", "--lr", "0.05", "--weight-decay", "0",
                     "--batch-size", "32", "--max-epochs", "2")
    assert summary["hyperparameters"] == {"optimizer": "sgd", "lr": 0.05, "weight_decay": 0.0, "batch_size": 32}
    records = _read_jsonl(out / "metrics.jsonl")
    assert records[0]["step"] == 4  # 120 samples in batches of 32: 3 full batches and one of 24
    assert records[0]["lr"] == pytest.approx(0.05)


def test_every_train_flag_reaches_the_config(cli, task_file, tmp_path):
    summary = _train(cli, task_file, tmp_path / "run", *FIXED_KNOBS, "--warmup-steps", "3",
                     "--max-epochs", "2", "--patience", "7", "--lr-factor", "0.5",
                     "--min-lr", "1e-5", "--cooldown", "1", "--threshold", "0.01", "--unproductive-cuts", "2",
                     "--seed", "3", "--device", "cpu", "--amp", "off", "--clip-grad", "1.5", "--accumulate", "2",
                     "--checkpoint-seconds", "60", "--num-workers", "0", "--monitor", "accuracy", "--mode", "max",
                     "--no-guard", "--max-rollbacks", "2", "--tensorboard")
    assert summary["config"] == {
        "optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-2, "batch_size": 64, "max_epochs": 2, "patience": 7,
        "seed": 3, "device": "cpu", "amp": "off", "clip_grad": 1.5, "accumulate": 2, "lr_factor": 0.5,
        "threshold": 0.01, "cooldown": 1, "min_lr": 1e-5, "unproductive_cuts": 2, "monitor": "accuracy",
        "mode": "max", "checkpoint_seconds": 60.0, "num_workers": 0, "steps_per_epoch": None, "warmup_steps": 3,
        "guard": False,
        "max_rollbacks": 2, "tensorboard": True, "mlflow": False, "standardize": True}
    assert summary["monitor"] == "val_accuracy" and summary["mode"] == "max"


def test_task_monitor_and_mode_apply_and_flags_override_them(cli, make_task, tmp_path):
    task = make_task("monitor = 'accuracy'\nmode = 'max'\n")
    summary = _train(cli, task, tmp_path / "a", "--max-epochs", "1")
    assert (summary["monitor"], summary["mode"]) == ("val_accuracy", "max")
    summary = _train(cli, task, tmp_path / "b", "--max-epochs", "1", "--monitor", "val_loss", "--mode", "min")
    assert (summary["monitor"], summary["mode"]) == ("val_loss", "min")


def test_same_seed_same_run(cli, task_file, tmp_path):
    first = _read_jsonl(_run_dir(cli, task_file, tmp_path / "a") / "metrics.jsonl")
    second = _read_jsonl(_run_dir(cli, task_file, tmp_path / "b") / "metrics.jsonl")
    strip = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]  # noqa: E731
    assert strip(first) == strip(second)


def _run_dir(cli, task, out):
    _train(cli, task, out, "--max-epochs", "2", "--seed", "5")
    return out


# --- stopping and exit status ---------------------------------------------------------------------------

def test_max_epochs_before_convergence_exits_0(cli, task_file, tmp_path):
    out = tmp_path / "run"
    result = cli("train", task_file, "--out", out, "--max-epochs", "3", "--quiet")
    assert result.code == 0, result.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "max_epochs"
    assert summary["epochs"] == 3
    assert len(_read_jsonl(out / "metrics.jsonl")) == 3


def test_converged_exits_0(cli, task_file, tmp_path):
    # No improvement ever counts as significant after the first epoch; no LR cut is allowed without progress.
    out = tmp_path / "run"
    summary = _train(cli, task_file, out, "--patience", "1", "--unproductive-cuts", "0", "--threshold", "100",
                     "--max-epochs", "50")
    assert summary["status"] == "converged"
    assert summary["epochs"] < 50
    assert "converged" in [e["event"] for e in _read_jsonl(out / "events.jsonl")]


@pytest.mark.parametrize("flags, needle", [
    (["--max-epochs", "2"], "--max-epochs"),
    (["--patience", "1", "--unproductive-cuts", "0", "--threshold", "100"], "converged"),
], ids=["max_epochs", "converged"])
def test_resume_finished_run_is_refused(cli, task_file, tmp_path, folder_snapshot, flags, needle):
    out = tmp_path / "run"
    _train(cli, task_file, out, *flags)
    before = folder_snapshot(out)
    cli("resume", out, "--quiet").single_error(str(out), needle)
    assert folder_snapshot(out) == before


def test_resume_max_epochs_run_with_a_larger_cap(cli, task_file, tmp_path):
    out = tmp_path / "run"
    _train(cli, task_file, out, "--max-epochs", "2")
    result = cli("resume", out, "--max-epochs", "3", "--quiet")
    assert result.code == 0, result.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 3
    assert [r["epoch"] for r in _read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]


# --- kinds of task --------------------------------------------------------------------------------------

REGRESSION = '''
def model():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


def data():
    x, _ = _xy()
    y = x[:, :1] * 2.0 - x[:, 1:2]
    return (x[:120], y[:120]), (x[120:160], y[120:160]), (x[160:], y[160:])
'''


def test_regression_infers_mse_and_reports_r2_not_accuracy(cli, make_task, tmp_path):
    task = make_task(REGRESSION)
    out = tmp_path / "run"
    summary = _train(cli, task, out, "--max-epochs", "3")
    assert summary["task_kind"] == "regression"
    assert set(summary["best"]) == {"val_loss", "val_r2"}
    assert set(summary["test"]) == {"loss", "r2"}
    assert all("val_accuracy" not in r and "accuracy" not in r for r in _read_jsonl(out / "metrics.jsonl"))
    # The loss is the mean squared error: recompute it from the saved best weights.
    module = _load_module(task)
    model = module.model()
    converge.load_weights(out / "best.safetensors", model)
    (_, _), (x_val, y_val), (x_test, y_test) = module.data()
    with torch.no_grad():
        assert F.mse_loss(model(x_val), y_val).item() == pytest.approx(summary["best"]["val_loss"], rel=1e-4)
        assert F.mse_loss(model(x_test), y_test).item() == pytest.approx(summary["test"]["loss"], rel=1e-4)
        predicted = model(x_test)
    # R2 is scikit-learn's, on the whole test split
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    assert sklearn_metrics.r2_score(y_test.numpy(), predicted.numpy()) == pytest.approx(summary["test"]["r2"], abs=1e-5)


def test_regression_with_flat_targets(cli, make_task, tmp_path):
    task = make_task(REGRESSION.replace("x[:, :1] * 2.0 - x[:, 1:2]", "x[:, 0] * 2.0 - x[:, 1]"))
    summary = _train(cli, task, tmp_path / "run", "--max-epochs", "2")
    assert summary["task_kind"] == "regression" and set(summary["test"]) == {"loss", "r2"}


@pytest.mark.parametrize("wrap", [
    "TensorDataset(x[a:b], y[a:b])",
    "DataLoader(TensorDataset(x[a:b], y[a:b]), batch_size=32, shuffle=(a == 0))",
], ids=["Dataset", "DataLoader"])
def test_dataset_and_dataloader_tasks(cli, make_task, tmp_path, wrap):
    task = make_task(f'''
def data():
    x, y = _xy()
    return tuple({wrap} for a, b in ((0, 120), (120, 160), (160, 200)))
''')
    out = tmp_path / "run"
    summary = _train(cli, task, out, "--max-epochs", "2", "--batch-size", "64")
    assert summary["status"] == "max_epochs" and summary["epochs"] == 2
    assert set(summary["test"]) == {"loss", "accuracy"}
    records = _read_jsonl(out / "metrics.jsonl")
    # our own DataLoader uses --batch-size (64: 2 steps per epoch); a user's DataLoader keeps its own (32: 4)
    assert records[0]["step"] == (4 if wrap.startswith("DataLoader") else 2)
    assert (out / "best.safetensors").exists() and (out / "curves.png").read_bytes().startswith(PNG_MAGIC)


def test_no_test_split_means_no_test_scores(cli, make_task, tmp_path):
    task = make_task("def data():\n    x, y = _xy()\n    return (x[:150], y[:150]), (x[150:], y[150:])\n")
    summary = _train(cli, task, tmp_path / "run", "--max-epochs", "1")
    assert "test" not in summary or not summary["test"]


# --- output folder --------------------------------------------------------------------------------------

def test_default_output_folder(cli, task_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("train", task_file.name, "--max-epochs", "1", "--quiet")
    assert result.code == 0, result.err
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    assert re.fullmatch(r"task-\d{8}-\d{6}", runs[0].name), runs[0].name
    assert json.loads((runs[0] / "summary.json").read_text())["epochs"] == 1
    assert {"metrics.jsonl", "events.jsonl", "best.safetensors", "checkpoint.pt", "curves.png"} <= \
        {p.name for p in runs[0].iterdir()}


def test_out_creates_missing_parents(cli, task_file, tmp_path):
    out = tmp_path / "a" / "b" / "run"
    _train(cli, task_file, out, "--max-epochs", "1")
    assert (out / "summary.json").exists()


# --- the real commands ----------------------------------------------------------------------------------

def test_python_dash_m_version(cli_subprocess):
    result = cli_subprocess("--version")
    assert result.code == 0
    assert result.out.strip() == f"converge {converge.__version__}"


def test_console_script_trains(cli_subprocess, task_file, tmp_path):
    script = Path(sys.executable).parent / "converge"
    assert script.exists(), script
    version = cli_subprocess("--version", command=[str(script)])
    assert version.code == 0 and converge.__version__ in version.out
    out = tmp_path / "run"
    result = cli_subprocess("train", task_file, "--out", out, "--max-epochs", "2", "--quiet", command=[str(script)])
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    assert json.loads((out / "summary.json").read_text())["status"] == "max_epochs"
    resumed = cli_subprocess("resume", out, command=[str(script)])
    resumed.single_error(str(out))


def test_no_command_prints_help(cli):
    result = cli()
    assert result.code == 2
    assert "train" in result.out and "resume" in result.out


def test_help(cli_subprocess):
    result = cli_subprocess("train", "--help")
    assert result.code == 0
    for flag in ("--optimizer", "--lr", "--weight-decay", "--batch-size", "--max-epochs", "--out", "--force",
                 "--quiet", "--debug"):
        assert flag in result.out


def test_diverged_run_exits_3_and_keeps_finite_best_weights(cli, make_task, tmp_path):
    task = make_task('''
    def data():
        x, _ = _xy()
        x = x * 100
        y = x.sum(1)
        return (x[:150], y[:150]), (x[150:], y[150:])

    def model():
        return nn.Linear(8, 1)
    ''')
    result = cli("train", task, "--out", tmp_path / "run", "--optimizer", "sgd", "--lr", "10", "--quiet",
                 "--no-guard", "--no-standardize")   # the raw x100 inputs are what makes LR 10 blow up
    assert result.code == 3, result.err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged" and "training loss became" in summary["stop_reason"]
    assert summary["rollbacks"] == 0 and summary["config"]["guard"] is False
    assert [d["code"] for d in summary["diagnosis"]][0] == "diverged"


def test_debug_is_accepted_before_the_command(cli):
    result = cli("--debug", "train", "no-such-task.py")
    assert result.code == 2 and "does not exist" in result.err


def test_two_runs_in_the_same_second_get_their_own_default_folders(cli, task_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("time.strftime", lambda fmt, *a: "20260101-000000")
    for _ in range(2):
        assert cli("train", task_file, "--max-epochs", "1", "--quiet").code == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["task-20260101-000000",
                                                                     "task-20260101-000000-2"]


def test_auto_is_the_default_and_records_its_choices(cli, task_file, tmp_path):
    out = tmp_path / "run"
    summary = _train(cli, task_file, out, "--max-epochs", "2")
    chosen = summary["hyperparameters"]
    assert chosen["optimizer"] in ("adamw", "sgd") and chosen["lr"] > 0 and chosen["weight_decay"] >= 0
    assert 1 <= chosen["batch_size"] <= 120
    assert summary["tuning_epochs"] > 0
    events = _read_jsonl(out / "events.jsonl")
    kinds = [e["event"] for e in events]
    for kind in ("chose_batch_size", "lr_range_test", "race_rung", "chose_optimizer", "chose_weight_decay"):
        assert kind in kinds, kind
    chose = next(e for e in events if e["event"] == "chose_optimizer")
    assert (chose["value"], chose["lr"]) == (chosen["optimizer"], chosen["lr"])
    # tuning happens before training: its events come first, at epoch 0
    assert all(e["epoch"] == 0 for e in events[:kinds.index("chose_weight_decay") + 1])
    stages = json.loads((out / "tuning.json").read_text())
    # every optimizer's range test (on this tiny task AdamW alone: issue 20, item 7) and the race are saved
    tested = {f"range_test_{e['optimizer']}" for e in events if e["event"] == "lr_range_test"}
    assert "range_test_adamw" in tested and {"batch_size", "race", *tested} <= set(stages)
    # run.json keeps the options as given, so a run resumed before its first checkpoint tunes again
    # (from the saved stages) instead of training with choices whose evidence it no longer has
    given = json.loads((out / "run.json").read_text())["config"]
    assert [given[k] for k in ("optimizer", "lr", "weight_decay", "batch_size")] == ["auto"] * 4


def test_explicit_values_override_their_knob_only(cli, task_file, tmp_path):
    out = tmp_path / "run"
    summary = _train(cli, task_file, out, "--max-epochs", "1", "--optimizer", "sgd", "--batch-size", "40")
    assert summary["hyperparameters"]["optimizer"] == "sgd" and summary["hyperparameters"]["batch_size"] == 40
    events = _read_jsonl(out / "events.jsonl")
    tests = [e for e in events if e["event"] == "lr_range_test"]
    assert [t["optimizer"] for t in tests] == ["sgd"] and tests[0]["batch_size"] == 40
    assert not any(e["event"] in ("chose_optimizer", "chose_batch_size") for e in events)


def test_lr_find_prints_suggestions_and_writes_the_plot(cli, task_file, tmp_path):
    out = tmp_path / "find"
    result = cli("lr-find", task_file, "--out", out)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert any(line.startswith("adamw: suggested lr") for line in lines)
    assert any(line.startswith("sgd: suggested lr") for line in lines)
    assert (out / "lr_find.png").read_bytes().startswith(PNG_MAGIC)
    found = json.loads((out / "lr_find.json").read_text())
    assert set(found) == {"adamw", "sgd"}
    for curve in found.values():
        assert len(curve["lrs"]) == len(curve["losses"]) > 8
        assert curve["lrs"] == sorted(curve["lrs"])


def test_lr_find_one_optimizer_and_bad_input(cli, task_file, tmp_path):
    result = cli("lr-find", task_file, "--optimizer", "sgd", "--batch-size", "16", "--out", tmp_path / "f")
    assert result.code == 0 and "adamw" not in result.out
    assert json.loads((tmp_path / "f" / "lr_find.json").read_text())["sgd"]["batch_size"] == 16
    cli("lr-find", tmp_path / "missing.py").single_error("does not exist")
    cli("lr-find", task_file, "--batch-size", "0").single_error("--batch-size")
