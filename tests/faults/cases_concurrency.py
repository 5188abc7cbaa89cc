"""Two commands on one run folder at once. Exactly one may write it: the other must stop with one
`error:` line (exit 2) that says the folder is in use, and the folder must end as the reference run --
never with repeated epochs, never a mix of two runs. `converge report` reads a live run without
disturbing it and says that it is live.

The runs sleep 4 to 12 ms per forward call here (FAULT_SLEEP), so a command lasts long enough for the other
to start; their results do not depend on the sleep. Where one command must meet the other in mid-run, it
is started first and held, fully loaded, until the battery lets it go (tests/faults/inject.py wait): a
process takes 3 to 10 s to start on this machine, too long and too uneven to aim with a start time."""

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
LONG = {"FAULT_SLEEP": "0.012"}   # the run the other command must find still running: ~10 s of training


def _started_and_waiting(c, *args, name: str, env: dict | None = None):
    """Start ``converge *args`` so that it stops, fully loaded, before doing anything (inject.py wait); the
    returned function lets it go."""
    sync = c.path(f"sync-{name}")
    sync.mkdir()
    proc = c.start(*args, env={**(env or {}), "FAULT_SYNC": sync}, inject=["wait:run:1"])
    wait_for(lambda: (sync / "held").exists(), f"{name} to start", proc=proc)
    return proc, lambda: (sync / "go").touch()


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
    resume, go = _started_and_waiting(c, "resume", out, "--quiet", name="resume")
    train = c.start(*train_args(c.ref("train_task"), out), env=LONG)
    wait_for(lambda: lines_in(out / "metrics.jsonl") >= 2 and (out / "checkpoint.pt").exists(),
             "2 epochs and a checkpoint", proc=train)
    go()
    resumed = resume.wait()
    still_running = train.poll() is None
    trained = train.wait()
    problems = []
    if resumed.code == 0:
        problems.append("resume exit 0 while train was running" + ("" if still_running else
                                                                   " (train had ended before resume did)"))
    else:
        problem = one_line_error(resumed, "in use")
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
    return "resume refused: " + resumed.err.strip()[:120]


@case("train-force-into-live-folder", "concurrency", needs=("fixed",), cost=22)
def _force_into_live(c):
    """`train --force` (of another, 6-epoch run) into the folder a train is writing."""
    out = c.path("run")
    forced, go = _started_and_waiting(c, *train_args(c.ref("train_task"), out, epochs=6), "--force",
                                      name="force")
    first = c.start(*train_args(c.ref("train_task"), out), env=LONG)
    wait_for(lambda: lines_in(out / "metrics.jsonl") >= 2, "2 epochs", proc=first)
    go()
    overwrote = forced.wait()
    trained = first.wait()
    problems = []
    if overwrote.code == 0:
        problems.append("train --force exit 0 into a folder another train was writing")
    else:
        problem = one_line_error(overwrote, "in use")
        if problem:
            problems.append(f"train --force: {problem}")
    if trained.code != 0:
        problems.append(f"the first train: {trained.brief()}")
    try:
        same_run(Path(c.ref("fixed")["run"]), out)
    except Failed as exc:
        problems.append(f"the folder is neither run: {exc}" if overwrote.code == 0 else str(exc))
    if problems:
        raise Failed("; ".join(problems))
    return "train --force refused: " + overwrote.err.strip()[:120]


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
    report_proc, go = _started_and_waiting(c, "report", out, name="report")
    train = c.start(*train_args(c.ref("train_task"), out), env=LONG)
    wait_for(lambda: lines_in(out / "metrics.jsonl") >= 2, "2 epochs", proc=train)
    go()
    report = report_proc.wait()
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
