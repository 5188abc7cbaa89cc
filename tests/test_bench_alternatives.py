"""bench/alternatives.py's quality rule: is converge at least as good as the best alternative within seed
noise? Table tests on scripted per-seed results."""

import importlib.util
import math
import statistics
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
_spec = importlib.util.spec_from_file_location("bench_alternatives", BENCH / "alternatives.py")
alternatives = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(alternatives)

GOOD, WORSE = alternatives.AT_LEAST_AS_GOOD, alternatives.WORSE


@pytest.mark.parametrize("converge, best, higher, verdict, worse_on", [
    # lower is better (MSE)
    ({0: 1.0, 1: 1.1, 2: 0.9}, {0: 1.0, 1: 1.1, 2: 0.9}, False, GOOD, 0),       # the same on every seed
    ({0: 0.9, 1: 1.0, 2: 0.8}, {0: 1.0, 1: 1.1, 2: 0.9}, False, GOOD, 0),       # better on every seed
    ({0: 1.05, 1: 1.15, 2: 0.95}, {0: 1.0, 1: 1.1, 2: 0.9}, False, GOOD, 3),    # worse everywhere, by half the spread
    ({0: 1.3, 1: 1.4, 2: 1.2}, {0: 1.0, 1: 1.1, 2: 0.9}, False, WORSE, 3),      # worse by three times the spread
    ({0: 1.0, 1: 1.0, 2: 1.0}, {0: 1.0, 1: 1.0, 2: 1.0}, False, GOOD, 0),       # no spread, no deficit
    ({0: 1.001, 1: 1.001, 2: 1.001}, {0: 1.0, 1: 1.0, 2: 1.0}, False, WORSE, 3),  # no spread: any deficit counts
    # higher is better (accuracy): the same numbers mean the opposite
    ({0: 0.95, 1: 1.05, 2: 0.85}, {0: 1.0, 1: 1.1, 2: 0.9}, True, GOOD, 3),     # behind by half the spread
    ({0: 0.7, 1: 0.8, 2: 0.6}, {0: 1.0, 1: 1.1, 2: 0.9}, True, WORSE, 3),
    ({0: 1.3, 1: 1.4, 2: 1.2}, {0: 1.0, 1: 1.1, 2: 0.9}, True, GOOD, 0),
])
def test_quality_verdict(converge, best, higher, verdict, worse_on):
    result = alternatives.quality_verdict(converge, best, higher_is_better=higher)
    assert result["verdict"] == verdict
    assert result["worse_on"] == worse_on


def test_deficit_is_the_mean_paired_difference_and_noise_the_pooled_spread():
    converge, best = {0: 3.0, 1: 5.0, 2: 4.0}, {0: 2.0, 1: 2.5, 2: 3.5}
    result = alternatives.quality_verdict(converge, best, higher_is_better=False)
    assert result["deficit"] == pytest.approx(statistics.fmean([1.0, 2.5, 0.5]))
    assert result["noise"] == pytest.approx(math.sqrt((statistics.variance([3.0, 5.0, 4.0])
                                                       + statistics.variance([2.0, 2.5, 3.5])) / 2))
    assert result["deficit"] > result["noise"] and result["verdict"] == WORSE


def test_only_common_seeds_are_paired():
    result = alternatives.quality_verdict({0: 1.0, 1: 1.2, 7: 50.0}, {0: 1.0, 1: 1.2, 2: 0.0},
                                          higher_is_better=False)
    assert result["seeds"] == [0, 1] and result["deficit"] == 0 and result["verdict"] == GOOD


@pytest.mark.parametrize("converge, best", [({0: 1.0}, {0: 1.0}), ({0: 1.0, 1: 2.0}, {1: 2.0, 2: 3.0})])
def test_fewer_than_two_common_seeds_is_an_error(converge, best):
    with pytest.raises(ValueError, match="at least 2 common seeds"):
        alternatives.quality_verdict(converge, best, higher_is_better=False)


def _records(task, kind, results):
    return [{"task": task, "contender": name, "seed": seed, "kind": kind, "test_metric": value}
            for name, values in results.items() for seed, value in enumerate(values)]


@pytest.mark.parametrize("kind, results, best", [
    ("regression", {"classic": [3.0, 3.0], "schedulefree": [2.0, 2.5], "converge": [2.2, 2.2]}, "schedulefree"),
    ("multiclass", {"classic": [0.9, 0.9], "schedulefree": [0.8, 0.85], "converge": [0.9, 0.9]}, "classic"),
    ("regression", {"classic": [3.0, 3.0], "prodigy": [1.0], "converge": [2.2, 2.2]}, "classic"),  # 1 of 2 seeds
    ("regression", {"converge": [2.2, 2.2]}, None),                                                 # no alternative
])
def test_best_alternative(kind, results, best):
    higher = kind != "regression"
    assert alternatives.best_alternative(_records("t", kind, results), "t", higher_is_better=higher) == best


def test_quality_rows_judge_each_task_against_its_own_best():
    records = (_records("mse_task", "regression", {"classic": [3.0, 3.1, 2.9], "converge": [4.0, 4.1, 3.9]})
               + _records("acc_task", "multiclass", {"classic": [0.9, 0.91, 0.89], "prodigy": [0.5, 0.5, 0.5],
                                                     "converge": [0.9, 0.9, 0.9]})
               + _records("one_seed", "regression", {"classic": [1.0], "converge": [1.0]}))
    rows = {row["task"]: row for row in alternatives.quality_rows(records)}
    assert set(rows) == {"mse_task", "acc_task"}
    assert (rows["mse_task"]["best"], rows["mse_task"]["verdict"]) == ("classic", WORSE)
    assert (rows["acc_task"]["best"], rows["acc_task"]["verdict"]) == ("classic", GOOD)


def test_merged_reports_keep_every_run_and_let_a_later_run_replace_an_earlier():
    first = {"meta": {"date": "a"}, "records": _records("t", "regression", {"classic": [3.0, 3.1],
                                                                            "converge": [4.0, 4.1]})}
    second = {"meta": {"date": "b"}, "records": _records("t", "regression", {"converge": [2.0, 2.1]})}
    merged = alternatives.merge_reports([first, second])
    assert [meta["date"] for meta in merged["metas"]] == ["a", "b"]
    by_run = {(r["contender"], r["seed"]): r["test_metric"] for r in merged["records"]}
    assert by_run == {("classic", 0): 3.0, ("classic", 1): 3.1, ("converge", 0): 2.0, ("converge", 1): 2.1}


def _classic(wall, trained, best_val=1.0, started=100.0):
    """A classic record: the process started at ``started``, trained ``trained`` s from 2 s in."""
    return {"wall_seconds": wall, "started": started, "train_started": started + 2.0, "best_val_loss": best_val,
            "epoch_log": [[started + 2.0 + trained / 2, 2.0], [started + 2.0 + trained, best_val]]}


def _converge(wall, reached_at=None, started=200.0):
    """A converge record: its epochs logged at process seconds 3 (val 5.0) and ``reached_at`` (val 0.5)."""
    log = [[started + 3.0, 5.0]] + ([[started + reached_at, 0.5]] if reached_at is not None else [])
    return {"wall_seconds": wall, "started": started, "epoch_log": log}


@pytest.mark.parametrize("converge, classic, kind, met", [
    (_converge(6.0), _classic(5.5, trained=2.0), "short", True),          # 0.5 s over on a short task
    (_converge(6.5), _classic(5.5, trained=2.0), "short", True),          # exactly the allowance
    (_converge(6.6), _classic(5.5, trained=2.0), "short", False),         # over it
    (_converge(12.0, reached_at=8.0), _classic(12.5, trained=8.0), "long", True),
    (_converge(13.0, reached_at=8.0), _classic(12.5, trained=8.0), "long", False),   # ends later
    (_converge(12.0), _classic(12.5, trained=8.0), "long", False),                  # never reaches the target
    (_converge(12.0, reached_at=12.6), _classic(12.5, trained=8.0), "long", False),  # reaches it too late
    (_converge(6.0), _classic(9.0, trained=5.0), "long", False),          # 5 s of training is already long
])
def test_time_verdict(converge, classic, kind, met):
    verdict = alternatives.time_verdict(converge, classic)
    assert (verdict["kind"], verdict["met"]) == (kind, met)


def test_time_verdict_without_the_classic_training_time_says_nothing():
    classic = _classic(5.5, trained=2.0)
    del classic["train_started"]
    assert alternatives.time_verdict(_converge(6.0), classic)["met"] is None


def test_time_rows_pair_each_seed_with_the_classic_run_of_that_seed():
    records = [{**_converge(6.0), "contender": "converge", "task": "t", "seed": 0, "rc": 0},
               {**_classic(5.5, trained=2.0), "contender": "classic", "task": "t", "seed": 0, "rc": 0},
               {**_converge(9.0), "contender": "converge", "task": "t", "seed": 1, "rc": 0},
               {**_classic(5.5, trained=2.0), "contender": "classic", "task": "t", "seed": 1, "rc": 0},
               {**_converge(6.0), "contender": "converge", "task": "t", "seed": 2, "rc": 0}]  # no classic seed 2
    (row,) = alternatives.time_rows(records)
    assert row["seeds"] == [0, 1]
    assert [v["met"] for v in row["verdicts"]] == [True, False]
