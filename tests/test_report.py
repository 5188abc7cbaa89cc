"""report.html: built for finished, interrupted and broken runs, from real and scripted run folders.
(The rendering in a real browser is tests/test_report_browser.py, marked `browser`.)"""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import pytest
import torch

from converge.report._figures import curves_png, decision_marks, wants_log
from converge.report.html import describe, read_run, run_status, write_report

RUN_INFO = {"config": {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.01, "batch_size": 32,
                       "monitor": "val_loss", "mode": "min"}, "name": "toy", "task": "/tmp/toy.py"}


def epochs(n: int, **overrides) -> list[dict]:
    """A scripted metrics.jsonl: falling losses, 10 steps an epoch; ``overrides`` maps epoch -> fields."""
    rows = [{"epoch": e, "step": 10 * e, "lr": 0.01, "train_loss": 1.0 / e, "val_loss": 1.2 / e,
             "val_accuracy": 0.5 + e / 100, "seconds": 0.01} for e in range(1, n + 1)]
    for epoch, fields in overrides.items():
        rows[int(epoch[1:]) - 1].update(fields)
    return rows


def make_run(folder: Path, *, metrics=(), events=(), summary=None, info=RUN_INFO, extra=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if info is not None:
        (folder / "run.json").write_text(json.dumps(info))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    for name, value in (extra or {}).items():
        (folder / name).write_text(json.dumps(value))
    return folder


def page_of(folder: Path, **kwargs) -> str:
    path = write_report(folder, **kwargs)
    assert path == folder / "report.html"
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, tiny_finished_run) -> Path:
    """A real (tiny) finished run with an LR cut."""
    return tiny_finished_run(tmp_path_factory.mktemp("report") / "run")


# --- finished and unfinished runs ------------------------------------------------------------------
def test_training_writes_the_report(real_run):
    status = json.loads((real_run / "summary.json").read_text())["status"]
    assert f">{status}</span>" in (real_run / "report.html").read_text(encoding="utf-8")


def test_finished_run(real_run):
    summary = json.loads((real_run / "summary.json").read_text())
    page = page_of(real_run)
    assert "badge tone-" in page and f">{summary['status']}</span>" in page
    assert "data:image/png;base64," in page  # the curves, inline
    assert "test accuracy" in page and "Timeline" in page and "new_best" in page
    assert "Hyperparameters and why" in page and "weight_decay" in page
    # Self-contained: every src is inline data, and nothing points outside the page.
    assert all(src.startswith("data:") for src in re.findall(r"src='([^']*)'", page))
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_summary_in_memory_before_summary_json_exists(tmp_path):
    """The trainer writes the report just before summary.json (its completion marker)."""
    run = make_run(tmp_path / "run", metrics=epochs(3))
    page = page_of(run, summary={"status": "converged", "stop_reason": "plateau after 1 LR cut", "best_epoch": 3,
                                 "monitor": "val_loss", "best": {"val_loss": 0.4}, "test": {"accuracy": 0.875}})
    assert ">converged</span>" in page and "plateau after 1 LR cut" in page and "0.875" in page
    assert not (run / "summary.json").exists()


def test_killed_run_without_summary_is_unfinished(tmp_path):
    events = [{"event": "new_best", "epoch": 1, "step": 10, "monitor": "val_loss", "value": 1.2}]
    run = make_run(tmp_path / "run", metrics=epochs(2), events=events)
    assert run_status(read_run(run))[0] == "unfinished"
    page = page_of(run)
    assert ">unfinished</span>" in page and "converge resume" in page and "after 2 finished epoch(s)" in page
    assert "final diagnosis is written when the run finishes" in page


def test_interrupted_event_without_summary(tmp_path):
    events = [{"event": "interrupted", "epoch": 2, "step": 20, "reason": "stopped by SIGTERM"}]
    run = make_run(tmp_path / "run", metrics=epochs(2), events=events)
    status, reason = run_status(read_run(run))
    assert status == "interrupted" and "SIGTERM" in reason and "summary.json" in reason
    # ...but a run resumed after its interruption and then killed is unfinished again.
    run = make_run(tmp_path / "again", metrics=epochs(3), events=[*events, {"event": "resumed", "epoch": 2,
                                                                             "step": 20, "checkpoint": "x"}])
    assert run_status(read_run(run))[0] == "unfinished"


def test_run_with_no_epoch_yet(tmp_path):
    page = page_of(make_run(tmp_path / "run"))
    assert "No epoch has finished yet" in page and "No events were recorded" in page


def test_older_and_partial_files_are_tolerated(tmp_path):
    run = make_run(tmp_path / "run", metrics=epochs(3), info={"config": {}}, summary={"status": "max_epochs"})
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 4, "step": 4')  # a kill in mid-append
    page = page_of(run)
    assert ">max_epochs</span>" in page and "summary holds no diagnosis" in page
    assert len(read_run(run).history) == 3


# --- non-finite values -----------------------------------------------------------------------------
def test_nan_and_inf_in_metrics(tmp_path):
    # metrics.jsonl holds non-finite numbers as null; a hand-edited file may hold NaN itself.
    run = make_run(tmp_path / "run", metrics=epochs(5, e3={"train_loss": None, "val_loss": None, "val_accuracy": None}))
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 6, "step": 60, "lr": 0.01, "train_loss": NaN, "val_loss": Infinity}\n')
    page = page_of(run)
    assert "4 loss value(s) were not finite" in page and "data:image/png;base64," in page


def test_curves_png_draws_non_finite_values_and_single_epochs():
    nan, inf = math.nan, math.inf
    history = [{"epoch": 1, "step": 5, "lr": 0.1, "train_loss": nan, "val_loss": inf},
               {"epoch": 2, "step": 10, "lr": 0.1, "train_loss": 0.5, "val_loss": 0.6}]
    assert curves_png(history, [], best_epoch=2)[:8] == b"\x89PNG\r\n\x1a\n"
    assert curves_png(history[1:], [])[:4] == b"\x89PNG"
    assert curves_png([], []) is None


@pytest.mark.parametrize("values, log", [
    ([1.0, 0.5, 0.1], False),          # one decade
    ([2.0, 0.5, 0.01], True),          # more than two
    ([2.0, math.nan, 0.001], True),    # NaN left out
    ([1.0, -0.5, 1e-4], False),        # a negative loss cannot be drawn on a log scale
    ([math.nan], False),
])
def test_log_scale_when_loss_spans_more_than_two_decades(values, log):
    assert wants_log(values) is log


def test_decision_marks():
    history = epochs(4)
    events = [{"event": "lr_reduced", "epoch": 2, "step": 20},
              {"event": "rollback", "epoch": 2, "step": 20, "at_step": 25},   # half-way through epoch 3
              {"event": "rollback", "epoch": 4, "step": 40, "at_step": 44},   # in an epoch never finished
              {"event": "converged", "epoch": 4, "step": 40, "reason": "plateau"}]
    assert decision_marks(history, events, 3) == [("lr_reduced", 2.0), ("rollback", 2.5), ("rollback", 4.5),
                                                  ("stop", 4.0), ("best", 3.0)]


# --- diagnosis, hyperparameters, doctor ------------------------------------------------------------
DIAGNOSIS = [{"code": "overfitting", "message": "validation loss rose 40% while training loss fell",
              "evidence": {"best_epoch": 4, "val_rise": 0.4, "note": "after the cut"},
              "fix": "add weight decay / more data / augmentation"},
             {"code": "converged", "message": "stopped on the plateau rule", "evidence": {}, "fix": ""}]


def test_diagnosis_cards_and_live_events(tmp_path):
    events = [{"event": "diagnosis", "epoch": 5, "step": 50, "code": "lr_too_high", "message": "2 rollbacks",
               "fix": "lower --lr"}]
    run = make_run(tmp_path / "run", metrics=epochs(6), events=events,
                   summary={"status": "converged", "diagnosis": DIAGNOSIS})
    page = page_of(run)
    assert "card tone-warn" in page and ">overfitting</span>" in page and "validation loss rose 40%" in page
    assert "<td>val_rise</td><td>0.4</td>" in page and "<td>note</td><td>after the cut</td>" in page
    assert "add weight decay / more data / augmentation" in page and "card tone-good" in page
    assert "Told during training" in page and "lr_too_high" in page and "lower --lr" in page


def test_a_collapsed_finding_renders_by_its_severity(tmp_path):
    collapsed = {"code": "collapsed", "severity": "error", "message": "collapsed: the model learned nothing",
                 "evidence": {"constant_prediction_loss": 0.6609}, "fix": "lower the learning rate (--lr 0.00138)"}
    converged = {"code": "converged", "severity": "info", "message": "stopped", "evidence": {}, "fix": ""}
    page = page_of(make_run(tmp_path / "run", metrics=epochs(3),
                            summary={"status": "converged", "diagnosis": [converged, collapsed]}))
    assert "card tone-bad" in page and ">collapsed</span>" in page and "--lr 0.00138" in page
    assert "card tone-good" in page  # the status stays what stopped the run


def test_hyperparameters_with_reasons_escaped(tmp_path):
    events = [{"event": "chose_batch_size", "epoch": 0, "step": 0, "value": 32, "reason": "about 50 steps an epoch"},
              {"event": "lr_range_test", "epoch": 0, "step": 0, "optimizer": "adamw", "steps": 77,
               "suggested_lr": 0.007, "min_loss_lr": 0.05, "candidates": {"steepest": 0.007}, "reason": "steepest"},
              {"event": "chose_lr", "epoch": 0, "step": 0, "value": 0.007,
               "reason": "won <script>alert('x')</script> & the race"},
              {"event": "warmup", "epoch": 0, "step": 0, "steps": 20, "lr": 0.007, "reason": "close to the minimum"}]
    summary = {"status": "converged", "hyperparameters": {"optimizer": "adamw", "lr": 0.007, "weight_decay": 0.01,
                                                          "batch_size": 32},
               "config": {"warmup_steps": 20, "patience": 5}, "tuning_epochs": 3.5}
    page = page_of(make_run(tmp_path / "run", metrics=epochs(2), events=events, summary=summary))
    assert "<script>" not in page
    assert "won &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; the race" in page
    assert "about 50 steps an epoch" in page and "close to the minimum" in page and "LR range tests" in page
    assert "by the run's options" in page  # weight_decay had no tuning event
    assert "Full configuration (2 options)" in page and "3.5 epochs" in page


def test_lr_find_plot_is_embedded(tmp_path):
    run = make_run(tmp_path / "run", metrics=epochs(2))
    png = curves_png(epochs(2), [])
    (run / "lr_find.png").write_bytes(png)
    assert "alt='LR range test'" in page_of(run)


def test_curves_drawn_by_the_caller_are_embedded_as_given(tmp_path):
    run = make_run(tmp_path / "run", metrics=epochs(2))
    drawn = curves_png(epochs(5), [])  # not what the folder's two epochs would draw
    assert base64.b64encode(drawn).decode("ascii") in page_of(run, curves_png=drawn)
    assert base64.b64encode(drawn).decode("ascii") not in page_of(run)


def test_a_run_with_the_automatic_choice_embeds_its_range_test(tmp_path):
    """lr_find.png is drawn at the run's end (not beside training, where it held the interpreter's lock
    through the first epoch), before the report, which embeds it."""
    from converge import fit

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    fit(torch.nn.Linear(4, 2), (x[:64], y[:64]), (x[64:], y[64:]), optimizer="adamw", max_epochs=2, seed=0,
        out=tmp_path / "run", verbose=False)
    png = (tmp_path / "run" / "lr_find.png").read_bytes()
    page = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert base64.b64encode(png).decode("ascii") in page
    curves = (tmp_path / "run" / "curves.png").read_bytes()
    assert base64.b64encode(curves).decode("ascii") in page


def test_a_run_resumed_after_a_kill_still_draws_its_range_test(tmp_path):
    """The figure is drawn at the end from tuning.json: a run killed before its end (here: its end undone,
    the figure never written) gets it from the resume that finishes it."""
    from converge import fit

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=g)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    run = tmp_path / "run"
    fit(torch.nn.Linear(4, 2), (x[:64], y[:64]), (x[64:], y[64:]), optimizer="adamw", max_epochs=1, seed=0,
        out=run, verbose=False)
    drawn = (run / "lr_find.png").read_bytes()
    (run / "lr_find.png").unlink()
    torch.manual_seed(0)
    fit(torch.nn.Linear(4, 2), (x[:64], y[:64]), (x[64:], y[64:]), optimizer="adamw", max_epochs=2, seed=0,
        out=run, resume=True, verbose=False)
    assert (run / "lr_find.png").read_bytes() == drawn
    assert base64.b64encode(drawn).decode("ascii") in (run / "report.html").read_text(encoding="utf-8")


def test_a_range_test_that_cannot_be_drawn_costs_the_run_nothing(tmp_path, monkeypatch, capsys):
    from converge import fit
    from converge.report import _figures

    def broken(**args):
        raise ValueError("no figure today")

    monkeypatch.setitem(_figures._DRAWINGS, _figures.RANGE_TEST_FIGURE, broken)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=g)
    y = (x[:, 0] > 0).long()
    fit(torch.nn.Linear(4, 2), (x[:64], y[:64]), (x[64:], y[64:]), optimizer="adamw", max_epochs=1, seed=0,
        out=tmp_path / "run", verbose=False)
    assert (tmp_path / "run" / "summary.json").is_file() and (tmp_path / "run" / "report.html").is_file()
    assert not (tmp_path / "run" / "lr_find.png").exists()
    assert "could not draw lr_find.png (ValueError: no figure today)" in capsys.readouterr().err


def test_doctor_findings_and_remedies(tmp_path):
    doctor = [{"code": "unscaled_features", "severity": "warning", "message": "feature 3 spans 1e4",
               "evidence": {"max_std": 1e4}, "fix": "standardize"},
              {"code": "label_noise", "severity": "error", "message": "12% <b>flagged</b>", "evidence": {}, "fix": ""}]
    remedies = [{"remedy": "standardize_features", "detail": {"applied": True, "features": 8}}]
    run = make_run(tmp_path / "run", metrics=epochs(2), extra={"doctor.json": doctor, "remedies.json": remedies})
    page = page_of(run)
    assert "Data and model checks" in page and "unscaled_features" in page and "feature 3 spans 1e4" in page
    assert "card tone-bad" in page and "12% &lt;b&gt;flagged&lt;/b&gt;" in page
    assert "Remedies applied" in page and "standardize_features" in page and "<td>applied</td><td>true</td>" in page


# --- the timeline ----------------------------------------------------------------------------------
@pytest.mark.parametrize("event, text", [
    ({"event": "lr_reduced", "old_lr": 0.01, "new_lr": 0.001, "reason": "no progress in 5 epochs"},
     "LR 0.01 -> 0.001: no progress in 5 epochs"),
    ({"event": "new_best", "monitor": "val_loss", "value": 0.25, "previous": None, "significant": True},
     "val_loss 0.25 (previous best —)"),
    ({"event": "rollback", "kind": "spike", "reason": "loss spike", "batch": 7, "loss": 9.5, "grad_norm": None,
      "lr": 0.1, "new_lr": 0.05, "to_step": 30, "clip_grad": 1.0, "previous_clip_grad": None},
     ("loss spike (batch 7, loss 9.5, gradient norm —): rolled back to step 30, LR 0.1 -> 0.05, gradient "
      "clipping off -> 1")),
    ({"event": "converged", "reason": "plateau survived 1 LR cut"}, "plateau survived 1 LR cut"),
    ({"event": "mystery", "foo": 1.5, "bar": [1, 2]}, "foo 1.5; bar [1, 2]"),
    ({"event": "lr_reduced", "old_lr": 0.01}, "old_lr 0.01"),  # fields missing: the generic line
])
def test_event_descriptions(event, text):
    assert describe({"epoch": 1, "step": 10, **event}) == text


def test_unknown_events_render_in_the_timeline(tmp_path):
    events = [{"event": "<b>odd</b>", "epoch": 1, "step": 3, "foo": "<i>x</i>"}]
    page = page_of(make_run(tmp_path / "run", metrics=epochs(1), events=events))
    assert "&lt;b&gt;odd&lt;/b&gt;" in page and "foo &lt;i&gt;x&lt;/i&gt;" in page


# --- the command line ------------------------------------------------------------------------------
def test_cli_report(cli, tmp_path):
    run = make_run(tmp_path / "run", metrics=epochs(2))
    result = cli("report", run)
    assert result.code == 0, result.err
    assert result.out.strip() == str(run / "report.html") and (run / "report.html").is_file()


def test_cli_report_bad_input(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    cli("report", tmp_path / "empty").single_error("not a converge run folder", "run.json")
    cli("report", tmp_path / "missing").single_error("does not exist")
    (tmp_path / "file.txt").write_text("x")
    cli("report", tmp_path / "file.txt").single_error("is not a folder")
    assert not (tmp_path / "empty" / "report.html").exists()


def test_cli_report_unwritable_folder(cli, tmp_path):
    run = make_run(tmp_path / "run", metrics=epochs(1))
    (run / "report.html").mkdir()  # a folder in the way: the write fails, as on a read-only disk
    cli("report", run).single_error("cannot write", "report.html")
