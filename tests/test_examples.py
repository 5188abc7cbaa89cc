"""The shipped examples train as the README says: every kind's task file runs through `converge train`'s
code path for a couple of epochs and reports its kind's metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

import converge

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("name, kind, metrics", [
    ("digits", "classification", {"val_accuracy"}),
    ("diabetes", "regression", {"val_r2"}),
    ("binary", "binary", {"val_accuracy"}),
    ("multilabel", "multilabel", {"val_label_accuracy", "val_exact_match"}),
    ("sequence", "sequence", {"val_token_accuracy", "val_perplexity"}),
    ("two_inputs", "classification", {"val_accuracy"}),
    ("hf_text", "classification", {"val_accuracy"}),
])
def test_example_trains(name, kind, metrics, tmp_path):
    if name == "hf_text":
        pytest.importorskip("transformers", reason="the hf extra (pip install 'torch-converge[hf]') is not installed")
    result = converge.train_task(EXAMPLES / f"{name}.py", out=tmp_path / name, verbose=False, max_epochs=2,
                                 optimizer="adamw", lr=3e-3, batch_size=64)
    summary = result.summary
    assert summary["task_kind"] == kind and summary["epochs"] == 2
    assert set(summary["best"]) == {"val_loss", *metrics}
    assert not [f for f in summary["diagnosis"] if f["severity"] == "error"]
    assert (tmp_path / name / "report.html").exists()


def test_search_space_example_gives_arguments_its_task_takes(tmp_path):
    """examples/digits_search.py (docs/tune.md): the knobs its search_space draws are ones model() and data()
    take, and a single run with them trains (what a tune trial, or `converge train --task-args`, does)."""
    optuna = pytest.importorskip("optuna")
    from converge.task import load_task

    task = load_task(EXAMPLES / "digits_search.py")
    values = {"hidden": 32, "dropout": 0.25, "augment": True}
    task_args = task.search_space(optuna.trial.FixedTrial(values))
    assert task_args == {"model": {"hidden": 32, "dropout": 0.25}, "data": {"augment": True}}
    result = converge.train_task(EXAMPLES / "digits_search.py", out=tmp_path / "run", verbose=False, max_epochs=1,
                                 optimizer="adamw", lr=3e-3, batch_size=64, task_args=task_args)
    plain = task.build_data()
    assert result.summary["epochs"] == 1 and len(task.build_data(augment=True)[0][0]) == 3 * len(plain[0][0])
