"""The LR suggestion read from a range test (`converge.decide.lr_suggest`), on recorded and synthetic curves.

Recorded curves (tests/data/lr_curves/*.json, written once by record.py there -- the tests only read
them): real range tests of small models, each with `good_lr_range`, the LRs measured to train well
(constant-LR grid, final validation loss within 20% of the best). Synthetic curves: shapes with a
known answer -- a clean and a noisy U, NaN in the middle, NaN from the start, never decreasing, the
long flat start that made Lightning suggest 1.1e-7, a divergence cliff right after the minimum.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from converge.decide.lr_suggest import smooth, suggest_lr, usable_prefix

CURVES = Path(__file__).parent / "data" / "lr_curves"
N = 100
LRS = [10 ** (-7 + 8 * i / (N - 1)) for i in range(N)]          # 1e-7 .. 10, like a real sweep
NAN, INF = float("nan"), float("inf")


def load(name: str) -> dict:
    data = json.loads((CURVES / f"{name}.json").read_text())
    data["losses"] = [float(v) for v in data["losses"]]                # "nan" / "inf" strings -> floats
    return data


def check_clamp(s) -> None:
    """Every suggestion, whatever the curve: a finite LR within [min-loss LR / 100, min-loss LR / 3]."""
    assert s.ok and s.lr is not None and math.isfinite(s.lr) and s.lr > 0, s
    assert s.min_loss_lr / 100 * (1 - 1e-9) <= s.lr <= s.min_loss_lr / 3 * (1 + 1e-9), s


def gauss(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(0, 1) for _ in range(n)]


def u_curve(min_lr: float, width: float = 2.0, noise: float = 0.0, seed: int = 0) -> list[float]:
    """A parabola in log10(LR) with its analytic minimum 1.0 at `min_lr`; `noise` is a relative sd."""
    rng = random.Random(seed)
    x0 = math.log10(min_lr)
    return [(1 + ((math.log10(lr) - x0) / width) ** 2) * (1 + noise * rng.gauss(0, 1)) for lr in LRS]


def flat_then_fall(fall_lr: float, min_lr: float, noise: float, seed: int, *, level: float = 3.0e4,
                   floor: float = 0.1) -> list[float]:
    """Lightning's failure shape: a long, noisy plateau at `level` (an unscaled MSE) up to `fall_lr`,
    a fall to `floor` x level by `min_lr`, then a blow-up. Noise is multiplicative (relative sd)."""
    rng = random.Random(seed)
    a, b = math.log10(fall_lr), math.log10(min_lr)
    out = []
    for lr in LRS:
        x = math.log10(lr)
        if x <= a:
            value = 1.0
        elif x <= b:
            value = 1 - (1 - floor) * ((x - a) / (b - a)) ** 1.5
        else:
            value = floor * 10 ** (4 * (x - b))
        out.append(level * value * (1 + noise * rng.gauss(0, 1)))
    return out


# ---------------------------------------------------------------- recorded range tests

RECORDED = sorted(p.stem for p in CURVES.glob("*.json"))

# Cases where the suggestion genuinely falls outside the measured good range (numbers from the
# recording and the suggestion logic as of this commit). Strict: if the logic changes and one of
# them starts to pass, the test says so.
OUTSIDE = {
    "digits_cnn__sgd": "the sweep never shows a fall (100 steps, loss ~2.30 flat to LR 0.2, 1.99 once at 0.42, "
                       "then 7.4): ok=False; the grid's good LR is 0.1 (val CE 0.022)",
    "diabetes_raw__sgd": "raw targets: the sweep's fall above 1e-3 is the output bias fitting the target mean "
                         "(MSE 32000 -> ~6000); suggests ~2.9e-2, where 15 epochs end at val MSE ~5140 (the "
                         "mean's); good range 1e-5..1e-4 (best 1.8e-5: 3253)",
    "digits_mlp__adamw": "suggests ~7.1e-3 (min-loss LR 0.022 / 3); good range is 1e-2 only "
                         "(val CE 0.036; 5.6e-3: 0.049, 3.2e-3: 0.055, 1.8e-2: 0.27)",
    "digits_mlp__sgd": "suggests ~0.081 (min-loss LR 0.24 / 3); good range is 0.178 only "
                       "(val CE 0.045; 0.1: 0.067, 0.056: 0.075, 0.032: 0.085, 0.018: 0.12)",
    "standardized_regression__sgd": "suggests ~2.2e-2 (steepest descent); good range 0.056..0.178 "
                                    "(best 0.1: 0.0117; 0.01: 0.0388)",
    "standardized_regression__sgd__to_nan": "the sweep run on to inf now reads like its stopped twin: "
                                            "suggests ~1.8e-2, below the good range 0.056..0.178",
    "wild_scale_tabular__adamw": "unscaled: the sweep's minimum (~1e-3..8e-3) is the bias fitting the target "
                                 "mean (MSE 1e4 -> 4e3); suggests ~8.5e-4, where 15 epochs end at val MSE ~4220 "
                                 "(the mean's); the structure is only learnt at 0.018..0.056 (best 905)",
}


def test_every_recorded_curve_is_well_formed():
    assert len(RECORDED) >= 10
    for name in RECORDED:
        data = load(name)
        assert len(data["lrs"]) == len(data["losses"]) >= 2, name
        assert all(b > a for a, b in zip(data["lrs"], data["lrs"][1:])), name
        lo, hi = data["good_lr_range"]
        assert 0 < lo <= hi, name
        assert "val" in data["notes"] and data["task"] and data["optimizer"] in ("adamw", "sgd"), name


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=OUTSIDE[name])) if name in OUTSIDE else name
    for name in RECORDED])
def test_recorded_curve_suggestion_lies_in_its_measured_good_range(name):
    data = load(name)
    s = suggest_lr(data["lrs"], data["losses"])
    lo, hi = data["good_lr_range"]
    assert s.ok, s.reason
    assert lo <= s.lr <= hi, f"suggested {s.lr:.3g}, good range [{lo:.3g}, {hi:.3g}]; {s.reason}"


@pytest.mark.parametrize("name", RECORDED)
def test_recorded_curve_answer_is_coherent(name):
    """Whatever the verdict: a suggestion is clamped and explained, a refusal says why -- and the raw
    loss scale (MSE of 3e4 on raw targets, cross-entropy of 2.3) does not change the answer."""
    data = load(name)
    s = suggest_lr(data["lrs"], data["losses"])
    assert 0 <= s.used_points <= len(data["lrs"])
    assert s.reason
    if s.ok:
        check_clamp(s)
        assert s.min_loss_lr in data["lrs"][:s.used_points]
    else:
        assert s.lr is None
    for scale in (2.0**-15, 2.0**10):                              # powers of two: exact in floating point
        rescaled = suggest_lr(data["lrs"], [v * scale for v in data["losses"]])
        assert (rescaled.ok, rescaled.lr, rescaled.used_points) == (s.ok, s.lr, s.used_points)


TWINS = ["standardized_regression__sgd", "wild_scale_tabular__sgd"]   # also recorded on to the first inf


@pytest.mark.parametrize("name", TWINS)
def test_recorded_sweep_run_on_to_inf_agrees_with_its_stopped_twin(name):
    """A NaN-containing real sweep: the blow-up at its end must not change what the fall before it says."""
    stopped, to_nan = load(name), load(f"{name}__to_nan")
    assert not math.isfinite(to_nan["losses"][-1]) and len(to_nan["losses"]) > len(stopped["losses"])
    assert to_nan["lrs"][:len(stopped["lrs"])] == stopped["lrs"]
    a = suggest_lr(stopped["lrs"], stopped["losses"])
    b = suggest_lr(to_nan["lrs"], to_nan["losses"])
    assert a.ok and b.ok, b.reason
    assert a.lr / 3 <= b.lr <= a.lr * 3, (a.lr, b.lr)


def test_recorded_never_decreasing_curve_gives_no_suggestion():
    """A real sweep that never fell (SGD on the digits CNN: cross-entropy ~2.30 throughout)."""
    data = load("digits_cnn__sgd")
    s = suggest_lr(data["lrs"], data["losses"])
    assert not s.ok and s.lr is None
    assert "never fell" in s.reason, s.reason


def test_recorded_unscaled_tabular_curves_do_not_suggest_the_start_of_the_sweep():
    """The Lightning failure (1.1e-7 on an unscaled tabular task): on the real raw-target sweeps, whose
    first decades are a flat, noisy MSE of ~3e4, the suggestion stays far from the sweep's start."""
    for name in ("diabetes_raw__adamw", "diabetes_raw__sgd", "wild_scale_tabular__adamw"):
        data = load(name)
        s = suggest_lr(data["lrs"], data["losses"])
        assert s.ok, (name, s.reason)
        assert s.lr >= 1e-5, (name, s)
        assert s.lr >= s.min_loss_lr / 100, (name, s)


# ---------------------------------------------------------------- synthetic: U-shaped

@pytest.mark.parametrize("min_lr", [1e-4, 1e-3, 1e-2, 1e-1])
def test_clean_u_curve_suggests_3_to_100_times_below_its_minimum(min_lr):
    s = suggest_lr(LRS, u_curve(min_lr))
    check_clamp(s)
    step = LRS[1] / LRS[0]
    assert min_lr / step <= s.min_loss_lr <= min_lr * step           # found the analytic minimum
    assert min_lr / 100 * (1 - 1e-9) <= s.lr <= min_lr / 3 * step


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("min_lr", [1e-3, 3e-2])
def test_noisy_u_curve_stays_within_the_true_minimums_window(min_lr, seed):
    s = suggest_lr(LRS, u_curve(min_lr, noise=0.15, seed=seed))   # 15% batch-to-batch noise
    check_clamp(s)
    assert min_lr / 100 <= s.lr <= min_lr / 3, (s.lr, s.reason)


@pytest.mark.parametrize("noise", [0.0, 0.05])
@pytest.mark.parametrize("min_lr", [1e-3, 1e-1])
def test_a_loss_that_falls_below_zero_is_read_as_the_same_curve_above_zero(min_lr, noise):
    """A negative log-likelihood has no zero: the same curve moved down by 2 (from 5.25 through zero to -1 at
    its minimum) must be read where the curve above zero is, and not be cut sooner. With a ratio test for
    divergence (4 x a negative best is far below it), the sweep stopped at its first bump below zero."""
    above = u_curve(min_lr)
    rng = random.Random(1)
    above = [v + noise * rng.gauss(0, 1) for v in above]
    below = [v - 2.0 for v in above]
    assert usable_prefix(LRS, below) >= usable_prefix(LRS, above)
    assert suggest_lr(LRS, below).lr == pytest.approx(suggest_lr(LRS, above).lr)


# ---------------------------------------------------------------- synthetic: a loss that reaches its floor

def floor_curve(reach_lr: float, noise: float = 0.0, seed: int = 0) -> list[float]:
    """A cross-entropy that falls from 0.7 to 0 (within 1 % by ``reach_lr``) and lies there to the sweep's end,
    as on separable data; ``noise``: a relative sd."""
    rng = random.Random(seed)
    return [0.7 * math.exp(-5 * lr / reach_lr) * (1 + noise * rng.gauss(0, 1)) for lr in LRS]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("reach_lr", [1e-3, 1e-2, 1e-1])
def test_a_loss_at_its_floor_is_read_where_it_reached_the_floor_not_at_the_sweeps_end(reach_lr, seed):
    """Along a floor the lowest point is wherever the last batches sat (here the sweep's end, LR 10): reading
    it as the minimum made "minimum / 10" pick AdamW at LR 1 on a separable one-logit task."""
    s = suggest_lr(LRS, floor_curve(reach_lr, noise=0.15, seed=seed))
    check_clamp(s)
    # The zero-phase smoothing spreads a fall this steep by a few points (12 a decade) each way.
    assert reach_lr / 3 <= s.min_loss_lr <= 5 * reach_lr, (s.min_loss_lr, s.reason)
    assert s.lr <= reach_lr / 2, (s.lr, s.reason)


def test_a_floor_shorter_than_a_decade_is_still_the_minimum():
    """A bottom that stays within the tolerance for less than a decade is a U-curve's bottom: unchanged."""
    curve = floor_curve(1e-2)
    reached = next(i for i, lr in enumerate(LRS) if lr >= 8e-3)
    ends = next(i for i, lr in enumerate(LRS) if lr >= 5e-2)
    curve = curve[:ends] + [0.05 * (i - ends + 1) for i in range(ends, N)]  # then climbs
    s = suggest_lr(LRS, curve)
    assert LRS[ends - 1] / LRS[reached] < 10
    assert LRS[ends - 1] / 1.5 <= s.min_loss_lr <= LRS[ends - 1], s.reason   # the bottom's lowest point


def sudden_curve(fall_lr: float, noise: float = 0.02, seed: int = 0) -> list[float]:
    """A task that learns suddenly (a GRU on running parity): the loss sits at ln 2 until the LR is large,
    then falls in the sweep's last steps, where only the output's bias can move that fast."""
    rng = random.Random(seed)
    return [0.693 * (1 if lr < fall_lr else 0.9 ** math.log10(lr / fall_lr) * 0.85) * (1 + noise * rng.gauss(0, 1))
            for lr in LRS]


@pytest.mark.parametrize("optimizer, cap", [("adamw", 0.1), ("sgd", 1.0)])
def test_a_suggestion_beyond_what_the_optimizer_can_use_is_capped_and_says_so(optimizer, cap):
    """GRU on running parity, seed 0: AdamW's sweep fell only past LR 1; "minimum / 10" chose LR 1.0, the
    race 0.33, and the run ended at 86 % token accuracy. Capped at 0.1 the race takes 0.033: 100 %."""
    from converge.choose.lr_find import plausible_max_lr

    curve = sudden_curve(3.0)
    free = suggest_lr(LRS, curve)
    capped = suggest_lr(LRS, curve, max_lr=plausible_max_lr(optimizer))
    assert plausible_max_lr(optimizer) == cap
    assert free.ok and free.lr > 0.1
    assert capped.ok and capped.lr == min(free.lr, cap) and capped.min_loss_lr == free.min_loss_lr
    assert ("capped at" in capped.reason) == (free.lr > cap)


@pytest.mark.parametrize("name", [n for n in RECORDED if not n.endswith("__to_nan")])
def test_the_cap_leaves_every_recorded_suggestion_as_it_was(name):
    from converge.choose.lr_find import plausible_max_lr

    data = load(name)
    assert suggest_lr(data["lrs"], data["losses"], max_lr=plausible_max_lr(data["optimizer"])) == \
        suggest_lr(data["lrs"], data["losses"])


# ---------------------------------------------------------------- synthetic: NaN / inf

@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("cut", [60, 75, 95])
def test_nan_in_the_middle_or_tail_ends_the_usable_prefix(cut, bad):
    """Past the minimum or before it, the first non-finite loss ends the evidence: what comes after
    it -- even a lower loss -- changes nothing."""
    losses = u_curve(1e-2, noise=0.03, seed=1)
    broken = losses[:cut] + [bad] + [0.01] * (N - cut - 1)           # "better" losses after the NaN
    s = suggest_lr(LRS, broken)
    assert s.used_points <= cut
    check_clamp(s)
    assert s.lr < LRS[cut] and s.min_loss_lr < LRS[cut]
    truncated = suggest_lr(LRS[:cut], losses[:cut])
    assert (s.lr, s.min_loss_lr, s.used_points) == (truncated.lr, truncated.min_loss_lr, truncated.used_points)


def test_nan_just_past_the_fall_keeps_the_suggestion_before_it():
    """A NaN in the middle of the fall: the suggestion comes from the prefix only (below the NaN's LR)."""
    losses = u_curve(1e-1)
    losses[70] = NAN                                                   # LR ~ 4e-2, still falling
    s = suggest_lr(LRS, losses)
    check_clamp(s)
    assert s.used_points == 70
    assert s.min_loss_lr <= LRS[69] and s.lr < LRS[70] / 3


@pytest.mark.parametrize("losses, what", [
    ([NAN] * N, "NaN from the start"),
    ([NAN] + u_curve(1e-2)[1:], "NaN first"),
    ([INF] * N, "inf from the start"),
    (u_curve(1e-2)[:7] + [NAN] * (N - 7), "7 finite points, then NaN"),
    ([3.0, 2.5, 2.0, INF] + [1.0] * (N - 4), "3 finite points, then inf"),
])
def test_too_few_finite_points_gives_no_suggestion(losses, what):
    s = suggest_lr(LRS, losses)
    assert not s.ok and s.lr is None, what
    assert s.used_points < 8, what
    assert "usable" in s.reason or "NaN" in s.reason, (what, s.reason)
    assert str(s.used_points) in s.reason, (what, s.reason)


@pytest.mark.parametrize("n", [
    0, 1, 5, 7])
def test_short_sweeps_give_no_suggestion(n):
    losses = [3.0 - 0.25 * i for i in range(n)]                         # falling, but only n points
    s = suggest_lr(LRS[:n], losses)
    assert not s.ok and s.lr is None
    assert "usable" in s.reason and str(n) in s.reason, s.reason


def test_eight_falling_points_are_enough():
    s = suggest_lr(LRS[:8], [3.0 - 0.25 * i for i in range(8)])
    check_clamp(s)
    assert s.used_points == 8


# ---------------------------------------------------------------- synthetic: never decreasing

@pytest.mark.parametrize("losses, what", [
    ([2.3] * N, "constant"),
    ([2.3 * (1 + 0.01 * g) for g in gauss(N, seed=3)], "flat with 1% noise"),
    ([2.3 * (1 + 0.03 * g) for g in gauss(N, seed=4)], "flat with 3% noise"),
    ([1.0 + i / N for i in range(N)], "slowly rising"),
    ([1.0 + 0.02 * math.sin(i / 3) for i in range(N)], "wobbling by 2%"),
    ([1.0] * 60 + [1.0 + 0.05 * i for i in range(40)], "flat, then rising"),
])
def test_never_decreasing_curve_gives_no_suggestion(losses, what):
    s = suggest_lr(LRS, losses)
    assert not s.ok and s.lr is None, (what, s)
    assert "never fell" in s.reason, (what, s.reason)


def test_a_fall_just_under_min_drop_is_refused_and_just_over_is_accepted():
    def curve(depth):
        return [1.0 - depth * min(1.0, max(0.0, (i - 40) / 30)) for i in range(N)]
    assert not suggest_lr(LRS, curve(0.02)).ok
    assert suggest_lr(LRS, curve(0.2)).ok


# ---------------------------------------------------------------- synthetic: Lightning's failure shape

@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("fall_lr, min_lr", [(1e-4, 1e-2), (1e-2, 3e-1), (1e-3, 1e-1)])
def test_long_noisy_flat_start_does_not_pull_the_suggestion_to_the_start(fall_lr, min_lr, seed):
    """The plateau's batch noise (5%, on an MSE of 3e4) holds steep little drops; none of them may be
    read as the descent. Lightning's 1.1e-7 was 5 decades below where the loss moved."""
    losses = flat_then_fall(fall_lr, min_lr, noise=0.05, seed=seed)
    s = suggest_lr(LRS, losses)
    check_clamp(s)
    assert min_lr / 100 <= s.lr <= min_lr, (s.lr, s.reason)
    assert s.lr >= fall_lr / 10, (s.lr, s.reason)                   # not in the noisy plateau's depth
    assert s.lr > 1e-6


# ---------------------------------------------------------------- synthetic: divergence right after the minimum

def cliff_curve(spikes: int, end: str) -> list[float]:
    """Flat at 2.0, a fall to 0.5 at index CLIFF (its true minimum), then `spikes` losses each 10x the
    last, then the sweep ends there or with one NaN / inf (a recorder keeps that last value)."""
    losses = [2.0 - 1.5 * min(1.0, max(0.0, (i - 40) / (CLIFF - 40))) for i in range(CLIFF + 1)]
    losses += [0.5 * 10 ** (i + 1) for i in range(spikes)]
    return losses + ({"nan": [NAN], "inf": [INF]}.get(end, []))


CLIFF = 70                                                            # LRS[70] ~ 4.5e-2
@pytest.mark.parametrize("spikes, end", [
    (0, "end"), (1, "end"), (2, "end"), (3, "end"), (5, "end"), (0, "nan"), (1, "nan"), (2, "inf"),
    *[(k, end) for k in (3, 4, 5) for end in ("nan", "inf")],
])
def test_divergence_right_after_the_minimum_keeps_the_suggestion_off_the_cliff(spikes, end):
    losses = cliff_curve(spikes, end)
    s = suggest_lr(LRS[:len(losses)], losses)
    check_clamp(s)
    assert s.used_points <= CLIFF + 1 + spikes
    assert s.min_loss_lr <= LRS[CLIFF + 1]
    assert LRS[CLIFF] / 100 <= s.lr <= LRS[CLIFF] / 3 * LRS[1] / LRS[0], (s.lr, s.reason)


# ---------------------------------------------------------------- input checks and smoothing

@pytest.mark.parametrize("n_lrs, n_losses", [(10, 9), (9, 10), (0, 1), (100, 0)])
def test_different_lengths_are_a_value_error(n_lrs, n_losses):
    with pytest.raises(ValueError, match="length"):
        suggest_lr(LRS[:n_lrs], [1.0] * n_losses)


@pytest.mark.parametrize("beta", [0.5, 0.8, 0.9, 0.98])
def test_smooth_is_bias_corrected(beta):
    losses = u_curve(1e-2, noise=0.2, seed=2)
    out = smooth(losses, beta)
    assert len(out) == len(losses)
    assert out[0] == pytest.approx(losses[0], rel=1e-12)           # no pull towards the zero start
    assert smooth([7.5] * 50, beta) == pytest.approx([7.5] * 50, rel=1e-12)
    for i in range(1, len(out)):                                   # a weighted mean of what came so far
        assert min(losses[:i + 1]) - 1e-12 <= out[i] <= max(losses[:i + 1]) + 1e-12


def test_smooth_second_value_is_the_normalized_weighted_mean():
    beta = 0.9
    out = smooth([2.0, 4.0], beta)
    assert out[1] == pytest.approx((beta * (1 - beta) * 2.0 + (1 - beta) * 4.0) / (1 - beta**2))


def test_smooth_keeps_non_finite_values_non_finite():
    out = smooth([1.0, 2.0, NAN, 1.0], 0.9)
    assert all(math.isfinite(v) for v in out[:2])
    assert not math.isfinite(out[2])


# ---------------------------------------------------------------- batch noise at the sweep's start (issue 12)

NOISY = json.loads((Path(__file__).parent / "data" / "lr_noise" / "friedman_scaled_adamw_seeds_7_8.json").read_text())


def noise(kind: str, sd: float, rng: random.Random) -> float:
    """One batch's multiplicative noise: normal, log-normal, or the right-skewed MSE of 8 samples."""
    if kind == "normal":
        return 1 + sd * rng.gauss(0, 1)
    if kind == "lognormal":
        return math.exp(sd * rng.gauss(0, 1))
    return sum(rng.gauss(0, 1) ** 2 for _ in range(8)) / 8          # "chi2": sd 0.5, skewed


def noisy_u(kind: str, sd: float, seed: int, *, fall_lr: float = 1e-3, min_lr: float = 3e-2, floor: float = 0.35,
            rebound: float = 1.4) -> list[float]:
    """A regression sweep at a small batch: flat at 1.0 (the constant prediction) up to `fall_lr`, a fall to
    `floor` at `min_lr`, then a chaotic climb to `rebound` x the start -- never 4x its best -- all under
    multiplicative batch noise."""
    rng = random.Random(seed)
    a, b = math.log10(fall_lr), math.log10(min_lr)
    out = []
    for lr in LRS:
        x = math.log10(lr)
        if x <= a:
            level = 1.0
        elif x <= b:
            level = 1 - (1 - floor) * (x - a) / (b - a)
        else:
            level = min(rebound, floor + (rebound - floor) * (x - b) / 0.7)
        out.append(level * noise(kind, sd, rng))
    return out


@pytest.mark.parametrize("seed", ["seed7", "seed8"])
def test_recorded_noisy_flat_start_is_not_cut(seed):
    """The failure: two real sweeps were stopped in their flat start (batch noise read as a fall and a
    rebound) and suggested 3.9e-5 and 1.1e-6. Their prefixes up to the old stop are not cut now, and the
    whole sweep is read where the loss really fell (the other 8 seeds: 2.3e-3..6.6e-3)."""
    data = NOISY[seed]
    old_cut = NOISY["old_cut"][seed]
    assert usable_prefix(data["lrs"][:old_cut], data["losses"][:old_cut]) == old_cut
    n = usable_prefix(data["lrs"], data["losses"])
    assert data["lrs"][n - 1] > 1e-1, n                              # past the real fall, not in the flat start
    s = suggest_lr(data["lrs"], data["losses"])
    check_clamp(s)
    assert 1e-3 <= s.min_loss_lr <= 1e-1 and s.lr >= 1e-3, s


@pytest.mark.parametrize("kind, sd", [("normal", 0.15), ("normal", 0.3), ("lognormal", 0.3), ("chi2", 0.5)])
def test_flat_batch_noise_alone_never_cuts_the_sweep(kind, sd):
    """Pure batch noise around a constant loss, 20 seeds each: no fall, so no rebound and no divergence.
    (The cut-off before this fix stopped 14-24% of such sweeps, on average after ~40 steps.)"""
    for seed in range(20):
        rng = random.Random(seed)
        losses = [noise(kind, sd, rng) for _ in range(N)]
        assert usable_prefix(LRS, losses) == N, (kind, sd, seed)


REBOUND_AT = next(i for i, lr in enumerate(LRS) if lr > 3e-2 * 10 ** (0.7 * 0.65 / 1.05))  # noisy_u back at 1.0


@pytest.mark.parametrize("kind, sd, seed", [
    pytest.param(kind, sd, seed, marks=pytest.mark.xfail(strict=True, reason="50% noise: see the docstring"))
    if (kind, seed) == ("chi2", 4) else (kind, sd, seed)
    for kind, sd in [("normal", 0.1), ("normal", 0.25), ("lognormal", 0.25), ("chi2", 0.5)] for seed in range(10)])
def test_noisy_fall_and_rebound_is_read_at_the_fall(kind, sd, seed):
    """A real fall (to 0.35 at 3e-2) and a chaotic rebound under batch noise: never cut before the loss is
    back above its start, and the suggestion comes from the fall, even when lucky low batches sit at
    the very start (chi2 seed 1: the smoothed start was the curve's lowest point: "never fell").
    Known limit: at 50% noise the start level itself (a median of 10) is uncertain by ~20%; chi2 seed 4's
    first ten losses have a median of 0.64 where the noise's is 0.92, and its fall is not seen."""
    losses = noisy_u(kind, sd, seed)
    assert usable_prefix(LRS, losses) >= REBOUND_AT
    s = suggest_lr(LRS, losses)
    check_clamp(s)
    assert 1e-3 <= s.lr <= 1e-2 and 5e-3 <= s.min_loss_lr <= 5e-2, (s.lr, s.reason)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("kind, sd", [("normal", 0.05), ("normal", 0.1), ("lognormal", 0.1)])
def test_rebound_clear_of_the_noise_ends_the_sweep(kind, sd, seed):
    """With a fall many times the batch noise, the rebound ends the sweep within ~1.2 decades of the loss
    climbing back above its start. (Under heavier noise -- 25% -- a fall of 65% may not count as clear:
    the sweep then runs on to divergence or its end, a few more steps at most.)"""
    n = usable_prefix(LRS, noisy_u(kind, sd, seed))
    assert REBOUND_AT <= n <= REBOUND_AT + 15, (n, REBOUND_AT)


@pytest.mark.parametrize("kind, sd", [("normal", 0.25), ("chi2", 0.5)])
def test_noisy_sweep_that_blows_up_is_cut_within_a_few_steps(kind, sd):
    """Noise does not slow the divergence stop: losses growing 10x per step end the sweep within 3 steps."""
    for seed in range(10):
        rng = random.Random(seed)
        losses = [noise(kind, sd, rng) * (1.0 if i < 70 else 10.0 ** (i - 69)) for i in range(N)]
        assert 70 <= usable_prefix(LRS, losses) <= 73, seed


@pytest.mark.parametrize("kind, sd", [("normal", 0.25), ("chi2", 0.5)])
def test_cut_off_is_causal(kind, sd):
    """The range test stops at the first prefix that usable_prefix cuts, and suggest_lr then reads the
    recorded sweep again: both must agree, i.e. the cut of a prefix is the cut of the whole sweep."""
    for seed in range(5):
        losses = noisy_u(kind, sd, seed)
        whole = usable_prefix(LRS, losses)
        for m in range(1, N + 1):
            assert usable_prefix(LRS[:m], losses[:m]) == min(m, whole), (seed, m, whole)
