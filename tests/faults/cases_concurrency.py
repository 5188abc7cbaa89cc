"""Two commands on one run folder at once. Exactly one may write it: the other must stop with one
`error:` line (exit 2) that says the folder is in use, and the folder must end as the reference run --
never with repeated epochs, never a mix of two runs. `converge report` reads a live run without
disturbing it and says that it is live.

The runs sleep 4 ms per forward call here (FAULT_SLEEP), so a command lasts long enough for the other
to start (a process starts in about 5 s on this machine); their results do not depend on the sleep."""

from __future__ import annotations

import re
import time
from pathlib import Path

from _harness import (
    Failed,
    case,
    lines_in,
    one_line_error,
    same_run,
    train_args,
    wait_for,
)

SLOW = {"FAULT_SLEEP": "0.004"}


def _one_wins(results: list, what: str) -> str:
    """Exactly one exit 0; every other exit 2 with one `error:` line."""
    codes = [r.code for r in results]
    if codes.count(0) != 1:
        raise Failed(f"{what}: exit statuses {codes}, wanted exactly one 0 and the others refused" +
                     ("" if codes.count(0) else "; " + "; ".join(r.brief() for r in results)))
    for result in results:
        if result.code != 0:
            problem = one_line_error(result)
            if problem:
                raise Failed(f"{what}: the refused command: {problem}")
            return result.err.strip()
    return ""


def _judge(c, results: list, out: Path, what: str) -> str:
    """One command won and the others were refused in one line, and the folder is the reference run."""
    diff = []
    try:
        same_run(Path(c.ref("fixed")["run"]), out)
    except Failed as exc:
        diff = [str(exc)]
    try:
        refused = _one_wins(results, what)
    except Failed as exc:
        raise Failed("; ".join([str(exc), *(diff or ["the folder is the reference run all the same"])])) from None
    if diff:
        raise Failed(f"{what}: one refused, yet the folder differs: {diff[0]}")
    return f"refused: {refused[:120]}"


for _gap in (0.0, 1.0):
    @case(f"two-resumes-gap-{_gap:g}s", "concurrency", needs=("interrupted", "fixed"), cost=22)
    def _two_resumes(c, _gap=_gap):
        out = c.copy(c.ref("interrupted")["run"], "run")
        first = c.start("resume", out, "--quiet", env=SLOW)
        time.sleep(_gap)
        second = c.start("resume", out, "--quiet", env=SLOW)
        results = [first.wait(), second.wait()]
        return _judge(c, results, out, f"two resumes {_gap:g} s apart")


@case("resume-while-train-runs", "concurrency", needs=("fixed",), cost=22)
def _resume_during_train(c):
    out = c.path("run")
    train = c.start(*train_args(c.ref("train_task"), out), env=SLOW)
    wait_for(lambda: lines_in(out / "metrics.jsonl") >= 2 and (out / "checkpoint.pt").exists(),
             "2 epochs and a checkpoint", proc=train)
    resume = c.converge("resume", out, "--quiet", env=SLOW)
    trained = train.wait()
    problems = []
    if resume.code == 0:
        problems.append("resume exit 0 while train was running")
    else:
        problem = one_line_error(resume, "in use")
        if problem:
            problems.append(f"resume: {problem}")
    if trained.code != 0:
        problems.append(f"the train: {trained.brief()}")
    try:
        same_run(Path(c.ref("fixed")["run"]), out)
    except Failed as exc:
        problems.append(str(exc))
    if problems:
        raise Failed("; ".join(problems))
    return "resume refused: " + resume.err.strip()[:120]


@case("train-force-into-live-folder", "concurrency", needs=("fixed",), cost=22)
def _force_into_live(c):
    out = c.path("run")
    args = train_args(c.ref("train_task"), out)
    first = c.start(*args, env=SLOW)
    wait_for(lambda: lines_in(out / "metrics.jsonl") >= 2, "2 epochs", proc=first)
    forced = c.converge(*train_args(c.ref("train_task"), out, epochs=6), "--force", env=SLOW)  # another run
    trained = first.wait()
    problems = []
    if forced.code == 0:
        problems.append("train --force exit 0 into a folder another train was writing")
    else:
        problem = one_line_error(forced, "in use")
        if problem:
            problems.append(f"train --force: {problem}")
    if trained.code != 0:
        problems.append(f"the first train: {trained.brief()}")
    try:
        same_run(Path(c.ref("fixed")["run"]), out)
    except Failed as exc:
        problems.append(f"the folder is neither run: {exc}" if forced.code == 0 else str(exc))
    if problems:
        raise Failed("; ".join(problems))
    return "train --force refused: " + forced.err.strip()[:120]


for _gap in (0.0,):
    @case(f"two-trains-new-folder-gap-{_gap:g}s", "concurrency", needs=("fixed",), cost=22)
    def _two_trains(c, _gap=_gap):
        out = c.path("run")
        args = train_args(c.ref("train_task"), out)
        first = c.start(*args, env=SLOW)
        time.sleep(_gap)
        second = c.start(*args, env=SLOW)
        results = [first.wait(), second.wait()]
        return _judge(c, results, out, f"two trains into one new folder {_gap:g} s apart")


@case("two-trains-race-window", "concurrency", needs=("fixed",), cost=22)
def _race_window(c):
    """The check-then-create race made certain: the first train stops right after its "is the folder
    empty?" check until the second has passed the same check (tests/faults/inject.py hold/release)."""
    out = c.path("run")
    sync = c.path("sync")
    sync.mkdir()
    args = train_args(c.ref("train_task"), out)
    first = c.start(*args, env={**SLOW, "FAULT_SYNC": sync}, inject=["hold:create:1"])
    wait_for(lambda: (sync / "held").exists(), "the first train to pass its check", proc=first)
    second = c.start(*args, env={**SLOW, "FAULT_SYNC": sync}, inject=["release:create:1"])
    wait_for(lambda: (sync / "go").exists() or second.poll() is not None, "the second train's check")
    (sync / "go").touch()  # the second was refused before its check: let the first go on
    results = [first.wait(), second.wait()]
    return _judge(c, results, out, "two trains that both passed the empty-folder check")


@case("report-during-train", "concurrency", needs=("fixed",), cost=20)
def _report_live(c):
    out = c.path("run")
    train = c.start(*train_args(c.ref("train_task"), out), env=SLOW)
    wait_for(lambda: lines_in(out / "metrics.jsonl") >= 2, "2 epochs", proc=train)
    report = c.converge("report", out)
    trained = train.wait()
    problems = []
    if report.code != 0:
        problems.append(f"report of a live run: {report.brief()}")
    else:
        page = (out / "report.html").read_text(errors="replace") if (out / "report.html").exists() else ""
        text = (report.text + page).replace(str(out), "RUN_DIR")
        said = re.search(r"\blive\b|still running|in use by process|running now", text, re.I)
        if not said:
            problems.append("report exit 0 but neither its output nor the page says the run is live "
                            "(it reads as killed/unfinished)")
    if trained.code != 0:
        problems.append(f"the train: {trained.brief()}")
    try:
        same_run(Path(c.ref("fixed")["run"]), out)
    except Failed as exc:
        problems.append(f"the live run was disturbed: {exc}")
    if problems:
        raise Failed("; ".join(problems))
    return "report says the run is live"
