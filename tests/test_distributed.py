"""Data-parallel training: `converge train --nproc 2` (torchrun, gloo on CPU) against one process, and a
kill or Ctrl-C of the whole process tree followed by `converge resume`."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from test_resume import ENV, assert_same_run, metrics_lines, write_task

# No dropout: with the same global batch, two processes compute the same gradient as one (each takes a
# contiguous half of every batch; DDP averages), so they must agree up to float summation order.
TASK = '''
import torch
from torch import nn

def model():
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))

def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1300, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] * x[:, 2] > 0).long()
    return (x[:800], y[:800]), (x[800:1000], y[800:1000]), (x[1000:], y[1000:])
'''
# The tolerance for "the same run": relative, per epoch, on every logged loss and metric.
TOLERANCE = 1e-5


def train_command(task, out, *extra, epochs=6):
    return [sys.executable, "-m", "converge", "train", str(task), "--out", str(out), "--max-epochs", str(epochs),
            "--optimizer", "adamw", "--lr", "0.01", "--weight-decay", "0", "--batch-size", "64", "--device", "cpu",
            "--quiet", *extra]


def run_ok(command):
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def logged(folder, name="metrics.jsonl"):
    return [json.loads(line) for line in (folder / name).read_text().splitlines()]


@pytest.fixture(scope="module")
def single_and_two(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    task = folder / "task.py"
    task.write_text(TASK)
    run_ok(train_command(task, folder / "one"))
    run_ok(train_command(task, folder / "two", "--nproc", "2"))
    return folder / "one", folder / "two"


def test_two_processes_match_one_with_the_same_global_batch(single_and_two):
    one, two = single_and_two
    ones, twos = logged(one), logged(two)
    assert [r["epoch"] for r in twos] == [r["epoch"] for r in ones] and [r["step"] for r in twos] == [r["step"] for r in ones]
    for a, b in zip(ones, twos):
        for key in ("train_loss", "val_loss", "val_accuracy", "lr"):
            assert b[key] == pytest.approx(a[key], rel=TOLERANCE), (a["epoch"], key)
    summary_one, summary_two = (json.loads((f / "summary.json").read_text()) for f in (one, two))
    assert summary_two["status"] == summary_one["status"]
    assert summary_two["test"]["loss"] == pytest.approx(summary_one["test"]["loss"], rel=TOLERANCE)
    assert json.loads((two / "run.json").read_text())["world_size"] == 2


def test_the_run_folder_is_written_once_and_looks_like_a_single_process_one(single_and_two):
    one, two = single_and_two
    names = lambda folder: sorted(p.name for p in folder.iterdir())  # noqa: E731
    assert names(two) == names(one)
    events = [e["event"] for e in logged(two, "events.jsonl")]
    assert events.count("restored_best") == 1 and events.count("max_epochs") == 1  # one writer, no duplicates


# A loss with a parameter of its own, built at import with a different value on each rank (as a task file's
# random draw before the seed is set): rank 0's value goes to every rank, and its gradient is averaged as
# DDP averages the model's, so two processes still train as one.
LOSS_TASK = TASK + '''
import os

class Temperature(nn.Module):
    def __init__(self):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(1) + 0.5 * int(os.environ.get("RANK", "0")))

    def forward(self, logits, y):
        return nn.functional.cross_entropy(logits * self.log_scale.exp(), y)

loss = Temperature()
'''


def test_a_loss_with_parameters_trains_as_in_one_process(tmp_path):
    task = tmp_path / "task.py"
    task.write_text(LOSS_TASK)
    run_ok(train_command(task, tmp_path / "one"))
    run_ok(train_command(task, tmp_path / "two", "--nproc", "2"))
    ones, twos = logged(tmp_path / "one"), logged(tmp_path / "two")
    for a, b in zip(ones, twos):
        for key in ("train_loss", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=TOLERANCE), (a["epoch"], key)
    from safetensors.torch import load_file
    one, two = (load_file(tmp_path / f / "loss_parameters.safetensors") for f in ("one", "two"))
    assert float(one["Temperature.log_scale"]) != 0.0
    assert float(two["Temperature.log_scale"]) == pytest.approx(float(one["Temperature.log_scale"]), rel=1e-4)


def test_under_the_users_own_torchrun_it_trains_the_same(single_and_two, tmp_path):
    _, two = single_and_two
    task = two.parent / "task.py"
    command = train_command(task, tmp_path / "run")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "converge"]
    run_ok(torchrun + command[3:])  # the same flags as `converge train ... --nproc 2`, without --nproc
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(logged(tmp_path / "run")) == strip(logged(two))


@pytest.mark.slow   # 15-30 s (processes started and killed): the slow CI step
def test_a_dataloader_split_is_refused_with_one_line(tmp_path):
    task = tmp_path / "task.py"
    task.write_text(TASK + '''
from torch.utils.data import DataLoader, TensorDataset
_plain = data
def data():
    (x, y), val, test = _plain()
    return DataLoader(TensorDataset(x, y), batch_size=32), val, test
''')
    done = subprocess.run(train_command(task, tmp_path / "run", "--nproc", "2"), capture_output=True, text=True,
                          timeout=300, env=ENV)
    assert done.returncode == 2
    assert "error: data-parallel training needs the train data as tensors or a Dataset" in done.stderr


def start_tree(command, out, after_epochs):
    """Start a command in its own process group; return it once ``after_epochs`` epochs are logged."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                               start_new_session=True)
    deadline = time.monotonic() + 180
    while metrics_lines(out) < after_epochs and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return process


@pytest.fixture(scope="module")
def dropout_reference(tmp_path_factory):
    """An uninterrupted 2-process run of a task with dropout (exactness must survive random masks too)."""
    folder = tmp_path_factory.mktemp("ddp-ref")
    task = write_task(folder, "dataset")
    run_ok(train_command(task, folder / "run", "--nproc", "2", "--checkpoint-seconds", "0.05", epochs=20))
    return task, folder / "run"


@pytest.mark.slow
def test_sigkill_of_every_process_then_resume_is_bit_exact(dropout_reference, tmp_path):
    task, reference = dropout_reference
    out = tmp_path / "run"
    process = start_tree(train_command(task, out, "--nproc", "2", "--checkpoint-seconds", "0.05", epochs=20), out, 3)
    # As a power loss would: torchrun starts each worker in a session of its own, so kill them by name too.
    os.killpg(process.pid, signal.SIGKILL)
    subprocess.run(["pkill", "-KILL", "-f", str(out)], check=False)
    process.wait(timeout=60)
    run_ok([sys.executable, "-m", "converge", "resume", str(out), "--quiet"])  # two processes again, by itself
    assert_same_run(reference, out)
    assert "resumed" in [e["event"] for e in logged(out, "events.jsonl")]


@pytest.mark.slow
def test_ctrl_c_stops_every_process_at_the_same_step_and_resumes_exactly(dropout_reference, tmp_path):
    task, reference = dropout_reference
    out = tmp_path / "run"
    process = start_tree(train_command(task, out, "--nproc", "2", "--checkpoint-seconds", "0.05", epochs=20), out, 2)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    assert process.wait(timeout=120) == 130
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    run_ok([sys.executable, "-m", "converge", "resume", str(out), "--quiet"])
    assert_same_run(reference, out)


class _TwoRanks:
    """A world whose collective combines this rank's flags with the other rank's, and where a Ctrl-C may be
    handled just as it returns (where Python runs a handler that arrived during a blocking call)."""
    def __init__(self, signals, other_rank, *, signal_lands=False):
        self.signals, self.other_rank, self.signal_lands = signals, other_rank, signal_lands

    def any_flags(self, flags, device):
        agreed = [a or b for a, b in zip(flags, self.other_rank)]
        if self.signal_lands:
            self.signals._handle(signal.SIGINT, None)
        return agreed


def test_a_stop_is_what_the_ranks_agreed_not_a_signal_that_landed_after_the_collective():
    import torch
    from converge.engine.signals import StopSignals

    signals = StopSignals()
    world = _TwoRanks(signals, [False, True], signal_lands=True)
    stop, (due,) = signals.agree(world, torch.device("cpu"), [False])
    assert (stop, due) == (False, True)  # this rank goes on with the other; both stop at the next agreement
    assert signals.requested == "SIGINT"
    assert signals.agree(_TwoRanks(signals, [False, False]), torch.device("cpu"), [False]) == (True, [False])


def test_a_stop_asked_of_another_rank_stops_this_one_too():
    import torch
    from converge.engine.signals import StopSignals

    signals = StopSignals()
    assert signals.agree(_TwoRanks(signals, [True, False]), torch.device("cpu"), [False]) == (True, [False])
    assert signals.requested == "a stop request to another process"
    assert StopSignals().agree(None, torch.device("cpu"), [True]) == (False, [True])


def test_the_launcher_passes_on_our_lines_and_leaves_out_torchrun_and_the_peers_last_words(capsys):
    from converge.engine.distributed import _pass_on_own_lines

    ended = []
    stream = iter([
        "a warning of the user's code\n",
        "W1207 10:00:00.000000 123 torch/distributed/run.py:1] OMP_NUM_THREADS set\n",   # torchrun's log
        "error: cannot write 'run': its .converge.lock was deleted\n",
        "terminate called without an active exception\n",   # a peer torn down after the first process ended
        "warning: still passed on\n",
    ])

    def lines():
        for line in stream:
            if line.startswith("terminate"):
                ended.append(True)   # the first process has left its exit status by now
            yield line

    _pass_on_own_lines(lines(), first_ended=lambda: bool(ended))
    assert capsys.readouterr().err.splitlines() == [
        "a warning of the user's code", "error: cannot write 'run': its .converge.lock was deleted",
        "warning: still passed on"]


@pytest.mark.parametrize("exc, expected", [
    (RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [10.0.0.2]:40312: "
                  "Connection reset by peer. This is typically caused by a remote worker hanging"),
     "Read error [10.0.0.2]:40312: Connection reset by peer"),
    (RuntimeError("[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 1800000ms for "
                  "recv operation to complete"), "Timed out waiting 1800000ms for recv operation to complete"),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 9x3)"), None),
    (ValueError("Connection reset by peer"), None),
])
def test_a_collective_failing_for_a_lost_peer_is_told_apart(monkeypatch, exc, expected):
    from converge.engine import distributed

    assert distributed.lost_peer(exc) is None  # no process group: never a lost peer
    monkeypatch.setattr(distributed, "_WORLD", distributed.World(rank=0, size=2))
    assert distributed.lost_peer(exc) == expected


@pytest.mark.slow   # 15-30 s (processes started and killed): the slow CI step
def test_a_run_folder_deleted_under_a_data_parallel_run_is_one_line_and_status_2(tmp_path):
    """The first process writes the folder and notices; the others lost contact with it and say nothing
    more; the launcher does not stumble on the missing folder (docs/storage-errors.md)."""
    task = write_task(tmp_path, "dataset")
    out = tmp_path / "run"
    process = subprocess.Popen(train_command(task, out, "--nproc", "2", epochs=200), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    deadline = time.monotonic() + 180
    while metrics_lines(out) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    for _ in range(20):  # the run may add a file while the tree is being removed: remove it again
        shutil.rmtree(out, ignore_errors=True)
        if not out.exists():
            break
    _, err = process.communicate(timeout=180)
    lines = [line for line in err.splitlines() if line.strip()]
    assert process.returncode == 2 and len(lines) == 1, err[-2000:]
    assert lines[0].startswith("error: cannot write") and "deleted" in lines[0]
    assert not out.exists()


def test_the_automatic_choice_runs_on_rank_0_alone_and_the_run_goes_on(tmp_path):
    """Every knob automatic under --nproc 2: rank 0 races the arms by itself while the other rank waits for its
    choice. An arm's Trainer joined the process group (DDP) and waited for the waiting rank: the run hung."""
    task = tmp_path / "task.py"
    task.write_text(TASK)
    command = [sys.executable, "-m", "converge", "train", str(task), "--out", str(tmp_path / "two"),
               "--max-epochs", "2", "--device", "cpu", "--quiet", "--nproc", "2"]
    run_ok(command)
    events = [e["event"] for e in logged(tmp_path / "two", "events.jsonl")]
    assert "race_rung" in events and "chose_optimizer" in events and "chose_lr" in events
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["epochs"] == 2
