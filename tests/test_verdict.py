"""Acting on a verdict (converge.engine.verdict.apply_verdict) and the LR cut under it (engine.optim.scale_lr):
per-group floors, never raising an LR, skipping cuts smaller than eps, tensor LRs updated in place."""

import pytest
import torch
from torch import nn

from converge.decide import Verdict
from converge.engine.optim import WARMUP_BASE, cut_value, planned_lrs, scale_lr
from converge.engine.verdict import apply_verdict, lr_at_minimum

CUT = Verdict(new_best=False, significant=False, reduce_lr=True, stop=False, bad_epochs=3)
BEST = Verdict(new_best=True, significant=True, reduce_lr=False, stop=False, bad_epochs=0)


def optimizer(*lrs):
    params = [nn.Parameter(torch.zeros(1)) for _ in lrs]
    return torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)], lr=0.1)


@pytest.mark.parametrize("lr, factor, floor, eps, expected", [
    (0.1, 0.1, 0.0, 0.0, 0.01),
    (0.1, 0.1, 0.05, 0.0, 0.05),      # floored
    (1e-5, 0.1, 1e-4, 0.0, 1e-5),     # already below its floor: kept, never raised
    (0.0, 0.1, 1e-4, 0.0, 0.0),       # a frozen group stays frozen
    (1e-8, 0.1, 0.0, 1e-8, 1e-8),     # a cut of eps or less is skipped (torch's eps rule)
    (0.05, 0.1, 0.05, 0.0, 0.05),     # at its floor
    # at its floor up to rounding (lr cut three times by 0.1 against a floor of 1e-3 x lr): no cut
    (1.7886495290574438e-05, 0.1, 1.7886495290574434e-05, 0.0, 1.7886495290574438e-05),
    (0.03 * 0.1 * 0.1 * 0.1, 0.1, 0.03 * 1e-3, 0.0, 0.03 * 0.1 * 0.1 * 0.1),
    (1e-5 * (1 + 1e-6), 0.1, 1e-5, 0.0, 1e-5),   # a real (if small) step down to the floor is still a cut
])
def test_cut_value(lr, factor, floor, eps, expected):
    assert cut_value(lr, factor, floor, eps) == pytest.approx(expected, rel=1e-12, abs=0)


def test_scale_lr_per_group_floors_and_never_raises():
    opt = optimizer(0.1, 1e-5, 0.0)
    first = scale_lr(opt, 0.1, [1e-3, 1e-4, 1e-4])
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 1e-5, 0.0])
    assert first == pytest.approx(0.01)
    # the old call with one floor for every group still works, and still never raises a group
    scale_lr(opt, 0.1, 1e-3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-5, 0.0])
    with pytest.raises(ValueError, match="3 parameter groups"):
        scale_lr(opt, 0.1, [1e-3, 1e-4])


def test_scale_lr_updates_a_tensor_lr_in_place_also_when_it_lands_on_the_floor():
    lr = torch.tensor(0.5)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    held = opt.param_groups[0]["lr"]
    scale_lr(opt, 0.1, 0.2)   # 0.05 is below the floor: the cut lands on 0.2
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor) and opt.param_groups[0]["lr"] is held
    assert float(held) == pytest.approx(0.2)


def test_scale_lr_lowers_the_warmup_target_but_never_raises_it():
    opt = optimizer(1e-4)
    opt.param_groups[0][WARMUP_BASE] = 0.1
    scale_lr(opt, 0.5, 1e-3)   # a rollback during warmup: the warming LR (below the floor) is not raised
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert opt.param_groups[0][WARMUP_BASE] == pytest.approx(0.05)


def test_apply_verdict_snapshots_on_new_best_and_cuts_on_reduce_lr():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD([{"params": [model.weight], "lr": 0.1}, {"params": [model.bias], "lr": 1e-5}])
    applied = apply_verdict(BEST, model=model, optimizer=opt, factor=0.1, min_lrs=[1e-4, 1e-4])
    assert applied.best_state is not None and not applied.cut and applied.lrs_after == applied.lrs_before
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not torch.equal(applied.best_state["weight"], model.weight)   # a copy, not a view
    applied = apply_verdict(CUT, model=model, optimizer=opt, factor=0.1, min_lrs=[1e-4, 1e-4])
    assert applied.best_state is None and applied.cut
    assert applied.lrs_before == pytest.approx([0.1, 1e-5]) and applied.lrs_after == pytest.approx([0.01, 1e-5])


def test_apply_verdict_reports_no_cut_when_nothing_could_change():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    assert lr_at_minimum(opt, factor=0.1, min_lrs=1e-3)
    applied = apply_verdict(CUT, model=model, optimizer=opt, factor=0.1, min_lrs=1e-3)
    assert not applied.cut and applied.lrs_after == [1e-3]
    assert not lr_at_minimum(opt, factor=0.1, min_lrs=1e-4)
    assert planned_lrs(opt, 0.1, 1e-4) == pytest.approx([1e-4])
    assert lr_at_minimum(opt, factor=0.1, min_lrs=0.0, eps=1e-3)   # the cut would be smaller than eps


@pytest.mark.parametrize("start", [0.017886495290574435, 3e-3, 7e-3, 0.03])
def test_an_lr_cut_down_to_its_floor_is_at_its_minimum_whatever_the_rounding(start):
    """Three cuts by 0.1 reach the default floor (1e-3 x the LR) up to the last bits: the fourth is no cut."""
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=start)
    cuts = 0
    while not lr_at_minimum(opt, factor=0.1, min_lrs=start * 1e-3):
        assert apply_verdict(CUT, model=model, optimizer=opt, factor=0.1, min_lrs=start * 1e-3).cut
        cuts += 1
    assert cuts == 3
    assert not apply_verdict(CUT, model=model, optimizer=opt, factor=0.1, min_lrs=start * 1e-3).cut
