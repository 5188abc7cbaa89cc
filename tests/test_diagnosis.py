"""The training diagnosis on scripted histories and event logs."""

import math

import pytest

from converge.decide import diagnosis, significance


def diagnose(*args, **kwargs) -> list[dict]:
    """The findings as summary.json holds them."""
    return [f.to_dict() for f in diagnosis.diagnose_run(*args, **kwargs)]


def live_findings(*args, **kwargs) -> list[dict]:
    return [f.to_dict() for f in diagnosis.live_findings(*args, **kwargs)]


def history(train, val, lr=1e-3):
    return [{"epoch": i + 1, "lr": lr, "train_loss": t, "val_loss": v} for i, (t, v) in enumerate(zip(train, val))]


def codes(train, val, events=(), status="converged", baseline=None, patience=3, max_epochs=100):
    found = diagnose(history(train, val), list(events), status=status, monitor="val_loss", mode="min",
                     patience=patience, max_epochs=max_epochs, weight_decay=0.01, baseline_loss=baseline)
    for item in found:
        assert set(item) == {"code", "severity", "message", "evidence", "fix"} and item["message"]
    return [item["code"] for item in found]


DECLINE = [1.0, 0.7, 0.5, 0.4, 0.35, 0.33, 0.32, 0.32, 0.32]


@pytest.mark.parametrize("train, val, events, status, baseline, expected", [
    # a healthy run that converged
    (DECLINE, [v * 1.05 for v in DECLINE], [], "converged", 1.0, ["converged"]),
    # still improving when the epoch cap hit
    (DECLINE[:5], DECLINE[:5], [], "max_epochs", None, ["still_improving"]),
    # capped on a plateau: not "still improving"
    ([1.0, 0.5] + [0.5] * 6, [1.0, 0.5] + [0.5] * 6, [], "max_epochs", None, []),
    # validation rising while training falls
    ([1.0, 0.6, 0.4, 0.25, 0.15, 0.1, 0.06], [1.0, 0.8, 0.7, 0.75, 0.85, 0.95, 1.1], [], "converged", None,
     ["converged", "overfitting"]),
    # a loss near zero that wobbles by 30 %: noise, not overfitting
    ([1.0, 0.1, 0.01, 0.005, 0.003, 0.002, 0.001], [1.0, 0.1, 0.01, 0.012, 0.013, 0.013, 0.013], [], "converged",
     None, ["converged"]),
    # validation rising but training flat too: not overfitting
    ([1.0, 0.6, 0.5, 0.5, 0.5, 0.5], [1.0, 0.8, 0.7, 0.8, 0.9, 1.0], [], "converged", None, ["converged"]),
    # a Gaussian NLL below zero: its rise and fall are shares of what it gained from the first epoch (a
    # heteroscedastic MLP on 300 rows: validation -0.43 -> +0.24 while training fell -0.55 -> -1.10)
    ([0.38, -0.22, -0.38, -0.55, -0.62, -0.69, -0.73, -0.9, -1.1], [0.08, -0.27, -0.36, -0.43, -0.28, -0.1, 0.1,
                                                                    0.27, 0.24], [], "converged", None,
     ["converged", "overfitting"]),
    # ... a wobble of 1 % of that fall is noise
    ([1.0, -0.5, -0.8, -0.9, -1.0, -1.05, -1.1], [1.0, -0.5, -0.8, -0.85, -0.83, -0.82, -0.83], [], "converged",
     None, ["converged"]),
    # ... and a rise while the training loss stays where it was is not overfitting
    ([1.0, -0.5, -0.8, -0.9, -0.9, -0.9, -0.9], [1.0, -0.5, -0.8, -0.85, -0.6, -0.4, -0.3], [], "converged", None,
     ["converged"]),
    # training loss stuck at the constant-prediction loss: it learned nothing, and is never called converged
    # (issue 12: was "underfitting")
    ([0.70, 0.69, 0.69, 0.69, 0.69], [0.70, 0.69, 0.69, 0.69, 0.69], [], "converged", math.log(2),
     ["collapsed"]),
    # training loss well below the constant's but still above half of it: without a reference model that is
    # not underfitting (labels drawn from a logistic model, under a BCE with pos_weight 3: 66 % of the
    # constant's loss, within 3 % of the true model's, was called so); with one, `test_judgement` says when
    ([0.60, 0.45, 0.42, 0.42], [0.60, 0.46, 0.43, 0.43], [], "converged", math.log(2), ["converged"]),
    # nor when the model fits its training data better than validation (a GRU over packed traces: 0.434
    # against 0.491)
    ([0.69, 0.6, 0.5, 0.45, 0.434], [0.69, 0.6, 0.52, 0.491, 0.495], [], "converged", math.log(2), ["converged"]),
    # a high loss with a large gap is not underfitting (issue 12: validation was 1.2, above the constant
    # prediction's loss, which is now a collapse; 0.6 keeps what this case pins)
    ([0.5, 0.45, 0.45, 0.45], [0.6, 0.6, 0.6, 0.6], [], "converged", math.log(2), ["converged"]),
    # oscillating training loss, and the validation loss of the weights it throws about
    ([1.0, 1.5, 0.9, 1.4, 0.8, 1.3, 0.9], [1.0, 1.4, 1.0, 1.3, 0.9, 1.2, 1.0], [], "converged", None,
     ["converged", "lr_too_high"]),
    # the training loss alone jumps (dropout, small batches), the validation loss goes smoothly down: noise
    # (a BatchNorm1d and dropout on raw breast-cancer features, seed 0, rounded)
    ([0.30, 0.14, 0.18, 0.15, 0.15, 0.11, 0.08, 0.19, 0.07, 0.09, 0.13, 0.10, 0.08, 0.10, 0.13, 0.10],
     [0.21, 0.080, 0.074, 0.075, 0.086, 0.081, 0.066, 0.101, 0.074, 0.065, 0.062, 0.076, 0.073, 0.078, 0.069,
      0.070], [], "converged", None, ["converged"]),
    # the same wobble 1000x below where the loss started (a Conv1d at 100 % accuracy): noise, not the LR
    ([0.8, 0.1, 0.01, 0.0036, 0.0053, 0.0016, 0.0026, 0.0011, 0.0015, 0.0006, 0.0064, 0.0008, 0.0009],
     [0.2, 0.02, 0.005, 0.002, 0.001, 0.001, 0.0008, 0.0009, 0.0005, 0.0006, 0.0009, 0.0005, 0.0005], [],
     "converged", None, ["converged"]),
    # ...while a wobble at the start's scale still counts
    ([0.8, 0.3, 0.45, 0.25, 0.4, 0.2, 0.35, 0.2], [0.5, 0.3, 0.4, 0.3, 0.4, 0.3, 0.4, 0.3], [], "converged", None,
     ["converged", "lr_too_high"]),
    # repeated rollbacks
    (DECLINE, DECLINE, [{"event": "rollback", "epoch": 1, "new_lr": 0.1}] * 2, "converged", None,
     ["converged", "lr_too_high"]),
    # one rollback is an incident, not a verdict on the LR
    (DECLINE, DECLINE, [{"event": "rollback", "epoch": 1, "new_lr": 0.1}], "converged", None, ["converged"]),
    (DECLINE[:3], DECLINE[:3], [{"event": "diverged", "reason": "the loss exploded", "lr": 0.5}], "diverged", None,
     ["diverged"]),
])
def test_scripted_runs(train, val, events, status, baseline, expected):
    assert codes(train, val, events, status, baseline) == expected


def test_evidence_and_fix_carry_the_numbers():
    found = diagnose(history([1.0, 0.6, 0.4, 0.25, 0.15, 0.1, 0.06], [1.0, 0.8, 0.7, 0.75, 0.85, 0.95, 1.1]), [],
                     status="converged", monitor="val_loss", mode="min", patience=3, max_epochs=10,
                     weight_decay=0.01)
    overfit = next(f for f in found if f["code"] == "overfitting")
    assert overfit["evidence"]["best_val_epoch"] == 3 and overfit["evidence"]["val_loss_last"] == 1.1
    assert "--weight-decay" in overfit["fix"] and "epoch 3" in overfit["fix"]
    capped = diagnose(history(DECLINE[:5], DECLINE[:5]), [], status="max_epochs", monitor="val_loss", mode="min",
                      patience=3, max_epochs=5)
    assert "--max-epochs" in capped[0]["fix"] and capped[0]["evidence"]["best_epoch"] == 5
    diverged = diagnose(history([1.0], [1.0]), [{"event": "diverged", "reason": "r", "lr": 0.5}], status="diverged",
                        monitor="val_loss", mode="min", patience=3, max_epochs=5)
    assert "--lr 0.05" in diverged[0]["fix"]


def test_rollbacks_suggest_the_lr_the_guard_settled_on():
    events = [{"event": "rollback", "epoch": 1, "new_lr": 0.05}, {"event": "rollback", "epoch": 1, "new_lr": 0.0125}]
    found = live_findings(history(DECLINE, DECLINE), events)
    assert found[0]["code"] == "lr_too_high" and "--lr 0.0125" in found[0]["fix"]


def test_max_mode_monitor_and_non_finite_values():
    rows = [{"epoch": i + 1, "lr": 1e-3, "train_loss": t, "val_loss": v, "val_accuracy": a}
            for i, (t, v, a) in enumerate([(1.0, 1.0, 0.5), (math.nan, math.nan, math.nan), (0.5, 0.6, 0.8)])]
    found = diagnose(rows, [], status="max_epochs", monitor="val_accuracy", mode="max", patience=3, max_epochs=3)
    assert found[0]["code"] == "still_improving" and found[0]["evidence"]["best"] == 0.8


def test_live_findings_leave_out_status_and_underfitting():
    assert live_findings(history([0.7] * 4, [0.7] * 4), []) == []


# --- every text names the epoch whose weights are kept (issue 20, item 4) ------------------------------------
OVERFIT_TRAIN = [1.0, 0.6, 0.4, 0.25, 0.15, 0.1, 0.06]
OVERFIT_VAL = [1.0, 0.8, 0.7, 0.75, 0.85, 0.95, 1.1]


@pytest.mark.parametrize("f1, monitor, mode, kept", [
    # the run monitors a macro-F1 that peaks after the validation loss's minimum (epoch 3): epoch 6 is kept
    ([0.3, 0.5, 0.6, 0.65, 0.7, 0.72, 0.71], "val_f1", "max", 6),
    ([0.3, 0.5, 0.6, 0.65, 0.7, 0.72, 0.71], "val_loss", "min", 3),
    ([0.3, 0.9, 0.6, 0.65, 0.7, 0.72, 0.71], "val_f1", "max", 2),
])
def test_the_overfitting_fix_names_the_kept_epoch(f1, monitor, mode, kept):
    rows = [{**row, "val_f1": value} for row, value in zip(history(OVERFIT_TRAIN, OVERFIT_VAL), f1)]
    found = diagnose(rows, [], status="converged", monitor=monitor, mode=mode, patience=3, max_epochs=10,
                     weight_decay=0.01)
    overfit = next(f for f in found if f["code"] == "overfitting")
    assert f"epoch {kept} " in overfit["fix"] and overfit["evidence"]["kept_epoch"] == kept
    assert overfit["evidence"]["best_val_epoch"] == 3          # the rise is still measured from the loss's minimum
    assert f"epoch {kept})" in found[0]["fix"] or found[0]["code"] != "converged"
    live = live_findings(rows, [], weight_decay=0.01, monitor=monitor, mode=mode)
    assert f"epoch {kept} " in next(f for f in live if f["code"] == "overfitting")["fix"]


def test_the_gap_rule_judges_the_kept_epoch():
    """A gap is measured at the kept epoch's row (when no evaluation of the kept weights is given)."""
    rows = [{**row, "val_f1": f1} for row, f1 in
            zip(history([1.0, 0.5, 0.2, 0.1, 0.05], [1.0, 0.6, 0.5, 0.5, 0.52]), [0.2, 0.5, 0.6, 0.62, 0.7])]
    found = diagnose(rows, [], status="converged", monitor="val_f1", mode="max", patience=3, max_epochs=10,
                     weight_decay=0.01, baseline_loss=1.0)
    gap = next(f for f in found if f["code"] == "overfitting")
    assert "kept epoch (5)" in gap["message"] and gap["evidence"]["train_loss"] == 0.05


# --- the converged text counts the cuts the way the stop reason does (issue 20, item 5) --------------------
@pytest.mark.parametrize("cut_epochs, said", [
    ([], "with no LR cut after it"),
    ([7], "despite 1 LR cut(s) after it"),
    ([2, 3, 4, 7], "despite 1 LR cut(s) after it (4 in the whole run)"),
    ([2, 3], "with no LR cut after it (2 in the whole run)"),
])
def test_the_converged_text_counts_the_cuts_after_the_best_epoch(cut_epochs, said):
    losses = [1.0, 0.8, 0.6, 0.5, 0.45, 0.45, 0.45, 0.45, 0.45]      # best at epoch 5
    events = [{"event": "lr_reduced", "epoch": e} for e in cut_epochs]
    found = diagnose(history(losses, losses), events, status="converged", monitor="val_loss", mode="min",
                     patience=3, max_epochs=100)
    assert found[0]["code"] == "converged" and found[0]["message"].endswith(said)
    assert found[0]["evidence"]["lr_cuts"] == len(cut_epochs) and "epoch 5" in found[0]["fix"]


def test_overfitting_that_restarts_from_the_best_weights_hid_is_still_named():
    """An LSTM (bench/newuser/lstm_reviews.py, seed 2): its validation loss rose 28 % while the training loss
    fell 69 %, and the LR cut went on from the best weights; so did the next two. The last epoch ends 2 % above
    the best, so the rise from the best to the last epoch no longer shows it; the history at a restart does."""
    train = [0.690, 0.680, 0.659, 0.609, 0.534, 0.454, 0.395, 0.316, 0.251, 0.188, 0.159, 0.124,
             0.302, 0.271, 0.246, 0.226, 0.204, 0.184, 0.168, 0.271, 0.264, 0.256, 0.248, 0.251]
    val = [0.689, 0.686, 0.671, 0.637, 0.606, 0.586, 0.562, 0.631, 0.601, 0.626, 0.756, 0.721,
           0.548, 0.574, 0.579, 0.618, 0.616, 0.676, 0.677, 0.553, 0.552, 0.559, 0.566, 0.560]
    restarts = [{"event": "restarted_from_best", "epoch": 12, "best_epoch": 7},
                {"event": "restarted_from_best", "epoch": 19, "best_epoch": 13}]
    assert codes(train, val, events=restarts, baseline=0.689) == ["converged", "overfitting"]
    found = diagnose(history(train, val), restarts, status="converged", monitor="val_loss", mode="min", patience=5,
                     max_epochs=100, weight_decay=0.01, baseline_loss=0.689)
    evidence = next(f for f in found if f["code"] == "overfitting")["evidence"]
    # the larger of the two rises: up to epoch 12, from epoch 7's 0.562 to 0.721
    assert (evidence["best_val_epoch"], evidence["val_loss_last"], evidence["val_rise"]) == (7, 0.721, 0.2829)
    # without the restarts' record the same history ends near its best: the end alone says nothing
    assert codes(train, val, baseline=0.689) == ["converged"]


def test_a_small_rise_before_a_restart_is_noise_at_the_larger_lr():
    """At LR 4.9e-3 a regression's validation loss swung 1.46 -> 2.32 -> 1.73 and later went below its best:
    13 % above the best at the restart is not called overfitting (the end's rule would have asked 10 %)."""
    train = [3.0, 2.2, 1.8, 1.6, 1.5, 1.4, 1.35, 1.3, 1.25, 1.2, 1.08, 0.98, 1.08, 0.92, 0.94, 0.98, 0.864,
             0.868, 0.848, 0.826, 0.776, 0.755]
    val = [3.1, 2.4, 2.0, 1.9, 1.8, 1.7, 1.65, 1.6, 1.55, 1.50, 1.465, 1.643, 1.602, 1.622, 1.612, 1.593,
           1.70, 1.658, 1.397, 1.493, 1.469, 1.423]
    restart = [{"event": "restarted_from_best", "epoch": 18, "best_epoch": 11}]
    assert codes(train, val, events=restart) == ["converged"]


def test_a_negative_loss_that_overfits_says_from_where_to_where():
    train = [0.38, -0.22, -0.38, -0.55, -0.62, -0.69, -0.73]
    val = [0.08, -0.27, -0.36, -0.43, -0.28, -0.1, 0.1]
    found = diagnose(history(train, val), [], status="converged", monitor="val_loss", mode="min", patience=3,
                     max_epochs=100, weight_decay=0.01, baseline_loss=None)
    overfit = next(f for f in found if f["code"] == "overfitting")
    assert "from -0.43 to 0.1 after epoch 4" in overfit["message"]
    assert overfit["evidence"]["val_rise"] == pytest.approx(0.53 / 0.81, abs=1e-4)      # of 0.38 - (-0.43)
    assert overfit["evidence"]["train_fall"] == pytest.approx(0.18 / 0.93, abs=1e-4)    # of 0.38 - (-0.55)
    assert "measured_as" in overfit["evidence"]
    # an LR cut goes on from the best weights, as for any loss (a Gaussian NLL, 6 seeds: -0.3666 against
    # -0.3579 going on from where it was)
    drift = diagnosis.overfitted_since_best(history(train, val))
    assert drift is not None and drift["val_rise"] == pytest.approx(0.53 / 0.81, abs=1e-4)


# --- a rise measured against the validation split's noise (converge.decide.significance) ---------------
BREAST_TRAIN = [0.2017, 0.0685, 0.0530, 0.0430, 0.0588, 0.0376, 0.0787, 0.0620, 0.0568, 0.0506, 0.0468]
BREAST_VAL = [0.0531, 0.0802, 0.0729, 0.0874, 0.0782, 0.1080, 0.0674, 0.0631, 0.0618, 0.0672, 0.0683]


def _rise(t: float, parts: int = 16) -> significance.PairedRise:
    return significance.PairedRise(rise=t * 0.01, standard_error=0.01, parts=parts)


@pytest.mark.parametrize("test, named, named_live", [
    (None, True, True),          # not measured (a front door that cannot score weights): the thresholds alone
    (_rise(1.0), False, False),  # the breast-cancer run's end: 1.0 standard errors, its test loss +1.5 %
    (_rise(1.75), False, False),  # just under the one-sided 5 % t of 15 degrees of freedom (1.753)
    # a binary task whose test loss rose 27 % with its validation loss; live, this history's rise has been
    # tested at 8 epochs, and the eighth look must pass the 0.625 % level (2.837)
    (_rise(2.48), True, False),
    (_rise(2.9), True, True),
    (_rise(2.0, parts=4), False, False),  # 4 parts: 2.353 needed
])
def test_a_rise_within_the_validation_noise_is_not_overfitting(test, named, named_live):
    """bench/newuser/binary_breast_cancer.py (91 validation rows): the validation loss rose 29 % after epoch 1
    while the training loss fell 77 %; scored part by part, the last weights were 1.0 standard errors above
    the kept ones, and the test loss of the last weights was 0.0824 against 0.0812."""
    found = diagnose(history(BREAST_TRAIN, BREAST_VAL), [], status="converged", monitor="val_loss", mode="min",
                     patience=5, max_epochs=100, weight_decay=0.01, rise_test=test)
    overfit = [f for f in found if f["code"] == "overfitting"]
    assert bool(overfit) == named
    if overfit and test is not None:
        assert overfit[0]["evidence"]["rise_significant"] is True
        assert overfit[0]["evidence"]["rise_t"] == pytest.approx(test.t, abs=1e-3)
    live = live_findings(history(BREAST_TRAIN, BREAST_VAL), [], rise_test=test)
    assert any(f["code"] == "overfitting" for f in live) == named_live


def test_the_live_rise_counts_the_epochs_it_was_tested_at():
    """The live diagnosis tests a rise each epoch it passes the thresholds (breast cancer: from epoch 4, the third
    after its best, on; before, no look yet counts as one); each such epoch is a look, and the count starts again
    at a new best."""
    h = history(BREAST_TRAIN, BREAST_VAL)
    assert [diagnosis.rise_looks(h[:k]) for k in range(2, len(h) + 1)] == [1, 1, 1, 2, 3, 4, 5, 6, 7, 8]
    recovered = history(BREAST_TRAIN + [0.03, 0.029], BREAST_VAL + [0.05, 0.0505])   # a new best, then one epoch
    assert diagnosis.rise_looks(recovered) == 1
    told = live_findings(h[:4], [], rise_test=_rise(1.8))     # the first look: 1.753 needed
    assert [f["evidence"].get("rise_looks") for f in told if f["code"] == "overfitting"] == [None]
    assert not [f for f in live_findings(h[:8], [], rise_test=_rise(1.8)) if f["code"] == "overfitting"]


def test_a_restart_whose_rise_was_within_the_noise_is_not_overfitting():
    """The rise as the history stood at a restart from the best weights is evidence only when the test made
    at the cut (kept in the event) did not find it within the noise; an event from before the test counts."""
    train = [0.690, 0.680, 0.659, 0.609, 0.534, 0.454, 0.395, 0.316, 0.251, 0.188, 0.159, 0.124,
             0.302, 0.271, 0.246, 0.226, 0.204, 0.184, 0.168, 0.271, 0.264, 0.256, 0.248, 0.251]
    val = [0.689, 0.686, 0.671, 0.637, 0.606, 0.586, 0.562, 0.631, 0.601, 0.626, 0.756, 0.721,
           0.548, 0.574, 0.579, 0.618, 0.616, 0.676, 0.677, 0.553, 0.552, 0.559, 0.566, 0.560]
    noise = _rise(1.2).evidence()
    real = _rise(4.0).evidence()
    restarts = [{"event": "restarted_from_best", "epoch": 12, "best_epoch": 7, **noise},
                {"event": "restarted_from_best", "epoch": 19, "best_epoch": 13, **noise}]
    assert codes(train, val, events=restarts, baseline=0.689) == ["converged"]
    restarts[0].update(real)
    found = diagnose(history(train, val), restarts, status="converged", monitor="val_loss", mode="min", patience=5,
                     max_epochs=100, weight_decay=0.01, baseline_loss=0.689)
    evidence = next(f for f in found if f["code"] == "overfitting")["evidence"]
    assert evidence["val_loss_last"] == 0.721 and evidence["rise_t"] == 4.0 and evidence["rise_significant"]


def test_a_rise_too_small_for_the_thresholds_is_not_made_one_by_its_test():
    """The test is read only when the rise's thresholds hold: a run at its best is no overfitting whatever the
    parts say."""
    at_best = history([1.0, 0.8, 0.6, 0.5, 0.4], [1.0, 0.8, 0.7, 0.65, 0.6])
    assert "overfitting" not in [f["code"] for f in live_findings(at_best, [], rise_test=_rise(5.0))]
    assert live_findings([], [], rise_test=_rise(5.0)) == []
