"""converge.integrations.lightning.ConvergeCallback against a real Lightning Trainer: the plateau decisions,
the stop, the best weights, the guard and the run folder come from converge; the training is Lightning's."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning")

from converge import ConvergeError  # noqa: E402
from converge.integrations.lightning import ConvergeCallback  # noqa: E402


def noisy_line(n=256, seed=0):
    """y = x . w + noise: the validation loss plateaus at the noise's variance within a few epochs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = x @ torch.linspace(-1, 1, 8) + 0.5 * torch.randn(n, generator=g)
    return x, y.unsqueeze(1)


class Regression(L.LightningModule):
    def __init__(self, lr=0.05, schedule=None, nan_at_step=None):
        super().__init__()
        self.net = nn.Linear(8, 1)
        self.lr, self.schedule, self.nan_at_step = lr, schedule, nan_at_step

    def training_step(self, batch, index):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        if self.global_step == self.nan_at_step:
            loss = loss * math.nan  # one poisoned step: its NaN gradients ruin the weights
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, index):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr)
        if self.schedule is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.schedule(optimizer)}


def loaders():
    x, y = noisy_line()
    train = DataLoader(TensorDataset(x[:192], y[:192]), batch_size=32, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    return train, DataLoader(TensorDataset(x[192:], y[192:]), batch_size=64)


def fit(tmp_path, module, callback, max_epochs=60, **trainer_options):
    L.seed_everything(0, verbose=False)
    options = dict(max_epochs=max_epochs, callbacks=[callback], enable_progress_bar=False, logger=False,
                   accelerator="cpu", default_root_dir=tmp_path, enable_checkpointing=False,
                   enable_model_summary=False, num_sanity_val_steps=0)
    trainer = L.Trainer(**{**options, **trainer_options})
    trainer.fit(module, *loaders())
    return trainer


def val_loss(module):
    x, y = noisy_line()
    with torch.no_grad():
        return float(nn.functional.mse_loss(module.net(x[192:]), y[192:]))


class TestConvergeCallback:
    def test_stops_on_a_plateau_keeps_the_best_weights_and_writes_the_run_folder(self, tmp_path):
        callback, module = ConvergeCallback(patience=3), Regression()
        trainer = fit(tmp_path, module, callback)
        result = callback.result_
        assert result.status == "converged"
        assert trainer.current_epoch == result.summary["epochs"] < 60  # Lightning stopped when converge said so
        assert any(e["event"] == "lr_reduced" for e in result.events)
        assert module.optimizers().param_groups[0]["lr"] < 0.05
        best = result.summary["best"]["val_loss"]
        assert val_loss(module) == pytest.approx(best, rel=1e-5)  # the best epoch's weights are in the module
        assert result.summary["best_epoch"] < result.summary["epochs"]
        for name in ("summary.json", "metrics.jsonl", "events.jsonl", "curves.png", "report.html", "best.safetensors"):
            assert (tmp_path / name).is_file(), name
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert summary["status"] == "converged" and summary["framework"] == "lightning"
        assert [f["code"] for f in summary["diagnosis"]][0] == "converged"
        records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in records] == list(range(1, result.summary["epochs"] + 1))
        assert {"train_loss", "val_loss", "lr"} <= set(records[0])

    def test_the_run_folder_goes_to_the_loggers_log_dir_by_default(self, tmp_path):
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(tmp_path, name="logs")
        fit(tmp_path, Regression(), ConvergeCallback(patience=2), max_epochs=3, logger=logger)
        assert (tmp_path / "logs" / "version_0" / "summary.json").is_file()
        summary = json.loads((tmp_path / "logs" / "version_0" / "summary.json").read_text())
        assert summary["status"] == "max_epochs" and "max_epochs 3" in summary["stop_reason"]

    def test_a_nan_step_is_rolled_back_and_the_lr_cut(self, tmp_path):
        callback, module = ConvergeCallback(patience=3), Regression(nan_at_step=20)
        fit(tmp_path, module, callback, max_epochs=8)
        result = callback.result_
        rollbacks = [e for e in result.events if e["event"] == "rollback"]
        assert len(rollbacks) == 1 and rollbacks[0]["new_lr"] == pytest.approx(0.025)
        assert result.status != "diverged"
        assert all(torch.isfinite(p).all() for p in module.parameters())
        assert math.isfinite(result.summary["best"]["val_loss"])

    def test_a_lambda_schedule_carries_the_cuts(self, tmp_path):
        schedule = lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)  # noqa: E731
        callback, module = ConvergeCallback(patience=3), Regression(schedule=schedule)
        fit(tmp_path, module, callback)
        cuts = sum(1 for e in callback.result_.events if e["event"] == "lr_reduced")
        assert cuts >= 1
        scheduler = module.lr_schedulers()
        # The schedule stepped after each cut, and the LR it set is the cut one.
        assert scheduler.base_lrs[0] == pytest.approx(0.05 * 0.1 ** cuts)
        assert module.optimizers().param_groups[0]["lr"] == pytest.approx(0.05 * 0.1 ** cuts)

    @pytest.mark.parametrize("schedule, named", [
        (lambda optimizer: torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer), "ReduceLROnPlateau"),
        (lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, 5), "StepLR"),
    ])
    def test_a_schedule_the_cuts_cannot_ride_on_is_refused_in_one_line(self, tmp_path, schedule, named):
        if named == "ReduceLROnPlateau":
            module = Regression()
            module.configure_optimizers = lambda: {"optimizer": (o := torch.optim.SGD(module.parameters(), lr=0.05)),
                                                   "lr_scheduler": {"scheduler": schedule(o), "monitor": "val_loss"}}
        else:
            module = Regression(schedule=schedule)
        with pytest.raises(ConvergeError, match=named) as error:
            fit(tmp_path, module, ConvergeCallback(), max_epochs=2)
        assert "\n" not in str(error.value)

    def test_a_value_the_module_does_not_log_is_named(self, tmp_path):
        with pytest.raises(ConvergeError, match=r"'val_accuracy'.*\['train_loss', 'val_loss'\]"):
            fit(tmp_path, Regression(), ConvergeCallback(monitor="val_accuracy", mode="max"), max_epochs=2)

    def test_unknown_options_are_named_before_training(self):
        with pytest.raises(TypeError, match="patiense"):
            ConvergeCallback(patiense=3)
        with pytest.raises(ValueError, match="'auto'"):
            ConvergeCallback(mode="auto")

    @pytest.mark.parametrize("options, expected", [({}, True), ({"restore_best": False}, False),
                                                   ({"restore_best": False, "restart_from_best": True}, True),
                                                   ({"restart_from_best": False}, False)])
    def test_the_restart_from_the_best_weights_follows_restore_best(self, tmp_path, options, expected):
        callback = ConvergeCallback(**options)
        fit(tmp_path, Regression(), callback, max_epochs=1)
        assert callback.monitor_.restart_from_best is expected

    def test_its_state_continues_in_a_fresh_callback(self, tmp_path):
        first = ConvergeCallback(patience=3)
        fit(tmp_path / "a", Regression(), first, max_epochs=4)
        state = first.state_dict()
        assert len(state["history"]) == 4
        second = ConvergeCallback(patience=3)
        second.load_state_dict(state)
        fit(tmp_path / "b", Regression(), second, max_epochs=2)
        assert [r["epoch"] for r in second.result_.history] == [1, 2, 3, 4, 5, 6]


def test_import_converge_loads_no_framework():
    import subprocess
    import sys

    code = ("import sys, converge; loaded = {'lightning', 'pytorch_lightning', 'transformers', 'IPython', "
            "'converge.integrations'} & set(sys.modules); assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_documented_example_runs_both_ways(tmp_path):
    """examples/lightning_digits.py: the code docs/integrations.md shows and bench/integrations.py measures."""
    import importlib.util
    from pathlib import Path

    pytest.importorskip("sklearn")
    path = Path(__file__).resolve().parent.parent / "examples" / "lightning_digits.py"
    spec = importlib.util.spec_from_file_location("lightning_digits", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    recipe = example.with_lightning_recipe(0, max_epochs=2, root=str(tmp_path / "recipe"))
    with_converge = example.with_converge(0, max_epochs=2, root=str(tmp_path / "converge"))
    assert recipe["epochs"] == with_converge["epochs"] == 2
    assert 0 < recipe["test_accuracy"] <= 1 and 0 < with_converge["test_accuracy"] <= 1
    summaries = list((tmp_path / "converge").rglob("summary.json"))
    assert len(summaries) == 1 and json.loads(summaries[0].read_text())["status"] == "max_epochs"


class TestAutomaticLr:
    def test_the_range_test_chooses_the_lr_and_leaves_the_module_as_it_was(self, tmp_path):
        module = Regression(lr=1e-6)  # far too low to learn anything in a few epochs
        module.configure_optimizers = lambda: torch.optim.SGD(module.parameters(), lr=1e-6)
        start = {k: v.clone() for k, v in module.state_dict().items()}
        seen_at_first_batch = {}

        class Spy(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, index):
                if not seen_at_first_batch:  # what the first real step starts from
                    seen_at_first_batch.update({k: v.clone() for k, v in pl_module.state_dict().items()})

        callback = ConvergeCallback(lr="auto", patience=3)
        fit(tmp_path, module, callback, max_epochs=3, callbacks=[callback, Spy()])
        chosen = [e for e in callback.result_.events if e["event"] == "chose_lr"]
        assert len(chosen) == 1 and 1e-3 < chosen[0]["value"] < 10
        assert callback.result_.history[0]["lr"] == pytest.approx(chosen[0]["value"])
        assert all(torch.equal(seen_at_first_batch[k], start[k]) for k in start)  # the sweep's steps were undone
        assert callback.result_.history[-1]["val_loss"] < 0.5  # it learned (the noise's variance is 0.25)

    def test_with_a_schedule_it_is_refused_in_one_line(self, tmp_path):
        schedule = lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)  # noqa: E731
        with pytest.raises(ConvergeError, match="lr='auto'"):
            fit(tmp_path, Regression(schedule=schedule), ConvergeCallback(lr="auto"), max_epochs=1)
