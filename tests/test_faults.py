"""Planted faults: each small run must end with the right status and diagnosis, and the guard must
turn a NaN or a loss spike into a recovered run no worse than the same run without the fault."""

import json
import math

import pytest
import torch
from torch import nn

import converge

FIXED = dict(optimizer="adamw", lr=1e-2, weight_decay=1e-2, batch_size=32, max_epochs=100, seed=0, verbose=False)


def blobs(n=1200, features=8, classes=3, noise=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=g) * 2
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + noise * torch.randn(n, features, generator=g)
    cut = int(n * 0.7)
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def mlp(hidden=32, features=8, classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


class PlantedLoss:
    """Cross-entropy that goes wrong on chosen training calls (calls whose outputs carry gradients: not the
    input checks or evaluation): ``nan`` makes that step's loss NaN, ``spike`` multiplies it by 10^4."""

    def __init__(self, fault=None, at=(), forever_from=None):
        self.fault, self.at, self.forever_from, self.calls = fault, set(at), forever_from, 0

    def __call__(self, outputs, targets):
        loss = nn.functional.cross_entropy(outputs, targets)
        if not outputs.requires_grad:
            return loss
        self.calls += 1
        hit = self.calls in self.at or (self.forever_from is not None and self.calls >= self.forever_from)
        if not hit:
            return loss
        return loss * math.nan if self.fault == "nan" else loss * 1e4


def codes(result):
    return [d["code"] for d in result.summary["diagnosis"]]


@pytest.fixture(scope="module")
def clean_run():
    train, val = blobs()
    return converge.fit(mlp(), train, val, loss=PlantedLoss(), **FIXED)


def test_a_clean_task_is_diagnosed_converged(clean_run):
    assert clean_run.status == "converged"
    assert codes(clean_run) == ["converged"]
    assert clean_run.summary["rollbacks"] == 0


@pytest.mark.parametrize("fault", ["nan", "spike"])
def test_a_transient_fault_is_rolled_back_and_the_run_finishes_no_worse(fault, clean_run, tmp_path):
    train, val = blobs()
    result = converge.fit(mlp(), train, val, loss=PlantedLoss(fault, at=[60]), out=tmp_path / "run", **FIXED)
    assert result.status == "converged" and codes(result) == ["converged"]
    rollbacks = [e for e in result.events if e["event"] == "rollback"]
    assert len(rollbacks) == 1
    incident = rollbacks[0]
    assert incident["kind"] == ("nonfinite" if fault == "nan" else "spike")
    assert incident["at_step"] == 60 and incident["new_lr"] == pytest.approx(FIXED["lr"] / 2)
    assert incident["skipped_to_batch"] == incident["batch"] + 1
    # no worse than the clean run
    best, clean = result.summary["best"], clean_run.summary["best"]
    assert best["val_loss"] <= clean["val_loss"] * 1.1 + 1e-3
    assert best["val_accuracy"] >= clean["val_accuracy"] - 0.01
    # the fault is in the logs, in plain words and numbers, never hidden
    logged = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert [e for e in logged if e["event"] == "rollback"][0]["loss"] == ("nan" if fault == "nan" else incident["loss"])
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(m["rollbacks"] for m in metrics) == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rollbacks"] == 1 and summary["diagnosis"][0]["code"] == "converged"


def test_without_the_guard_a_nan_ends_the_run_as_diverged():
    train, val = blobs()
    result = converge.fit(mlp(), train, val, loss=PlantedLoss("nan", at=[60]), guard=False, **FIXED)
    assert result.status == "diverged" and codes(result)[0] == "diverged"
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_a_persistent_fault_gives_up_after_the_allowed_rollbacks_and_keeps_the_best_weights():
    train, val = blobs()
    result = converge.fit(mlp(), train, val, loss=PlantedLoss("nan", forever_from=80),
                          **{**FIXED, "max_rollbacks": 3})
    assert result.status == "diverged"
    assert sum(e["event"] == "rollback" for e in result.events) == 3
    assert codes(result)[0] == "diverged" and "lr_too_high" in codes(result)
    assert "3 rollbacks in a row" in result.summary["stop_reason"]
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    assert math.isfinite(result.summary["best"]["val_loss"])


def test_an_lr_far_too_high_is_rescued_and_named():
    train, val = blobs()
    result = converge.fit(mlp(), train, val, loss=PlantedLoss(), **{**FIXED, "lr": 10.0})
    assert result.status == "converged"
    assert "lr_too_high" in codes(result)
    assert result.summary["rollbacks"] >= 2
    assert result.summary["best"]["val_accuracy"] > 0.9
    found = next(d for d in result.summary["diagnosis"] if d["code"] == "lr_too_high")
    assert found["evidence"]["rollbacks"] == result.summary["rollbacks"] and "--lr" in found["fix"]


def test_a_large_model_on_tiny_data_is_diagnosed_overfitting():
    (x, y), val = blobs(n=2000, noise=3.0)
    result = converge.fit(mlp(hidden=512), (x[:40], y[:40]), val, loss=PlantedLoss(), **FIXED)
    assert result.status == "converged"
    assert "overfitting" in codes(result)
    live = [e for e in result.events if e["event"] == "diagnosis" and e["code"] == "overfitting"]
    assert len(live) == 1 and live[0]["epoch"] < result.summary["epochs"]  # told while training, once


def test_a_model_too_small_for_its_data_is_diagnosed_underfitting():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1500, 2, generator=g)
    y = ((x[:, 0] * x[:, 1]) > 0).long()  # XOR of signs: no linear model can fit it
    torch.manual_seed(0)
    result = converge.fit(nn.Linear(2, 2), (x[:1000], y[:1000]), (x[1000:], y[1000:]), **FIXED)
    assert result.status == "converged"
    assert "underfitting" in codes(result)
    found = next(d for d in result.summary["diagnosis"] if d["code"] == "underfitting")
    assert found["evidence"]["constant_prediction_loss"] == pytest.approx(math.log(2), abs=0.01)


def test_a_capped_run_that_still_improves_says_so():
    train, val = blobs()
    result = converge.fit(mlp(), train, val, **{**FIXED, "lr": 1e-4, "max_epochs": 4})
    assert result.status == "max_epochs" and codes(result)[0] == "still_improving"


def test_resume_after_a_rollback_continues_exactly(tmp_path):
    """The guard's state (its statistics, LR scale, clipping, streak) travels in the checkpoint."""
    train, val = blobs()
    whole = converge.fit(mlp(), train, val, loss=PlantedLoss("spike", at=[60]), out=tmp_path / "whole",
                         **{**FIXED, "max_epochs": 6})
    converge.fit(mlp(), train, val, loss=PlantedLoss("spike", at=[60]), out=tmp_path / "part",
                 **{**FIXED, "max_epochs": 3})
    resumed = converge.fit(mlp(), train, val, loss=PlantedLoss(), out=tmp_path / "part", resume=True,
                           **{**FIXED, "max_epochs": 6})
    assert sum(e["event"] == "rollback" for e in resumed.events) == 1
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in whole.history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history] == strip
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("variant", ["dataset", "accumulate", "bf16", "clip"])
def test_rollback_works_with_datasets_accumulation_mixed_precision_and_clipping(variant, clean_run):
    from torch.utils.data import TensorDataset

    train, val = blobs()
    options = {"dataset": {}, "accumulate": {"accumulate": 2}, "bf16": {"amp": "bf16"},
               "clip": {"clip_grad": 1.0}}[variant]
    data = TensorDataset(*train) if variant == "dataset" else train
    result = converge.fit(mlp(), data, val, loss=PlantedLoss("nan", at=[60]), **{**FIXED, **options})
    assert result.status == "converged" and codes(result) == ["converged"]
    rollbacks = [e for e in result.events if e["event"] == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["kind"] == "nonfinite"
    if variant == "clip":
        assert rollbacks[0]["previous_clip_grad"] == 1.0 and rollbacks[0]["clip_grad"] == 0.5
    assert result.summary["best"]["val_loss"] <= clean_run.summary["best"]["val_loss"] * 1.1 + 1e-3


def test_a_rollback_goes_to_the_last_epoch_end_when_its_checkpoint_was_put_off(tmp_path, monkeypatch):
    """Which checkpoints are written follows the wall clock; a rollback must not: a small state's epoch end is
    the guard's target even when its checkpoint was put off, so the run matches one without a folder."""
    import converge.engine.recorder as recorder

    train, val = blobs()
    options = {**FIXED, "max_epochs": 4}
    memory = converge.fit(mlp(), train, val, loss=PlantedLoss("spike", at=[60]), **options)
    monkeypatch.setattr(recorder, "checkpoint_due", lambda *args, **kwargs: False)   # every one put off
    folder = converge.fit(mlp(), train, val, loss=PlantedLoss("spike", at=[60]), out=tmp_path / "run", **options)
    rollbacks = [e for e in folder.events if e["event"] == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["to_step"] > 0
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in memory.history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in folder.history] == strip
