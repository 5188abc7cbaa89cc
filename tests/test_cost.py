"""Cost of a run: the guard's rollback target holds no serialized copy, checkpoints never make the loop
wait, nothing keeps a finished run alive, the tuning race is bounded in steps, and the constant-prediction
baseline comes from the targets of the first epoch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import converge
from converge.assembly import Output, assemble, make_config
from converge.data import make_splits
from converge.decide.cadence import (ASSUMED_BYTES_PER_SECOND, MAX_SHARE, NEGLIGIBLE_SECONDS, checkpoint_due,
                                     estimated_cost)
from converge.decide.divergence import Alarm
from converge.engine.guard import Incident
from converge.engine.objective import constant_prediction_loss
from converge.io import checkpoint as ckpt
from converge.io.runfolder import RunFolder


class Rows(Dataset):
    """A map-style Dataset (not tensors in memory): the baseline must come from the loop's statistics."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _data(kind: str, n: int = 240, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    if kind == "classification":
        y = (x[:, 0] > 0.3).long() + (x[:, 1] > 1.0).long()
    elif kind == "binary":
        y = (x[:, :2] > 0.2).float()
    else:
        y = x[:, :2] * 3.0 + 1.0
    return x, y


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3 if kind == "classification" else 2))


def _run(kind="regression", out=None, dataset=False, **options):
    x, y = _data(kind)
    train, val = (x[:180], y[:180]), (x[180:], y[180:])
    if dataset:
        train, val = Rows(*train), Rows(*val)
    config = make_config(**{"optimizer": "adamw", "lr": 1e-2, "weight_decay": 0.0, "batch_size": 32,
                            "max_epochs": 3, "device": "cpu", "seed": 0, **options})
    run = assemble(_model(kind), make_splits(train, val), config, output=Output(out), verbose=False)
    return run.trainer, run.run()


# --- the guard's rollback target -----------------------------------------------------------------------
def _no_bytes(obj) -> bool:
    return not any(isinstance(v, (bytes, bytearray)) for v in vars(obj).values())


def test_guard_rolls_back_from_the_folder_and_holds_no_copy(tmp_path):
    trainer, _ = _run(out=tmp_path / "run")
    guard = trainer.guard
    assert guard.good_state is None and guard.good_folder is trainer.record.folder
    assert _no_bytes(guard) and _no_bytes(trainer)


def test_guard_without_folder_keeps_tensors_not_bytes():
    trainer, _ = _run(out=None)
    guard = trainer.guard
    assert guard.good_folder is None and isinstance(guard.good_state, dict)
    assert all(isinstance(t, torch.Tensor) for t in guard.good_state["model"].values())
    assert _no_bytes(guard)
    # A copy: the loop's tensors are not the target's.
    live = dict(trainer.model.named_parameters())
    assert all(t.data_ptr() != live[k].data_ptr() for k, t in guard.good_state["model"].items() if k in live)


def test_rollback_from_disk_restores_the_checkpoint_exactly(tmp_path):
    trainer, _ = _run(out=tmp_path / "run")
    saved = ckpt.load_checkpoint(tmp_path / "run")[0]
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(torch.randn_like(p))
    for state in trainer.optimizer.state.values():
        state["exp_avg"].add_(1.0)
    incident = Incident(Alarm("nonfinite", math.nan, math.nan, "test"), batch=0, step=trainer.step, grad_norm=None)
    done = trainer.guard.roll_back(incident, model=trainer.model, optimizer=trainer.optimizer, scaler=None,
                                   min_lr=1e-6)
    assert done.progress["step"] == saved["progress"]["step"]
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, saved["model"][name]), name
    restored = trainer.optimizer.state_dict()["state"]
    for key, state in saved["optimizer"]["state"].items():
        assert torch.equal(restored[key]["exp_avg"], state["exp_avg"])
        assert torch.equal(restored[key]["exp_avg_sq"], state["exp_avg_sq"])
    # The target is intact after the loop changes the restored tensors in place.
    for state in trainer.optimizer.state.values():
        state["exp_avg"].add_(1.0)
    again = ckpt.load_checkpoint(tmp_path / "run")[0]
    assert all(torch.equal(again["optimizer"]["state"][k]["exp_avg"], s["exp_avg"])
               for k, s in saved["optimizer"]["state"].items())


def test_rollback_in_memory_leaves_the_target_intact():
    trainer, _ = _run(out=None)
    target = {k: v.clone() for k, v in trainer.guard.good_state["model"].items()}
    incident = Incident(Alarm("nonfinite", math.nan, math.nan, "test"), batch=0, step=trainer.step, grad_norm=None)
    for _ in range(2):
        trainer.guard.roll_back(incident, model=trainer.model, optimizer=trainer.optimizer, scaler=None, min_lr=1e-6)
        with torch.no_grad():
            for p in trainer.model.parameters():
                p.add_(1.0)
        for state in trainer.optimizer.state.values():
            state["exp_avg"].add_(1.0)
    assert all(torch.equal(trainer.guard.good_state["model"][k], v) for k, v in target.items())


# --- nothing keeps a finished run alive ------------------------------------------------------------------
def test_finished_run_is_freed_without_the_garbage_collector(tmp_path):
    script = textwrap.dedent(f"""
        import gc, weakref
        import torch
        from torch import nn
        import converge
        gc.disable()
        x = torch.randn(200, 6); y = x[:, :1] * 2
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
        alive = weakref.ref(model)
        result = converge.fit(model, (x[:160], y[:160]), (x[160:], y[160:]), out={str(tmp_path / 'run')!r},
                              verbose=False, max_epochs=2, optimizer="adamw", lr=1e-2, weight_decay=0.0,
                              batch_size=32, device="cpu")
        del model, result
        print("ALIVE" if alive() is not None else "FREED")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "FREED"


# --- checkpoints never make the loop wait -----------------------------------------------------------------
def test_checkpoint_is_skipped_not_waited_for_while_the_writer_is_busy(tmp_path, monkeypatch):
    release = threading.Event()
    real_commit = ckpt.commit_checkpoint

    def slow_commit(folder, tmp):
        release.wait(30)
        real_commit(folder, tmp)

    monkeypatch.setattr(ckpt, "commit_checkpoint", slow_commit)
    folder = RunFolder(tmp_path)
    state = {"w": torch.arange(4.0)}
    assert folder.write_checkpoint_later(state)
    started = time.monotonic()
    assert not folder.write_checkpoint_later({"w": torch.zeros(4)})  # busy: skipped at once
    assert time.monotonic() - started < 5
    assert folder.writing_checkpoint
    releaser = threading.Timer(0.2, release.set)
    releaser.start()
    assert folder.write_checkpoint_later({"w": torch.ones(4)}, wait=True)  # a final one waits its turn
    folder.close()
    assert torch.equal(torch.load(tmp_path / ckpt.CHECKPOINT)["w"], torch.ones(4))
    assert torch.equal(torch.load(tmp_path / ckpt.PREVIOUS)["w"], torch.arange(4.0))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("since, cost, floor, due", [
    (0.0, None, 0.0, True),                              # nothing written yet
    (0.1, NEGLIGIBLE_SECONDS, 0.0, True),                # negligible: every time
    (1.0, 0.3, 0.0, False),                              # 0.3 s every second is 30 %
    (0.3 / MAX_SHARE, 0.3, 0.0, True),                   # exactly the allowed share
    (0.3 / MAX_SHARE - 0.5, 0.3, 0.0, False),
    (5.0, 0.01, 10.0, False),                            # inside an epoch: --checkpoint-seconds first
    (11.0, 0.01, 10.0, True),
])
def test_checkpoint_cadence(since, cost, floor, due):
    assert checkpoint_due(since, cost, floor=floor) is due


# --- the race is bounded in steps ---------------------------------------------------------------------------
def _race_steps(n: int) -> tuple[list[int], float]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    y = x[:, :1] * 2
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    result = converge.fit(model, (x, y), (x[:64], y[:64]), optimizer="auto", lr=1e-2, weight_decay=0.0,
                          batch_size=16, max_epochs=1, verbose=False, device="cpu")
    rungs = [e for e in result.events if e["event"] == "race_rung"]
    return [r["steps"] for r in rungs], result.summary["tuning_epochs"] * n


def test_race_budget_is_in_steps_whatever_the_data_size():
    small_steps, small_samples = _race_steps(320)      # 20 steps an epoch: the race spans epochs
    large_steps, large_samples = _race_steps(3200)     # 200 steps an epoch: a partial one
    assert small_steps == large_steps and small_steps
    assert small_samples == pytest.approx(large_samples, rel=0.02)


@pytest.mark.parametrize("steps_per_epoch, optimizers, rungs", [
    (50, ["adamw", "sgd"], [40, 80, 160]),   # about 50 steps an epoch (800 rows and more at batch 16): unchanged
    (10, ["adamw", "sgd"], [40, 80, 160]),   # 160 rows at batch 16: still unchanged
    (5, ["adamw"], [15, 30, 60]),            # 80 rows: AdamW alone, a first rung of at most 3 epochs
    (1, ["adamw"], [3, 6, 12]),
])
def test_choosing_is_bounded_in_epochs_on_tiny_data(steps_per_epoch, optimizers, rungs):
    from converge.choose.auto import candidate_optimizers, rung_steps

    assert candidate_optimizers("auto", steps_per_epoch) == optimizers
    assert candidate_optimizers("sgd", steps_per_epoch) == ["sgd"]
    assert [rung_steps(rung, steps_per_epoch) for rung in (1, 2, 3)] == rungs


def test_eighty_rows_spend_about_a_run_choosing():
    """Issue 20, item 7: 80 training rows spent 95.6 epochs choosing the knobs for a 22-epoch run."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(80, 6, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    result = converge.fit(model, (x, y), (x[:40], y[:40]), max_epochs=1, verbose=False, device="cpu")
    events = {e["event"]: e for e in result.events}
    rungs = [e["steps"] for e in result.events if e["event"] == "race_rung"]
    assert [e["optimizer"] for e in result.events if e["event"] == "lr_range_test"] == ["adamw"]
    assert "tiny data" in events["chose_optimizer"]["reason"]
    assert rungs and rungs[0] == 15 and result.summary["tuning_epochs"] < 40


# --- the baseline from the targets ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["classification", "binary", "regression"])
def test_baseline_from_the_first_epoch_equals_the_direct_computation(kind):
    trainer, _ = _run(kind, dataset=True, max_epochs=2)
    x, y = _data(kind)
    expected = constant_prediction_loss(y[:180], trainer.objective)
    assert expected is not None
    assert trainer.judge.baseline_loss == pytest.approx(expected, rel=1e-9, abs=1e-12)
    in_memory, _ = _run(kind, dataset=False, max_epochs=1)
    assert in_memory.judge.baseline_loss == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_the_guard_learns_the_baseline_with_the_diagnosis():
    # Targets in memory: the collapse test is on from the start; a Dataset's: from the end of the first epoch.
    in_memory, _ = _run("classification", dataset=False, max_epochs=1)
    assert in_memory.guard.policy.baseline == pytest.approx(in_memory.judge.baseline_loss)
    from_dataset, _ = _run("classification", dataset=True, max_epochs=2)
    assert from_dataset.judge.baseline_loss is not None
    assert from_dataset.guard.policy.baseline == from_dataset.judge.baseline_loss
    assert from_dataset.guard.watch.state_dict()["policy"]["baseline"] == from_dataset.judge.baseline_loss


def test_resume_keeps_the_baseline(tmp_path):
    out = tmp_path / "run"
    trainer, _ = _run("classification", out=out, dataset=True, max_epochs=2)
    state = ckpt.load_checkpoint(out)[0]
    assert state["baseline"]["loss"] == trainer.judge.baseline_loss is not None
    x, y = _data("classification")
    config = make_config(optimizer="adamw", lr=1e-2, weight_decay=0.0, batch_size=32, max_epochs=3, device="cpu")
    fresh = assemble(_model("classification"), make_splits(Rows(x[:180], y[:180]), Rows(x[180:], y[180:])),
                     config, verbose=False).trainer
    fresh.load_state_dict(state)
    assert fresh.judge.baseline_loss == trainer.judge.baseline_loss
    assert fresh.judge.target_stats is None  # the first epoch is over: only the value is kept, not the statistics


# --- data-parallel: every rank rolls back to rank 0's checkpoint ----------------------------------------
DDP_TASK = '''
import json
import math
import torch
from torch import nn

def model():
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))

def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1300, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] * x[:, 2] > 0).long()
    return (x[:800], y[:800]), (x[800:1000], y[800:1000])

calls = [0]

def loss(outputs, targets):
    value = nn.functional.cross_entropy(outputs, targets)
    if outputs.requires_grad:
        calls[0] += 1
        if calls[0] == 33:  # epoch 3 (13 batches an epoch): the guard rolls back to epoch 2's checkpoint
            return value * math.nan
    return value
'''


@pytest.mark.slow   # 15-30 s (processes started and killed): the slow CI step
def test_data_parallel_rollback_restores_rank_zeros_checkpoint_on_every_rank(tmp_path):
    from test_distributed import TOLERANCE, logged, run_ok, train_command

    task = tmp_path / "task.py"
    task.write_text(DDP_TASK)
    # Checkpoints at epoch ends only: one inside an epoch is due by the clock, which two runs need not share.
    steady = ("--checkpoint-seconds", "1000")
    run_ok(train_command(task, tmp_path / "one", *steady, epochs=5))
    run_ok(train_command(task, tmp_path / "two", *steady, "--nproc", "2", epochs=5))
    for name in ("one", "two"):
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["rollbacks"] == 1, name
    one, two = logged(tmp_path / "one"), logged(tmp_path / "two")
    assert len(one) == len(two) == 5
    for a, b in zip(one, two):
        assert a["step"] == b["step"] and a["rollbacks"] == b["rollbacks"]
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert b[key] == pytest.approx(a[key], rel=TOLERANCE, abs=1e-7), (a["epoch"], key)
    assert any(r["rollbacks"] for r in one)


def test_best_weights_written_tensor_by_tensor_read_back_the_same(tmp_path):
    from safetensors.torch import load_file

    from converge.io.weights import write_weights

    state = {"w": torch.randn(3, 4), "half": torch.randn(5).to(torch.bfloat16), "step": torch.tensor(7),
             "empty": torch.zeros(0, 2), "mask": torch.tensor([True, False]), "t": torch.randn(4, 3).t()}
    write_weights(tmp_path / "best.safetensors", state, metadata={"k": "v"})
    back = load_file(str(tmp_path / "best.safetensors"))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in state.items())


# --- what checkpoints cost the loop --------------------------------------------------------------------------
MiB = 2**20


@pytest.mark.parametrize("mib, since, due", [
    (1, 0.0, True),                                   # a small model: every epoch, as before
    (384, 2.0, False),                                # a 25M-parameter AdamW run after a 2 s epoch
    (384, 384 * MiB / ASSUMED_BYTES_PER_SECOND / MAX_SHARE, True),
])
def test_the_first_checkpoint_costs_what_its_size_says(mib, since, due):
    assert checkpoint_due(since, estimated_cost(mib * MiB)) is due


def test_state_bytes_counts_each_storage_once():
    shared = torch.zeros(10, 4)
    state = {"model": {"w": shared, "tied": shared}, "best": [shared[:2], torch.zeros(3, dtype=torch.float64)],
             "progress": {"epoch": 1}}
    assert ckpt.state_bytes(state) == shared.nbytes + 3 * 8


def _saves(monkeypatch) -> list[tuple[int, bool]]:
    """(epoch, settled) of every checkpoint handed to the run folder."""
    from converge.engine.recorder import RunRecorder

    saves, original = [], RunRecorder.save_checkpoint

    def spy(self, state, *, wait=False, settled=False):
        written = original(self, state, wait=wait, settled=settled)
        if written:
            saves.append((state["progress"]["epoch"], settled))
        return written

    monkeypatch.setattr(RunRecorder, "save_checkpoint", spy)
    return saves


def test_the_last_epoch_is_checkpointed_once(tmp_path, monkeypatch):
    saves = _saves(monkeypatch)
    _run(out=tmp_path / "run", max_epochs=3)
    assert saves[-1] == (3, True)                     # the final checkpoint, serialized in the background
    assert [epoch for epoch, _ in saves].count(3) == 1


def test_a_checkpoint_too_costly_for_its_epoch_waits_for_the_final_one(tmp_path, monkeypatch):
    saves = _saves(monkeypatch)
    monkeypatch.setattr("converge.engine.recorder.estimated_cost", lambda nbytes, per_byte=None: 1e9)
    _run(out=tmp_path / "run", max_epochs=3, guard=False)
    assert saves == [(3, True)]
    assert not (tmp_path / "run" / ckpt.PREVIOUS).exists()


def test_a_large_state_is_checkpointed_at_the_start_rather_than_copied_for_the_guard(tmp_path, monkeypatch):
    from converge.engine.guard import DivergenceGuard

    saves = _saves(monkeypatch)
    for module in ("recorder", "loop"):
        monkeypatch.setattr(f"converge.engine.{module}.estimated_cost", lambda nbytes, per_byte=None: 1e9)
    copies = []
    monkeypatch.setattr(DivergenceGuard, "remember_now", lambda self, **state: copies.append(state))
    trainer, _ = _run(out=tmp_path / "run", max_epochs=3)
    assert saves == [(0, False), (3, True)]
    assert copies == [] and trainer.guard.good_folder is trainer.record.folder


@pytest.mark.parametrize("nbytes, seconds_per_byte, cost", [
    (2**30, None, 2**30 / ASSUMED_BYTES_PER_SECOND),   # before one has been timed: the guessed rate
    (3 * 2**20, 1e-9, 3 * 2**20 * 1e-9),               # then at what the last one cost per byte: a small
])                                                      # start checkpoint does not make a full one look cheap
def test_a_checkpoint_costs_its_size_at_the_last_rate(nbytes, seconds_per_byte, cost):
    assert estimated_cost(nbytes, seconds_per_byte) == pytest.approx(cost)


def test_a_checkpoint_at_the_best_epoch_holds_the_weights_once(tmp_path):
    trainer, _ = _run(out=tmp_path / "run", max_epochs=3)
    assert trainer.tracker.best_epoch == trainer.epoch  # still improving: the last weights are the best
    state = ckpt.load_checkpoint(tmp_path / "run")[0]
    for name, tensor in state["model"].items():
        best = state["best_model"][name]
        assert tensor.untyped_storage().data_ptr() == best.untyped_storage().data_ptr(), name
        assert torch.equal(tensor, trainer.best_state[name])


def test_the_final_checkpoint_keeps_the_last_weights_while_the_best_are_restored(tmp_path):
    trainer, _ = _run(out=tmp_path / "run", max_epochs=2)
    last = {name: tensor.clone() for name, tensor in trainer.model.state_dict().items()}
    trainer.best_state = {name: torch.zeros_like(tensor) for name, tensor in last.items()}  # an earlier best
    state = trainer._settled(trainer._checkpoint_state(), restoring=True)
    trainer.model.load_state_dict(trainer.best_state)           # what the run's end does next
    for name, tensor in state["model"].items():
        assert torch.equal(tensor, last[name]), name
    events = len(trainer.events)
    trainer.add_event("later")
    assert len(state["logs"]["events"]) == events              # a copy: events added later are not in it


def test_settled_copies_containers_and_shares_tensors():
    weights = torch.ones(3)
    state = {"model": {"w": weights}, "logs": {"events": [{"event": "a"}]}}
    copy = ckpt.settled(state)
    state["logs"]["events"].append({"event": "b"})
    state["logs"]["events"][0]["event"] = "changed"
    assert copy["logs"]["events"] == [{"event": "a"}]
    assert copy["model"]["w"] is weights
