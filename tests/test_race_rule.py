"""The race's early decision (converge.decide.race): table tests on scripted rung scores, and the race
itself stopping after a decided rung (its arms scripted)."""

import math

import pytest

from converge.choose import StageLog, auto
from converge.config import TrainConfig
from converge.decide.race import CLEAR_MARGIN, race_decided, race_order
from test_tune import task

INF = math.inf


@pytest.mark.parametrize("scores, collapsed, decided", [
    ([1.0], [False], True),                                   # one arm left: nothing to race
    ([1.0, 1.0 + 1.01 * CLEAR_MARGIN], [False, False], True),  # the runner-up trails by more than the margin
    ([1.0, 1.0 + 0.99 * CLEAR_MARGIN], [False, False], False),  # ... by less: the next rung decides
    ([1.0, 1.6, 1.2, 3.0], [False] * 4, False),               # one close arm is enough to go on
    ([1.0, 1.6, 1.7, INF], [False] * 4, True),                 # an arm that blew up trails by any margin
    ([1.0, 1.1], [False, True], True),                         # the only other arm collapsed
    ([1.0, 1.1], [True, True], False),                         # every arm collapsed: the race goes on
    ([INF, INF], [False, False], False),                       # nobody has a score
    ([-2.0, -0.9], [False, False], True),                      # negated accuracies (mode "max"): 0.9 vs 2.0
    ([-2.0, -1.1], [False, False], False),
    ([0.001, 0.0016], [False, False], True),                   # relative to the leader, not absolute
])
def test_race_decided(scores, collapsed, decided):
    assert race_decided(scores, collapsed) is decided


def test_lengths_must_match():
    with pytest.raises(ValueError, match="differ in length"):
        race_decided([1.0, 2.0], [False])
    with pytest.raises(ValueError, match="differ in length"):
        race_order([1.0, 2.0], [False, False], [1.0], 1.0)


N, Y = False, True
B = 6001.0  # the constant prediction's loss


@pytest.mark.parametrize("scores, learned_nothing, losses, order", [
    ([2.0, 1.0, 3.0], [N, N, N], [2.0, 1.0, 3.0], [1, 0, 2]),             # every arm learned: by score
    ([6100.0, 6050.0], [Y, Y], [6100.0, 6050.0], [0, 1]),                 # both at the constant: as proposed
    ([6545.0, 6521.0], [Y, Y], [6545.0, 6521.0], [0, 1]),                 # above it, but within noise of each other
    ([6100.0, 6050.0, 3000.0], [Y, Y, N], [6100.0, 6050.0, 3000.0], [2, 0, 1]),  # the one that learned first
    ([6460.0, 6052.0], [Y, Y], [6460.0, 6052.0], [1, 0]),                 # clearly worse than the other: by score
    ([9e4, 7e4, 6052.0, 6030.0], [Y, Y, Y, Y], [9e4, 7e4, 6052.0, 6030.0], [2, 3, 1, 0]),
    ([INF, 34251.0], [Y, Y], [None, 34251.0], [1, 0]),                    # a blow-up last
    ([INF, 6000.0, 1.0], [Y, Y, N], [None, 6000.0, 1.0], [2, 1, 0]),
    ([-0.51, -0.55], [Y, Y], [6100.0, 6050.0], [0, 1]),                   # monitored accuracy: ties by loss
])
def test_race_order(scores, learned_nothing, losses, order):
    assert race_order(scores, learned_nothing, losses, B) == order


def test_race_order_without_a_constant_loss_ranks_by_score():
    assert race_order([6100.0, 6050.0], [Y, Y], [6100.0, 6050.0], None) == [1, 0]


def test_arms_at_the_constant_level_keep_the_order_proposed(monkeypatch):
    """An LSTM on token ids learns only after some 200 steps: after the first rung every arm sits at the
    constant's loss, and the small differences between them are noise. The race keeps the arms proposed first
    (the larger LR) instead of the one that happens to score lowest."""
    scores = {0.01: 6001.5, 0.003: 6000.9, 0.001: 6000.2, 0.0003: 6000.1}
    (opt, lr), _, events = scripted_race(monkeypatch, scores, {lr: True for lr in scores}, [])
    rungs = [e for e in events if e["event"] == "race_rung"]
    assert [arm["lr"] for arm in rungs[0]["arms"]] == [0.01, 0.003, 0.001, 0.0003]
    assert [arm["lr"] for arm in rungs[0]["kept"]] == [0.01, 0.003] and lr == 0.01


def test_an_arm_that_blew_up_ranks_after_one_that_learned_nothing(monkeypatch):
    """Raw diabetes, seed 2: SGD diverged (no score), AdamW sat above the constant prediction's loss."""
    (opt, lr), _, events = scripted_race(monkeypatch, {0.01: INF, 0.001: 34251.0}, {0.001: True}, [])
    assert lr == 0.001
    rung = next(e for e in events if e["event"] == "race_rung")
    assert [arm["lr"] for arm in rung["arms"]] == [0.001, 0.01]
    assert any(e["event"] == "race_all_collapsed" for e in events)  # nothing learned: the race says so


def scripted_race(monkeypatch, scores: dict, collapsed: dict, trained: list):
    """auto._race over arms ("adamw", lr) whose scores (validation losses; and collapse) are scripted by LR."""
    model, splits, objective = task()

    def scripted_arm(model, splits, config, objective, arm, *args, **kwargs):
        trained.append(arm)
        score = scores[arm[1]]
        return score, 10, "val_loss", score if math.isfinite(score) else None, collapsed.get(arm[1], False)

    monkeypatch.setattr(auto, "_race_arm", scripted_arm)
    arms = [("adamw", lr) for lr in scores]
    return auto._race(StageLog(), model, splits, TrainConfig(optimizer="adamw"), objective, arms, {"adamw": 0.0},
                      32, 10, {}, auto.Console(), baseline=6001.0)


def test_the_race_knows_a_datasets_constant_from_a_sample_of_it():
    """Without the constant the race cannot tell arms that learned nothing from arms that learned: for a
    Dataset it was unknown (a whole pass costs an epoch of reading), and a tiny BERT's race took SGD by 1e-4
    over AdamW, both at the constant's level; SGD never left it. A sample of 2048 items estimates it."""
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    from converge.data import make_split
    from converge.engine.objective import resolve_objective, sampled_constant_loss

    class Items(Dataset):
        def __init__(self, n):
            g = torch.Generator().manual_seed(0)
            self.x = torch.randn(n, 5, generator=g)
            self.y = (torch.rand(n, generator=g) < 0.2).long()

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return {"features": self.x[i], "labels": self.y[i]}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(5, 2)

        def forward(self, features):
            return self.head(features)

    items = Items(5000)
    splits = {"train": make_split(items, "train"), "val": make_split(Items(300), "val")}
    objective = resolve_objective(Net(), splits, None, {}, amp="off", device=torch.device("cpu"), probe_size=32)
    state = torch.get_rng_state()
    estimate = sampled_constant_loss(splits["train"], objective)
    assert torch.equal(torch.get_rng_state(), state)
    share = float(items.y.float().mean())
    entropy = -(share * math.log(share) + (1 - share) * math.log(1 - share))
    assert estimate == pytest.approx(entropy, rel=0.03)
