"""Choosing hyperparameters: batch size rule, LR arms, warmup, the race, stage reuse, determinism."""

import math

import pytest
import torch
from torch import nn

from converge.config import TrainConfig
from converge.data import make_splits
from converge.decide.lr_suggest import LrSuggestion
from converge.engine.objective import resolve_objective
from converge.engine.optim import build_optimizer, current_lr, scale_lr, warm_up
from converge.choose import StageLog, auto
from converge.choose.auto import choose_batch_size, choose_hyperparameters


def task(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()
    cut = int(0.75 * n)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    splits = make_splits((x[:cut], y[:cut]), (x[cut:], y[cut:]))
    objective = resolve_objective(model, splits, None, {}, amp="off", device=torch.device("cpu"), probe_size=64)
    return model, splits, objective


@pytest.mark.parametrize("n, expected", [(10, 10), (100, 16), (1149, 32), (3000, 64), (20_000, 256),
                                         (1_000_000, 256)])
def test_batch_size_rule(n, expected):
    model, splits, objective = task()
    size, reason = choose_batch_size(n, model, splits["train"], objective, torch.device("cpu"), "off")
    assert size == expected and str(n) in reason


@pytest.mark.parametrize("lr, min_loss_lr, fixed, expected", [
    (1e-3, 1e-2, False, [1e-3, 1e-3 / 3]),
    (1e-3, 1e-2, True, [3e-3, 1e-3, 1e-3 / 3]),      # room up to min-loss LR / 2
    (3e-3, 1e-2, True, [3e-3, 1e-3]),                # 3x would pass min-loss LR / 2
])
def test_lr_arms(lr, min_loss_lr, fixed, expected):
    suggestion = LrSuggestion(lr, True, "", min_loss_lr=min_loss_lr)
    assert auto._lr_arms(lr, suggestion, fixed) == pytest.approx(expected)
    assert auto._lr_arms(lr, LrSuggestion(None, False, "no evidence"), fixed) == [lr]


def test_warmup_only_near_the_loss_minimum():
    test = auto.RangeTest("adamw", 32)
    test.suggestion = LrSuggestion(1e-3, True, "", min_loss_lr=1e-2)
    assert auto._warmup_steps(1e-3, test, 40) == (0, "")          # 10x below the minimum
    steps, reason = auto._warmup_steps(4e-3, test, 40)             # 2.5x below
    assert steps == 40 and "2.5x" in reason
    assert auto._warmup_steps(4e-3, test, 5000)[0] == 200          # at most 200 steps
    assert auto._warmup_steps(4e-3, None, 40) == (0, "")


def test_warm_up_ramps_linearly_and_lr_cuts_lower_its_target():
    model = nn.Linear(2, 1)
    optimizer = build_optimizer(model, "adamw", 0.1, 0.0)
    seen = []
    for step in range(4):
        warm_up(optimizer, step, 4)
        seen.append(current_lr(optimizer))
    assert seen == pytest.approx([0.025, 0.05, 0.075, 0.1])
    warm_up(optimizer, 0, 4)
    scale_lr(optimizer, 0.1, 1e-6)                  # a plateau cut in the middle of the warmup
    warm_up(optimizer, 3, 4)
    assert current_lr(optimizer) == pytest.approx(0.01)
    assert optimizer.state_dict()["param_groups"][0]["warmup_base_lr"] == pytest.approx(0.01)


def test_auto_chooses_every_knob_with_evidence_and_is_deterministic():
    model, splits, objective = task()
    config = TrainConfig()
    first = choose_hyperparameters(model, splits, config, objective, device=torch.device("cpu"))
    again = choose_hyperparameters(model, splits, config, objective, device=torch.device("cpu"))
    chosen = first.config
    assert chosen.auto_knobs == []
    assert (chosen.optimizer, chosen.lr, chosen.batch_size) == (again.config.optimizer, again.config.lr,
                                                                again.config.batch_size)
    kinds = [e["event"] for e in first.events]
    assert kinds.count("lr_range_test") == 2 and "race_rung" in kinds
    assert {"chose_batch_size", "chose_optimizer", "chose_lr", "chose_weight_decay"} <= set(kinds)
    assert first.epochs > 0
    assert set(first.range_tests) == {"adamw", "sgd"}
    race = [e for e in first.events if e["event"] == "race_rung"]
    assert len(race[0]["arms"]) == 4 and len(race[-1]["kept"]) == 1
    winner = race[-1]["kept"][0]
    assert (winner["optimizer"], winner["lr"]) == (chosen.optimizer, chosen.lr)
    # the user's model is untouched: tuning trains copies
    fresh, _, _ = task()
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_explicit_knobs_are_kept_and_skip_their_search():
    model, splits, objective = task()
    config = TrainConfig(optimizer="sgd", lr=0.05, weight_decay=0.0)
    tuning = choose_hyperparameters(model, splits, config, objective, device=torch.device("cpu"))
    assert (tuning.config.optimizer, tuning.config.lr, tuning.config.weight_decay) == ("sgd", 0.05, 0.0)
    kinds = [e["event"] for e in tuning.events]
    assert kinds == ["chose_batch_size"]  # one arm: nothing to race, no range test


def test_a_diverging_arm_is_dropped():
    model, splits, objective = task()
    config = TrainConfig(optimizer="sgd", batch_size=32, weight_decay=0.0)
    trainers = auto._race(StageLog(), model, splits, config.with_values(lr=0.05), objective,
                          [("sgd", 1e4), ("sgd", 0.05)], {"sgd": 0.0}, 32, 10, {}, auto.Console())
    (opt, lr), samples, events = trainers
    assert lr == 0.05 and samples > 0
    assert events[0]["arms"][-1]["best"] is None or events[0]["arms"][-1]["lr"] == 1e4


def test_finished_stages_are_reused(monkeypatch):
    model, splits, objective = task()
    saved = {}
    log = StageLog(save=saved.update)
    first = choose_hyperparameters(model, splits, TrainConfig(optimizer="adamw"), objective,
                                   device=torch.device("cpu"), log=log)
    assert {"batch_size", "range_test_adamw", "race"} <= set(saved)

    def no_new_range_tests(*args, **kwargs):
        raise AssertionError("a finished range test was run again")

    monkeypatch.setattr(auto, "lr_range_test", no_new_range_tests)
    again = choose_hyperparameters(model, splits, TrainConfig(optimizer="adamw"), objective,
                                   device=torch.device("cpu"), log=StageLog(dict(saved)))
    assert (again.config.lr, again.config.batch_size) == (first.config.lr, first.config.batch_size)
    assert math.isclose(again.epochs, first.epochs)


def test_an_explicit_min_lr_survives_tuning():
    model, splits, objective = task()
    tuning = choose_hyperparameters(model, splits, TrainConfig(optimizer="adamw", min_lr=1e-6), objective,
                                    device=torch.device("cpu"))
    assert tuning.config.min_lr == 1e-6
    derived = choose_hyperparameters(model, splits, TrainConfig(optimizer="adamw"), objective,
                                     device=torch.device("cpu"))
    assert derived.config.min_lr == pytest.approx(derived.config.lr * 1e-3)
