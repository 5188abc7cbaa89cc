"""The peers' own test tables, ported onto `converge.Monitor`'s public API (issue 13).

Sources (each test names the file and the test it ports):
  * PyTorch   test/optim/test_lrscheduler.py                       (ReduceLROnPlateau)
  * Lightning tests/tests_pytorch/callbacks/test_early_stopping.py  (EarlyStopping)
  * Keras     keras/src/callbacks/early_stopping_test.py, reduce_lr_on_plateau_test.py

The sequences of values and the expected LRs / stop epochs are the peers'; the code is ours. Their options
are translated into Monitor's once, in the three helpers below, and the documented differences are:

  * Patience. torch's ``patience=p`` acts at the (p+1)-th epoch without improvement; Monitor (like Keras and
    Lightning) acts at the p-th: torch p -> Monitor ``patience=p + 1``. Keras' ``patience=0`` and ``1`` both
    stop at the first epoch without improvement: Keras p -> ``patience=max(p, 1)``.
  * Smoothing. Monitor judges progress on the median of the last 3 values; the peers on the raw value:
    ``window=1``.
  * Stopping. Monitor stops on a plateau only after ``unproductive_cuts`` LR cuts without progress (default 1).
    A pure early stopper (Lightning, Keras EarlyStopping): ``unproductive_cuts=0``. A pure LR scheduler
    (torch, Keras ReduceLROnPlateau) never stops: ``unproductive_cuts`` = a number never reached. Monitor also
    stops, instead of cutting, when no group's LR can go down any more (at its floor, or a cut of ``eps`` or
    less), where torch makes a cut that changes nothing and Keras skips it: after that point torch's and
    Keras' LRs never change again, so the LRs up to the stop are the whole comparison.
  * Thresholds. Lightning's and Keras' ``min_delta`` is an absolute threshold: ``threshold=min_delta,
    threshold_mode="abs"``. Defaults differ: torch ``threshold=1e-4``, ``patience=10``, ``min_lr=0``;
    Keras ReduceLROnPlateau ``min_delta=1e-4``; Lightning ``patience=3``; Monitor ``threshold=1e-3`` (rel),
    ``patience=5``, ``min_lr`` = 1e-3 x each group's LR. The helpers pass the peer's default explicitly.
  * Cooldown. Monitor counts cooldown as torch does: ``cooldown=c`` leaves the c epochs after a cut
    uncounted. Keras' ``cooldown=c`` leaves c - 1 (its counter is decremented before it is tested):
    Keras c -> ``cooldown=max(c - 1, 0)``.
  * Epochs. The peers number epochs from 0; "stops at epoch e" below is the 0-based index of the value on
    which ``step`` returned True.
  * Intended differences (not translated, pinned at the end of this file): with a relative threshold, torch
    compares negative values with ``best * (1 - threshold)``, which counts a slightly *worse* negative value
    as better; Monitor uses ``|best|``. A non-finite value is never progress for Monitor (torch takes +inf in
    mode "max", and -inf in mode "min", as a new best forever). Monitor's best weights follow every new best,
    also one that reaches Lightning's ``stopping_threshold``.

The last part compares Monitor with live ``torch.optim.lr_scheduler.ReduceLROnPlateau`` on random sequences.
"""

import math
import random

import pytest
import torch
from torch import nn

from converge import Monitor
from converge.decide import StopRule

NEVER = 10 ** 9   # unproductive_cuts for a pure LR scheduler: the plateau never stops the run


def torch_like(model, optimizer, *, patience=10, threshold=1e-4, min_lr=0.0, **options):
    """Monitor with torch.optim.lr_scheduler.ReduceLROnPlateau's options and defaults."""
    return Monitor(model, optimizer, patience=patience + 1, threshold=threshold, min_lr=min_lr, window=1,
                   unproductive_cuts=NEVER, check_finite=False, **options)


def lightning_like(model, optimizer, *, patience=3, min_delta=0.0, **options):
    """Monitor with Lightning's EarlyStopping options and defaults (check_finite is on in both)."""
    return Monitor(model, optimizer, patience=patience, threshold=min_delta, threshold_mode="abs", window=1,
                   unproductive_cuts=0, **options)


def keras_early_stopping_like(model, optimizer, *, patience=0, min_delta=0.0, **options):
    """Monitor with keras.callbacks.EarlyStopping's options and defaults."""
    return Monitor(model, optimizer, patience=max(patience, 1), threshold=min_delta, threshold_mode="abs",
                   window=1, unproductive_cuts=0, check_finite=False, **options)


def keras_reduce_lr_like(model, optimizer, *, patience=10, min_delta=1e-4, cooldown=0, min_lr=0.0, **options):
    """Monitor with keras.callbacks.ReduceLROnPlateau's options and defaults."""
    return Monitor(model, optimizer, patience=max(patience, 1), threshold=min_delta, threshold_mode="abs",
                   cooldown=max(cooldown - 1, 0), min_lr=min_lr, window=1, unproductive_cuts=NEVER,
                   check_finite=False, **options)


class SchedulerTestNet(nn.Module):
    """The model of torch's TestLRScheduler: two 1x1 convolutions, one parameter group each."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 1, 1)
        self.conv2 = nn.Conv2d(1, 1, 1)


def torch_setup(lr=0.5):
    """TestLRScheduler.setUp, then the plateau tests' ``param_group["lr"] = 0.5`` for every group."""
    torch.manual_seed(0)
    net = SchedulerTestNet()
    opt = torch.optim.SGD([{"params": net.conv1.parameters()},
                           {"params": net.conv2.parameters(), "lr": torch.tensor(0.5)}], lr=0.05)
    for group in opt.param_groups:
        group["lr"] = lr
    return net, opt


def lrs_per_epoch(monitor, values):
    """Step through the values; return each group's LR after every step, up to and including a stop."""
    seen = []
    for value in values:
        stop = monitor.step(value)
        seen.append([float(g["lr"]) for g in monitor.optimizer.param_groups])
        if stop:
            break
    return seen


def stop_epoch(monitor, values):
    """The 0-based epoch at which step() returned True, or None."""
    for epoch, value in enumerate(values):
        if monitor.step(value):
            return epoch
    return None


# --- PyTorch: test/optim/test_lrscheduler.py ----------------------------------------------------------------

TORCH_TABLE = [
    # (test name, options, metrics, LR targets per epoch for the groups listed)
    ("test_reduce_lr_on_plateau1", dict(threshold_mode="abs", mode="min", threshold=0.01, patience=5, cooldown=5),
     [10 - i * 0.0167 for i in range(20)][:10], [[0.5] * 20]),
    ("test_reduce_lr_on_plateau2", dict(patience=5, cooldown=0, threshold_mode="abs", mode="min", threshold=0.1),
     [10 - i * 0.0165 for i in range(22)], [[0.5] * 6 + [0.05] * 7 + [0.005] * 7 + [0.0005] * 2]),
    ("test_reduce_lr_on_plateau3", dict(mode="max", patience=5, cooldown=5, threshold_mode="abs"),
     [-0.8] * 2 + [-0.234] * 20, [[0.5] * (2 + 6) + [0.05] * (5 + 6) + [0.005] * 4]),
    ("test_reduce_lr_on_plateau4", dict(mode="max", patience=3, threshold_mode="rel", threshold=0.1),
     [1.5 * (1.025 ** i) for i in range(20)], [[0.5] * 20]),
    ("test_reduce_lr_on_plateau5", dict(mode="max", threshold_mode="rel", threshold=0.1, patience=5, cooldown=5),
     [1.5 * (1.005 ** i) for i in range(20)], [[0.5] * 6 + [0.05] * (5 + 6) + [0.005] * 4]),
    ("test_reduce_lr_on_plateau6", dict(mode="min", threshold_mode="rel", threshold=0.1),
     [1.5 * (0.85 ** i) for i in range(20)], [[0.5] * 20]),
    ("test_reduce_lr_on_plateau7", dict(mode="min", threshold_mode="rel", threshold=0.1, patience=5, cooldown=5),
     [1] * 7 + [0.6] + [0.5] * 12, [[0.5] * 6 + [0.05] * (5 + 6) + [0.005] * 4]),
    ("test_reduce_lr_on_plateau8", dict(mode="max", threshold_mode="rel", min_lr=[0.4, 0.3], threshold=0.1,
                                        patience=5, cooldown=5),
     [1.5 * (1.005 ** i) for i in range(20)], [[0.5] * 6 + [0.4] * 14, [0.5] * 6 + [0.3] * 14]),
]


@pytest.mark.parametrize("name, options, metrics, targets", TORCH_TABLE, ids=[row[0] for row in TORCH_TABLE])
def test_torch_reduce_lr_on_plateau_tables(name, options, metrics, targets):
    net, opt = torch_setup()
    seen = lrs_per_epoch(torch_like(net, opt, **options), metrics)
    for group, target in enumerate(targets):
        assert [lrs[group] for lrs in seen] == pytest.approx(target[:len(seen)], abs=1e-5, rel=0), name
    if len(seen) < len(metrics):
        # Only test_reduce_lr_on_plateau8 stops early: both groups sit at their min_lr, where torch's next
        # "cut" (epoch 17) changes nothing; Monitor stops there instead.
        assert name == "test_reduce_lr_on_plateau8" and len(seen) - 1 == 17
        assert all(t[len(seen):] == [t[-1]] * (len(t) - len(seen)) for t in targets)


def test_torch_test_reduce_lr_on_plateau7_cooldown_counts_epochs_after_the_cut():
    """test_reduce_lr_on_plateau7, the case of issue 13 (1): the second cut comes at epoch 17, not 19."""
    net, opt = torch_setup()
    monitor = torch_like(net, opt, mode="min", threshold_mode="rel", threshold=0.1, patience=5, cooldown=5)
    cuts = [epoch for epoch, value in enumerate([1] * 7 + [0.6] + [0.5] * 12)
            if monitor.step(value) is False and monitor.last_applied_.cut]
    assert cuts == [6, 17]


def test_torch_test_reduce_lr_on_plateau_get_last_lr_before_step():
    net, opt = torch_setup()
    assert torch_like(net, opt).get_last_lr() == [0.5, 0.5]


def test_torch_test_reduce_lr_on_plateau_preserves_lr_type():
    """Tensor LRs stay tensors (no recompiles under torch.compile); also when the cut lands on min_lr."""
    torch.manual_seed(0)
    net = SchedulerTestNet()
    opt = torch.optim.SGD([{"params": net.conv1.parameters()},
                           {"params": net.conv2.parameters(), "lr": torch.tensor(0.5)}], lr=0.05)
    types = [type(group["lr"]) for group in opt.param_groups]
    held = opt.param_groups[1]["lr"]
    monitor = torch_like(net, opt, mode="min", patience=0, min_lr=[0.0, 0.2])
    monitor.step(1.0)
    monitor.step(2.0)   # a cut: 0.5 * 0.1 = 0.05 is below group 1's floor, so it lands on 0.2
    assert [type(group["lr"]) for group in opt.param_groups] == types
    assert opt.param_groups[1]["lr"] is held and float(held) == pytest.approx(0.2)


@pytest.mark.parametrize("min_lr", ["scalar", "list"])
def test_torch_test_add_param_group_does_not_break_reduce_lr_on_plateau(min_lr):
    net, opt = torch_setup()
    monitor = torch_like(net, opt, mode="min", threshold_mode="rel", threshold=0.1, patience=5, cooldown=5,
                         min_lr=0 if min_lr == "scalar" else [1e-5, 1e-4])
    target = [0.5] * 6 + [0.05] * (5 + 6) + [0.005] * 4
    metrics = [1] * 7 + [0.6] + [0.5] * 12
    for epoch in range(20):
        if epoch == 8:
            opt.add_param_group({"params": [nn.Parameter(torch.rand(2, 3))], "lr": 0.05})
            if min_lr == "list":
                monitor.min_lrs.append(1e-6)
        monitor.step(metrics[epoch])
        assert opt.param_groups[0]["lr"] == pytest.approx(target[epoch], abs=1e-5, rel=0)


def test_torch_test_add_param_group_errors_reduce_lr_on_plateau():
    """torch raises at the next cut; Monitor at the next step, naming the groups and the floors."""
    net, opt = torch_setup()
    monitor = torch_like(net, opt, mode="min", threshold_mode="rel", threshold=1e-5, patience=0, cooldown=0,
                         min_lr=[1e-5, 1e-4])
    monitor.step(1)
    opt.add_param_group({"params": [nn.Parameter(torch.rand(2, 3))], "lr": 0.05})
    with pytest.raises(ValueError, match=r"3 parameter groups but min_lr has 2 entries"):
        monitor.step(1.3)


COMPOUND = [
    # test name, torch options, the chained scheduler, metrics. torch's own targets for these tests are empty
    # (``targets = targets[1:]``), so Monitor + the same scheduler is compared with live torch instead.
    ("test_compound_reduce_lr_on_plateau1",
     dict(threshold_mode="abs", mode="min", threshold=0.01, patience=5, cooldown=5),
     lambda o: torch.optim.lr_scheduler.StepLR(o, gamma=0.1, step_size=3), [10 - i * 0.0167 for i in range(20)]),
    ("test_compound_reduce_lr_on_plateau2",
     dict(patience=5, cooldown=0, threshold_mode="abs", mode="min", threshold=0.1),
     lambda o: torch.optim.lr_scheduler.MultiStepLR(o, gamma=0.1, milestones=[3, 8, 12]),
     [10 - i * 0.0165 for i in range(22)]),
    ("test_compound_reduce_lr_on_plateau3", dict(mode="max", patience=5, cooldown=5, threshold_mode="abs"),
     lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.1), [-0.8] * 2 + [-0.234] * 20),
    ("test_compound_reduce_lr_on_plateau4", dict(mode="max", patience=3, threshold_mode="rel", threshold=0.1),
     lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 10, 1e-10), [1.5 * (1.025 ** i) for i in range(20)]),
    ("test_compound_reduce_lr_on_plateau5",
     dict(patience=5, cooldown=0, threshold_mode="abs", mode="min", threshold=0.1),
     lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.4, total_iters=4),
     [10 - i * 0.0165 for i in range(22)]),
]


@pytest.mark.parametrize("name, options, chained, metrics", COMPOUND, ids=[row[0] for row in COMPOUND])
def test_torch_compound_reduce_lr_on_plateau_against_live_torch(name, options, chained, metrics):
    net_t, opt_t = torch_setup()
    net_m, opt_m = torch_setup()
    plateau, other_t = torch.optim.lr_scheduler.ReduceLROnPlateau(opt_t, **options), chained(opt_t)
    monitor, other_m = torch_like(net_m, opt_m, **options), chained(opt_m)
    for value in metrics:
        opt_t.step()
        opt_m.step()
        plateau.step(value)
        other_t.step()
        stop = monitor.step(value)
        other_m.step()
        assert [float(g["lr"]) for g in opt_m.param_groups] == pytest.approx(
            [float(g["lr"]) for g in opt_t.param_groups], rel=1e-12, abs=0), name
        if stop:   # the LR reached its floor within eps: torch's plateau cuts would change nothing from here
            break


# --- Lightning: tests/tests_pytorch/callbacks/test_early_stopping.py -----------------------------------------

@pytest.mark.parametrize("test", ["test_early_stopping_patience", "test_early_stopping_patience_train"])
@pytest.mark.parametrize("loss_values, patience, expected_stop_epoch",
                         [([6, 5, 5, 5, 5, 5], 3, 4), ([6, 5, 4, 4, 3, 3], 1, 3), ([6, 5, 6, 5, 5, 5], 3, 4)])
def test_lightning_early_stopping_patience(test, loss_values, patience, expected_stop_epoch):
    net, opt = torch_setup()
    monitor = lightning_like(net, opt, patience=patience)
    assert stop_epoch(monitor, loss_values) == expected_stop_epoch
    assert monitor.last_verdict_.rule == StopRule.PLATEAU


@pytest.mark.parametrize("stopping_threshold, divergence_threshold, losses, expected_epoch, rule", [
    (None, None, [8, 4, 2, 3, 4, 5, 8, 10], 5, StopRule.PLATEAU),
    (2.9, None, [9, 8, 7, 6, 5, 6, 4, 3, 2, 1], 8, StopRule.STOPPING_THRESHOLD),
    (None, 15.9, [9, 4, 2, 16, 32, 64], 3, StopRule.DIVERGENCE_THRESHOLD),
])
def test_lightning_test_early_stopping_thresholds(stopping_threshold, divergence_threshold, losses,
                                                  expected_epoch, rule):
    net, opt = torch_setup()
    monitor = lightning_like(net, opt, stopping_threshold=stopping_threshold,
                             divergence_threshold=divergence_threshold)
    assert stop_epoch(monitor, losses) == expected_epoch
    assert monitor.last_verdict_.rule == rule


@pytest.mark.parametrize("stop_value", [math.inf, math.nan])
def test_lightning_test_early_stopping_on_non_finite_monitor(stop_value):
    net, opt = torch_setup()
    monitor = lightning_like(net, opt, check_finite=True)
    assert stop_epoch(monitor, [4, 3, torch.tensor(stop_value), 2, 1]) == 2
    assert monitor.last_verdict_.rule == StopRule.NON_FINITE and monitor.last_verdict_.diverged


# Lightning's messages -> Monitor's: "did not improve" -> "no significant improvement", "Stopping threshold
# reached" -> "stopping threshold reached", "Divergence threshold reached" -> "divergence threshold",
# "is not finite" -> "the monitored value is nan". EarlyStoppingReason -> Verdict.rule.
LIGHTNING_REASONS = [
    ("ModelWithHighLoss", dict(patience=2), [10.0] * 10, StopRule.PLATEAU, "no significant improvement", 2),
    ("ModelWithDecreasingLoss", dict(stopping_threshold=0.6, mode="min"), [5.0, 3.0, 1.0, 0.5] + [0.1] * 6,
     StopRule.STOPPING_THRESHOLD, "stopping threshold reached", 3),
    ("ModelWithIncreasingLoss", dict(divergence_threshold=8.0, mode="min"), [1.0, 2.0, 5.0, 10.0] + [15.0] * 6,
     StopRule.DIVERGENCE_THRESHOLD, "divergence threshold", 3),
    ("ModelWithNaNLoss", dict(check_finite=True), [1.0, 0.5, math.nan] + [math.nan] * 7, StopRule.NON_FINITE,
     "the monitored value is nan", 2),
    ("ModelWithImprovingLoss", dict(patience=3), [5.0, 4.0, 3.0], None, None, None),
]


@pytest.mark.parametrize("model_cls, options, losses, rule, message, epoch", LIGHTNING_REASONS,
                         ids=[row[0] for row in LIGHTNING_REASONS])
def test_lightning_test_early_stopping_reasons(model_cls, options, losses, rule, message, epoch):
    net, opt = torch_setup()
    monitor = lightning_like(net, opt, **options)
    assert stop_epoch(monitor, losses) == epoch
    if rule is None:
        assert monitor.stop_reason_ == "" and monitor.last_verdict_.rule is None
    else:
        assert monitor.last_verdict_.rule == rule and message in monitor.stop_reason_


def test_lightning_test_early_stopping_reasons_state_persistence_and_old_state():
    """The "State persistence" and "Backward compatibility (old state dict)" rows: the reason survives a
    state round trip, and a state saved by the Monitor before issue 13 loads with defaults."""
    net, opt = torch_setup()
    monitor = lightning_like(net, opt, patience=3)
    stop_epoch(monitor, [1.0] * 5)
    fresh = lightning_like(net, opt, patience=3)
    fresh.load_state_dict(monitor.state_dict())
    assert fresh.stop_reason_ == monitor.stop_reason_ != ""
    old = monitor.state_dict()
    for key in ("min_lrs", "eps", "last_lr", "stop_reason"):
        del old[key]
    for key in ("check_finite", "stopping_threshold", "divergence_threshold", "baseline", "start_from_epoch"):
        del old["tracker"]["policy"][key]
    fresh = lightning_like(net, opt, patience=3)
    fresh.load_state_dict(old)
    assert fresh.stop_reason_ == "" and fresh.tracker.bad_epochs == monitor.tracker.bad_epochs
    assert fresh.min_lrs == [old["min_lr"]] * 2


@pytest.mark.parametrize("first_patience, second_patience", [(3, None), (None, 3)])
def test_lightning_test_multiple_early_stopping_callbacks(first_patience, second_patience):
    """Two monitors ("abc": [8, 4, 2, 3, 4, 5, 8, 10]; "cba": always 0); the loop stops when either says so:
    at epoch 3, where "cba" (patience 3) runs out before "abc" (patience 3 too, but it improved until 2)."""
    net, opt = torch_setup()
    abc = lightning_like(net, opt, **({"patience": first_patience} if first_patience else {}))
    cba = lightning_like(net, opt, **({"patience": second_patience} if second_patience else {}))
    for epoch, value in enumerate([8, 4, 2, 3, 4, 5, 8, 10]):
        if any([abc.step(value), cba.step(0.0)]):
            break
    assert epoch == 3


# --- Keras: keras/src/callbacks/early_stopping_test.py ------------------------------------------------------

@pytest.mark.parametrize("patience", [0, 1, 2, 3])
def test_keras_test_early_stopping_patience(patience):
    net, opt = torch_setup()
    monitor = keras_early_stopping_like(net, opt, patience=patience)
    assert stop_epoch(monitor, [10.0, 9.0, 8.0, 9.0, 8.9, 8.8, 8.7, 8.6, 8.5]) == max(patience, 1) + 2


def _weights_tagged_with_epoch(net, monitor, losses, stop_at=None):
    """Keras' DummyModel: the weights of epoch e are the number e. Returns the epochs trained."""
    for epoch, loss in enumerate(losses):
        with torch.no_grad():
            net.conv1.weight.fill_(epoch)
        stop = monitor.step(loss)
        if stop or epoch == stop_at:
            break
    monitor.restore_best()
    return epoch + 1


def test_keras_test_early_stopping_final_weights_when_restoring_model_weights():
    net, opt = torch_setup()
    monitor = keras_early_stopping_like(net, opt, patience=2)
    _weights_tagged_with_epoch(net, monitor, [0.2, 0.15, 0.1, 0.11, 0.12])
    assert net.conv1.weight.item() == 2
    # no epoch beats the baseline: train for `patience` epochs, restore the best of them
    net, opt = torch_setup()
    monitor = keras_early_stopping_like(net, opt, patience=5, baseline=0.5)
    assert _weights_tagged_with_epoch(net, monitor, [0.9, 0.8, 0.7, 0.71, 0.72, 0.73]) == 5
    assert net.conv1.weight.item() == 2
    assert "baseline 0.5" in monitor.stop_reason_
    # another part of the loop stops at epoch 3: the best weights are restored all the same
    net, opt = torch_setup()
    monitor = keras_early_stopping_like(net, opt, patience=5, baseline=0.5)
    assert _weights_tagged_with_epoch(net, monitor, [0.9, 0.8, 0.7, 0.71, 0.72, 0.73], stop_at=3) == 4
    assert net.conv1.weight.item() == 2


def test_keras_test_early_stopping_with_baseline():
    """Keras trains a real model and asserts only len(history) >= patience; here the values never beat the
    baseline, so the stop comes exactly after `patience` epochs."""
    net, opt = torch_setup()
    monitor = keras_early_stopping_like(net, opt, patience=3, baseline=0.6)
    assert stop_epoch(monitor, [0.7 - 0.001 * i for i in range(20)]) + 1 == 3


@pytest.mark.parametrize("start_from_epoch, patience, epochs", [(2, 3, 6), (2, 0, 4)])
def test_keras_test_early_stopping_with_start_from_epoch(start_from_epoch, patience, epochs):
    """Keras asserts len(history) >= patience + start_from_epoch (and >= start_from_epoch for patience 0) on a
    real model; on a flat sequence both stop exactly here: the warm-up, one epoch to set the best, patience."""
    net, opt = torch_setup()
    monitor = keras_early_stopping_like(net, opt, patience=patience, start_from_epoch=start_from_epoch)
    trained = stop_epoch(monitor, [0.5] * 20) + 1
    assert trained == epochs and trained >= max(patience, 0) + start_from_epoch


# --- Keras: keras/src/callbacks/reduce_lr_on_plateau_test.py ------------------------------------------------

def keras_setup():
    """The test's model: Dense(5), Dense(2) compiled with Adam(0.1)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2))
    return model, torch.optim.Adam(model.parameters(), lr=0.1)


VAL_LOSSES = [0.31, 0.27, 0.26, 0.24]   # any validation losses: min_delta 10 or 100 dwarfs them


@pytest.mark.parametrize("test, options, epochs, expected", [
    ("test_reduces_lr_with_model_fit", dict(patience=1, factor=0.1, min_delta=100), 2, 0.01),
    ("test_honors_min_lr", dict(patience=1, factor=0.1, min_delta=10, min_lr=0.005), 4, 0.005),
    ("test_cooldown", dict(patience=1, factor=0.1, min_delta=100, cooldown=2), 4, 0.001),
])
def test_keras_reduce_lr_on_plateau(test, options, epochs, expected):
    model, opt = keras_setup()
    monitor = keras_reduce_lr_like(model, opt, **options)
    lrs_per_epoch(monitor, VAL_LOSSES[:epochs])
    assert opt.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9)
    if test == "test_honors_min_lr":   # the 4th epoch finds the LR at its floor: Monitor stops there
        assert monitor.last_verdict_.stop and "minimum" in monitor.stop_reason_


# --- intended differences ------------------------------------------------------------------------------------

def test_negative_values_with_a_relative_threshold_use_the_magnitude():
    """torch: best -1.0, threshold 0.1 (rel) -> anything below -0.9 is "better", also -0.95 (worse than -1.0)."""
    values = [-1.0] + [-0.95] * 3
    net_t, opt_t = torch_setup()
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt_t, threshold=0.1, patience=1)
    for value in values:
        plateau.step(value)
    assert opt_t.param_groups[0]["lr"] == 0.5        # torch never cuts: -0.95 < -0.9 counts as progress
    net, opt = torch_setup()
    lrs_per_epoch(torch_like(net, opt, threshold=0.1, patience=1), values)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)   # Monitor: no progress on -1.0, one cut


def test_one_lucky_epoch_does_not_cut_the_lr_with_the_default_median():
    """torch compares every epoch with the best ever: one lucky epoch (0.5) amid a steady decline cuts the LR
    while the trend still goes down. Monitor's default window=3 follows the trend."""
    values = [1.0, 0.9, 0.8, 0.5, 0.78, 0.76, 0.74, 0.72, 0.70, 0.68, 0.66]
    net_t, opt_t = torch_setup()
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt_t, patience=2)
    for value in values:
        plateau.step(value)
    assert opt_t.param_groups[0]["lr"] < 0.5
    net, opt = torch_setup()
    monitor = Monitor(net, opt, patience=3)
    assert not any(monitor.step(v) for v in values)
    assert opt.param_groups[0]["lr"] == 0.5 and monitor.best == 0.5


# --- random sequences against live torch ----------------------------------------------------------------------

def random_case(seed):
    """A random ReduceLROnPlateau configuration and a random walk of values with plateaus and repeats."""
    rng = random.Random(seed)
    mode, threshold_mode = rng.choice(["min", "max"]), rng.choice(["rel", "abs"])
    options = dict(mode=mode, threshold_mode=threshold_mode, patience=rng.randint(0, 4),
                   cooldown=rng.randint(1, 4), factor=rng.choice([0.1, 0.5, 0.3]),
                   threshold=rng.choice([0.0, 1e-4, 1e-2, 0.1]),
                   min_lr=rng.choice([0.0, 1e-3, [1e-3, 1e-5]]), eps=rng.choice([1e-8, 0.0, 1e-4]))
    value, values = 1.0, []
    for _ in range(rng.randint(20, 80)):
        roll = rng.random()
        if roll < 0.3 and values:
            values.append(values[-1])                         # an exact repeat
        elif roll < 0.35 and seed % 2:
            values.append(math.nan)                           # odd seeds: the odd NaN
        else:
            value *= math.exp(rng.gauss(-0.02 if mode == "min" else 0.02, 0.06))
            values.append(value if threshold_mode == "rel" else value - 1.0)   # abs: values of both signs
    return options, values


def agrees_with_torch(seed):
    options, values = random_case(seed)
    net_t, opt_t = torch_setup()
    net_m, opt_m = torch_setup()
    opt_t.param_groups[1]["lr"] = torch.tensor(0.05)     # one tensor LR, one float LR, different values
    opt_m.param_groups[1]["lr"] = torch.tensor(0.05)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt_t, **options)
    monitor = torch_like(net_m, opt_m, **options)
    stopped, frozen = False, None
    for value in values:
        plateau.step(value)
        if stopped:   # after Monitor's stop (no cut possible), torch's LRs must never change again
            if [float(g["lr"]) for g in opt_t.param_groups] != frozen:
                return False
            continue
        stopped = monitor.step(value)
        frozen = [float(g["lr"]) for g in opt_t.param_groups]
        if monitor.get_last_lr() != frozen or [float(g["lr"]) for g in opt_m.param_groups] != frozen:
            return False
        if stopped and "learning rate at its minimum" not in monitor.stop_reason_:   # the only stop expected
            return False
    return True


def test_random_sequences_agree_with_live_torch():
    """400 seeded sequences (cooldown 1-4, rel and abs thresholds, min and max, floors scalar or per group,
    eps, NaNs, a tensor LR): the LRs after every step are identical to torch's."""
    disagree = [seed for seed in range(400) if not agrees_with_torch(seed)]
    assert disagree == []
