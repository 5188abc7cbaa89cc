"""Exact resume: a run killed at any moment and resumed ends bit for bit where an uninterrupted run ends."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _interrupt import InterruptAt

TASK = '''
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

def model():
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 4))

def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3000, 16, generator=g)
    y = (x[:, :4] + 0.5 * torch.randn(3000, 4, generator=g)).argmax(1)
    splits = (x[:2000], y[:2000]), (x[2000:2600], y[2000:2600]), (x[2600:], y[2600:])
    if SPLITS == "dataset":
        return tuple(TensorDataset(a, b) for a, b in splits)
    if SPLITS == "loader":  # the user's own DataLoader, shuffled from the global RNG
        train, *rest = (TensorDataset(a, b) for a, b in splits)
        return (DataLoader(train, batch_size=32, shuffle=True), *rest)
    return splits

SPLITS = "tensors"
'''

# One thread: tiny models run faster and the timing of a kill does not depend on other load.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TIMING_KEYS = {"seconds"}
SUMMARY_TIMING_KEYS = {"wall_seconds", "train_seconds"}


def write_task(folder: Path, splits: str = "tensors") -> Path:
    path = folder / f"task_{splits}.py"
    path.write_text(TASK.replace('SPLITS = "tensors"', f"SPLITS = {splits!r}"))
    return path


def train_args(task: Path, out: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "converge", "train", str(task), "--out", str(out), "--max-epochs", str(epochs),
            "--batch-size", "32", "--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "1e-2", "--seed", "3",
            "--device", "cpu", "--checkpoint-seconds", "0.05", "--quiet"]


def run_ok(args: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr
    return done


def metrics_lines(folder: Path) -> int:
    path = folder / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def start_and_stop(args: list[str], out: Path, after_epochs: int, delay: float, sig: int) -> int:
    """Start a run and send it ``sig`` once ``after_epochs`` epochs are logged plus ``delay`` seconds."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 120
    while metrics_lines(out) < after_epochs and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    process.send_signal(sig)
    process.wait(timeout=120)
    return process.returncode


def finished(out: Path) -> bool:
    """summary.json is written last: a final status there means the run wrote all its files."""
    summary = out / "summary.json"
    return summary.exists() and json.loads(summary.read_text())["status"] != "interrupted"


def assert_same_run(reference: Path, resumed: Path) -> None:
    assert (reference / "best.safetensors").read_bytes() == (resumed / "best.safetensors").read_bytes()
    strip = lambda path, keys: [{k: v for k, v in json.loads(line).items() if k not in keys}  # noqa: E731
                                for line in path.read_text().splitlines()]
    assert strip(reference / "metrics.jsonl", TIMING_KEYS) == strip(resumed / "metrics.jsonl", TIMING_KEYS)
    ref_summary = json.loads((reference / "summary.json").read_text())
    new_summary = json.loads((resumed / "summary.json").read_text())
    for key in SUMMARY_TIMING_KEYS:
        ref_summary.pop(key), new_summary.pop(key)
    assert ref_summary == new_summary


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    task = write_task(folder)
    run_ok(train_args(task, folder / "run", 8))
    return task, folder / "run"


def test_sigkill_at_a_random_step_then_resume_is_bit_exact(reference, tmp_path):
    task, ref_run = reference
    seed = int(os.environ.get("CONVERGE_TEST_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    # At least one epoch logged first: the kill lands in training, so there is always a run to resume
    # (kills during start-up, before run.json exists, are the slow test's business).
    after, delay = rng.randint(1, 6), rng.uniform(0.0, 0.05)
    out = tmp_path / "run"
    code = start_and_stop(train_args(task, out, 8), out, after, delay, signal.SIGKILL)
    print(f"CONVERGE_TEST_SEED={seed}: killed after {after} epochs + {delay:.3f}s, exit {code}")
    # Checkpoints are written in the background: a kill right after the first epoch may precede the first
    # one, and then the run starts over in place (same result, no "resumed" event).
    had_checkpoint = any((out / name).exists() for name in ("checkpoint.pt", "checkpoint.prev.pt"))
    if code != 0:  # else the run finished before the kill: its files must still match
        run_ok([sys.executable, "-m", "converge", "resume", str(out), "--quiet"])
    assert_same_run(ref_run, out)
    events = [json.loads(line)["event"] for line in (out / "events.jsonl").read_text().splitlines()]
    assert "resumed" in events or code == 0 or not had_checkpoint


def test_ctrl_c_writes_checkpoint_exits_interrupted_and_resumes_exactly(reference, tmp_path):
    task, ref_run = reference
    out = tmp_path / "run"
    code = start_and_stop(train_args(task, out, 8), out, 3, 0.02, signal.SIGINT)
    assert code == 130
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert (out / "checkpoint.pt").exists()
    run_ok([sys.executable, "-m", "converge", "resume", str(out), "--quiet"])
    assert_same_run(ref_run, out)


def test_corrupt_newest_checkpoint_falls_back_to_previous(reference, tmp_path):
    task, ref_run = reference
    out = tmp_path / "run"
    start_and_stop(train_args(task, out, 8), out, 4, 0.0, signal.SIGKILL)
    checkpoint = out / "checkpoint.pt"
    # Truncated, as by a full disk. A new file: a kill can land while checkpoint.pt and checkpoint.prev.pt
    # are still two names of one file (the rotation hard-links), which an in-place edit would hit twice.
    data = checkpoint.read_bytes()
    checkpoint.unlink()
    checkpoint.write_bytes(data[:1000])
    done = run_ok([sys.executable, "-m", "converge", "resume", str(out), "--quiet"])
    assert "corrupt or truncated" in done.stdout + done.stderr
    assert_same_run(ref_run, out)
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "checkpoint_fallback" for e in events)


def test_all_checkpoints_corrupt_is_a_clear_error(reference, tmp_path):
    task, _ = reference
    out = tmp_path / "run"
    start_and_stop(train_args(task, out, 8), out, 3, 0.0, signal.SIGKILL)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (out / name).write_bytes(b"not a checkpoint")
    metrics_before = (out / "metrics.jsonl").read_bytes()
    done = subprocess.run([sys.executable, "-m", "converge", "resume", str(out)], capture_output=True, text=True,
                          env=ENV)
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot resume") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr
    assert (out / "metrics.jsonl").read_bytes() == metrics_before  # nothing already written is lost


@pytest.mark.slow
@pytest.mark.parametrize("splits", ["tensors", "dataset", "loader"])
def test_repeated_random_kills_then_resume_is_bit_exact(tmp_path, splits):
    task = write_task(tmp_path, splits)
    run_ok(train_args(task, tmp_path / "reference", 8))
    out = tmp_path / "run"
    rng = random.Random(int(os.environ.get("CONVERGE_TEST_SEED", time.time_ns() % 10_000)))
    resume = [sys.executable, "-m", "converge", "resume", str(out), "--quiet"]
    for _ in range(3):
        # Killed before the run folder had its run.json, there is nothing to resume: start again.
        args = resume if (out / "run.json").exists() else train_args(task, out, 8)
        code = start_and_stop(args, out, rng.randint(0, 2) + metrics_lines(out), rng.uniform(0, 0.2),
                              signal.SIGKILL)
        if code == 0 or finished(out):
            break
    else:
        run_ok(resume if (out / "run.json").exists() else train_args(task, out, 8))
    assert_same_run(tmp_path / "reference", out)


@pytest.mark.parametrize("splits", ["tensors", "dataset", "loader"])
def test_ctrl_c_inside_an_epoch_resumes_exactly_in_process(tmp_path, splits):
    """Interrupted at a known step in the middle of epoch 2, for each kind of split."""
    import importlib.util

    import torch

    import converge

    spec = importlib.util.spec_from_file_location(f"resume_task_{splits}", write_task(tmp_path, splits))
    task = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(task)

    def run(out, loss, resume=False):
        torch.manual_seed(0)
        return converge.fit(task.model(), *task.data(), out=out, loss=loss, resume=resume, verbose=False,
                            max_epochs=3, batch_size=32, optimizer="adamw", lr=1e-3, weight_decay=1e-2, seed=3,
                            device="cpu")

    reference = run(tmp_path / "reference", InterruptAt())
    stopped = run(tmp_path / "run", InterruptAt(63 + 20))  # 63 steps per epoch: step 20 of epoch 2
    assert stopped.status == "interrupted"
    assert stopped.events[-1]["event"] == "interrupted" and stopped.events[-1]["batch"] == 20
    resumed = run(tmp_path / "run", InterruptAt(), resume=True)
    assert resumed.status == "max_epochs"
    assert_same_run(tmp_path / "reference", tmp_path / "run")
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in reference.history]


@pytest.mark.slow   # 15-30 s (processes started and killed): the slow CI step
def test_killed_while_tuning_resumes_to_the_same_run(tmp_path):
    """Auto mode: a run killed during the tuning phase keeps its finished stages (tuning.json) and, resumed,
    ends exactly as an uninterrupted auto run."""
    task = write_task(tmp_path)
    auto = lambda out: [sys.executable, "-m", "converge", "train", str(task), "--out", str(out),  # noqa: E731
                        "--max-epochs", "3", "--seed", "3", "--device", "cpu", "--quiet"]
    run_ok(auto(tmp_path / "reference"))
    out = tmp_path / "run"
    process = subprocess.Popen(auto(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 120
    while not (out / "tuning.json").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not (out / "checkpoint.pt").exists(), "the kill was meant to land in the tuning phase"
    stages = json.loads((out / "tuning.json").read_text())
    assert stages, "a finished tuning stage was saved"
    run_ok([sys.executable, "-m", "converge", "resume", str(out), "--quiet"])
    assert_same_run(tmp_path / "reference", out)
    reference_events = (tmp_path / "reference" / "events.jsonl").read_text()
    assert (out / "events.jsonl").read_text() == reference_events


def test_ctrl_c_after_a_restart_from_the_best_weights_resumes_exactly(tmp_path):
    """An LR cut after overfitting loads the best weights (restarted_from_best): the checkpoint of that
    epoch holds them, and a run stopped in the next epoch resumes to the same run."""
    from _overfit import fit_overfitting

    def run(out, loss, resume=False):
        return fit_overfitting(out, loss=loss, resume=resume, max_epochs=14, weight_decay=1e-2)

    reference = run(tmp_path / "reference", InterruptAt())
    restarts = [e["epoch"] for e in reference.events if e["event"] == "restarted_from_best"]
    assert restarts, "the run did not restart from its best weights: the test shows nothing"
    stopped = run(tmp_path / "run", InterruptAt(4 * restarts[0] + 2))   # 4 steps per epoch: the next epoch
    assert stopped.status == "interrupted"
    resumed = run(tmp_path / "run", InterruptAt(), resume=True)
    assert_same_run(tmp_path / "reference", tmp_path / "run")
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in reference.history]
