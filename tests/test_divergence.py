"""The divergence watch and the rollback rule, on scripted loss sequences."""

import math
import random

import pytest

from converge.decide.divergence import (GuardPolicy, LossWatch, clip_after_rollback, rollback_verdict)


def first_alarm(values, **policy):
    """(index, kind) of the first alarm, or None."""
    watch = LossWatch(GuardPolicy(**policy))
    for index, value in enumerate(values):
        alarm = watch.update(value)
        if alarm is not None:
            return index, alarm.kind
    return None


def noisy_decline(n=300, start=2.0, end=0.05, noise=0.3, seed=0):
    """Batch losses falling geometrically with multiplicative noise, like a healthy run."""
    rng = random.Random(seed)
    return [start * (end / start) ** (i / n) * math.exp(rng.gauss(0, noise)) for i in range(n)]


@pytest.mark.parametrize("values, expected", [
    ([1.0, 0.9, math.nan], (2, "nonfinite")),
    ([1.0, math.inf], (1, "nonfinite")),
    ([-math.inf], (0, "nonfinite")),
    # a jump far beyond the run's noise, after the warm-up
    (noisy_decline(50) + [50.0], (50, "spike")),
    # the same jump inside the warm-up is only judged by the first-loss rule (1000x)
    ([1.0, 0.9, 20.0], None),
    ([1.0, 0.9, 2000.0], (2, "spike")),
    # a healthy noisy run raises nothing
    (noisy_decline(), None),
    (noisy_decline(noise=0.8, seed=3), None),
    # a loss already near zero that wobbles by orders of magnitude is not a blow-up
    ([1.0] * 10 + [1e-8] * 40 + [1e-6], None),
    # losses that touch zero blind the log statistics; the peak rule still sees a jump back up
    ([1.0] * 10 + [0.01, 0.0, 0.02, 0.0] * 30 + [1.5], (130, "spike")),
    ([2.3] * 10 + [0.01, 0.0, 0.02, 0.0] * 30 + [1.2], (130, "spike")),
    # ... but one wrong sample in a batch of a run that fits its data is a tenfold jump of a tiny loss:
    # noise, far below where the run began (digits, 10 classes: 0.0099 at most, then 0.075)
    ([2.3] * 10 + [0.004, 0.0099, 0.002, 0.006] * 30 + [0.075], None),
    ([2.3] * 10 + [0.004, 0.0099, 0.002, 0.006] * 30 + [0.075, 0.06, 0.0599, 0.058], None),
    # a hinge (a triplet loss) exactly 0 once every triplet meets its margin: a batch at 0.2 % of the start
    # is "9e25x the running mean" in log statistics, which mean nothing there; a real jump still alarms
    ([0.18] * 10 + [0.02, 0.01] * 10 + [0.0] * 200 + [0.00036, 0.001, 0.0011, 0.003], None),
    ([0.18] * 10 + [0.02, 0.01] * 10 + [0.0] * 200 + [0.5], (230, "spike")),
    # a classifier at 100 % accuracy (running mean 6e-4 on a start of 0.69): a batch whose one wrong sample
    # costs 0.17 is that sample, not a blow-up (it was "267x the running mean" in log statistics) ...
    ([0.69] * 10 + noisy_decline(200, start=0.3, end=6e-4, noise=0.4) + [6e-4, 5e-4, 7e-4] * 20 + [0.17], None),
    # ... a jump to a sizeable share of where the run began still is one
    ([0.69] * 10 + noisy_decline(200, start=0.3, end=6e-4, noise=0.4) + [6e-4, 5e-4, 7e-4] * 20 + [0.5],
     (270, "spike")),
    # and above 1 % of the start the outlier test judges as before: 0.3 from a running 0.02
    ([0.69] * 10 + noisy_decline(200, start=0.3, end=0.02, noise=0.2) + [0.02] * 20 + [0.3], (230, "spike")),
])
def test_scripted_losses(values, expected):
    assert first_alarm(values) == expected


def test_a_non_finite_gradient_norm_is_an_alarm_even_with_a_finite_loss():
    watch = LossWatch()
    assert watch.update(1.0, grad_norm=3.0) is None
    alarm = watch.update(1.0, grad_norm=math.nan)
    assert alarm.kind == "nonfinite" and "gradient norm" in alarm.reason


def test_alarmed_values_do_not_enter_the_statistics():
    values = noisy_decline(60)
    watch = LossWatch()
    for value in values:
        watch.update(value)
    before = watch.state_dict()
    assert watch.update(1e4) is not None
    assert watch.state_dict() == before


def test_reason_names_the_numbers():
    alarm = LossWatch().update(math.nan)
    assert "nan" in alarm.reason
    watch = LossWatch()
    for value in noisy_decline(50):
        watch.update(value)
    alarm = watch.update(80.0)
    assert "80" in alarm.reason and ("running mean" in alarm.reason or "largest of the last" in alarm.reason)


def test_state_round_trip_gives_the_same_judgements():
    values = noisy_decline(80) + [40.0] + noisy_decline(30, start=0.1, end=0.08)
    whole = LossWatch()
    expected = [whole.update(v) is not None for v in values]
    first = LossWatch()
    got = [first.update(v) is not None for v in values[:40]]
    second = LossWatch(GuardPolicy(spike_factor=99))  # the saved policy must come back
    second.load_state_dict(first.state_dict())
    got += [second.update(v) is not None for v in values[40:]]
    assert got == expected and second.policy == GuardPolicy()


def test_load_state_dict_rejects_missing_keys():
    with pytest.raises(KeyError, match="missing"):
        LossWatch().load_state_dict({"seen": 1})


@pytest.mark.parametrize("streak, give_up, factor", [
    (0, False, 0.5), (1, False, 0.25), (2, False, 0.125), (4, False, 0.5 ** 5), (5, True, 1.0), (9, True, 1.0),
])
def test_rollback_verdict(streak, give_up, factor):
    verdict = rollback_verdict(streak, GuardPolicy(max_rollbacks=5))
    assert (verdict.give_up, verdict.lr_factor) == (give_up, factor)
    assert (f"{streak} rollbacks" in verdict.reason) if give_up else verdict.reason == ""


def test_zero_rollbacks_allowed_gives_up_at_once():
    assert rollback_verdict(0, GuardPolicy(max_rollbacks=0)).give_up


@pytest.mark.parametrize("current, typical, expected", [
    (None, None, None), (None, 3.0, 6.0), (4.0, 3.0, 2.0), (4.0, None, 2.0), (None, math.nan, None), (None, 0.0, None),
])
def test_clip_after_rollback(current, typical, expected):
    assert clip_after_rollback(current, typical) == expected


@pytest.mark.parametrize("bad", [dict(spike_factor=1.0), dict(spike_zscore=0), dict(smoothing=1.0),
                                 dict(lr_factor=1.5), dict(max_rollbacks=-1)])
def test_policy_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        GuardPolicy(**bad)


# --- a loss that goes negative ------------------------------------------------------------------------------
def through_zero(n=400, start=0.7, end=-0.2, noise=0.08, seed=0):
    """Batch losses of a Gaussian negative log-likelihood: falling from 0.7 through zero to -0.2, with additive
    batch noise (a NLL has no log scale)."""
    rng = random.Random(seed)
    return [start + (end - start) * min(1.0, i / (0.6 * n)) + rng.gauss(0, noise) for i in range(n)]


@pytest.mark.parametrize("values, expected", [
    # the noise of a loss around zero: a positive batch after a negative stretch is no spike (it was 1e28x
    # the log-scale running mean before the plain scale)
    (through_zero(), None),
    (through_zero(noise=0.15, seed=1) + [0.1, 0.3], None),
    # a real blow-up after going negative still is one: far above the running mean, on the run's own scale
    (through_zero() + [5.0], (400, "spike")),
    # and a loss that explodes against the first loss, whatever the scale
    (through_zero() + [1000.0], (400, "spike")),
    (through_zero() + [math.nan], (400, "nonfinite")),
])
def test_a_loss_that_goes_negative_is_judged_on_its_plain_scale(values, expected):
    assert first_alarm(values) == expected


def test_a_tiny_negative_rounding_of_a_positive_loss_keeps_the_log_scale():
    """Cross-entropy near zero can round to -1e-8: that is no sign of a signed loss."""
    watch = LossWatch()
    for value in noisy_decline(50) + [-1e-8]:
        watch.update(value)
    assert not watch.signed and watch.update(50.0).kind == "spike"


def test_the_plain_scale_survives_a_checkpoint_and_an_older_checkpoint_loads():
    values = through_zero()
    whole = LossWatch()
    expected = [whole.update(v) is not None for v in values + [5.0]]
    first = LossWatch()
    for v in values[:300]:
        first.update(v)
    second = LossWatch()
    second.load_state_dict(first.state_dict())
    assert second.signed and [second.update(v) is not None for v in values[300:] + [5.0]] == expected[300:]
    older = {k: v for k, v in LossWatch().state_dict().items() if k not in LossWatch._LATER_KEYS}
    LossWatch().load_state_dict(older)  # a checkpoint from before the plain scale


def test_after_a_restart_from_the_best_weights_the_watch_learns_the_level_again():
    """An LR cut after overfitting loads the best weights, whose training loss is far above the overfit one's
    (0.8 against 0.05): that jump is intended, not a blow-up. After the new level settles, a real blow-up
    is caught as before; the first loss's explode test is never off."""
    steady = [2.3] * 10 + [0.05 * math.exp(0.1 * math.sin(i)) for i in range(200)]
    back = [0.8 * math.exp(0.1 * math.sin(i)) for i in range(40)]
    plain = LossWatch()
    assert any(plain.update(v) is not None for v in steady + back)          # without the rebase: a "spike"
    watch = LossWatch()
    assert all(watch.update(v) is None for v in steady)
    watch.rebase()
    assert all(watch.update(v) is None for v in back)
    assert watch.update(30.0).kind == "spike"                                # 37x the new level
    rebased = LossWatch()
    for v in steady:
        rebased.update(v)
    rebased.rebase()
    assert rebased.update(5000.0).kind == "spike"                            # > 1000x the first loss, at once
    again = LossWatch()
    again.load_state_dict(watch.state_dict())
    assert again.counted == watch.counted and again.update(30.0).kind == "spike"
    older = {k: v for k, v in watch.state_dict().items() if k != "counted"}
    before = LossWatch()
    before.load_state_dict(older)
    assert before.counted == before.seen
