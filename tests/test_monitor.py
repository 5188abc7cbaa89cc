"""converge.Monitor: plateau LR cuts, best-weight keeping and stopping inside a user's own loop."""

import inspect
import math

import pytest
import torch
from torch import nn

from converge import Monitor
from converge.decide import StopRule


def setup(lr=0.1, **options):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    return model, optimizer, Monitor(model, optimizer, **options)


def feed(monitor, model, values):
    """Step through scripted validation values, nudging the weights each 'epoch' so states differ."""
    stops = []
    for value in values:
        with torch.no_grad():
            model.weight.add_(1.0)
        stops.append(monitor.step(value))
    return stops


def test_cuts_lr_on_plateau_then_stops():
    model, optimizer, monitor = setup(patience=2)
    # progress is judged on the median of the last 3 values: 0.6 at epoch 3 still counts as progress
    stops = feed(monitor, model, [1.0, 0.5, 0.6, 0.6, 0.7, 0.7, 0.7])
    assert stops == [False, False, False, False, False, False, True]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    assert monitor.best == 0.5 and monitor.best_epoch == 2
    assert "converged" in monitor.stop_reason_


def test_restore_best_puts_back_the_best_epochs_weights():
    model, _, monitor = setup(patience=10)
    start = model.weight.detach().clone()
    feed(monitor, model, [3.0, 1.0, 2.0, 2.5])  # best after the 2nd nudge
    monitor.restore_best()
    torch.testing.assert_close(model.weight.detach(), start + 2.0)


def test_accepts_tensor_values_and_respects_min_lr():
    model, optimizer, monitor = setup(lr=1.0, patience=1, unproductive_cuts=10, min_lr=0.05)
    for _ in range(6):
        monitor.step(torch.tensor(1.0))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_state_dict_round_trip_continues_identically():
    values = [1.0, 0.8, 0.8, 0.8, 0.81, 0.8, 0.8, 0.8, 0.8]
    model_a, opt_a, whole = setup(patience=2)
    expected = feed(whole, model_a, values)

    model_b, opt_b, first = setup(patience=2)
    got = feed(first, model_b, values[:4])
    _, _, second = setup()  # default options: the state must carry the policy
    second.model, second.optimizer = model_b, opt_b
    second.load_state_dict(first.state_dict())
    got += feed(second, model_b, values[4:])
    assert got == expected
    assert opt_b.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"]


def test_load_state_dict_checks_required_keys():
    _, _, monitor = setup()
    state = monitor.state_dict()
    del state["tracker"]
    with pytest.raises(KeyError, match="tracker"):
        monitor.load_state_dict(state)


def test_the_classic_three_techniques_in_a_few_lines():
    """ReduceLROnPlateau + decoupled weight decay + early stopping with best weights, via Monitor."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-1.0], [2.0], [0.5]])
    xv, yv = x[200:], y[200:]
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=1e-4)
    monitor = Monitor(model, optimizer, patience=3)
    for epoch in range(500):
        for i in range(0, 200, 32):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x[i:i + 32]), y[i:i + 32]).backward()
            optimizer.step()
        with torch.no_grad():
            val_loss = nn.functional.mse_loss(model(xv), yv).item()
        if monitor.step(val_loss):
            break
    monitor.restore_best()
    assert epoch < 499  # it stopped by itself
    with torch.no_grad():
        assert nn.functional.mse_loss(model(xv), yv).item() == pytest.approx(monitor.best)
    assert monitor.best < 1e-3


# --- issue 13: the five defects and the new options, through Monitor's public API ------------------------------

def two_groups(lrs=(0.1, 1e-5), **options):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD([{"params": [model.weight], "lr": lrs[0]}, {"params": [model.bias], "lr": lrs[1]}])
    return model, optimizer, Monitor(model, optimizer, **options)


def lrs(optimizer):
    return [float(g["lr"]) for g in optimizer.param_groups]


@pytest.mark.parametrize("min_lr, expected", [
    (None, [0.01, 1e-6]),        # default: 1e-3 x each group's own LR
    (1e-4, [0.01, 1e-5]),        # one floor above group 1's LR: group 1 keeps its LR (it was raised to 1e-4)
    ([1e-3, 1e-7], [0.01, 1e-6]),
])
def test_a_cut_never_raises_a_group(min_lr, expected):
    model, optimizer, monitor = two_groups(min_lr=min_lr, patience=1, window=1, unproductive_cuts=5)
    feed(monitor, model, [1.0, 1.0])
    assert lrs(optimizer) == pytest.approx(expected, rel=1e-9)
    assert monitor.last_applied_.cut and monitor.last_applied_.lrs_before == pytest.approx([0.1, 1e-5])


def test_a_frozen_group_stays_frozen():
    model, optimizer, monitor = two_groups(lrs=(0.1, 0.0), min_lr=1e-4, patience=1, window=1, unproductive_cuts=5)
    feed(monitor, model, [1.0, 1.0, 1.0, 1.0])
    assert lrs(optimizer) == pytest.approx([1e-4, 0.0])


def test_a_tensor_lr_stays_the_same_tensor_when_the_cut_lands_on_min_lr():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    lr = torch.tensor(0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    held = optimizer.param_groups[0]["lr"]
    monitor = Monitor(model, optimizer, patience=1, window=1, min_lr=0.05, unproductive_cuts=5)
    feed(monitor, model, [1.0, 1.0])
    assert optimizer.param_groups[0]["lr"] is held and float(held) == pytest.approx(0.05)


def test_a_nan_first_epoch_does_not_make_the_first_good_epoch_a_cut():
    model, optimizer, monitor = setup(patience=2, check_finite=False)
    feed(monitor, model, [math.nan, 1.0])
    assert optimizer.param_groups[0]["lr"] == 0.1 and monitor.last_verdict_.significant
    assert monitor.best == 1.0 and monitor.best_epoch == 2


@pytest.mark.parametrize("values, stop_at, best_text", [
    ([math.nan] * 6, 1, "no finite value yet"),
    ([1.0, 0.9, math.nan, math.nan, math.nan, math.nan], 3, "best 0.9 at epoch 2"),
])
def test_a_non_finite_value_stops_at_once_as_diverged(values, stop_at, best_text):
    model, optimizer, monitor = setup(patience=2)
    stops = feed(monitor, model, values)
    assert stops.index(True) + 1 == stop_at
    assert monitor.stop_reason_.startswith("diverged:") and best_text in monitor.stop_reason_
    assert monitor.last_verdict_.rule == StopRule.NON_FINITE and monitor.last_verdict_.diverged
    assert optimizer.param_groups[0]["lr"] == 0.1   # no LR cut on the way


def test_without_check_finite_a_non_finite_plateau_is_still_not_converged():
    model, _, monitor = setup(patience=2, check_finite=False)
    stops = feed(monitor, model, [1.0, 0.9] + [math.nan] * 6)
    assert True in stops and monitor.stop_reason_.startswith("diverged:")
    assert monitor.last_verdict_.rule == StopRule.NON_FINITE


def test_stopping_and_divergence_thresholds_stop_at_once_with_a_reason():
    model, _, monitor = setup(stopping_threshold=0.6, patience=50)
    assert feed(monitor, model, [5.0, 3.0, 1.0, 0.5]) == [False, False, False, True]
    assert monitor.last_verdict_.rule == StopRule.STOPPING_THRESHOLD and "stopping threshold" in monitor.stop_reason_
    assert monitor.best == 0.5 and monitor.best_state_ is not None   # the best weights include that epoch
    model, _, monitor = setup(divergence_threshold=8.0, patience=50)
    assert feed(monitor, model, [1.0, 2.0, 5.0, 10.0]) == [False, False, False, True]
    assert monitor.last_verdict_.diverged and "divergence threshold 8" in monitor.stop_reason_


def test_baseline_and_start_from_epoch():
    model, optimizer, monitor = setup(baseline=0.5, patience=2, window=1)
    assert feed(monitor, model, [0.9, 0.8, 0.7, 0.7]) == [False, False, False, True]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01) and "baseline 0.5" in monitor.stop_reason_
    assert monitor.best == 0.7
    model, _, monitor = setup(start_from_epoch=3, patience=1, window=1, unproductive_cuts=0)
    assert feed(monitor, model, [0.1, 5.0, 5.0, 1.0, 1.0]) == [False, False, False, False, True]
    assert monitor.best == 1.0 and monitor.best_epoch == 4


def test_window_1_turns_the_median_off():
    values = [1.0, 0.9, 0.8, 0.5, 0.78, 0.76, 0.74]
    _, opt_median, median = setup(patience=3)
    _, opt_raw, raw = setup(patience=3, window=1)
    for value in values:
        median.step(value)
        raw.step(value)
    assert opt_median.param_groups[0]["lr"] == 0.1 and opt_raw.param_groups[0]["lr"] == pytest.approx(0.01)


def test_eps_skips_tiny_cuts_and_then_the_plateau_stops():
    model, optimizer, monitor = setup(lr=1e-6, min_lr=0.0, eps=1e-6, patience=1, window=1, unproductive_cuts=5)
    assert feed(monitor, model, [1.0, 1.0]) == [False, True]
    assert optimizer.param_groups[0]["lr"] == 1e-6 and "minimum" in monitor.stop_reason_


def test_get_last_lr_reports_every_group():
    model, optimizer, monitor = two_groups(lrs=(0.1, 0.01), patience=1, window=1, min_lr=0.0)
    assert monitor.get_last_lr() == [0.1, 0.01]
    feed(monitor, model, [1.0, 1.0])
    assert monitor.get_last_lr() == pytest.approx([0.01, 0.001])
    optimizer.param_groups[0]["lr"] = 0.5    # changed outside: get_last_lr is what the last step left
    assert monitor.get_last_lr() == pytest.approx([0.01, 0.001])


def test_groups_added_later_get_a_floor():
    model, optimizer, monitor = setup(min_lr=1e-3, patience=1, window=1, unproductive_cuts=5)
    optimizer.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "lr": 0.5})
    feed(monitor, model, [1.0, 1.0])
    assert monitor.min_lrs == [1e-3, 1e-3] and monitor.get_last_lr() == pytest.approx([0.01, 0.05])
    monitor.min_lr = 0.02   # the older Monitor's attribute: one floor for every group
    assert monitor.min_lrs == [0.02, 0.02]
    with pytest.raises(ValueError, match="min_lr"):
        monitor.min_lr = -1.0


def test_a_state_saved_by_the_old_monitor_loads():
    """The state the Monitor wrote before issue 13: one min_lr, no eps, a policy without the new options."""
    model, optimizer, monitor = two_groups(lrs=(0.1, 1e-5), patience=2)
    feed(monitor, model, [1.0, 0.9])
    state = monitor.state_dict()
    old = {key: state[key] for key in ("tracker", "best_state", "min_lr", "factor", "stop_reason")}
    old["min_lr"] = 1e-4
    old["tracker"] = dict(old["tracker"], policy={k: v for k, v in state["tracker"]["policy"].items()
                                                  if k in ("mode", "patience", "threshold", "threshold_mode",
                                                           "cooldown", "unproductive_cuts", "window")})
    _, _, fresh = two_groups(lrs=(0.1, 1e-5))
    fresh.model, fresh.optimizer = model, optimizer
    fresh.load_state_dict(old)
    assert fresh.min_lrs == [1e-4, 1e-4] and fresh.tracker.policy.check_finite is False
    feed(fresh, model, [0.9, 0.9, 0.9])    # the cut: group 1 (below the old single floor) is not raised
    assert lrs(optimizer) == pytest.approx([0.01, 1e-5])


@pytest.mark.parametrize("options, named", [
    (dict(factor=1.5), "factor"), (dict(eps=-1.0), "eps"), (dict(min_lr=-1.0), "min_lr"),
    (dict(min_lr=[1e-3, 1e-3]), "min_lr"), (dict(window=0), "window"), (dict(patience=0), "patience"),
    (dict(check_finite="yes"), "check_finite"), (dict(stopping_threshold=math.nan), "stopping_threshold"),
    (dict(baseline="0.5"), "baseline"), (dict(start_from_epoch=-2), "start_from_epoch"),
    (dict(mode="auto"), "mode"),
])
def test_bad_options_are_named(options, named):
    with pytest.raises(ValueError, match=named):
        setup(**options)


def test_options_are_keyword_only_and_every_public_method_has_a_docstring():
    params = inspect.signature(Monitor).parameters
    assert [p.name for p in params.values() if p.kind is not p.KEYWORD_ONLY] == ["model", "optimizer"]
    for name, member in inspect.getmembers(Monitor):
        if not name.startswith("_") and (inspect.isfunction(member) or isinstance(member, property)):
            assert inspect.getdoc(member), name


# --- what the Trainer does beside the decisions: guard, record, end (the callbacks' core) -----------------
def train_steps(model, optimizer, monitor, steps, poison=()):
    """``steps`` optimizer steps of a linear regression; the steps in ``poison`` get a NaN loss."""
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        x = torch.randn(16, 3, generator=g)
        loss = nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
        if step in poison:
            loss = loss * math.nan
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        monitor.after_batch(loss)


def test_the_guard_rolls_a_nan_back_to_the_last_clean_evaluation_and_halves_the_lr():
    model, optimizer, monitor = setup(lr=0.01, guard=True)
    train_steps(model, optimizer, monitor, 10)
    monitor.step(1.0)
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model, optimizer, monitor, 32, poison={5})  # the 32-step window closes with the last
    assert [e["event"] for e in monitor.events].count("rollback") == 1
    assert all(torch.equal(model.state_dict()[k], kept[k]) for k in kept)  # back to the state of epoch 1
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.005)


def test_with_the_guard_a_non_finite_value_is_rolled_back_not_a_stop():
    model, optimizer, monitor = setup(lr=0.01, guard=True)
    assert monitor.step(1.0) is False
    assert monitor.step(math.nan) is False
    assert [e["event"] for e in monitor.events] == ["new_best", "rollback"]


def test_a_lambda_schedule_carries_a_cut_and_other_schedules_are_refused():
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / 100)
    monitor = Monitor(model, optimizer, patience=1, window=1, scheduler=schedule)
    for value in [1.0, 1.0]:
        optimizer.step()  # (no gradients: nothing moves) the order torch expects before a schedule step
        monitor.step(value)
        schedule.step()
    assert schedule.base_lrs == [pytest.approx(0.01)]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * (1 - 2 / 100))
    with pytest.raises(ValueError, match="StepLR"):
        Monitor(model, optimizer, scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 3))


def test_finish_writes_the_run_folder_and_returns_what_fit_returns(tmp_path):
    model, optimizer, monitor = setup(patience=2, out=tmp_path / "run")
    for epoch, value in enumerate([1.0, 0.5, 0.6, 0.6, 0.7, 0.7, 0.7, 0.7]):
        if monitor.step(value, values={"train_loss": 2.0 - epoch / 10, "val_loss": value}):
            break
    result = monitor.finish()
    assert result.status == "converged" and result.summary["best_epoch"] == 2
    assert result.summary["diagnosis"][0]["code"] == "converged"
    assert result.run_dir == tmp_path / "run"
    for name in ("summary.json", "metrics.jsonl", "events.jsonl", "curves.png", "report.html", "best.safetensors"):
        assert (tmp_path / "run" / name).is_file(), name


def test_a_loop_that_ends_first_ends_as_max_epochs_and_loads_the_best_weights():
    model, optimizer, monitor = setup()
    feed(monitor, model, [1.0, 0.5, 0.8])
    result = monitor.finish(reason="my loop's 3 epochs are done")
    assert (result.status, result.summary["stop_reason"]) == ("max_epochs", "my loop's 3 epochs are done")
    assert torch.equal(model.state_dict()["weight"], monitor.best_state_["weight"])


@pytest.mark.parametrize("restart", [True, False])
def test_an_lr_cut_after_overfitting_goes_on_from_the_best_weights(restart):
    """As converge.fit does: validation rose after epoch 3 while training fell, so the cut at epoch 6 (patience
    3) loads epoch 3's weights; with restart_from_best=False the cut goes on from the current ones."""
    model, optimizer, monitor = setup(patience=3, window=1, restart_from_best=restart)
    train = [1.0, 0.6, 0.5, 0.4, 0.3, 0.2]
    val = [1.0, 0.7, 0.65, 0.7, 0.75, 0.8]
    for t, v in zip(train, val):
        with torch.no_grad():
            model.weight.add_(1.0)
        monitor.step(v, values={"train_loss": t, "val_loss": v})
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)            # the cut
    restarts = [e for e in monitor.events if e["event"] == "restarted_from_best"]
    at_best = torch.equal(model.weight, monitor.best_state_["weight"])
    assert (len(restarts), at_best) == ((1, True) if restart else (0, False))
    if restart:
        assert restarts[0]["best_epoch"] == 3 and restarts[0]["val_rise"] > 0.1


def test_a_plateau_cut_goes_on_from_the_current_weights():
    model, optimizer, monitor = setup(patience=3, window=1)
    for t, v in zip([1.0, 0.6, 0.5, 0.45, 0.44, 0.44], [1.0, 0.7, 0.65, 0.66, 0.65, 0.66]):
        with torch.no_grad():
            model.weight.add_(1.0)
        monitor.step(v, values={"train_loss": t, "val_loss": v})
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    assert not any(e["event"] == "restarted_from_best" for e in monitor.events)
    assert not torch.equal(model.weight, monitor.best_state_["weight"])


def test_several_processes_never_restart_alone():
    from converge.integrations._options import restart_option

    assert restart_option({}, True, 1)["restart_from_best"] is True
    assert restart_option({"patience": 3}, True, 2) == {"patience": 3, "restart_from_best": False}
