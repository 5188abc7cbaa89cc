"""Raw regression targets are standardized by default like the inputs: training-split statistics, y = z std +
mean folded into the model's last nn.Linear (the returned model and best.safetensors predict in the targets'
units), losses and metrics reported in those units, off with standardize=False / --no-standardize, the same
statistics on resume."""

import json
import os
import signal

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import converge
from converge.doctor.in_train import recorded_target_standardization
from converge.doctor.run import unscaled_targets
from converge.data import TensorSplit
from converge.engine.objective import Objective, mean_squared_error
from converge.standardize import fold_target_standardization, foldable_last_layer, standardization


def raw_regression(n=300, seed=0, columns=1):
    """A smooth target in raw units (mean about 150, std about 60 per column), from standardized features."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = torch.stack([150.0 + 40.0 * (c + 1) * torch.tanh(x[:, c] + 0.5 * x[:, c + 1]) for c in range(columns)], 1)
    y = y + 5.0 * torch.randn(n, columns, generator=g)
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])


class Net(nn.Module):
    """Not an nn.Sequential: the last layer is found by a probe."""

    def __init__(self, outputs=1):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, outputs))

    def forward(self, x):
        return self.layers(x)


class Shifted(Net):
    """The last layer's output is changed afterwards: folding into it would be wrong."""

    def forward(self, x):
        return self.layers(x) * 2.0 + 1.0


FIXED = {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 0.0, "batch_size": 32, "seed": 0, "verbose": False}


def _fit(make_model, splits, **options):
    torch.manual_seed(0)
    return converge.fit(make_model(), *splits, **{**FIXED, "max_epochs": 4, **options})


def _mse(model, split):
    x, y = split
    with torch.no_grad():
        return float(F.mse_loss(model.eval()(x), y))


# --- the pieces ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_class, expected", [(Net, "layers.2"), (Shifted, None)])
def test_the_last_layer_is_found_by_probe_and_checked_numerically(model_class, expected):
    torch.manual_seed(0)
    (x, y), _, _ = raw_regression()
    mean, std = standardization(y)
    assert foldable_last_layer(model_class(), x[:16], mean, std) == expected


def test_a_last_layer_whose_parametrization_undoes_a_fold_is_not_folded_into():
    """spectral_norm divides the weight by its largest singular value on every read: a folded weight comes out
    renormalized, so the check, which now folds a copy for real, refuses the layer."""
    from torch.nn.utils.parametrizations import spectral_norm
    torch.manual_seed(0)
    (x, y), _, _ = raw_regression()
    mean, std = standardization(y)
    model = Net()
    model.layers[2] = spectral_norm(model.layers[2])
    assert foldable_last_layer(model, x[:16], mean, std) is None
    assert foldable_last_layer(_weight_normed_net(1), x[:16], mean, std) == "layers.2"


def _weight_normed_net(columns):
    from torch.nn.utils.parametrizations import weight_norm
    model = Net(columns)
    model.layers[2] = weight_norm(model.layers[2])
    return model


@pytest.mark.parametrize("make_model", [Net, _weight_normed_net])
@pytest.mark.parametrize("columns", [1, 3])
def test_folding_maps_the_outputs_back_to_the_targets_units(columns, make_model):
    """Also for a weight-normed last layer, whose weight is computed on each read: copying into it changed
    nothing, and best.safetensors predicted standardized values while the check (a hook) passed."""
    torch.manual_seed(0)
    model = make_model(columns)
    (x, y), _, _ = raw_regression(columns=columns)
    mean, std = standardization(y)
    with torch.no_grad():
        z = model(x)
        fold_target_standardization(model, mean, std, foldable_last_layer(model, x[:16], mean, std))
        assert torch.allclose(model(x), z * std + mean, atol=1e-4)


def _split_objective(kind="regression", inferred=True):
    return Objective(mean_squared_error, kind, {}, inferred=inferred)


@pytest.mark.parametrize("targets, kind, loss, standardized", [
    (torch.randn(50, 1) * 80 + 150, "regression", None, True),          # raw units, MSE inferred
    (torch.randn(50, 1) * 80 + 150, "regression", nn.MSELoss(), True),   # the task's own MSE
    (torch.randn(50, 1) * 80 + 150, "regression", nn.L1Loss(), False),   # not in the data: its meaning would change
    (torch.randn(50, 1), "regression", None, False),                     # already on a unit scale
    (torch.randn(50, 2) * torch.tensor([1.0, 500.0]), "regression", None, True),   # one raw column is enough
    (torch.randint(0, 3, (50,)), "classification", None, False),
])
def test_which_targets_are_standardized(targets, kind, loss, standardized):
    splits = {name: TensorSplit(torch.randn(50, 4), targets, name) for name in ("train", "val")}
    assert bool(unscaled_targets(splits, _split_objective(kind), loss)) == standardized


def test_the_recorded_statistics_are_read_back_from_the_events():
    detail = {"applied": True, "mean": [150.0], "std": [60.0], "layer": "layers.2"}
    events = [{"event": "new_best"}, {"event": "remedy", "remedy": "standardize_targets", "detail": detail}]
    assert recorded_target_standardization(events) == detail
    assert recorded_target_standardization([{"event": "new_best"}]) is None   # a run from before the default


# --- fit ---------------------------------------------------------------------------------------------
def test_fit_standardizes_raw_targets_and_reports_in_their_units(tmp_path, capsys):
    splits = raw_regression()
    result = _fit(Net, splits, out=tmp_path / "run", verbose=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if "target" in line and "standardiz" in line]
    assert len(lines) == 1 and "--no-standardize" in lines[0], lines
    remedies = json.loads((tmp_path / "run" / "remedies.json").read_text())
    (targets,) = [r for r in remedies if r["remedy"] == "standardize_targets"]
    assert targets["detail"]["applied"] and targets["detail"]["layer"] == "layers.2"
    assert targets["detail"]["mean"] == pytest.approx([float(splits[0][1].mean())], rel=1e-5)
    # the returned model and best.safetensors predict in the targets' units and give the reported losses
    test = splits[2]
    assert _mse(result.model, test) == pytest.approx(result.summary["test"]["loss"], rel=1e-4)
    exported = Net()
    converge.load_weights(tmp_path / "run" / "best.safetensors", exported)
    assert _mse(exported, test) == pytest.approx(result.summary["test"]["loss"], rel=1e-4)
    assert _mse(exported, splits[1]) == pytest.approx(result.summary["best"]["val_loss"], rel=1e-4)
    # the training loss and the yardsticks are in the same units as the validation loss
    variance = float(splits[0][1].var(unbiased=False))
    assert result.summary["yardsticks"]["constant_prediction_loss"] == pytest.approx(variance, rel=1e-4)
    assert result.history[-1]["train_loss"] > 1.0 and result.summary["train"]["loss"] > 1.0


def test_target_standardization_helps_and_can_be_turned_off():
    splits = raw_regression()
    default = _fit(Net, splits, max_epochs=6, optimizer="sgd", lr=1e-2)
    off = _fit(Net, splits, max_epochs=6, optimizer="sgd", lr=1e-2, standardize=False)
    assert not [e for e in off.events if e["event"] == "remedy"]
    assert default.summary["test"]["loss"] < off.summary["test"]["loss"]


def test_a_last_layer_that_cannot_absorb_it_is_left_alone_and_said():
    splits = raw_regression()
    result = _fit(Shifted, splits, max_epochs=2)
    (remedy,) = [e for e in result.events if e["event"] == "remedy" and e["remedy"] == "standardize_targets"]
    assert not remedy["detail"]["applied"] and "nn.Linear" in remedy["detail"]["reason"]


# --- resume ------------------------------------------------------------------------------------------
class InterruptedNet(Net):
    """Sends this process SIGINT at its ``AT``-th training forward, as Ctrl-C would (the loss stays the
    inferred MSE, so the targets are standardized as in the reference run)."""

    AT = 6 + 3   # 6 steps per epoch: step 3 of epoch 2

    def __init__(self, outputs=1):
        super().__init__(outputs)
        self.calls = 0

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.AT:
                os.kill(os.getpid(), signal.SIGINT)
        return super().forward(x)


def test_resume_reuses_the_recorded_statistics_exactly(tmp_path):
    splits = raw_regression()

    def run(out, model, resume=False):
        return _fit(model, splits, out=out, resume=resume, device="cpu")

    reference = run(tmp_path / "reference", Net)
    stopped = run(tmp_path / "run", InterruptedNet)
    assert stopped.status == "interrupted"
    resumed = run(tmp_path / "run", Net, resume=True)
    strip = lambda history: [{k: v for k, v in r.items() if k != "seconds"} for r in history]  # noqa: E731
    assert strip(resumed.history) == strip(reference.history)
    assert (tmp_path / "run" / "best.safetensors").read_bytes() == \
        (tmp_path / "reference" / "best.safetensors").read_bytes()


# --- one output under a loss of the task's own ----------------------------------------------------------
SCALES = torch.tensor([250.0, 2.0, 4000.0])   # kg/h, %, kWh


def plant(n=300, seed=0):
    """Three outputs in units three orders apart (about 1800, 96 and 51000), from standardized features."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    z = torch.stack([torch.tanh(x[:, c] + 0.5 * x[:, c + 1]) for c in range(3)], 1)
    z = z + 0.1 * torch.randn(n, 3, generator=g)
    y = torch.tensor([1800.0, 96.0, 51000.0]) + SCALES * z
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])


def weighted_squares(pred, target):
    """Each squared error over its column's variance, as a user writes it: its meaning needs raw units."""
    return (((pred - target) / SCALES.to(pred.device)) ** 2).mean()


def test_one_output_under_an_own_loss_trains_on_standardized_targets_through_a_hook(tmp_path):
    """The loss sees the targets' units while the last layer trains on z: the outputs start at the targets'
    scale instead of near 0. Kept raw before, such a task ran its 1000 epochs once (the race picked SGD)."""
    splits = plant()
    result = _fit(lambda: Net(3), splits, loss=weighted_squares, out=tmp_path / "run", max_epochs=30)
    (remedy,) = [r for r in json.loads((tmp_path / "run" / "remedies.json").read_text())
                 if r["remedy"] == "standardize_targets"]
    (head,) = remedy["detail"]["heads"]
    assert remedy["detail"]["applied"] and head["key"] is None and head["layer"] == "layers.2"
    assert head["mean"] == pytest.approx(splits[0][1].mean(0).tolist(), rel=1e-5)
    # the returned model and best.safetensors predict in the targets' units and give the reported loss
    x, y = splits[2]
    exported = Net(3)
    converge.load_weights(tmp_path / "run" / "best.safetensors", exported)
    with torch.no_grad():
        for model in (result.model, exported):
            assert float(weighted_squares(model(x), y)) == pytest.approx(result.summary["test"]["loss"], rel=1e-4)
    raw = _fit(lambda: Net(3), splits, loss=weighted_squares, max_epochs=30, standardize=False)
    assert result.summary["test"]["loss"] < 0.5 * raw.summary["test"]["loss"]


def test_one_output_under_an_own_loss_resumes_with_the_recorded_statistics(tmp_path):
    splits = plant()

    def run(out, model, resume=False):
        return _fit(model, splits, loss=weighted_squares, out=out, resume=resume, device="cpu")

    reference = run(tmp_path / "reference", lambda: Net(3))
    assert run(tmp_path / "run", lambda: InterruptedNet(3)).status == "interrupted"
    resumed = run(tmp_path / "run", lambda: Net(3), resume=True)
    strip = lambda history: [{k: v for k, v in r.items() if k != "seconds"} for r in history]  # noqa: E731
    assert strip(resumed.history) == strip(reference.history)
    assert (tmp_path / "run" / "best.safetensors").read_bytes() == \
        (tmp_path / "reference" / "best.safetensors").read_bytes()


# --- converge train ------------------------------------------------------------------------------------
RAW_TASK = '''
import torch
from torch import nn

def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g)
    y = 150.0 + 60.0 * torch.tanh(x[:, :1] + 0.5 * x[:, 1:2]) + 5.0 * torch.randn(300, 1, generator=g)
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])

def model():
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 1))
'''

CLI_FLAGS = ("--max-epochs", "2", "--optimizer", "adamw", "--lr", "1e-2", "--weight-decay", "0", "--batch-size", "32")


def test_train_checks_the_model_on_the_standardized_targets_and_no_standardize_turns_it_off(tmp_path, cli):
    task = tmp_path / "raw.py"
    task.write_text(RAW_TASK)
    on = cli("train", task, "--out", tmp_path / "on", *CLI_FLAGS)
    assert on.code == 0, on.err
    remedies = json.loads((tmp_path / "on" / "remedies.json").read_text())
    assert [(r["remedy"], r["detail"]["applied"]) for r in remedies] == [("standardize_targets", True)]
    doctor = {f["code"] for f in json.loads((tmp_path / "on" / "doctor.json").read_text())}
    assert not {"init_loss_off", "exploding_gradients"} & doctor   # the model checks judged standardized targets
    off = cli("train", task, "--out", tmp_path / "off", "--no-standardize", *CLI_FLAGS)
    assert off.code == 0 and "standardize:" not in off.out + off.err
    assert not (tmp_path / "off" / "remedies.json").exists()
    raw_doctor = {f["code"] for f in json.loads((tmp_path / "off" / "doctor.json").read_text())}
    assert raw_doctor & {"init_loss_off", "exploding_gradients"}, raw_doctor   # what the default answers


@pytest.mark.parametrize("dtype, expected", [(torch.float64, torch.float64), (torch.float32, torch.float32),
                                             (torch.bfloat16, torch.float32)])
def test_values_are_mapped_back_without_losing_precision(dtype, expected):
    objective = Objective(mean_squared_error, "regression", {},
                          target_scale=(torch.tensor([150.0]), torch.tensor([60.0])))
    z = torch.tensor([[0.5], [-1.0]], dtype=dtype)
    back = objective.user_units(z)
    assert back.dtype == expected
    assert torch.allclose(back.double(), torch.tensor([[180.0], [90.0]], dtype=torch.float64))
