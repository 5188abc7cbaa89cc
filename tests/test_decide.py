"""Table-driven tests of the plateau / convergence decision on scripted value sequences."""

import math

import pytest

from converge.decide import ConvergencePolicy, ConvergenceTracker, is_improvement


def run(values, *, at_minimum_after_cuts=None, **policy):
    """Feed values; return one letter per epoch: '+' significant best, 'b' insignificant new best,
    '.' nothing, 'R' LR reduced, 'S' stop. A letter for an action wins over the best markers.
    Without smoothing (window 1) unless a test asks for it, so the table pins the raw rule."""
    policy.setdefault("window", 1)
    tracker = ConvergenceTracker(ConvergencePolicy(**policy))
    letters = []
    for value in values:
        at_min = at_minimum_after_cuts is not None and tracker.total_cuts >= at_minimum_after_cuts
        verdict = tracker.update(value, lr_at_minimum=at_min)
        letter = "S" if verdict.stop else "R" if verdict.reduce_lr else \
            "+" if verdict.significant else "b" if verdict.new_best else "."
        letters.append(letter)
        if verdict.stop:
            break
    return "".join(letters), tracker


@pytest.mark.parametrize("values, policy, expected", [
    # patience N: act at the N-th consecutive epoch without significant improvement
    ([1.0, 1.0, 1.0], dict(patience=2), "+.R"),
    ([1.0, 1.0, 1.0, 1.0, 1.0], dict(patience=2), "+.R.S"),
    # a plateau answered by a cut that helps resets everything
    ([1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5], dict(patience=2), "+.R+.R.S"),
    # steady improvement never acts
    ([5, 4, 3, 2, 1, 0.5, 0.25], dict(patience=1), "+++++++"),
    # improvements below the relative threshold are new bests but do not reset patience
    ([1.0, 0.9999, 0.9998, 0.9997], dict(patience=3, threshold=1e-3), "+bbR"),
    # absolute threshold
    ([1.0, 0.95, 0.85], dict(patience=5, threshold=0.1, threshold_mode="abs"), "+b+"),
    # slow steady progress adds up past the threshold and counts (the reference does not creep)
    ([1.0, 0.9996, 0.9992, 0.9988, 0.9984, 0.998, 0.9976], dict(patience=4, threshold=1e-3), "+bb+bb+"),
    # two unproductive cuts allowed before stopping
    ([1.0] * 8, dict(patience=2, unproductive_cuts=2), "+.R.R.S"),
    # zero allowed cuts: plain early stopping
    ([1.0, 1.0, 1.0], dict(patience=2, unproductive_cuts=0), "+.S"),
    # max mode
    ([0.5, 0.6, 0.6, 0.6], dict(mode="max", patience=2), "++.R"),
    # NaN is never an improvement and counts as a bad epoch
    ([1.0, math.nan, math.nan, 0.5], dict(patience=3), "+..+"),
    ([math.nan, math.nan], dict(patience=2), ".R"),
])
def test_scripted_sequences(values, policy, expected):
    letters, _ = run(values, **policy)
    assert letters == expected


@pytest.mark.parametrize("values, window, expected", [
    # one lucky epoch (0.5) amid a steady decline: the raw rule waits for the decline to beat 0.5, cuts
    # the LR, then stops the run as converged; the median of 3 follows the trend and never cuts
    ([1.0, 0.9, 0.8, 0.5, 0.78, 0.76, 0.74, 0.72, 0.70, 0.68, 0.66], 1, "++++..R..S"),
    ([1.0, 0.9, 0.8, 0.5, 0.78, 0.76, 0.74, 0.72, 0.70, 0.68, 0.66], 3, "++++++.++++"),
    # one bad epoch (a spike) costs at most one bad epoch either way
    ([1.0, 0.9, 0.8, 3.0, 0.7, 0.6, 0.5], 3, "+++.+++"),
    # a real plateau is still found, one epoch later than without smoothing
    ([1.0, 0.5, 0.5, 0.5, 0.5], 1, "++..R"),
    ([1.0, 0.5, 0.5, 0.5, 0.5, 0.5], 3, "+++..R"),
])
def test_smoothing_ignores_single_epoch_outliers(values, window, expected):
    letters, _ = run(values, patience=3, window=window)
    assert letters == expected


def test_smoothed_value_treats_nan_as_worst():
    tracker = ConvergenceTracker(ConvergencePolicy(window=3))
    for value in (1.0, math.nan):
        tracker.update(value)
    assert tracker.smoothed(0.5) == 1.0   # median of (1.0, inf, 0.5)


def test_cooldown_epochs_after_a_cut_do_not_count():
    # patience 1, cooldown 2: cut at epoch 2, epochs 3-4 in cooldown, epoch 5 is bad -> stop
    letters, _ = run([1.0] * 6, patience=1, cooldown=2)
    assert letters == "+R..S"


def test_lr_at_minimum_stops_instead_of_cutting():
    letters, tracker = run([1.0] * 6, patience=2, unproductive_cuts=3, at_minimum_after_cuts=1)
    assert letters == "+.R.S"
    assert tracker.total_cuts == 1


def test_stop_reason_names_the_evidence():
    tracker = ConvergenceTracker(ConvergencePolicy(patience=1))
    tracker.update(1.0)
    tracker.update(2.0)
    verdict = tracker.update(2.0)
    assert verdict.stop
    assert "converged" in verdict.reason and "epoch 1" in verdict.reason and "cut" in verdict.reason


def test_best_follows_any_improvement_patience_only_significant_ones():
    _, tracker = run([1.0, 0.99999, 0.99998], patience=10)
    assert tracker.best == 0.99998 and tracker.best_epoch == 3
    assert tracker.bad_epochs == 2


@pytest.mark.parametrize("value, best, mode, threshold, mode_t, expected", [
    (0.9, 1.0, "min", 0.0, "rel", True),
    (1.0, 1.0, "min", 0.0, "rel", False),
    (0.9995, 1.0, "min", 1e-3, "rel", False),
    (0.998, 1.0, "min", 1e-3, "rel", True),
    (-1.002, -1.0, "min", 1e-3, "rel", True),   # negative values: the margin uses |best|
    (-0.999, -1.0, "min", 1e-3, "rel", False),
    (1.1, 1.0, "max", 0.05, "abs", True),
    (1.04, 1.0, "max", 0.05, "abs", False),
    (math.inf, math.inf, "min", 0.0, "rel", False),
    (5.0, math.inf, "min", 1e-3, "rel", True),
    (math.nan, 1.0, "min", 0.0, "rel", False),
])
def test_is_improvement(value, best, mode, threshold, mode_t, expected):
    assert is_improvement(value, best, mode=mode, threshold=threshold, threshold_mode=mode_t) is expected


def test_state_round_trip_mid_sequence():
    values = [1.0, 0.8, 0.8, 0.8, 0.79, 0.8, 0.8, 0.8, 0.8, 0.8]
    whole, _ = run(values, patience=2, cooldown=1, window=3)
    first = ConvergenceTracker(ConvergencePolicy(patience=2, cooldown=1))
    letters = []
    for value in values[:4]:
        letters.append(first.update(value))
    second = ConvergenceTracker()  # default policy: load_state_dict must bring the saved one back
    second.load_state_dict(first.state_dict())
    assert second.policy == first.policy
    for value in values[4:]:
        verdict = second.update(value)
        letters.append(verdict)
        if verdict.stop:
            break
    resumed = "".join("S" if v.stop else "R" if v.reduce_lr else "+" if v.significant else
                      "b" if v.new_best else "." for v in letters)
    assert resumed == whole


def test_load_state_dict_rejects_missing_keys():
    tracker = ConvergenceTracker()
    state = tracker.state_dict()
    del state["bad_epochs"]
    with pytest.raises(KeyError, match="bad_epochs"):
        ConvergenceTracker().load_state_dict(state)


@pytest.mark.parametrize("bad", [dict(mode="up"), dict(patience=0), dict(threshold=-1), dict(cooldown=-1),
                                 dict(threshold_mode="pct"), dict(unproductive_cuts=-1)])
def test_policy_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        ConvergencePolicy(**bad)
