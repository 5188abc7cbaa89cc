"""The Python API: converge.fit on tensors, Datasets and DataLoaders, and the engine's options."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import converge
from converge.engine.optim import SGDW, build_optimizer, parameter_groups


def classification_data(n=600, features=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x[:, :classes] + 0.3 * torch.randn(n, classes, generator=g)).argmax(1)
    cut = int(n * 0.7)
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def mlp(features=8, outputs=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, outputs))


def quick(**options):
    """Fixed hyperparameters (no tuning) unless a test asks for "auto"."""
    return {"verbose": False, "max_epochs": 6, "batch_size": 32, "optimizer": "adamw", "lr": 1e-3,
            "weight_decay": 1e-2, **options}


def test_returns_best_model_summary_and_history():
    train, val = classification_data()
    result = converge.fit(mlp(), train, val, test=val, **quick(max_epochs=40))
    assert result.status in ("converged", "max_epochs")
    assert len(result.history) == result.summary["epochs"]
    best = result.history[result.summary["best_epoch"] - 1]
    assert best["val_loss"] == min(r["val_loss"] for r in result.history)
    # the returned model holds the best weights: its test loss on the val split is the best val loss
    assert result.summary["test"]["loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    assert result.summary["best"]["val_accuracy"] == best["val_accuracy"]
    assert result.summary["tuning_epochs"] == 0
    assert result.run_dir is None


def test_no_out_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    converge.fit(mlp(), *classification_data(), **quick(max_epochs=2))
    assert list(tmp_path.iterdir()) == []


def test_same_seed_same_run_and_other_seed_differs():
    train, val = classification_data()
    runs = [converge.fit(mlp(), train, val, **quick(seed=seed)).history for seed in (1, 1, 2)]
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(runs[0]) == strip(runs[1])
    assert strip(runs[0]) != strip(runs[2])


def test_dataset_split_trains_exactly_like_tensors():
    (x, y), (xv, yv) = classification_data()
    tensors = converge.fit(mlp(), (x, y), (xv, yv), **quick()).history
    datasets = converge.fit(mlp(), TensorDataset(x, y), TensorDataset(xv, yv), **quick()).history
    for a, b in zip(tensors, datasets):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)


def test_numpy_arrays_and_user_dataloaders_are_accepted():
    (x, y), (xv, yv) = classification_data()
    result = converge.fit(mlp(), (x.numpy().astype(np.float64), y.numpy()), DataLoader(TensorDataset(xv, yv),
                          batch_size=50), **quick(max_epochs=2))
    assert len(result.history) == 2 and "val_accuracy" in result.history[0]
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    result = converge.fit(mlp(), loader, (xv, yv), **quick(max_epochs=2))
    assert result.history[-1]["step"] == 2 * len(loader)


def test_regression_infers_mse_and_fixes_column_targets():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.1 * torch.randn(400, generator=g)  # shape (N,)
    torch.manual_seed(0)
    model = nn.Linear(5, 1)  # outputs (N, 1): must not broadcast against (N,) targets
    result = converge.fit(model, (x[:300], y[:300]), (x[300:], y[300:]), **quick(max_epochs=60, lr=0.05))
    assert result.summary["task_kind"] == "regression"
    assert "val_accuracy" not in result.history[0]
    assert result.summary["best"]["val_loss"] < 0.05  # noise variance is 0.01: it learned the line
    device = next(model.parameters()).device  # fit leaves the model on the device it trained on
    with torch.no_grad():
        expected = ((model(x[300:].to(device)).squeeze(1).cpu() - y[300:]) ** 2).mean().item()
    assert result.summary["best"]["val_loss"] == pytest.approx(expected, rel=1e-5)


def test_custom_loss_metric_and_monitor_in_max_mode():
    train, val = classification_data()
    errors = {"error_rate": lambda out, y: (out.argmax(1) != y).float().mean()}
    result = converge.fit(mlp(), train, val, loss=nn.CrossEntropyLoss(label_smoothing=0.1), metrics=errors,
                          monitor="accuracy", mode="max", **quick(max_epochs=10))
    assert result.summary["monitor"] == "val_accuracy"
    accuracies = [r["val_accuracy"] for r in result.history]
    assert result.summary["best"]["val_accuracy"] == max(accuracies)
    first = result.history[0]
    assert first["val_error_rate"] == pytest.approx(1 - first["val_accuracy"])


def test_gradient_accumulation_matches_a_larger_batch():
    train, val = classification_data()
    big = mlp()
    converge.fit(big, train, val, **quick(max_epochs=1, batch_size=60))
    accumulated = mlp()
    converge.fit(accumulated, train, val, **quick(max_epochs=1, batch_size=30, accumulate=2))
    # 420 samples: 7 steps of 60, or 7 steps of 2 x 30 over the same permutation; only the
    # summation order differs.
    for a, b in zip(big.parameters(), accumulated.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_weight_decay_applies_to_weights_only():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Conv1d(1, 2, 3), nn.BatchNorm1d(2))
    groups = parameter_groups(model, 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    names = {name for name, p in model.named_parameters() if id(p) in decayed}
    assert names == {"0.weight", "2.weight"}


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_decay_is_decoupled_from_the_gradient(name):
    model = nn.Linear(3, 2)
    optimizer = build_optimizer(model, name, lr=0.1, weight_decay=0.5)
    before_w, before_b = model.weight.detach().clone(), model.bias.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    # with a zero gradient only the decay acts: w <- w * (1 - lr * wd); biases are untouched
    torch.testing.assert_close(model.weight.detach(), before_w * (1 - 0.1 * 0.5))
    torch.testing.assert_close(model.bias.detach(), before_b)
    if name == "sgd":
        assert isinstance(optimizer, SGDW) and optimizer.param_groups[0]["weight_decay"] == 0.0


def test_without_the_guard_a_blown_up_run_stops_as_diverged_and_keeps_finite_best_weights():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g) * 100
    y = x.sum(1)
    model = nn.Linear(4, 1)
    result = converge.fit(model, (x[:150], y[:150]), (x[150:], y[150:]),
                          **quick(optimizer="sgd", lr=10.0, weight_decay=0.0, max_epochs=20, guard=False))
    assert result.status == "diverged"
    assert "diverged" in [e["event"] for e in result.events]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bf16_autocast_on_cpu_trains():
    train, val = classification_data()
    result = converge.fit(mlp(), train, val, **quick(max_epochs=3, amp="bf16", device="cpu"))
    assert math.isfinite(result.summary["best"]["val_loss"])


def test_clip_grad_limits_the_step():
    train, val = classification_data()
    free, clipped = mlp(), mlp()
    start = [p.detach().clone() for p in clipped.parameters()]
    converge.fit(free, train, val, **quick(max_epochs=1, optimizer="sgd", lr=0.5, weight_decay=0.0))
    converge.fit(clipped, train, val, **quick(max_epochs=1, optimizer="sgd", lr=0.5, weight_decay=0.0,
                                              clip_grad=1e-6))
    moved = sum((p.detach().cpu() - s).norm().item() for p, s in zip(clipped.parameters(), start))
    moved_free = sum((p.detach().cpu() - s).norm().item() for p, s in zip(free.parameters(), start))
    assert moved < 1e-3 < moved_free


def test_fit_writes_run_folder_and_resume_refuses_a_finished_run(tmp_path):
    train, val = classification_data()
    out = tmp_path / "run"
    result = converge.fit(mlp(), train, val, out=out, **quick(max_epochs=3))
    assert result.run_dir == out
    for name in ("summary.json", "metrics.jsonl", "events.jsonl", "best.safetensors", "checkpoint.pt",
                 "curves.png", "run.json"):
        assert (out / name).exists(), name
    reloaded = mlp(seed=5)
    converge.load_weights(out / "best.safetensors", reloaded)
    for a, b in zip(reloaded.state_dict().values(), result.model.state_dict().values()):
        torch.testing.assert_close(a, b.cpu())
    with pytest.raises(converge.ConvergeError, match="already finished"):
        converge.fit(mlp(), train, val, out=out, resume=True, **quick(max_epochs=3))
    extended = converge.fit(mlp(), train, val, out=out, resume=True, **quick(max_epochs=5))
    assert [r["epoch"] for r in extended.history] == [1, 2, 3, 4, 5]


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="learning_rate"):
        converge.fit(mlp(), *classification_data(), learning_rate=0.1)


def test_fit_signature_is_explicit_and_matches_the_config():
    """Every TrainConfig field is a keyword-only parameter of fit, with the same default, in the order of the
    CLI's flags (the table in docs/cli.md), so help(converge.fit) is the documentation."""
    import dataclasses
    import inspect

    from converge.cli import TRAIN_OPTIONS

    params = inspect.signature(converge.fit).parameters
    defaults = {f.name: f.default for f in dataclasses.fields(converge.TrainConfig)}
    assert set(defaults) <= set(params)
    for name, default in defaults.items():
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[name].default == default, name
    order = [name for name in params if name in defaults]
    table = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    table = table[table.index("`converge train` options"):]   # the flags' table
    switched_off = {"guard": "no-guard", "standardize": "no-standardize"}   # on by default: a --no- flag
    flags = [f"`--{switched_off.get(name, name.replace('_', '-'))}`" for name in order]
    positions = [table.index(flag) for flag in flags]
    assert positions == sorted(positions), order
    assert set(TRAIN_OPTIONS) == set(defaults)


class NanOnFirstValidation(nn.Module):
    """The test MLP, except that the first validation pass after training started outputs NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()
        self.trained, self.fired = False, False

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.trained = True
        elif self.trained and not self.fired:
            self.fired = True
            return out * math.nan
        return out


def test_plateau_rule_in_fit_with_two_parameter_groups_and_a_non_finite_validation_value(tmp_path):
    """fit shares the plateau decisions with Monitor (issue 13): a NaN validation value (rolled back by the
    guard) does not make the next good epoch a cut, and a cut lowers both parameter groups (weights, and
    biases without weight decay) alike, never below --min-lr."""
    train, val = classification_data()
    result = converge.fit(NanOnFirstValidation(), train, val, out=tmp_path / "run",
                          **quick(max_epochs=40, lr=1e-2, patience=2, min_lr=1e-3))
    events = result.events
    rollback = next(e for e in events if e["event"] == "rollback")
    assert rollback["epoch"] == 1 and rollback["kind"] == "nonfinite" and rollback["batch"] is None
    assert not any(e["event"] == "lr_reduced" and e["epoch"] == 2 for e in events)
    assert next(e for e in events if e["event"] == "new_best")["epoch"] == 2
    cuts = [e for e in events if e["event"] == "lr_reduced"]
    assert cuts and all(e["new_lr"] < e["old_lr"] for e in cuts)
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    groups = checkpoint["optimizer"]["param_groups"]
    assert len(groups) == 2 and {g["weight_decay"] for g in groups} == {1e-2, 0.0}
    assert groups[0]["lr"] == groups[1]["lr"] == result.summary["final_lr"] >= 1e-3 * 0.5 ** result.summary["rollbacks"]


def test_a_compiled_models_weights_load_into_the_plain_model_and_back(tmp_path):
    """model() returning torch.compile(net), as the PyTorch 2 docs suggest: best.safetensors named every
    tensor `_orig_mod.<name>`, and the plain network (served without compiling) refused it."""
    import converge

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 4, generator=g)
    y = (x[:, 0] > 0).long()
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    result = converge.fit(torch.compile(net, backend="eager"), (x[:80], y[:80]), (x[80:], y[80:]),
                          out=tmp_path / "run", max_epochs=2, optimizer="adamw", lr=1e-2, batch_size=16, verbose=False)
    state = converge.load_weights(tmp_path / "run" / "best.safetensors")
    assert sorted(state) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    converge.load_weights(tmp_path / "run" / "best.safetensors", plain)
    compiled = torch.compile(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), backend="eager")
    converge.load_weights(tmp_path / "run" / "best.safetensors", compiled)
    with torch.no_grad():
        assert torch.equal(plain(x), compiled(x)) and torch.allclose(plain(x), result.model(x))


# --- targets not measured (NaN) under a loss that masks them ------------------------------------------------
def _labs(n=400, seed=0, missing=0.3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = torch.tanh(x @ torch.randn(6, 3, generator=g)) + 0.1 * torch.randn(n, 3, generator=g)
    y[torch.rand(n, 3, generator=g) < missing] = float("nan")
    return (x[:300], y[:300]), (x[300:], y[300:])


def masked_mse(pred, target):
    measured = ~torch.isnan(target)
    return ((pred - torch.nan_to_num(target)) ** 2)[measured].mean()


def test_targets_not_measured_train_under_a_loss_that_masks_them():
    """Three lab values per patient, 30 % not measured (NaN), the user's loss averaging over the measured
    ones: converge refused the task ("clean or impute them first"). R² leaves the missing values out."""
    from converge.engine.metrics import R2Score

    train, val = _labs()
    torch.manual_seed(0)
    result = converge.fit(nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3)), train, val, val,
                          loss=masked_mse, max_epochs=5, optimizer="adamw", lr=1e-2, batch_size=32, verbose=False)
    assert math.isfinite(result.summary["best"]["val_loss"]) and math.isfinite(result.summary["test"]["r2"])
    with torch.no_grad():
        predicted = result.model(val[0])
    by_hand = []
    for column in range(3):
        known = ~torch.isnan(val[1][:, column])
        y, p = val[1][known, column].double(), predicted[known, column].double()
        by_hand.append(1 - float(((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum()))
    assert result.summary["test"]["r2"] == pytest.approx(sum(by_hand) / 3, abs=1e-4)
    metric = R2Score()
    metric.update(predicted, val[1])
    assert float(metric.compute()) == pytest.approx(sum(by_hand) / 3, abs=1e-6)


@pytest.mark.parametrize("loss, says", [
    (None, "give a loss of your own that masks them"),                       # the inferred MSE cannot
    (nn.functional.mse_loss, "mask them in the loss"),                       # a loss that reads them: NaN
], ids=["inferred-loss", "own-loss-unmasked"])
def test_targets_not_measured_need_a_loss_that_masks_them(loss, says):
    train, val = _labs()
    with pytest.raises(converge.ConvergeError, match=says):
        converge.fit(nn.Linear(6, 3), train, val, loss=loss, max_epochs=1, verbose=False)


def test_infinite_targets_are_refused_whatever_the_loss():
    train, val = _labs(missing=0.0)
    train[1][0, 0] = float("inf")
    with pytest.raises(converge.ConvergeError, match="NaN or Inf"):
        converge.fit(nn.Linear(6, 3), train, val, loss=masked_mse, max_epochs=1, verbose=False)


def test_the_doctor_reads_masked_missing_targets_as_information():
    from converge.doctor.run import diagnose

    train, val = _labs()
    codes = {f.code: f for f in diagnose(nn.Linear(6, 3), train, val, loss=masked_mse, cheap=True)}
    assert codes["nonfinite_values"].severity == "info" and "masks" in codes["nonfinite_values"].message
    unmasked = {f.code: f for f in diagnose(nn.Linear(6, 3), train, val, cheap=True)}
    assert unmasked["nonfinite_values"].severity == "error"


# --- batches whose inputs are not one row per sample (nn.EmbeddingBag with offsets) ---------------------------
class _Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.EmbeddingBag(50, 8)
        self.fc = nn.Linear(8, 2)

    def forward(self, text, offsets):
        return self.fc(self.embedding(text, offsets))


def _bag_loader(n, seed, shuffle):
    """The PyTorch text tutorial's batches: ((token ids of the batch concatenated, offsets), labels)."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        label = int(torch.randint(0, 2, (1,), generator=g))
        length = int(torch.randint(3, 12, (1,), generator=g))
        items.append((torch.randint(label * 25, label * 25 + 25, (length,), generator=g), label))

    def collate(batch):
        texts = [text for text, _ in batch]
        offsets = torch.tensor([0] + [len(t) for t in texts[:-1]]).cumsum(0)
        return (torch.cat(texts), offsets), torch.tensor([label for _, label in batch])

    return DataLoader(items, batch_size=16, shuffle=shuffle, collate_fn=collate)


def test_embedding_bag_batches_are_never_cut():
    """converge train refused the PyTorch text tutorial's model: the doctor's sample and the probe cut every
    input tensor to the first rows, and offsets then pointed past the cut token ids."""
    from converge.data import first_rows
    from converge.doctor.run import diagnose

    (text, offsets), labels = next(iter(_bag_loader(40, 0, False)))
    assert first_rows((text, offsets), labels, 4)[0][0] is text          # not one row per sample: whole
    x, y = torch.zeros(10, 3), torch.zeros(10)
    assert first_rows(x, y, 4)[0].shape[0] == 4 and first_rows(x, y, 4)[1].shape[0] == 4
    findings = diagnose(_Bag(), _bag_loader(200, 0, True), _bag_loader(60, 1, False))
    assert not [f for f in findings if f.severity == "error"], [f.to_dict() for f in findings]


BAG_TASK = """
import sys
sys.path.insert(0, {here!r})
from test_fit import _Bag, _bag_loader


def model():
    return _Bag()


def data():
    return _bag_loader(200, 0, True), _bag_loader(60, 1, False)
"""


def test_converge_train_takes_the_text_tutorials_embedding_bag(tmp_path):
    """The whole command (its doctor's checks first): it stopped with "offsets[-1] can not be greater than
    input's length" before."""
    from converge.api import train_task

    task = tmp_path / "bag.py"
    task.write_text(BAG_TASK.format(here=str(Path(__file__).parent)))
    result = train_task(task, out=tmp_path / "run", max_epochs=3, verbose=False, optimizer="adamw", lr=1e-2)
    assert result.summary["best"]["val_accuracy"] > 0.8
