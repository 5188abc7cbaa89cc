"""The race's early decision (converge.decide.race): table tests on scripted rung scores, and the race
itself stopping after a decided rung (its arms scripted)."""

import math

import pytest

from converge.choose import StageLog, auto
from converge.config import TrainConfig
from converge.decide.race import CLEAR_MARGIN, race_decided
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


@pytest.mark.parametrize("scores, rungs, winner", [
    ({0.1: 1.0, 0.03: 9.0, 0.01: 8.0, 0.003: 7.0}, 1, 0.1),      # far ahead after the first rung
    ({0.1: 1.0, 0.03: 1.1, 0.01: 8.0, 0.003: 7.0}, 2, 0.1),      # a close runner-up: the second rung decides
])
def test_a_decided_rung_ends_the_race(monkeypatch, scores, rungs, winner):
    trained = []
    race = scripted_race(monkeypatch, scores, {}, trained)
    (opt, lr), samples, events = race
    assert lr == winner and len(events) == rungs
    assert events[0]["decided"] is (rungs == 1) and len(trained) == 4 + 2 * (rungs - 1)
    assert samples == 10 * 32 * len(trained)


def test_an_arm_that_blew_up_ranks_after_one_that_learned_nothing(monkeypatch):
    """Raw diabetes, seed 2: SGD diverged (no score), AdamW sat above the constant prediction's loss."""
    (opt, lr), _, events = scripted_race(monkeypatch, {0.01: INF, 0.001: 34251.0}, {0.001: True}, [])
    assert lr == 0.001
    rung = next(e for e in events if e["event"] == "race_rung")
    assert [arm["lr"] for arm in rung["arms"]] == [0.001, 0.01]
    assert any(e["event"] == "race_all_collapsed" for e in events)  # nothing learned: the race says so


def scripted_race(monkeypatch, scores: dict, collapsed: dict, trained: list):
    """auto._race over arms ("adamw", lr) whose scores (and collapse) are scripted by LR."""
    model, splits, objective = task()

    def scripted_arm(model, splits, config, objective, arm, *args, **kwargs):
        trained.append(arm)
        return scores[arm[1]], 10, "val_loss", collapsed.get(arm[1], False)

    monkeypatch.setattr(auto, "_race_arm", scripted_arm)
    arms = [("adamw", lr) for lr in scores]
    return auto._race(StageLog(), model, splits, TrainConfig(optimizer="adamw"), objective, arms, {"adamw": 0.0},
                      32, 10, {}, auto.Console(), baseline=6001.0)
