"""converge.Monitor: plateau LR cuts, best-weight keeping and stopping inside a user's own loop."""

import pytest
import torch
from torch import nn

from converge import Monitor


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
