"""SIGKILL at random and at chosen points -- mid-epoch, during tuning, inside checkpoint and final writes,
during `resume`, several in a row -- then `converge resume`: the run must end bit-identical to the
uninterrupted reference (metrics, events, best weights and summary, timing aside)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from _harness import (
    Failed,
    auto_args,
    case,
    expect,
    lines_in,
    same_run,
    train_args,
    wait_for,
)

KILLED = -signal.SIGKILL


def _kill_at(c, args, out: Path, at: int, *, arm: Path | None = None):
    """Run ``args`` with a SIGKILL planted at forward call ``at`` after ``arm`` (run.json) exists."""
    return c.converge(*args, env={"FAULT_ARM": arm or out / "run.json", "FAULT_AT": at})


def _resume_and_compare(c, reference: Path, out: Path, note: str) -> str:
    result = c.converge("resume", out, "--quiet")
    if result.code == 2 and "already finished" in result.err:
        # A kill from outside can land after the final summary.json (written last: every file is complete),
        # while the process exits. Resume then rightly refuses; the folder must be the reference's run.
        same_run(reference, out, note)
        return note + ": it had written its final files"
    if result.code != 0:
        raise Failed(f"{note}; resume: {result.brief()}")
    same_run(reference, out, note)
    return note


# --- kills at a random forward call of a fixed run --------------------------------------------------
for _i in range(2):
    @case(f"train-random-forward-{_i + 1}", "kill", needs=("fixed",), cost=12)
    def _train_random_forward(c):
        fixed = c.ref("fixed")
        out = c.path("run")
        at = c.rng.randint(1, fixed["calls"] - 1)
        first = _kill_at(c, train_args(c.ref("train_task"), out), out, at)
        expect(first.code == KILLED, f"the planted kill at forward {at} did not happen ({first.brief()})")
        return _resume_and_compare(c, Path(fixed["run"]), out, f"killed at forward {at} of {fixed['calls']}, "
                                                               f"after {lines_in(out / 'metrics.jsonl')} epoch(s)")


for _i in range(2):
    @case(f"train-random-time-{_i + 1}", "kill", needs=("fixed",), cost=12)
    def _train_random_time(c):
        """A kill from outside at a random moment: lands wherever the process is (a background write too)."""
        fixed = c.ref("fixed")
        out = c.path("run")
        epochs, delay = c.rng.randint(1, 7), c.rng.uniform(0.0, 0.15)
        proc = c.start(*train_args(c.ref("train_task"), out))
        wait_for(lambda: lines_in(out / "metrics.jsonl") >= epochs, f"{epochs} epochs", proc=proc)
        time.sleep(delay)
        proc.kill()
        code = proc.wait().code
        note = f"killed after {epochs} epoch(s) + {delay:.3f} s (exit {code})"
        if code == 0:
            same_run(Path(fixed["run"]), out, note)
            return note + ": it had finished"
        return _resume_and_compare(c, Path(fixed["run"]), out, note)


# --- kills planted inside writes -------------------------------------------------------------------
WRITE_POINTS = [
    ("checkpoint-temp-written", "fsync:.checkpoint.pt.:{n}:after", "a new checkpoint written to its temporary file"),
    ("checkpoint-before-rotation", "link:.checkpoint.prev.pt.link:{n}", "before the previous checkpoint is kept"),
    ("checkpoint-mid-rotation", "replace:checkpoint.prev.pt:{n}:after",
     "checkpoint.pt and checkpoint.prev.pt one file (hard link), the new one not yet renamed"),
    ("checkpoint-renamed", "replace:checkpoint.pt:{n}:after", "the new checkpoint renamed, its folder not synced"),
    ("best-weights-write", "replace:best.safetensors:{n}", "best.safetensors written, not renamed"),
    ("final-report", "replace:report.html:1", "the final report written, not renamed (summary not written)"),
    ("final-summary", "replace:summary.json:1", "every final file but summary.json in place"),
    ("metrics-torn-line", "append:metrics.jsonl:{n}", "half a metrics line written"),
    ("events-torn-line", "append:events.jsonl:{n}", "half an events line written"),
]

for _name, _spec, _what in WRITE_POINTS:
    @case(_name, "kill-write", needs=("fixed",), cost=12)
    def _write_point(c, _spec=_spec, _what=_what):
        fixed = c.ref("fixed")
        out = c.path("run")
        spec = _spec.format(n=c.rng.randint(2, 9))
        first = c.converge(*train_args(c.ref("train_task"), out), inject=[spec])
        note = f"{_what} ({spec})"
        expect(first.code == KILLED, f"{note}: the planted kill did not happen ({first.brief()})")
        return _resume_and_compare(c, Path(fixed["run"]), out, note)


# --- while tuning (every knob auto) ----------------------------------------------------------------
for _i in range(2):
    @case(f"auto-tuning-{_i + 1}", "kill", needs=("auto",), cost=16)
    def _auto_tuning(c):
        auto = c.ref("auto")
        out = c.path("run")
        at = c.rng.randint(1, max(2, auto["tuned_at"] - 1))
        first = _kill_at(c, auto_args(c.ref("train_task"), out), out, at)
        expect(first.code == KILLED, f"the planted kill at forward {at} did not happen ({first.brief()})")
        where = "tuning" if not (out / "checkpoint.pt").exists() else "the first epoch"
        return _resume_and_compare(c, Path(auto["run"]), out, f"killed at forward {at} ({where}; tuning ends "
                                                              f"near {auto['tuned_at']})")


# --- during resume, and chains ---------------------------------------------------------------------
for _i in range(2):
    @case(f"during-resume-{_i + 1}", "kill", needs=("interrupted", "fixed"), cost=14)
    def _during_resume(c):
        fixed = c.ref("fixed")
        out = c.copy(c.ref("interrupted")["run"], "run")
        at = c.rng.randint(1, fixed["calls"] // 2)
        second = c.converge("resume", out, "--quiet", env={"FAULT_AT": at})
        expect(second.code in (KILLED, 0), f"resume with a kill at forward {at}: {second.brief()}")
        if second.code == 0:
            same_run(Path(fixed["run"]), out, f"resume finished before forward {at}")
            return f"resume finished before its kill at forward {at}"
        return _resume_and_compare(c, Path(fixed["run"]), out, f"resume killed at forward {at}")


@case("resume-random-time", "kill", needs=("interrupted", "fixed"), cost=14)
def _resume_random_time(c):
    """Killed from outside at a random moment of `resume`, start-up included."""
    fixed = c.ref("fixed")
    out = c.copy(c.ref("interrupted")["run"], "run")
    delay = c.rng.uniform(0.5, 5.0)
    proc = c.start("resume", out, "--quiet")
    time.sleep(delay)
    proc.kill()
    code = proc.wait().code
    note = f"resume killed {delay:.2f} s after its start (exit {code})"
    if code == 0:
        same_run(Path(fixed["run"]), out, note)
        return note + ": it had finished"
    return _resume_and_compare(c, Path(fixed["run"]), out, note)


for _i in range(2):
    @case(f"chain-of-kills-{_i + 1}", "kill", needs=("fixed",), cost=25)
    def _chain(c):
        """Train killed, resume killed, resume killed (random forward calls), then resume."""
        fixed = c.ref("fixed")
        out = c.path("run")
        points = sorted(c.rng.sample(range(1, fixed["calls"]), 3))
        first = _kill_at(c, train_args(c.ref("train_task"), out), out, points[0])
        expect(first.code == KILLED, f"train: the planted kill at forward {points[0]} did not happen")
        done = [points[0]]
        for at in (points[1] - points[0], points[2] - points[1]):
            at = max(1, at)
            step = c.converge("resume", out, "--quiet", env={"FAULT_AT": at})
            if step.code == 0:
                break
            expect(step.code == KILLED, f"resume with a kill at forward {at}: {step.brief()}")
            done.append(at)
        note = f"kills at forward {' then '.join(map(str, done))}"
        if step.code == 0:
            same_run(Path(fixed["run"]), out, note)
            return note
        return _resume_and_compare(c, Path(fixed["run"]), out, note)
