"""converge.integrations.transformers.ConvergeCallback against a real transformers.Trainer (a tiny model built
from a config, no hub): converge's decisions ride on the Trainer's own LR schedule, stop it through
``control.should_training_stop``, load the best weights at the end and write the run folder."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from converge import ConvergeError  # noqa: E402
from converge.integrations.transformers import ConvergeCallback  # noqa: E402


class TinyConfig(transformers.PretrainedConfig):
    model_type = "converge-tiny-regression"

    def __init__(self, features=8, nan_at_call=None, **kwargs):
        super().__init__(**kwargs)
        self.features, self.nan_at_call = features, nan_at_call


class TinyRegression(transformers.PreTrainedModel):
    """A linear regression with the Hugging Face model conventions: ``labels`` in, ``loss`` out."""

    config_class = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.linear = nn.Linear(config.features, 1)
        self.calls = 0
        self.post_init()

    def forward(self, x, labels=None):
        prediction = self.linear(x)
        loss = nn.functional.mse_loss(prediction, labels) if labels is not None else None
        if self.training:
            self.calls += 1
            if self.calls == self.config.nan_at_call:
                loss = loss * math.nan  # one poisoned step: its NaN gradients ruin the weights
        return {"loss": loss, "prediction": prediction}


class Rows(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return {"x": self.x[index], "labels": self.y[index]}


def noisy_line(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, (x @ torch.linspace(-1, 1, 8) + 0.5 * torch.randn(n, generator=g)).unsqueeze(1)


def train(tmp_path, callback, *, epochs=60, nan_at_call=None, **arguments):
    transformers.set_seed(0)
    x, y = noisy_line()
    options = dict(output_dir=str(tmp_path), num_train_epochs=epochs, per_device_train_batch_size=32,
                   learning_rate=0.05, eval_strategy="epoch", save_strategy="no", report_to=[],
                   logging_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, optim="sgd")
    trainer = transformers.Trainer(model=TinyRegression(TinyConfig(nan_at_call=nan_at_call)),
                                   args=transformers.TrainingArguments(**{**options, **arguments}),
                                   train_dataset=Rows(x[:192], y[:192]), eval_dataset=Rows(x[192:], y[192:]),
                                   callbacks=[callback])
    trainer.train()
    return trainer


class TestConvergeCallback:
    def test_stops_on_a_plateau_loads_the_best_weights_and_writes_the_run_folder(self, tmp_path):
        callback = ConvergeCallback(patience=3)
        trainer = train(tmp_path, callback)
        result = callback.result_
        assert result.status == "converged"
        assert trainer.state.epoch == result.summary["epochs"] < 60  # the Trainer stopped when converge said so
        best = result.summary["best"]["val_loss"]
        assert trainer.evaluate()["eval_loss"] == pytest.approx(best, rel=1e-5)  # the best weights are loaded
        for name in ("summary.json", "metrics.jsonl", "events.jsonl", "curves.png", "report.html", "best.safetensors"):
            assert (tmp_path / name).is_file(), name
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert summary["framework"] == "transformers" and summary["diagnosis"][0]["code"] == "converged"
        assert {"train_loss", "val_loss", "lr"} <= set(result.history[0])

    def test_the_default_linear_decay_goes_on_times_the_cuts(self, tmp_path):
        callback = ConvergeCallback(patience=3)
        trainer = train(tmp_path, callback)
        total = trainer.state.max_steps
        cuts_before = 0
        for record in callback.result_.history:
            # Each record's LR is the one the epoch ended with: the decay at that step times the cuts so far.
            expected = 0.05 * (1 - record["step"] / total) * 0.1 ** cuts_before
            assert record["lr"] == pytest.approx(expected, rel=1e-6)
            cuts_before += sum(1 for e in callback.result_.events
                               if e["event"] == "lr_reduced" and e["epoch"] == record["epoch"])
        assert cuts_before >= 1

    def test_a_nan_step_is_rolled_back_and_the_lr_cut(self, tmp_path):
        callback = ConvergeCallback(patience=3)
        trainer = train(tmp_path, callback, epochs=6, nan_at_call=20)
        rollbacks = [e for e in callback.result_.events if e["event"] == "rollback"]
        assert len(rollbacks) == 1 and rollbacks[0]["new_lr"] == pytest.approx(rollbacks[0]["lr"] * 0.5)
        assert callback.result_.status != "diverged"
        assert all(torch.isfinite(p).all() for p in trainer.model.parameters())

    def test_an_evaluation_every_few_steps_is_judged_each_time(self, tmp_path):
        callback = ConvergeCallback(patience=3)
        train(tmp_path, callback, epochs=2, eval_strategy="steps", eval_steps=3)
        assert [r["step"] for r in callback.result_.history] == [3, 6, 9, 12]

    def test_training_without_evaluation_is_refused_in_one_line(self, tmp_path):
        with pytest.raises(ConvergeError, match="eval_strategy") as error:
            train(tmp_path, ConvergeCallback(), epochs=1, eval_strategy="no")
        assert "\n" not in str(error.value)

    def test_the_plateau_schedule_is_refused(self, tmp_path):
        with pytest.raises(ValueError, match="ReduceLROnPlateau"):
            train(tmp_path, ConvergeCallback(), epochs=1, lr_scheduler_type="reduce_lr_on_plateau")

    def test_a_metric_the_evaluation_does_not_report_is_named(self, tmp_path):
        with pytest.raises(ConvergeError, match=r"'val_accuracy'.*\['val_loss'\]"):
            train(tmp_path, ConvergeCallback(monitor="eval_accuracy", mode="max"), epochs=1)


def test_the_documented_example_runs_both_ways(tmp_path):
    """examples/hf_digits.py: the code docs/integrations.md shows and bench/integrations.py measures."""
    import importlib.util
    from pathlib import Path

    pytest.importorskip("sklearn")
    path = Path(__file__).resolve().parent.parent / "examples" / "hf_digits.py"
    spec = importlib.util.spec_from_file_location("hf_digits", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    recipe = example.with_trainer_recipe(0, epochs=2, out=str(tmp_path / "recipe"))
    with_converge = example.with_converge(0, epochs=2, out=str(tmp_path / "converge"))
    assert recipe["epochs"] == with_converge["epochs"] == 2
    assert 0 < recipe["test_accuracy"] <= 1 and 0 < with_converge["test_accuracy"] <= 1
    assert json.loads((tmp_path / "converge" / "summary.json").read_text())["status"] == "max_epochs"
