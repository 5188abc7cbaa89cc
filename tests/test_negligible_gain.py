"""A loss that heads for zero keeps improving relatively for ever; converge stops it once the gains are
negligible against what the task allows to gain (the constant prediction's loss)."""

import pytest
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


class _DigitAndInk(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU())
        self.scores, self.ink = nn.Linear(128, 10), nn.Linear(128, 1)

    def forward(self, x):
        h = self.body(x)
        return self.scores(h), self.ink(h).squeeze(-1)


def _digits_and_ink():
    """Raw digits (pixels 0-16), targets (the digit, its ink: the sum of its pixels, about 300)."""
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    return [(x[rows], (y[rows], x[rows].sum(1))) for rows in (slice(0, 1200), slice(1200, 1500))]


def _digit_and_ink_loss(outputs, targets):
    scores, ink = outputs
    label, true_ink = targets
    return nn.functional.cross_entropy(scores, label) + nn.functional.mse_loss(ink, true_ink)


def test_a_loss_of_the_users_that_starts_far_above_its_constant_is_not_stopped_while_it_improves():
    """Two heads, one of them an amount in raw units (about 300), under a loss of the user's: the first epoch's
    mean training loss (8e4: the untrained outputs are some 300 off) made every later gain look negligible,
    and the run was called converged at a new best, at epoch 15, while falling 10 % every 5 epochs. The scale
    is now the loss at its best constant output (about 1.2e3 here)."""
    train, val = _digits_and_ink()
    torch.manual_seed(0)
    result = converge.fit(_DigitAndInk(), train, val, loss=_digit_and_ink_loss, optimizer="adamw", lr=1e-3,
                          weight_decay=0.01, batch_size=32, max_epochs=300, out=None, verbose=False,
                          standardize=False)
    losses = [row["val_loss"] for row in result.history]
    assert result.history[0]["train_loss"] > 1e4
    window = losses[-6:]   # the stop's patience window, and the epoch before it
    assert min(window[1:]) > 0.9 * window[0], (result.summary["stop_reason"], losses[-8:])
    assert result.summary["best"]["val_loss"] < 1.0, result.summary["best"]


def test_the_same_targets_from_a_dataset_give_the_same_scale():
    """Targets a Dataset yields are not in memory: the first epoch's batches give the sample instead."""
    from torch.utils.data import Dataset

    class Items(Dataset):
        def __init__(self, split):
            self.x, (self.label, self.ink) = split

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i], (self.label[i], self.ink[i])

    train, val = _digits_and_ink()
    runs = []
    for given in ((train, val), (Items(train), Items(val))):
        torch.manual_seed(0)
        runs.append(converge.fit(_DigitAndInk(), *given, loss=_digit_and_ink_loss, optimizer="adamw", lr=1e-3,
                                 weight_decay=0.01, batch_size=32, max_epochs=300, out=None, verbose=False,
                                 standardize=False))
    in_memory, from_dataset = runs
    assert from_dataset.summary["epochs"] == in_memory.summary["epochs"]
    assert from_dataset.summary["best"]["val_loss"] == pytest.approx(in_memory.summary["best"]["val_loss"], rel=1e-5)


# --- the scale: a loss of the task's own at its best constant output ----------------------------------------
def _objective_for(model, train, loss):
    from converge.data import make_splits
    from converge.engine.objective import resolve_objective
    splits = make_splits(train, train)
    return splits, resolve_objective(model, splits, loss, {}, amp="off", device=torch.device("cpu"), probe_size=64)


def test_the_constant_of_a_loss_of_the_users_is_searched_in_the_structure_it_is_given():
    from converge.engine.objective import own_constant_loss
    train, _ = _digits_and_ink()
    splits, objective = _objective_for(_DigitAndInk(), train, _digit_and_ink_loss)
    assert objective.kind == "custom" and not objective.known_loss
    label, ink = train[1]
    counts = torch.bincount(label).double()
    entropy = float(-(counts / counts.sum() * (counts / counts.sum()).log()).sum())
    expected = entropy + float(ink.var(unbiased=False))   # the label entropy plus the ink's variance
    assert own_constant_loss(splits["train"], objective) == pytest.approx(expected, rel=2e-3)


def test_the_constant_of_an_absolute_error_is_the_deviation_from_the_median():
    from converge.engine.objective import own_constant_loss
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(800, 3, generator=generator)
    y = 500 + 40 * torch.randn(800, generator=generator)
    splits, objective = _objective_for(nn.Linear(3, 1), (x, y), lambda out, t: (out.squeeze(-1) - t).abs().mean())
    expected = float((y - y.median()).abs().mean())
    state = torch.get_rng_state()
    assert own_constant_loss(splits["train"], objective) == pytest.approx(expected, rel=1e-3)
    assert torch.equal(torch.get_rng_state(), state)   # the run's random stream is left as it was


def test_a_loss_that_refuses_constants_gives_no_scale():
    from converge.engine.objective import own_constant_loss
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(200, 3, generator=generator), torch.randn(200, generator=generator)

    def picky(out, t):   # reads something a constant output has not: the outputs' own spread
        if out.std() == 0:
            raise ValueError("a constant output")
        return ((out.squeeze(-1) - t) ** 2).mean() / out.std()

    splits, objective = _objective_for(nn.Linear(3, 1), (x, y), picky)
    assert own_constant_loss(splits["train"], objective) is None


def test_the_first_epochs_target_sample_keeps_rows_up_to_its_caps_and_round_trips():
    from converge.engine.objective import SEARCH_ELEMENTS, SEARCH_ROWS, TargetSample
    sample = TargetSample()
    for start in range(0, 3 * SEARCH_ROWS, 500):
        sample.update((torch.arange(start, start + 500), torch.ones(500, 2)))
    label, amount = sample.targets()
    assert label.shape == (SEARCH_ROWS,) and amount.shape == (SEARCH_ROWS, 2)
    assert torch.equal(label, torch.arange(SEARCH_ROWS))   # the first batches' rows, in order
    again = TargetSample()
    again.load_state_dict(sample.state_dict())
    assert torch.equal(again.targets()[0], label) and again.full
    wide = TargetSample()   # large targets (images): at most SEARCH_ELEMENTS values are kept
    wide.update(torch.zeros(64, SEARCH_ELEMENTS // 10))
    assert wide.targets().shape[0] == 10 and wide.full


def test_the_search_leaves_the_tasks_loss_as_it_was_and_skips_losses_with_parameters():
    from converge.engine.objective import own_constant_loss
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(300, 3, generator=generator), 10 + torch.randn(300, generator=generator)

    class Counting:   # a schedule of the user's that counts its training calls
        def __init__(self):
            self.calls = 0

        def __call__(self, out, t):
            self.calls += int(out.requires_grad)
            return (out.squeeze(-1) - t).abs().mean()

    counting = Counting()
    splits, objective = _objective_for(nn.Linear(3, 1), (x, y), counting)
    assert own_constant_loss(splits["train"], objective) is not None and counting.calls == 0

    class Learned(nn.Module):   # a loss through a network of its own (a perceptual loss): no search
        def __init__(self):
            super().__init__()
            self.features = nn.Linear(1, 4)

        def forward(self, out, t):
            return (self.features(out) - self.features(t.unsqueeze(-1))).pow(2).mean()

    splits, objective = _objective_for(nn.Linear(3, 1), (x, y), Learned())
    assert own_constant_loss(splits["train"], objective) is None


def test_the_first_validation_loss_is_the_scale_where_it_is_the_lowest():
    """A loss adding parts on different scales (a raw amount's MSE beside a cross-entropy): the amount is
    learned within the first epoch, and what is left to gain lives on the cross-entropy's scale, which the
    first validation loss shows and the constant's loss (the amount's variance) does not."""
    import math

    from converge.engine.judge import RunJudge

    train, _ = _digits_and_ink()
    torch.manual_seed(0)
    splits, objective = _objective_for(_DigitAndInk(), train, _digit_and_ink_loss)
    judge = RunJudge(splits, objective, seed=0)
    constant = judge.gain_scale(8e4)
    assert 300 < constant < 5000   # the constant's loss, below the first epoch's training loss
    assert judge.gain_scale(8e4, 17.0) == 17.0
    assert judge.gain_scale(8e4, math.nan) == pytest.approx(constant)
    assert judge.gain_scale(8e4, 1e5) == pytest.approx(constant)
    assert judge.gain_scale(math.inf, 17.0) == 17.0
