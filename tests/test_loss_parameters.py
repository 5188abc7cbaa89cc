"""A loss with trainable parameters of its own (ArcFace centres, learned uncertainty weights) trains them with
the model's, as a loop written by hand does, and keeps them with the weights: best epoch, rollback, resume."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import converge
from converge.engine.loss_parameters import (LOSS_KEY, WithLossParameters, left_as_they_are, loss_parameters,
                                             model_part)


class Centres(nn.Module):
    """A cosine classifier's class centres, held by the loss (the ArcFace pattern without its margin)."""

    def __init__(self, dim=8, classes=3):
        super().__init__()
        self.centres = nn.Parameter(torch.randn(classes, dim, generator=torch.Generator().manual_seed(5)) * 0.01)

    def forward(self, embeddings, labels):
        logits = 10 * F.normalize(embeddings) @ F.normalize(self.centres).T
        return F.cross_entropy(logits, labels)


def _data(n=240, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator)
    return x, x[:, :3].argmax(1)


def _embedder():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 8))


FIXED = dict(optimizer="adamw", lr=1e-2, weight_decay=0.0, batch_size=32, seed=0, verbose=False, standardize=False)


# --- which parameters ------------------------------------------------------------------------------------------
def test_the_parameters_of_a_loss_module_a_bound_method_and_a_module_a_function_names_are_found():
    centres = Centres()

    def by_global(e, y):
        return GLOBAL_CENTRES(e, y)

    def closing_over(e, y):
        return centres(e, y)

    assert list(loss_parameters(centres)) == ["Centres.centres"]
    assert list(loss_parameters(centres.forward)) == ["Centres.centres"]
    assert list(loss_parameters(closing_over)) == ["Centres.centres"]
    assert list(loss_parameters(by_global)) == ["Centres.centres"]
    assert loss_parameters(F.cross_entropy) == {} and loss_parameters(nn.CrossEntropyLoss()) == {}


GLOBAL_CENTRES = Centres()


def test_frozen_parameters_eval_mode_networks_and_the_models_own_are_left_alone():
    class Perceptual(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Linear(8, 8).eval()   # a pretrained network, in eval mode as such networks are
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, out, target):
            return self.scale * F.mse_loss(self.features(out), self.features(target))

    assert list(loss_parameters(Perceptual())) == ["Perceptual.scale"]
    frozen = Centres().requires_grad_(False)
    assert loss_parameters(frozen) == {}
    model = nn.Sequential(nn.Linear(6, 8))
    model.head_loss = Centres()
    assert loss_parameters(model.head_loss, model) == {}   # the model holds them: its optimizer has them


def test_the_joint_state_round_trips_and_keeps_the_models_keys_as_they_are():
    model, loss = _embedder(), Centres()
    joint = WithLossParameters(model, loss_parameters(loss, model))
    state = {k: v.clone() for k, v in joint.state_dict().items()}
    assert model_part(state).keys() == model.state_dict().keys()
    assert state[LOSS_KEY + "Centres.centres"].shape == (3, 8)
    with torch.no_grad():
        loss.centres.add_(1.0)
        model[0].weight.add_(1.0)
    joint.load_state_dict(state)
    assert torch.equal(loss.centres, state[LOSS_KEY + "Centres.centres"])
    assert torch.equal(model[0].weight, state["0.weight"])
    assert len(list(joint.parameters())) == len(list(model.parameters())) + 1
    before = loss.centres.detach().clone()
    joint.load_state_dict(model_part(state))   # a checkpoint from before they were trained: left as they are
    assert torch.equal(loss.centres, before)


def test_a_trial_run_leaves_them_as_they_were():
    loss = Centres()
    before = loss.centres.detach().clone()
    with left_as_they_are(loss_parameters(loss)):
        loss(torch.randn(4, 8), torch.tensor([0, 1, 2, 0])).backward()
        with torch.no_grad():
            loss.centres.add_(3.0)
    assert torch.equal(loss.centres, before) and loss.centres.grad is None


# --- in a run -------------------------------------------------------------------------------------------------
def test_a_run_trains_them_restores_the_best_epochs_and_writes_them(tmp_path):
    loss = Centres()
    before = loss.centres.detach().clone()
    data = _data()
    result = converge.fit(_embedder(), data, _data(120, seed=1), loss=loss, max_epochs=12, out=tmp_path / "run",
                          **FIXED)
    assert not torch.equal(loss.centres.detach(), before)   # trained in place, as a hand loop does
    saved = load_file(tmp_path / "run" / "loss_parameters.safetensors")
    assert torch.equal(saved["Centres.centres"], loss.centres.detach())   # the best epoch's, restored
    from converge.io.runfolder import LOSS_PARAMETERS, OWN_FILES
    assert LOSS_PARAMETERS in OWN_FILES   # --force replaces it with the folder's other files
    weights = load_file(tmp_path / "run" / "best.safetensors")
    assert weights.keys() == result.model.state_dict().keys()   # best.safetensors: the model's alone
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "the loss's own 24 parameters (Centres.centres) train with the model's" in summary["task_description"]
    # the best epoch's validation loss is what the restored model and centres score
    with torch.no_grad():
        result.model.eval()
        val_x, val_y = _data(120, seed=1)
        assert float(loss(result.model(val_x), val_y)) == pytest.approx(summary["best"]["val_loss"], rel=1e-5)


def test_fixed_centres_learn_less_than_trained_ones():
    """The same run with the centres frozen: what converge did before (the loss's parameters never moved)."""
    losses = {}
    for trained in (True, False):
        loss = Centres().requires_grad_(trained)
        result = converge.fit(_embedder(), _data(), _data(120, seed=1), loss=loss, max_epochs=8, out=None, **FIXED)
        losses[trained] = result.summary["best"]["val_loss"]
    assert losses[True] < losses[False]


def test_the_race_trains_them_in_its_arms_and_every_run_starts_from_their_initial_values(monkeypatch):
    from converge.engine import loop

    loss = Centres()
    initial = loss.centres.detach().clone()
    at_start = []
    built = loop.Trainer.__init__

    def recording(self, *args, **kwargs):
        at_start.append(loss.centres.detach().clone())
        built(self, *args, **kwargs)

    monkeypatch.setattr(loop.Trainer, "__init__", recording)
    result = converge.fit(_embedder(), _data(), _data(120, seed=1), loss=loss, max_epochs=3, out=None,
                          verbose=False, standardize=False)
    assert len(at_start) >= 3   # the race's arms, then the run
    assert all(torch.equal(values, initial) for values in at_start)
    assert not torch.equal(loss.centres.detach(), initial)
    assert result.summary["tuning_epochs"] > 0


def test_resume_continues_them_exactly(tmp_path):
    full = Centres()
    converge.fit(_embedder(), _data(), _data(120, seed=1), loss=full, max_epochs=6, out=tmp_path / "full", **FIXED)
    part = Centres()
    converge.fit(_embedder(), _data(), _data(120, seed=1), loss=part, max_epochs=3, out=tmp_path / "part", **FIXED)
    with torch.no_grad():
        part.centres.mul_(0.0)   # what a fresh process would not have: only the checkpoint may bring them back
    resumed = converge.fit(_embedder(), _data(), _data(120, seed=1), loss=part, max_epochs=6, out=tmp_path / "part",
                           resume=True, **FIXED)
    a = json.loads((tmp_path / "full" / "summary.json").read_text())
    b = resumed.summary
    assert b["best"]["val_loss"] == pytest.approx(a["best"]["val_loss"], rel=1e-6)
    assert torch.allclose(part.centres, full.centres, atol=1e-6)


def test_a_rollback_puts_them_back_with_the_weights():
    """A NaN step makes the centres NaN as well as the weights; the guard's rollback restores both."""
    class FailsOnce(Centres):
        calls = 0

        def forward(self, embeddings, labels):
            FailsOnce.calls += 1
            value = super().forward(embeddings, labels)
            return value * float("nan") if FailsOnce.calls == 30 else value

    loss = FailsOnce()
    result = converge.fit(_embedder(), _data(), _data(120, seed=1), loss=loss, max_epochs=6, out=None, **FIXED)
    assert result.summary["rollbacks"] >= 1
    assert torch.isfinite(loss.centres).all()
    assert result.summary["status"] != "diverged"


TUNE_TASK = '''
import torch
from torch import nn

class Temperature(nn.Module):
    def __init__(self):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(1))

    def forward(self, logits, y):
        return nn.functional.cross_entropy(logits * self.log_scale.exp(), y)

loss = Temperature()

def model():
    with open(SEEN, "a") as f:   # what each trial starts from
        f.write(f"{float(loss.log_scale.detach()):.6f}\\n")
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g)
    y = x[:, :3].argmax(1)
    return (x[:200], y[:200]), (x[200:], y[200:])
'''


def test_every_tune_trial_starts_from_them_as_the_task_file_built_them(tmp_path):
    pytest.importorskip("optuna")
    from converge.cli import main

    seen = tmp_path / "seen.txt"
    task = tmp_path / "task.py"
    task.write_text(f"SEEN = {str(seen)!r}\n" + TUNE_TASK)
    out = tmp_path / "tune"
    assert main(["tune", str(task), "--trials", "3", "--out", str(out), "--max-epochs", "3", "--no-warm-start",
                 "--quiet"]) == 0
    starts = seen.read_text().split()
    assert len(starts) >= 3 and set(starts) == {"0.000000"}
    trained = [load_file(path)["Temperature.log_scale"] for path in out.glob("trials/*/loss_parameters.safetensors")]
    assert len(trained) == 3 and all(float(value) != 0.0 for value in trained)
    assert (out / "loss_parameters.safetensors").is_file()


def test_the_modules_of_a_loss_go_to_the_runs_device():
    """A task file does not know the device: a class-weighted cross-entropy built on the CPU refused CUDA logits
    (a loop written by hand calls criterion.to(device)). Checked here by the call; bench/gpu_check.py runs it on
    CUDA."""
    from converge.data import make_splits
    from converge.engine.objective import resolve_objective

    moved = []

    class Weighted(nn.CrossEntropyLoss):
        def to(self, *args, **kwargs):
            moved.append(args[0])
            return super().to(*args, **kwargs)

    x, y = _data(64)
    splits = make_splits((x, y), (x, y))
    resolve_objective(nn.Linear(6, 3), splits, Weighted(weight=torch.tensor([1.0, 2.0, 3.0])), {}, amp="off",
                      device=torch.device("cpu"), probe_size=32)
    assert moved == [torch.device("cpu")]


DRAWN_AT_IMPORT = '''
import torch
from torch import nn

class Centres(nn.Module):
    def __init__(self):
        super().__init__()
        self.centres = nn.Parameter(torch.randn(3, 8))   # drawn when the file is imported

    def forward(self, e, y):
        return nn.functional.cross_entropy(10 * nn.functional.normalize(e) @ nn.functional.normalize(self.centres).T, y)

loss = Centres()

def model():
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8))

def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    return (x[:150], x[:150, :3].argmax(1)), (x[150:], x[150:, :3].argmax(1))
'''


def test_what_a_task_file_draws_when_imported_is_the_same_in_every_run_of_a_seed(tmp_path):
    """An ArcFace loss built at module level drew its centres from an unseeded generator: two runs of the same
    seed trained 26 and 194 epochs. The task file is now imported with the generators seeded."""
    from converge.api import train_task
    from converge.task import load_task

    task = tmp_path / "task.py"
    task.write_text(DRAWN_AT_IMPORT)
    first, again, other = (load_task(task, seed=s).loss.centres.detach().clone() for s in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, other)
    torch.manual_seed(123)   # whatever the process drew before
    runs = [train_task(task, out=tmp_path / f"run{i}", verbose=False, max_epochs=3, seed=0, **{
        k: v for k, v in FIXED.items() if k not in ("seed", "verbose")}).summary for i in range(2)]
    assert runs[0]["best"] == runs[1]["best"] and runs[0]["epochs"] == runs[1]["epochs"]
