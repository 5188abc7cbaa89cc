"""A loss that heads for zero keeps improving relatively for ever; converge stops it once the gains are
negligible against what the task allows to gain (the constant prediction's loss)."""

import torch
from torch import nn

import converge
from converge.decide.plateau import NEGLIGIBLE_SHARE


def _separable(n, generator):
    x = torch.randn(n, 4, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long()
    x[:, 0] += torch.where(y == 1, 2.0, -2.0)  # a wide margin: the loss can go to zero
    return x, y


def test_a_loss_heading_for_zero_is_called_converged_not_trained_for_ever():
    generator = torch.Generator().manual_seed(0)
    train, val = _separable(256, generator), _separable(128, generator)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
    result = converge.fit(model, train, val, optimizer="adamw", lr=3e-2, weight_decay=0.0, batch_size=32,
                          max_epochs=300, out=None, verbose=False, standardize=False)
    summary = result.summary
    assert summary["status"] == "converged", summary["stop_reason"]
    assert summary["epochs"] < 150, summary["epochs"]
    assert summary["best"]["val_accuracy"] == 1.0
    losses = [row["val_loss"] for row in result.history]
    # it was still improving relatively when it stopped: only the floor can have stopped it
    assert losses[-1] < losses[-10]
    assert summary["best"]["val_loss"] < NEGLIGIBLE_SHARE * 20


def _trained(loss):
    generator = torch.Generator().manual_seed(0)
    train, val = _separable(256, generator), _separable(128, generator)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
    return converge.fit(model, train, val, optimizer="adamw", lr=3e-2, weight_decay=0.0, batch_size=32,
                        max_epochs=300, out=None, verbose=False, standardize=False, loss=loss)


def test_a_loss_of_the_users_heading_for_zero_is_stopped_against_where_training_began():
    """A custom loss has no known constant prediction: the first epoch's mean training loss is the scale."""
    def own_cross_entropy(logits, targets):   # a function of the user's: its meaning is not recognized
        return nn.functional.cross_entropy(logits.reshape(-1, 2), targets.reshape(-1))

    result = _trained(own_cross_entropy)
    summary = result.summary
    assert "yardsticks" not in summary   # the baseline is unknown for this loss
    assert summary["status"] == "converged", summary["stop_reason"]
    assert summary["epochs"] < 150, summary["epochs"]
    losses = [row["val_loss"] for row in result.history]
    assert losses[-1] < losses[-10]   # still improving relatively: only the floor can have stopped it
    first = result.history[0]["train_loss"]
    assert summary["best"]["val_loss"] < NEGLIGIBLE_SHARE * first * 20
