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
