"""Issue 12: a run is never misjudged. The collapse rule, the guard's collapse test and the gap-based and
reference-based diagnosis on scripted histories; then planted cases trained for real (seconds each)."""

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

import converge
from converge.decide import collapse as C
from converge.decide import diagnosis as D
from converge.decide.divergence import GuardPolicy, LossWatch
from converge.engine.objective import Objective, constant_prediction_loss
from converge.engine.reference import bottleneck_width, reference_loss
from converge.data import TensorSplit

LN10 = math.log(10)


def rows(train, val, lr=0.1, **extra):
    return [{"epoch": i + 1, "lr": lr if not isinstance(lr, list) else lr[i], "train_loss": t, "val_loss": v,
             **{k: vs[i] for k, vs in extra.items()}} for i, (t, v) in enumerate(zip(train, val))]


def codes(history, events=(), status="converged", baseline=LN10, fit=None, reference=None, patience=3):
    found = D.diagnose_run(history, list(events), status=status, monitor="val_loss", mode="min", patience=patience,
                           max_epochs=100, weight_decay=0.01, baseline_loss=baseline, fit=fit,
                           reference_loss=reference)
    for f in found:
        assert f.message and f.fix and f.severity in ("error", "warning", "info")
    return [f.code for f in found]


DECLINE = [2.2, 1.2, 0.6, 0.35, 0.25, 0.2, 0.18, 0.17, 0.17]
ROLLBACK = {"event": "rollback", "epoch": 1, "lr": 8.0, "new_lr": 4.0}


# --- the collapse rule ------------------------------------------------------------------------------------
@pytest.mark.parametrize("train, val, events, lr, expected", [
    # healthy: no collapse
    (DECLINE, DECLINE, [], 0.1, None),
    # the dead network: a rollback, then the losses sit at ln 10
    ([LN10] * 8, [LN10 + 0.001] * 8, [ROLLBACK], 4.0, ("error", ("lr_too_high",))),
    # the breast-cancer run: an epoch at 47 (a blow-up), then one class for every row
    ([47.0, 0.67, 0.66, 0.66, 0.66, 0.66], [0.8, 0.68, 0.661, 0.661, 0.661, 0.661], [], 0.0138,
     ("error", ("lr_too_high",))),
    # still coming down from the level (an LR too low): not collapsed, still improving
    ([1.1, 1.09, 1.08, 1.07, 1.06], [1.1, 1.09, 1.08, 1.07, 1.06], [], 1e-4, None),
    # at the level from the start, nothing in the history says why
    ([2.31, 2.30, 2.30, 2.30], [2.31, 2.30, 2.30, 2.30], [], 1e-6, ("error", ())),
    # just below the level (5 %): learned a little, not collapsed
    ([2.2, 2.1, 2.1, 2.1], [2.2, 2.15, 2.17, 2.18], [], 0.1, None),
    # validation above the constant's but training far below: overfitting, not "learned nothing"
    ([1.0, 0.3, 0.1, 0.05], [2.3, 2.4, 2.5, 2.6], [], 0.1, None),
    # learned, then fell back to the level for good: a late collapse (the kept weights are older)
    (DECLINE[:5] + [2.3, 2.3, 2.3], DECLINE[:5] + [2.3, 2.3, 2.31], [], 0.1, ("warning", ("lr_too_high",))),
    # one bad epoch back at the level is not lasting
    (DECLINE[:5] + [2.3, 0.3], DECLINE[:5] + [2.3, 0.3], [], 0.1, None),
    # a warmup that raised the LR before the collapse names the LR
    ([2.3] * 4, [2.3] * 4, [], [0.1, 1.0, 3.0, 3.0], ("error", ("lr_too_high",))),
])
def test_collapse_rule(train, val, events, lr, expected):
    # the breast-cancer label entropy, three classes, else ten classes
    baseline = 0.6609 if val[-1] < 1 else math.log(3) if val[0] < 1.2 else LN10
    found = C.collapse(rows(train, val, lr=lr), events, baseline)
    if expected is None:
        assert found is None
    else:
        assert found is not None and ("warning" if found.late else "error", found.causes) == expected


def test_an_lr_too_low_is_still_improving_not_collapsed():
    history = rows([1.1, 1.09, 1.08, 1.07], [1.1, 1.09, 1.08, 1.07], lr=1e-4)
    got = codes(history, status="max_epochs", baseline=math.log(3))
    assert got[0] == "still_improving" and "collapsed" not in got


def test_collapse_needs_a_baseline():
    assert C.collapse(rows([2.3] * 3, [2.3] * 3), [], None) is None
    assert C.collapse(rows([2.3] * 3, [2.3] * 3), [], math.nan) is None
    assert C.collapse([], [], LN10) is None


def test_unscaled_inputs_are_a_cause_unless_standardized():
    found = {"event": "doctor_finding", "code": "unscaled_features", "severity": "warning"}
    applied = {"event": "remedy", "remedy": "standardize_features", "detail": {"applied": True}}
    history = rows([2.3] * 3, [2.3] * 3, lr=1e-3)
    assert C.collapse(history, [found], LN10).causes == ("unscaled_inputs",)
    assert C.collapse(history, [found, applied], LN10).causes == ()


# --- the diagnosis -------------------------------------------------------------------------------------
def test_dead_network_is_collapsed_and_lr_too_high_not_still_improving():
    history = rows([LN10 + 0.01 - i * 1e-4 for i in range(39)], [LN10 + 0.01 - i * 1e-4 for i in range(39)], lr=4.0)
    got = codes(history, [ROLLBACK], status="max_epochs", patience=5)
    assert got == ["collapsed", "lr_too_high"]
    found = D.diagnose_run(history, [ROLLBACK], status="max_epochs", monitor="val_loss", mode="min", patience=5,
                           max_epochs=39, baseline_loss=LN10)
    assert "--lr 0.8" in found[0].fix and found[0].severity == "error"
    assert found[0].evidence["constant_prediction_loss"] == LN10


def test_a_collapsed_run_is_never_called_converged():
    # The plateau rule stopped it (the summary's status says so), but the diagnosis names no "converged".
    got = codes(rows([47.0, 0.67] + [0.66] * 4, [0.8, 0.68] + [0.661] * 4, lr=0.0138), baseline=0.6609)
    assert got == ["collapsed", "lr_too_high"]
    found = D.diagnose_run(rows([0.66] * 4, [0.661] * 4), [{"event": "doctor_finding", "code": "unscaled_features",
                                                           "severity": "warning"}], status="converged",
                           monitor="val_loss", mode="min", patience=3, max_epochs=9, baseline_loss=0.6609)
    assert [f.code for f in found] == ["collapsed"] and "--no-standardize" in found[0].fix


@pytest.mark.parametrize("train, val, fit, reference, expected", [
    # memorization (issue 12): 0.005 vs 0.33, accuracy 100 % vs 92 %
    ([1.5, 0.5, 0.1, 0.02, 0.005], [1.5, 0.6, 0.4, 0.34, 0.33], {"train_loss": 0.005, "train_accuracy": 1.0,
                                                                  "val_loss": 0.33, "val_accuracy": 0.92},
     None, ["converged", "overfitting"]),
    # the same without a fit evaluation: the running training loss of the best epoch is used
    ([1.5, 0.5, 0.1, 0.02, 0.005], [1.5, 0.6, 0.4, 0.34, 0.33], None, None, ["converged", "overfitting"]),
    # a clean digits MLP: 0.02 vs 0.14, 99.9 % vs 96.9 %: only converged
    ([1.0, 0.3, 0.1, 0.04, 0.02], [1.0, 0.35, 0.2, 0.15, 0.14], {"train_loss": 0.02, "train_accuracy": 0.999,
                                                                  "val_loss": 0.14, "val_accuracy": 0.969},
     0.13, ["converged"]),
    # a large loss gap but accuracies within GAP_METRIC: not overfitting
    ([1.5, 0.5, 0.1, 0.02, 0.005], [1.5, 0.6, 0.4, 0.34, 0.33], {"train_loss": 0.005, "train_accuracy": 1.0,
                                                                  "val_loss": 0.33, "val_accuracy": 0.97},
     None, ["converged"]),
    # linear on Friedman #1 (baseline 24): 6.7 on both, a reference MLP reaches 1.5: underfitting
    ([20.0, 9.0, 7.0, 6.8, 6.7], [20.0, 9.0, 7.0, 6.9, 6.7], {"train_loss": 6.6, "val_loss": 6.7}, 1.5,
     ["converged", "underfitting"]),
    # the same numbers without a reference: nothing says what the data allows, so no underfitting
    ([20.0, 9.0, 7.0, 6.8, 6.7], [20.0, 9.0, 7.0, 6.9, 6.7], {"train_loss": 6.6, "val_loss": 6.7}, None,
     ["converged"]),
    # as good as the reference: nothing to say
    ([20.0, 9.0, 3.0, 1.6, 1.5], [20.0, 9.0, 3.0, 1.7, 1.6], {"train_loss": 1.3, "val_loss": 1.6}, 1.5,
     ["converged"]),
    # twice the reference but a tiny absolute difference (below UNDERFIT_REFERENCE_GAP of the constant's)
    ([20.0, 9.0, 3.0, 0.5, 0.4], [20.0, 9.0, 3.0, 0.5, 0.4], {"train_loss": 0.4, "val_loss": 0.4}, 0.15,
     ["converged"]),
    # worse than the reference but with a gap: overfitting's business, not underfitting
    ([20.0, 9.0, 2.0, 1.0, 0.5], [20.0, 9.0, 6.0, 6.0, 6.0], {"train_loss": 0.5, "val_loss": 6.0}, 1.5,
     ["converged", "overfitting"]),
])
def test_gap_and_reference_rules(train, val, fit, reference, expected):
    baseline = 24.0 if train[0] == 20.0 else LN10
    assert codes(rows(train, val), fit=fit, reference=reference, baseline=baseline) == expected


def test_every_finding_that_applies_is_named():
    # collapsed late, after rollbacks: collapsed (warning) and lr_too_high, beside converged
    history = rows(DECLINE[:5] + [2.3, 2.3, 2.3], DECLINE[:5] + [2.3, 2.3, 2.31])
    got = codes(history, [ROLLBACK, ROLLBACK])
    assert got == ["converged", "collapsed", "lr_too_high"]


def test_thresholds_are_consistent():
    assert 0 < C.FIT_SHARE < C.COLLAPSE_SHARE < 1 and D.GAP_RATIO > D.UNDERFIT_GAP
    assert D.SEVERITY["collapsed"] == "error"


# --- the guard's collapse test ---------------------------------------------------------------------------
def decline(n, start=2.3, end=0.3, noise=0.2, seed=0):
    rng = random.Random(seed)
    return [start * (end / start) ** (i / n) * math.exp(rng.gauss(0, noise)) for i in range(n)]


def first_alarm(values, baseline=LN10, **policy):
    watch = LossWatch(GuardPolicy(baseline=baseline, **policy))
    for index, value in enumerate(values):
        alarm = watch.update(value)
        if alarm is not None:
            return index, alarm.kind
    return None


def at_level(n, seed=1, low=0.8):
    """A stretch at the constant level: the first loss at it, then noise between ``low`` and 1.3 times it."""
    rng = random.Random(seed)
    return [LN10 * 1.1] + [LN10 * rng.uniform(low, 1.3) for _ in range(n - 1)]


@pytest.mark.parametrize("values, baseline, expected", [
    # learned, then a sudden lasting jump to ln 10: a collapse after collapse_steps losses
    (decline(100) + at_level(40), LN10, (115, "collapse")),
    # the same without a baseline: the test is off (and nothing else fires: no spike that large)
    (decline(100) + at_level(40), None, None),
    # never learned (a run that starts and stays at the level): not the guard's business
    (at_level(120), LN10, None),
    # a short excursion to the level and back: noise
    (decline(100) + at_level(8) + decline(40, start=0.3, end=0.25), LN10, None),
    # a healthy run never raises it
    (decline(300, end=0.05, noise=0.5), LN10, None),
])
def test_guard_collapse(values, baseline, expected):
    assert first_alarm(values, baseline=baseline) == expected


def test_guard_collapse_state_round_trip():
    values = decline(100) + at_level(40)
    first = LossWatch(GuardPolicy(baseline=LN10))
    assert all(first.update(v) is None for v in values[:108])
    assert first.held  # in the middle of a stretch
    second = LossWatch()
    second.load_state_dict(first.state_dict())
    alarms = [second.update(v) for v in values[108:]]
    assert next(i for i, a in enumerate(alarms) if a is not None) + 108 == 115 and alarms[7].kind == "collapse"


@pytest.mark.parametrize("bad", [dict(baseline=0.0), dict(baseline=math.nan), dict(learned_share=0.99),
                                 dict(collapse_steps=0), dict(near_share=0.3)])
def test_guard_policy_rejects_bad_collapse_settings(bad):
    with pytest.raises(ValueError):
        GuardPolicy(**bad)


# --- the reference model -------------------------------------------------------------------------------------
def test_reference_tells_what_the_data_allows():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(600, 5, generator=g)
    y = (torch.sin(6 * x[:, 0]) * 3 + 2 * x[:, 1] ** 2)[:, None]
    objective = Objective(lambda s, t: nn.functional.mse_loss(s, t), "regression", {})
    splits = {"train": TensorSplit(x[:400], y[:400], "train"), "val": TensorSplit(x[400:], y[400:], "val")}
    ref = reference_loss(splits, objective, seed=0)
    constant = constant_prediction_loss(y[:400], objective)
    assert ref is not None and ref < 0.5 * constant
    assert reference_loss(splits, objective, seed=0) == ref           # deterministic
    state = torch.random.get_rng_state()
    reference_loss(splits, objective, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())           # the run's RNG is untouched
    custom = Objective(lambda s, t: (s - t).abs().mean(), "custom", {}, known_loss=False)
    assert reference_loss(splits, custom) is None


class _DictInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 4)

    def forward(self, batch):
        if not isinstance(batch, dict):
            raise TypeError("this model takes dict batches")
        return self.linear(batch["x"])


def _seq(*sizes):
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


@pytest.mark.parametrize("model, rows, expected", [
    (_seq(64, 32, 8, 32, 64), (64,), 8),            # an autoencoder's code layer
    (_seq(64, 128, 128, 10), (64,), None),          # no layer narrower than both the input and the output
    (_seq(64, 4, 10), (64,), 4),                    # a classifier squeezed through 4 units: as narrow
    (_seq(10, 16, 1), (10,), None),                 # one output: nothing is narrower than it
    (nn.Sequential(nn.Flatten(), _seq(64, 6, 64)), (8, 8), 6),   # image-shaped inputs, flattened by the model
    (_DictInput(), (64,), None),                    # a model that cannot run on the tensor alone: no width known
    (None, (64,), None),
])
def test_bottleneck_width(model, rows, expected):
    assert bottleneck_width(model, torch.rand(2, *rows)) == expected
    assert model is None or model.training                     # the mode is put back


def test_the_reference_is_no_wider_than_an_autoencoders_code():
    """Issue 20 item 3: a 64-unit reference copies digits through (MSE ~0.001) where the user's 8-unit code
    cannot; the reference through the same width is the fair yardstick (and underfitting is not claimed)."""
    from sklearn.datasets import load_digits
    x = torch.tensor(load_digits().data[:900], dtype=torch.float32) / 16
    splits = {"train": TensorSplit(x[:700], x[:700], "train"), "val": TensorSplit(x[700:], x[700:], "val")}
    objective = Objective(lambda s, t: nn.functional.mse_loss(s, t), "regression", {})
    wide = reference_loss(splits, objective, seed=0)
    through_code = reference_loss(splits, objective, seed=0, model=_seq(64, 32, 8, 32, 64))
    assert through_code > 5 * wide
    assert reference_loss(splits, objective, seed=0, model=_seq(64, 128, 64)) == wide


# --- planted cases, trained for real ------------------------------------------------------------------------
def _digits(train_rows=None, seed=0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    if train_rows:
        x_tr, y_tr = x_tr[:train_rows], y_tr[:train_rows]
    return (x_tr, y_tr), (x_va, y_va)


def _mlp(inputs, width, outputs):
    torch.manual_seed(0)   # the planted runs are chaotic (SGD at LR 8): their weights must not depend on what ran before
    return nn.Sequential(nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, outputs))


def _fit(model, splits, **options):
    torch.manual_seed(0)
    result = converge.fit(model, *splits, seed=0, batch_size=32, verbose=False, **options)
    return result, [f["code"] for f in result.summary["diagnosis"]]


def test_planted_dead_network():
    result, got = _fit(_mlp(64, 128, 10), _digits(), optimizer="sgd", lr=8.0, max_epochs=15)
    assert "collapsed" in got and "lr_too_high" in got and "still_improving" not in got
    assert result.summary["yardsticks"]["constant_prediction_loss"] == pytest.approx(LN10, abs=0.01)


def test_planted_memorization():
    result, got = _fit(_mlp(64, 1024, 10), _digits(train_rows=120), optimizer="adamw", lr=1e-3, max_epochs=60)
    assert "overfitting" in got and "collapsed" not in got
    assert result.summary["train"]["accuracy"] > result.summary["best"]["val_accuracy"] + 0.05


def test_planted_linear_on_nonlinear():
    from sklearn.datasets import make_friedman1
    x, y = make_friedman1(n_samples=1200, noise=1.0, random_state=0)
    x, y = x.astype(np.float32), y.astype(np.float32)[:, None]
    result, got = _fit(nn.Linear(10, 1), ((x[:900], y[:900]), (x[900:], y[900:])), optimizer="adamw", lr=3e-2,
                       max_epochs=60)
    assert "underfitting" in got, result.summary["diagnosis"]
    yard = result.summary["yardsticks"]
    assert yard["reference_val_loss"] * 2 < result.summary["best"]["val_loss"] < yard["constant_prediction_loss"]


def _logistic_labels(rows, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, generator=g)
    y = (torch.rand(rows, generator=g) < torch.sigmoid(x @ torch.tensor([1.0, -0.5, 0.8, 0.0]) - 1.5)).float()
    return x, y[:, None]


def test_noisy_labels_under_a_weighted_loss_are_not_underfitting():
    """Labels drawn from a logistic model, under the task's BCE with ``pos_weight``: no model can do much
    better than the true one (training loss about 70 % of the constant's), and there used to be no reference
    for a loss with options, so a share of the constant's loss alone said "underfitting". Now the reference
    trains under the same loss and is the yardstick."""
    result, got = _fit(nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 1)),
                       (_logistic_labels(2000, 0), _logistic_labels(600, 1)),
                       loss=nn.BCEWithLogitsLoss(pos_weight=torch.tensor([3.0])), optimizer="adamw", lr=1e-2,
                       max_epochs=40)
    yard = result.summary["yardsticks"]
    assert yard["reference_val_loss"] is not None and "underfitting" not in got, result.summary["diagnosis"]
    assert result.summary["best"]["val_loss"] > 0.5 * yard["constant_prediction_loss"]   # the case it is about


def test_a_linear_model_on_xor_under_a_weighted_loss_is_underfitting():
    """The reference under the task's loss with options still finds a model too small."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1500, 2, generator=g)
    y = ((x[:, 0] * x[:, 1]) > 0).long()
    result, got = _fit(nn.Linear(2, 2), ((x[:1000], y[:1000]), (x[1000:], y[1000:])),
                       loss=nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0])), optimizer="adamw", lr=1e-2,
                       max_epochs=40)
    assert "underfitting" in got, result.summary["diagnosis"]
    assert result.summary["yardsticks"]["reference_val_loss"] * 2 < result.summary["best"]["val_loss"]


def test_planted_clean_run_says_only_converged():
    _, got = _fit(_mlp(64, 128, 10), _digits(), optimizer="adamw", lr=1e-3, max_epochs=60)
    assert got == ["converged"]


@pytest.mark.parametrize("train, val, baseline, expected", [
    ([6.8, 6.7], [6.9, 6.7], 24.0, True),      # train close to validation, far from zero: ask
    ([0.5, 0.01], [0.6, 0.3], LN10, False),    # a gap: the rule cannot fire
    ([0.1, 0.05], [0.1, 0.05], LN10, False),   # already within UNDERFIT_REFERENCE_GAP of zero
    ([6.8, 6.7], [6.9, 6.7], None, False),     # no constant-prediction loss: no rule
])
def test_the_reference_is_built_only_when_the_rule_could_use_it(train, val, baseline, expected):
    assert D.needs_reference(rows(train, val), None, baseline) is expected


# --- the automatic choice ------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss, baseline, expected", [
    (0.661, 0.6609, True), (0.64, 0.6609, True), (0.69, 0.6609, True),   # one class for every row
    (2.0, 0.6609, True),                                                # worse than a constant: nothing learned
    (0.60, 0.6609, False),                                              # learned a little
    (0.661, None, False), (math.nan, 0.6609, False),                    # unknown / blew up (dropped anyway)
])
def test_a_race_arm_no_better_than_a_constant(loss, baseline, expected):
    assert C.no_better_than_constant(loss, baseline) is expected


def test_a_range_test_that_never_left_the_constant_level_is_no_evidence():
    from converge.decide.lr_suggest import suggest_lr
    from converge.choose.auto import _no_evidence_at_level
    from converge.choose.lr_find import RangeTest

    lrs = [1e-7 * 1.2 ** i for i in range(80)]
    falling = [2.3 * (0.2 + 0.8 / (1 + math.exp(i - 40))) for i in range(80)]   # 2.3 -> 0.46
    flat = [47.0 / (1 + i) + 0.661 for i in range(80)]                            # comes down to the entropy only
    for losses, baseline, kept in [(falling, LN10, True), (flat, 0.6609, False), (flat, None, True)]:
        test = RangeTest("sgd", 32, lrs, losses, 0)
        test.suggestion = suggest_lr(lrs, losses)
        assert test.suggestion.ok
        judged = _no_evidence_at_level(test, baseline)
        assert judged.ok is kept and (kept or "constant prediction" in judged.reason)
    assert C.never_learned([2.3, 2.29, math.nan], LN10) and not C.never_learned([2.3, 1.0], LN10)


def test_the_reference_trained_beside_the_run_is_the_one_trained_at_the_end(monkeypatch):
    """On the CPU, with a core idle, the reference trains in a thread beside the run: the same yardstick as when
    it is trained at the end, and the run's own training (its random streams) unchanged."""
    from sklearn.datasets import make_friedman1

    from converge.assembly import Output, assemble, make_config
    from converge.data import make_splits
    from converge.engine.judge import RunJudge

    x, y = make_friedman1(n_samples=1200, noise=1.0, random_state=0)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)[:, None]

    def run():
        torch.manual_seed(0)
        config = make_config(optimizer="adamw", lr=3e-2, weight_decay=0.0, batch_size=32, max_epochs=6,
                             device="cpu", seed=0)
        assembled = assemble(nn.Linear(10, 1), make_splits((x[:900], y[:900]), (x[900:], y[900:])), config,
                             output=Output(None), verbose=False)
        return assembled.trainer, assembled.run()

    monkeypatch.setattr("converge.engine.judge.core_to_spare", lambda: True)  # whatever the machine's load
    monkeypatch.setattr("converge.engine.judge.BESIDE_MIN_PARAMETERS", 1)  # and the model's size
    beside, result = run()
    assert beside.judge._reference is not None  # it trained beside the run, and its value is the one used:
    assert beside.judge._reference.result() == result.summary["yardsticks"]["reference_val_loss"]
    monkeypatch.setattr(RunJudge, "start_reference", lambda self, model, device: None)
    at_end, expected = run()
    assert at_end.judge._reference is None
    assert expected.summary["yardsticks"]["reference_val_loss"] is not None
    assert result.summary["yardsticks"] == expected.summary["yardsticks"]
    assert [(r["train_loss"], r["val_loss"]) for r in result.history] == \
        [(r["train_loss"], r["val_loss"]) for r in expected.history]
    for name, tensor in beside.model.state_dict().items():
        assert torch.equal(tensor, at_end.model.state_dict()[name]), name


@pytest.mark.parametrize("cores, load, threads, beside", [
    (2, 0.9, 1, True),     # one thread on two cores of a quiet machine (bench/memory.py)
    (2, 1.6, 1, False),    # others use the second core
    (2, 0.2, 2, False),    # the run's operations use both cores
    (16, 3.0, 8, True),
])
def test_the_reference_trains_beside_the_run_only_on_an_idle_core(cores, load, threads, beside):
    from converge.engine.judge import idle_beside

    assert idle_beside(cores, load, threads) is beside


def test_only_a_large_model_has_the_reference_beside_it():
    from converge.engine.judge import heavy_enough

    assert not heavy_enough(nn.LSTM(1, 32))   # the forecaster of bench/newuser: its steps hold the lock
    assert heavy_enough(nn.Linear(1024, 1024))


def test_a_run_that_raises_leaves_no_reference_thread_training(monkeypatch):
    """A daemon thread still inside torch when the interpreter exits aborts the process ("terminate called
    without an active exception"): a run that fails early (a full disk at its first checkpoint) must stop
    the reference it started beside itself before the error leaves it."""
    import threading

    from sklearn.datasets import make_friedman1

    from converge.assembly import Output, assemble, make_config
    from converge.data import make_splits

    x, y = make_friedman1(n_samples=4000, noise=1.0, random_state=0)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)[:, None]

    class FailsInItsSecondEpoch(nn.Linear):
        calls = 0

        def forward(self, inputs):
            FailsInItsSecondEpoch.calls += 1
            if FailsInItsSecondEpoch.calls > 120:
                raise OSError(28, "No space left on device")
            return super().forward(inputs)

    monkeypatch.setattr("converge.engine.judge.core_to_spare", lambda: True)
    monkeypatch.setattr("converge.engine.judge.BESIDE_MIN_PARAMETERS", 1)
    started = []
    real_thread_start = threading.Thread.start

    def remember(thread):
        started.append(thread)
        real_thread_start(thread)

    monkeypatch.setattr(threading.Thread, "start", remember)
    config = make_config(optimizer="adamw", lr=1e-2, weight_decay=0.0, batch_size=32, max_epochs=20,
                         device="cpu", seed=0)
    assembled = assemble(FailsInItsSecondEpoch(10, 1), make_splits((x[:3000], y[:3000]), (x[3000:], y[3000:])),
                         config, output=Output(None), verbose=False)
    with pytest.raises(OSError):
        assembled.run()
    references = [thread for thread in started if thread.name == "converge-reference"]
    assert references, "the reference did not train beside the run: the test shows nothing"
    assert not any(thread.is_alive() for thread in references)


@pytest.mark.parametrize("loss, head", [
    (nn.BCELoss(), nn.Sigmoid()),                   # a model ending in a sigmoid: BCE on probabilities
    (nn.NLLLoss(), nn.LogSoftmax(dim=1)),           # one ending in a log-softmax: NLL on log-probabilities
], ids=["bce-probabilities", "nll-log-probabilities"])
def test_the_reference_gives_the_tasks_loss_what_it_reads(loss, head):
    """A new user's model ending in a sigmoid, with nn.BCELoss, lost its finished run at the end: the
    reference fed raw scores to the loss ("all elements of input should be between 0 and 1"). With an NLL
    loss raw scores have no floor, and the reference read as far better than any model could be."""
    from converge.engine.objective import resolve_objective

    g = torch.Generator().manual_seed(0)
    x = torch.randn(900, 6, generator=g) * torch.logspace(-1, 2, 6)
    binary = isinstance(loss, nn.BCELoss)
    z = x[:, 0] * 10 + x[:, 1] / 10
    y = (z > 0).float()[:, None] if binary else (z > 0).long() + (x[:, 2] > 0).long()
    model = nn.Sequential(nn.Linear(6, 3 - binary * 2), head)
    splits = {"train": TensorSplit(x[:600], y[:600], "train"), "val": TensorSplit(x[600:], y[600:], "val")}
    objective = resolve_objective(model, splits, loss, {}, amp="off", device=torch.device("cpu"), probe_size=64)
    assert objective.known_loss
    ref = reference_loss(splits, objective, seed=0)
    constant = constant_prediction_loss(y[:600], objective)
    assert ref is not None and 0 < ref < 0.6 * constant


def test_a_reference_that_fails_does_not_lose_the_finished_run(monkeypatch, tmp_path, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("the yardstick broke\nsecond line")

    monkeypatch.setattr("converge.engine.judge.reference_loss", broken)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=g)
    y = (x[:, 0] > 0).long()
    result = converge.fit(nn.Linear(4, 2), (x[:200], y[:200]), (x[200:], y[200:]), out=tmp_path / "run",
                          max_epochs=3, lr=0.1, optimizer="adamw", batch_size=32, seed=0)
    assert result.summary["yardsticks"]["reference_val_loss"] is None
    assert (tmp_path / "run" / "summary.json").exists()
    assert "the reference model could not be trained (RuntimeError: the yardstick broke)" in capsys.readouterr().err


def test_overfitted_since_best_is_the_overfitting_rise():
    overfit = rows([1.0, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15], [1.0, 0.7, 0.65, 0.7, 0.75, 0.8, 0.85])
    drift = D.overfitted_since_best(overfit)
    assert drift is not None and drift["val_rise"] > 0.1 and drift["train_fall"] > 0.1
    plateau = rows([1.0, 0.6, 0.5, 0.45, 0.44, 0.44, 0.43], [1.0, 0.7, 0.65, 0.66, 0.65, 0.66, 0.66])
    assert D.overfitted_since_best(plateau) is None          # noise around the best: go on from here
    too_soon = rows([1.0, 0.6, 0.5, 0.3], [1.0, 0.7, 0.65, 0.9])
    assert D.overfitted_since_best(too_soon) is None          # fewer than 3 epochs since the best
    # a drift too small for the "overfitting" diagnosis (10 %) still sends the cut back to the best weights
    drifted = rows([1.0, 0.6, 0.5, 0.45, 0.42, 0.4, 0.38], [1.0, 0.7, 0.65, 0.66, 0.66, 0.67, 0.67])
    assert D.overfitted_since_best(drifted) is not None and "overfitting" not in codes(drifted)
    steady = rows([1.0, 0.6, 0.5, 0.49, 0.485, 0.48, 0.48], [1.0, 0.7, 0.65, 0.66, 0.67, 0.67, 0.67])
    assert D.overfitted_since_best(steady) is None            # training no longer falls: a plateau, not a drift


def test_an_lr_cut_after_overfitting_goes_on_from_the_best_weights(tmp_path):
    from _overfit import fit_overfitting

    result = fit_overfitting(tmp_path / "run")
    restarts = [e for e in result.events if e["event"] == "restarted_from_best"]
    cuts = [e for e in result.events if e["event"] == "lr_reduced"]
    assert restarts and cuts, "the planted run did not overfit before its first cut: the test shows nothing"
    first = restarts[0]
    assert first["epoch"] == cuts[0]["epoch"] and first["best_epoch"] < first["epoch"]
    assert first["val_rise"] > 0.1 and first["train_fall"] > 0.1
    assert not [e for e in result.events if e["event"] == "rollback"]   # the jump back up is no blow-up
    # the weights the next epoch starts from are the best ones: its training loss is back near the best
    # epoch's, far above the overfit epoch's
    by_epoch = {r["epoch"]: r for r in result.history}
    assert by_epoch[first["epoch"] + 1]["train_loss"] > 2 * by_epoch[first["epoch"]]["train_loss"]


def test_the_rise_is_measured_against_the_validation_noise_without_changing_the_run(tmp_path, monkeypatch):
    """The planted run's rise is measured part by part while it trains and at its restart (whose event keeps the
    test), it is beyond the noise of 200 validation rows, and the test changes nothing in the run: the same
    epochs with it as without it. Parts that say the rise is noise take the live finding away."""
    from _overfit import fit_overfitting
    from converge.decide import significance
    from converge.engine import loop

    result = fit_overfitting(tmp_path / "run")
    restart = next(e for e in result.events if e["event"] == "restarted_from_best")
    assert restart["rise_significant"] is True and restart["rise_parts"] == 16
    assert restart["rise_t"] > restart["rise_t_needed"] == 1.753
    assert [e for e in result.events if e["event"] == "diagnosis" and e["code"] == "overfitting"]
    # the kept epoch's parts travel in the checkpoint: a resumed run tests as the uninterrupted one
    import torch
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert len(state["val_parts"]["best"]) == 16 and len(state["val_parts"]["last"]) == 16

    monkeypatch.setattr(loop.Trainer, "_rise_test", lambda self: None)
    untested = fit_overfitting(tmp_path / "untested")
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in untested.history] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in result.history]
    assert "rise_t" not in next(e for e in untested.events if e["event"] == "restarted_from_best")

    monkeypatch.setattr(loop.Trainer, "_rise_test", lambda self: significance.paired_rise([0.5, 0.7, 0.6, 0.4],
                                                                                         [0.4, 0.8, 0.5, 0.5]))
    noise = fit_overfitting(tmp_path / "noise")
    assert "overfitting" not in [f["code"] for f in noise.summary["diagnosis"]]
    assert not [e for e in noise.events if e["event"] == "diagnosis" and e["code"] == "overfitting"]


def test_a_run_monitoring_a_metric_tests_the_rise_against_the_weights_it_keeps(tmp_path):
    """Monitored on accuracy, the planted run keeps epoch 6's weights; the rise at its restart is scored against
    them (the weights the user gets), is beyond the noise, and the finding carries the test."""
    from _overfit import fit_overfitting

    result = fit_overfitting(tmp_path / "run", monitor="val_accuracy", mode="max")
    restart = next(e for e in result.events if e["event"] == "restarted_from_best")
    assert restart["monitor"] == "val_accuracy" and restart["rise_significant"] is True
    overfit = next(f for f in result.summary["diagnosis"] if f["code"] == "overfitting")
    assert overfit["evidence"]["rise_t"] == restart["rise_t"]
