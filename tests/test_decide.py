"""Table-driven tests of the plateau / convergence decision on scripted value sequences."""

import math

import pytest

from converge.decide import ConvergencePolicy, ConvergenceTracker, StopRule, is_improvement


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
    # a loss decaying towards zero: 10 % better each epoch, but all of it less than min_delta: a plateau
    ([1e-4, 9e-5, 8.1e-5, 7.3e-5, 6.6e-5, 5.9e-5], dict(patience=2, min_delta=2e-4), "+bRbS"),
    # small gains that add up past min_delta count (the reference does not creep)
    ([1e-3, 9e-4, 8.1e-4, 7.3e-4], dict(patience=3, min_delta=2e-4), "+bb+"),
    # ... while gains above the floor still count
    ([1.0, 0.9, 0.81, 0.73], dict(patience=2, min_delta=2e-4), "++++"),
])
def test_scripted_sequences(values, policy, expected):
    letters, _ = run(values, **policy)
    assert letters == expected


@pytest.mark.parametrize("values, window, expected", [
    # one lucky epoch (0.5) amid a steady decline: the raw rule waits for the decline to beat 0.5 and cuts
    # the LR (it would then stop the run as converged, but for the steady descent, which it does not stop:
    # see test_a_steady_descent_is_not_a_plateau); the median of 3 follows the trend and never cuts
    ([1.0, 0.9, 0.8, 0.5, 0.78, 0.76, 0.74, 0.72, 0.70, 0.68, 0.66], 1, "++++..R...."),
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


def test_smoothed_value_leaves_non_finite_values_out():
    tracker = ConvergenceTracker(ConvergencePolicy(window=3))
    for value in (1.0, math.nan):
        tracker.update(value)
    assert tracker.smoothed(0.5) == 0.75   # median of (1.0, 0.5): the NaN says nothing about the trend
    assert math.isnan(tracker.smoothed(math.nan))


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


def test_negligible_gain_is_a_share_of_the_constant_prediction_loss():
    from converge.decide.plateau import NEGLIGIBLE_SHARE, negligible_gain
    assert negligible_gain(2.0) == pytest.approx(2.0 * NEGLIGIBLE_SHARE)
    assert negligible_gain(None) == 0.0 and negligible_gain(0.0) == 0.0 and negligible_gain(math.nan) == 0.0


@pytest.mark.parametrize("bad", [dict(mode="up"), dict(patience=0), dict(threshold=-1), dict(min_delta=-1e-3),
                                 dict(cooldown=-1),
                                 dict(threshold_mode="pct"), dict(unproductive_cuts=-1), dict(window=0),
                                 dict(patience=True), dict(threshold=math.nan), dict(check_finite=1),
                                 dict(stopping_threshold=math.inf), dict(divergence_threshold="1"),
                                 dict(baseline=math.nan), dict(start_from_epoch=-1), dict(start_from_epoch=1.5),
                                 dict(stopping_threshold=2.0, divergence_threshold=1.0),
                                 dict(mode="max", stopping_threshold=1.0, divergence_threshold=2.0)])
def test_policy_rejects_bad_values(bad):
    name = next(iter(bad)) if len(bad) == 1 else "threshold"
    with pytest.raises(ValueError, match=name):
        ConvergencePolicy(**bad)


# --- issue 13: cooldown, non-finite values, and the options users bring from torch / Lightning / Keras ----

def test_cooldown_runs_out_while_the_run_improves():
    """Cooldown counts epochs after the cut, improving or not (it used to wait for epochs without progress).
    torch's test_reduce_lr_on_plateau7 (test/optim/test_lrscheduler.py): values [1]*7 + [0.6] + [0.5]*12,
    patience 5 (6 here), cooldown 5, threshold 0.1: cuts after the 7th and the 18th value."""
    letters, _ = run([1] * 7 + [0.6] + [0.5] * 12, patience=6, cooldown=5, threshold=0.1, unproductive_cuts=9)
    assert letters == "+.....R++........R.."


def test_cooldown_is_over_after_improving_epochs():
    letters, tracker = run([1.0] * 3 + [0.9 ** k for k in range(1, 30)], patience=2, cooldown=3)
    assert letters.index("R") == 2 and "R" not in letters[3:]
    assert tracker.cooldown_left == 0


@pytest.mark.parametrize("values, window, expected", [
    # a NaN first epoch: the first finite value is progress, not the second bad epoch of a plateau
    # (before issue 13 the median of (inf, 1.0) was inf, and the second epoch was a cut)
    ([math.nan, 1.0], 3, ".+"),
    ([math.nan, 1.0, 1.0, 1.0], 3, ".+.R"),
    ([math.inf, math.nan, 1.0, 0.9], 3, ".R++"),
    # a NaN in the middle costs one bad epoch and is left out of the median
    ([1.0, 0.9, math.nan, 0.8, 0.7], 3, "++.++"),
])
def test_non_finite_values_are_bad_epochs_left_out_of_the_median(values, window, expected):
    letters, _ = run(values, patience=2, window=window)
    assert letters == expected


@pytest.mark.parametrize("values, expected, epoch", [
    ([math.nan] * 5, "S", 1),
    ([1.0, 0.9, math.nan, math.nan], "++S", 3),
    ([4.0, 3.0, math.inf, 2.0], "++S", 3),
    ([4.0, 3.0, -math.inf, 2.0], "++S", 3),
])
def test_check_finite_stops_at_the_first_non_finite_value(values, expected, epoch):
    letters, tracker = run(values, patience=2, check_finite=True)
    assert letters == expected
    verdict = ConvergenceTracker(ConvergencePolicy(check_finite=True, window=1))
    for value in values[:epoch]:
        last = verdict.update(value)
    assert last.stop and last.rule == StopRule.NON_FINITE and last.diverged
    assert last.reason.startswith("diverged:") and "converged" not in last.reason


def test_a_non_finite_plateau_without_check_finite_is_diverged_not_converged():
    tracker = ConvergenceTracker(ConvergencePolicy(patience=2, window=3))
    verdicts = [tracker.update(v) for v in [1.0, 0.9, math.nan, math.nan, math.nan, math.nan]]
    assert [v.reduce_lr for v in verdicts] == [False, False, False, True, False, False]
    last = verdicts[-1]
    assert last.stop and last.rule == StopRule.NON_FINITE and last.diverged
    assert last.reason.startswith("diverged:") and "best 0.9 at epoch 2" in last.reason
    tracker = ConvergenceTracker(ConvergencePolicy(patience=1, window=3))
    first = tracker.update(math.nan)
    second = tracker.update(math.nan)
    assert first.reduce_lr and second.stop and "no finite value yet" in second.reason
    assert "epoch 0" not in second.reason


def test_a_plateau_stop_is_converged():
    tracker = ConvergenceTracker(ConvergencePolicy(patience=1, window=1))
    verdicts = [tracker.update(v) for v in (1.0, 1.0, 1.0)]
    assert verdicts[-1].rule == StopRule.PLATEAU and not verdicts[-1].diverged
    assert verdicts[-1].reason.startswith("converged:")
    assert all(v.rule is None for v in verdicts[:-1])


@pytest.mark.parametrize("values, policy, expected, rule", [
    # stopping_threshold: stop as soon as a value beats it, no patience, no cut needed
    ([9, 8, 7, 6, 5, 6, 4, 3, 2, 1], dict(stopping_threshold=2.9), "+++++.++S", StopRule.STOPPING_THRESHOLD),
    ([0.5, 0.8, 0.95], dict(mode="max", stopping_threshold=0.9), "++S", StopRule.STOPPING_THRESHOLD),
    ([5, 3, 2.9], dict(stopping_threshold=2.9), "+++", None),   # strictly beyond the threshold
    # divergence_threshold: stop as soon as a value is worse than it
    ([9, 4, 2, 16, 32], dict(divergence_threshold=15.9), "+++S", StopRule.DIVERGENCE_THRESHOLD),
    ([0.5, 0.6, 0.05], dict(mode="max", divergence_threshold=0.1), "++S", StopRule.DIVERGENCE_THRESHOLD),
    ([9, 4, 2, math.inf], dict(divergence_threshold=15.9), "+++S", StopRule.DIVERGENCE_THRESHOLD),
])
def test_stopping_and_divergence_thresholds(values, policy, expected, rule):
    letters, tracker = run(values, patience=3, **policy)
    assert letters == expected
    verdict = ConvergenceTracker(ConvergencePolicy(patience=3, window=1, **policy))
    for value in values[:len(expected)]:
        last = verdict.update(value)
    assert last.rule == rule
    assert last.diverged is (rule == StopRule.DIVERGENCE_THRESHOLD)


@pytest.mark.parametrize("values, policy, expected", [
    # nothing counts as progress until a value beats the baseline; new bests still follow the raw values
    ([0.9, 0.8, 0.7, 0.71, 0.72, 0.73], dict(baseline=0.5, patience=5, unproductive_cuts=0), "bbb.S"),
    ([0.9, 0.8, 0.4, 0.41, 0.42], dict(baseline=0.5, patience=3, unproductive_cuts=0), "bb+.."),
    ([0.9, 0.9, 0.9, 0.9, 0.9], dict(baseline=0.5, patience=2), "bR.S"),
    # unlike Keras, an epoch that is a new best but does not beat the baseline counts against patience
    ([0.2, 0.4, 0.45], dict(mode="max", baseline=0.5, patience=3, unproductive_cuts=0), "bbS"),
    # start_from_epoch: the first values are not judged at all
    ([5.0, 1.0, 2.0, 2.0, 2.0, 2.0], dict(start_from_epoch=2, patience=3, unproductive_cuts=0), "..+..S"),
    ([math.nan, 5.0, 1.0, 1.0], dict(start_from_epoch=1, patience=1), ".++R"),
])
def test_baseline_and_start_from_epoch(values, policy, expected):
    letters, _ = run(values, **policy)
    assert letters == expected


def test_start_from_epoch_keeps_no_best_and_check_finite_still_applies():
    tracker = ConvergenceTracker(ConvergencePolicy(start_from_epoch=2))
    assert not tracker.update(0.1).new_best and tracker.best == math.inf
    verdict = ConvergenceTracker(ConvergencePolicy(start_from_epoch=2, check_finite=True)).update(math.nan)
    assert verdict.stop and verdict.rule == StopRule.NON_FINITE


def test_baseline_never_beaten_says_so():
    tracker = ConvergenceTracker(ConvergencePolicy(baseline=0.5, patience=2, unproductive_cuts=0, window=1))
    verdicts = [tracker.update(0.9) for _ in range(2)]
    assert verdicts[-1].stop and "baseline 0.5" in verdicts[-1].reason


def test_old_state_without_the_new_options_loads_with_defaults():
    """A tracker state saved before issue 13 (no new policy fields, NaN kept in the window) still loads."""
    old = {"best": 0.9, "reference": 0.9, "best_epoch": 2, "epochs": 3, "bad_epochs": 1, "cooldown_left": 0,
           "cuts_since_improvement": 0, "total_cuts": 0, "recent": [1.0, 0.9, math.nan],
           "policy": {"mode": "min", "patience": 2, "threshold": 1e-3, "threshold_mode": "rel", "cooldown": 0,
                      "unproductive_cuts": 1, "window": 3}}
    tracker = ConvergenceTracker()
    tracker.load_state_dict(old)
    assert tracker.policy.check_finite is False and tracker.policy.baseline is None
    assert tracker.recent == [1.0, 0.9]
    assert tracker.update(0.95).reduce_lr   # median (1.0, 0.9, 0.95) = 0.95: the second bad epoch


@pytest.mark.parametrize("values, policy, expected", [
    # drifted above the best, the LR cut, then a steady descent that has not reached the best yet: not
    # stopped while each epoch beats the one before; the first epoch that does not ends the run
    ([1.0, 0.8, 0.85, 0.86, 0.84, 0.83, 0.82, 0.81, 0.805, 0.81], dict(patience=3), "++..R....S"),
    # ...and one that reaches the best is a new best, as always
    ([1.0, 0.8, 0.85, 0.86, 0.84, 0.83, 0.82, 0.81, 0.79], dict(patience=3), "++..R...+"),
    # noise around a plateau is no descent: stopped as before
    ([1.0, 0.8, 0.85, 0.86, 0.84, 0.85, 0.83, 0.84], dict(patience=3), "++..R..S"),
    # a descent by less than min_delta a step is a plateau
    ([1.0, 0.8, 0.85, 0.86, 0.85999, 0.85998, 0.85997, 0.85996], dict(patience=3, min_delta=1e-3), "++..R..S"),
    # max mode: a steady climb
    ([0.5, 0.8, 0.7, 0.7, 0.72, 0.74, 0.76, 0.78, 0.77], dict(mode="max", patience=3), "++..R...S"),
])
def test_a_steady_descent_is_not_a_plateau(values, policy, expected):
    letters, tracker = run(values, **policy)
    assert letters == expected


def test_the_descent_is_saved_and_an_older_state_starts_a_new_one():
    values = [1.0, 0.8, 0.85, 0.86, 0.84, 0.83, 0.82, 0.81, 0.805, 0.81]
    whole, _ = run(values, patience=3)
    head, tracker = run(values[:7], patience=3)
    resumed = ConvergenceTracker(ConvergencePolicy(patience=3, window=1))
    resumed.load_state_dict(tracker.state_dict())
    tail = [resumed.update(v) for v in values[7:]]
    assert head + "".join("S" if v.stop else "." for v in tail) == whole
    older = {k: v for k, v in tracker.state_dict().items() if k != "trail"}
    before_descents = ConvergenceTracker()
    before_descents.load_state_dict(older)
    assert before_descents.trail == [] and not before_descents.still_descending()


def _after_a_restart(back_to_best: bool) -> str:
    """A run that overfit after its best (epoch 4), was cut, went back to the best weights, and then only
    came back near the best: the letters of the epochs after the cut."""
    tracker = ConvergenceTracker(ConvergencePolicy(patience=3, window=3))
    for value in [1.0, 0.7, 0.5, 0.40, 0.6, 0.7, 0.8]:
        verdict = tracker.update(value)
    assert verdict.reduce_lr and tracker.best == 0.40 and tracker.reference == 0.5   # the median of 0.7, 0.5, 0.4
    if back_to_best:
        tracker.went_back_to_best()
    letters = ""
    for value in [0.42, 0.41, 0.405, 0.41, 0.41, 0.41]:
        verdict = tracker.update(value)
        letters += "S" if verdict.stop else "R" if verdict.reduce_lr else "+" if verdict.significant else "."
        if verdict.stop:
            break
    return letters


def test_after_going_back_to_the_best_weights_progress_is_measured_from_the_best():
    assert _after_a_restart(back_to_best=True) == "...S"      # no new best: the cut was unproductive, the run ends
    assert _after_a_restart(back_to_best=False) == ".++..R"   # the smoothed return read as a significant gain


def test_going_back_to_the_best_never_lowers_the_bar():
    tracker = ConvergenceTracker(ConvergencePolicy(mode="max", window=1))
    for value in [0.5, 0.8, 0.7]:
        tracker.update(value)
    assert tracker.reference == tracker.best == 0.8
    tracker.went_back_to_best()
    assert tracker.reference == 0.8


def test_patience_is_longer_while_the_run_sits_at_the_constant_level():
    """A GRU over padded traces sat at the constant prediction's loss (0.693) for 9 epochs, then learned
    (0.45): patience 5 cut the LR at epoch 6 and stopped at 11, "collapsed". At the constant level patience
    is three times longer; once the run has left it, patience is the usual."""
    recorded = [0.6932, 0.6929, 0.6928, 0.6929, 0.6928, 0.6928, 0.6927, 0.6928, 0.6927, 0.6926, 0.6927]
    plain, _ = run(recorded, patience=5, min_delta=0.0007)
    assert plain.replace("b", ".") == "+....R....S"        # cut at 6, stop at 11, before it could learn
    waited, tracker = run(recorded, patience=5, min_delta=0.0007, constant_level=0.6928)
    assert "R" not in waited and "S" not in waited and tracker.not_learning_yet()
    escaped = [0.6932, 0.6929, 0.6928, 0.6929, 0.6928, 0.6928, 0.6927, 0.6928, 0.6915, 0.681, 0.56, 0.51]
    waited, tracker = run(escaped, patience=5, min_delta=0.0007, constant_level=0.6928)
    assert waited.endswith("++") and "R" not in waited and not tracker.not_learning_yet()
    never, _ = run([0.6932] + [0.693] * 40, patience=5, constant_level=0.6928)
    assert never.replace("b", ".") == "+" + "." * 14 + "R" + "." * 14 + "S"   # one that never learns still ends
    learned, _ = run([0.69, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3], patience=5, constant_level=0.6928)
    assert learned == "++....R"                     # below the level: patience as usual
    above, _ = run([2.9, 2.83, 3.2, 4.3, 2.9, 3.3, 3.1, 3.3], patience=5, constant_level=2.3)
    assert above.replace("b", ".") == "++....R."    # well above it: an LR too high, cut as usual


def test_the_stop_at_the_constant_level_says_so():
    tracker = ConvergenceTracker(ConvergencePolicy(patience=1, unlearned_factor=1, constant_level=1.0, window=1))
    for value in (1.0, 1.0, 1.0):
        verdict = tracker.update(value)
    assert verdict.stop and "never left the level of a constant prediction" in verdict.reason
