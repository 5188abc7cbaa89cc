"""The figure process: a run's figures drawn by a second interpreter, and every way it can fail falling back to
drawing in the run's own process."""

from __future__ import annotations

import math
import time

import pytest
import torch

from converge import fit
from converge.engine import recorder
from converge.report import _figures
from converge.report.figure_process import FigureProcess

HISTORY = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e if e != 3 else math.nan, "lr": 0.01}
           for e in range(1, 6)]
EVENTS = [{"event": "lr_reduced", "epoch": 3, "step": 30}, {"event": "converged", "epoch": 5, "step": 50}]
CURVES_ARGS = {"history": HISTORY, "events": EVENTS, "best_epoch": 4, "monitor": "val_loss"}
RANGE_ARGS = {"optimizer": "adamw", "batch_size": 32, "lrs": [10 ** (-7 + k / 10) for k in range(80)],
              "losses": [1.0 - 0.005 * k if k < 70 else math.inf for k in range(80)], "chosen_lr": 1e-3,
              "min_loss_lr": 1e-1}


START = FigureProcess.start  # the real one: some tests replace it


def started() -> FigureProcess:
    worker = START()
    assert worker is not None
    deadline = time.monotonic() + 60
    while not worker.ready:
        assert time.monotonic() < deadline, "the figure process never said it was ready"
        time.sleep(0.02)
    return worker


def test_the_worker_draws_what_this_process_draws_and_ends_when_closed():
    worker = started()
    try:
        assert worker.submit("curves.png", _figures.CURVES_FIGURE, CURVES_ARGS)
        assert worker.submit("lr_find.png", _figures.RANGE_TEST_FIGURE, RANGE_ARGS)
        assert worker.submit("empty.png", _figures.CURVES_FIGURE, {**CURVES_ARGS, "history": []})
        drawn = worker.collect(60)
    finally:
        worker.close()
    assert drawn["curves.png"] == _figures.figure_png(_figures.CURVES_FIGURE, CURVES_ARGS)
    assert drawn["lr_find.png"] == _figures.figure_png(_figures.RANGE_TEST_FIGURE, RANGE_ARGS)
    assert drawn["empty.png"] is None  # nothing to draw, as in this process
    assert worker.wait_ended(30) == 0  # it left when its input closed; it was not killed


def test_a_figure_the_worker_cannot_draw_is_left_out_and_the_others_come_back():
    worker = started()
    try:
        assert worker.submit("unknown.png", "no such figure", {})
        assert worker.submit("broken.png", _figures.CURVES_FIGURE, {"history": HISTORY})  # arguments missing
        assert worker.submit("curves.png", _figures.CURVES_FIGURE, CURVES_ARGS)
        drawn = worker.collect(60)
    finally:
        worker.close()
    assert set(drawn) == {"curves.png"}


def test_a_dead_worker_is_not_ready_and_takes_nothing():
    worker = started()
    worker._process.kill()
    worker._process.wait()
    assert not worker.ready
    assert not worker.submit("curves.png", _figures.CURVES_FIGURE, CURVES_ARGS)
    assert worker.collect(5) == {}
    worker.close()
    assert worker.wait_ended(30) is not None


def classification(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(160, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return (x[:128], y[:128]), (x[128:], y[128:])


def run(tmp_path, name: str) -> dict[str, bytes]:
    torch.manual_seed(0)
    train, val = classification()
    fit(torch.nn.Linear(6, 2), train, val, optimizer="adamw", max_epochs=4, seed=0, out=tmp_path / name,
        verbose=False)
    return {png: (tmp_path / name / png).read_bytes() for png in ("curves.png", "lr_find.png")}


@pytest.mark.parametrize("failure", ["none", "killed", "not_ready"])
def test_a_run_gets_the_same_figures_from_the_worker_or_without_it(tmp_path, monkeypatch, failure):
    own = run(tmp_path, "own_process")  # a short run: drawn in this process
    workers: list[FigureProcess] = []

    def start():
        worker = START() if failure == "not_ready" else started()
        if failure == "killed":
            worker._process.kill()
            worker._process.wait()
        workers.append(worker)
        return worker

    monkeypatch.setattr(recorder, "FIGURE_PROCESS_AFTER", 0.0)
    monkeypatch.setattr(recorder.FigureProcess, "start", staticmethod(start))
    if failure == "not_ready":
        monkeypatch.setattr(FigureProcess, "ready", property(lambda self: False))
    drawn_here = []
    monkeypatch.setattr(recorder, "figure_png", lambda figure, args: drawn_here.append(figure)
                        or _figures.figure_png(figure, args))
    assert run(tmp_path, "worker") == own
    assert len(workers) == 1  # started once
    ended = workers[0].wait_ended(30)  # and closed by the run's end
    assert ended is not None
    if failure == "none":
        assert drawn_here == [] and ended == 0
    else:
        assert sorted(drawn_here) == [_figures.CURVES_FIGURE, _figures.RANGE_TEST_FIGURE]
