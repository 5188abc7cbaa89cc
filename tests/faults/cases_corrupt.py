"""Corrupt, truncated, garbage and malicious run-folder files.

An interrupted run (killed in its 4th epoch) with a bad checkpoint or log must resume to the reference
result, or -- when nothing usable is left -- say so in one line and change nothing. A finished run with a
bad summary.json or best.safetensors must be noticed (mended from the checkpoint, or one line naming the
file), never an internal error or a silent "already finished". A malicious pickle must never run."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from _harness import (
    Failed,
    case,
    changed,
    check,
    expect,
    one_line_error,
    read_jsonl,
    same_run,
    snapshot,
)

GARBAGE = bytes(range(256)) * 8


def _replace(path: Path, data: bytes) -> None:
    """A new file at ``path`` (checkpoint.pt and checkpoint.prev.pt may be two names of one file)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def _resume_ok(c, out: Path, note: str) -> str:
    result = c.converge("resume", out, "--quiet")
    if result.code != 0:
        raise Failed(f"{note}: resume {result.brief()}")
    same_run(Path(c.ref("fixed")["run"]), out, note)
    return note


# --- checkpoints of an interrupted run ---------------------------------------------------------------
CHECKPOINT_DAMAGE = {
    "truncated": lambda data: data[:1000],
    "garbage": lambda data: GARBAGE,
    "bit-flips": lambda data: bytes(b ^ 0xFF if i % 97 == 0 else b for i, b in enumerate(data)),
}

for _name, _damage in CHECKPOINT_DAMAGE.items():
    @case(f"checkpoint-{_name}", "corrupt", needs=("interrupted", "fixed"), cost=8)
    def _checkpoint(c, _damage=_damage, _name=_name):
        out = c.copy(c.ref("interrupted")["run"], "run")
        _replace(out / "checkpoint.pt", _damage((out / "checkpoint.pt").read_bytes()))
        return _resume_ok(c, out, f"newest checkpoint {_name}: falls back to checkpoint.prev.pt")


@case("checkpoint-prev-garbage", "corrupt", needs=("interrupted", "fixed"), cost=8)
def _prev_garbage(c):
    out = c.copy(c.ref("interrupted")["run"], "run")
    _replace(out / "checkpoint.prev.pt", GARBAGE)
    return _resume_ok(c, out, "checkpoint.prev.pt garbage, checkpoint.pt good")


@case("checkpoint-both-garbage", "corrupt", needs=("interrupted",), cost=6)
def _both_garbage(c):
    out = c.copy(c.ref("interrupted")["run"], "run")
    _replace(out / "checkpoint.pt", GARBAGE)
    _replace(out / "checkpoint.prev.pt", b"")
    before = snapshot(out)
    result = c.converge("resume", out)
    check(one_line_error(result, "cannot resume"), "both checkpoints unusable")
    check(changed(before, snapshot(out)), "both checkpoints unusable")


class _Evil:
    """Unpickling it runs a shell command that leaves a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_torch_file(marker: Path) -> bytes:
    """A real torch.save() zip whose pickle calls os.system on load (torch.load without weights_only)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"format": 1, "model": {}, "payload": _Evil(marker)}, buffer)
    return buffer.getvalue()


def _malicious_pickle(marker: Path) -> bytes:
    """A bare pickle (the legacy format torch.load also reads) with the same payload."""
    return pickle.dumps(_Evil(marker), protocol=2)


for _name, _make in (("torch-zip", _malicious_torch_file), ("bare-pickle", _malicious_pickle)):
    @case(f"malicious-{_name}-newest", "corrupt", needs=("interrupted", "fixed"), cost=8)
    def _malicious_newest(c, _make=_make, _name=_name):
        out = c.copy(c.ref("interrupted")["run"], "run")
        marker = c.path("PWNED")
        _replace(out / "checkpoint.pt", _make(marker))
        result = c.converge("resume", out, "--quiet")
        expect(not marker.exists(), f"the malicious pickle in checkpoint.pt RAN (marker written; {result.brief()})")
        if result.code != 0:
            raise Failed(f"malicious checkpoint.pt, good checkpoint.prev.pt: resume {result.brief()}")
        same_run(Path(c.ref("fixed")["run"]), out, "malicious checkpoint.pt refused, previous used")
        return "not run; checkpoint.prev.pt used"

    if _name != "torch-zip":
        continue  # both refused alike: one case for the pair is enough

    @case(f"malicious-{_name}-both", "corrupt", needs=("interrupted",), cost=6)
    def _malicious_both(c, _make=_make):
        out = c.copy(c.ref("interrupted")["run"], "run")
        marker = c.path("PWNED")
        for name in ("checkpoint.pt", "checkpoint.prev.pt"):
            _replace(out / name, _make(marker))
        before = snapshot(out)
        result = c.converge("resume", out)
        expect(not marker.exists(), f"a malicious pickle RAN (marker written; {result.brief()})")
        check(one_line_error(result, "cannot resume"), "both checkpoints malicious")
        check(changed(before, snapshot(out)), "both checkpoints malicious")


# --- logs of an interrupted run ----------------------------------------------------------------------
LOG_DAMAGE = {
    "metrics-garbage-appended": ("metrics.jsonl", lambda data: data + b"\x00\xffnot json at all\n{\"epoch\":"),
    "metrics-truncated-mid-line": ("metrics.jsonl", lambda data: data[: len(data) - 17]),
    "events-garbage": ("events.jsonl", lambda data: GARBAGE),
    "events-truncated-mid-line": ("events.jsonl", lambda data: data[: len(data) // 2 + 3]),
}

for _name, (_file, _damage) in LOG_DAMAGE.items():
    @case(_name, "corrupt", needs=("interrupted", "fixed"), cost=8)
    def _log(c, _file=_file, _damage=_damage, _name=_name):
        out = c.copy(c.ref("interrupted")["run"], "run")
        path = out / _file
        if _damage is None:
            path.unlink()
        else:
            _replace(path, _damage(path.read_bytes()))
        return _resume_ok(c, out, f"{_file} damaged ({_name}): rewritten from the checkpoint")


@case("run-json-garbage", "corrupt", needs=("interrupted",), cost=6)
def _run_json(c):
    out = c.copy(c.ref("interrupted")["run"], "run")
    _replace(out / "run.json", b"{not json")
    before = snapshot(out)
    result = c.converge("resume", out)
    check(one_line_error(result, "run.json"), "run.json garbage")
    check(changed(before, snapshot(out)), "run.json garbage")


# --- finished runs: summary.json -----------------------------------------------------------------------
SUMMARY_DAMAGE = {
    "empty": lambda data: b"",
    "truncated": lambda data: data[: len(data) // 2],
    "garbage": lambda data: GARBAGE,
    "not-an-object": lambda data: b"[1, 2, 3]\n",
}


def _mended_or_refused(c, out: Path, before: dict, result, file: str, reference: Path) -> str:
    """A finished run with a bad ``file``: either resume mends it (exit 0, the run as the reference), or
    one `error:` line that names the file and nothing changed."""
    if result.code == 0:
        same_run(reference, out, f"bad {file}, resume exit 0")
        return f"mended: resume rewrote {file}"
    problem = one_line_error(result, file)
    if problem:
        raise Failed(f"bad {file} in a finished run: {problem}")
    check(changed(before, snapshot(out)), f"bad {file}, refused")
    return f"refused in one line naming {file}"


for _name, _damage in SUMMARY_DAMAGE.items():
    @case(f"finished-summary-{_name}", "corrupt", needs=("fixed",), cost=7)
    def _summary(c, _damage=_damage):
        reference = Path(c.ref("fixed")["run"])
        out = c.copy(reference, "run")
        _replace(out / "summary.json", _damage((out / "summary.json").read_bytes()))
        before = snapshot(out)
        return _mended_or_refused(c, out, before, c.converge("resume", out), "summary.json", reference)


@case("finished-summary-garbage-report", "corrupt", needs=("fixed",), cost=6)
def _summary_report(c):
    """`converge report` of a finished run whose summary.json is garbage: a report, or one line; no crash."""
    out = c.copy(c.ref("fixed")["run"], "run")
    _replace(out / "summary.json", GARBAGE)
    result = c.converge("report", out)
    if result.code == 0:
        page = (out / "report.html").read_text(errors="replace")
        expect("summary.json" in page or "summary.json" in result.text,
               "report exit 0 but neither its output nor the page says summary.json is unreadable")
        return "report written, says summary.json is unreadable"
    check(one_line_error(result, "summary.json"), "report with a garbage summary.json")


BEST_DAMAGE = {"truncated": lambda data: data[: len(data) // 2], "garbage": lambda data: GARBAGE}

for _name, _damage in BEST_DAMAGE.items():
    @case(f"finished-best-{_name}-resume", "corrupt", needs=("fixed",), cost=7)
    def _best_resume(c, _damage=_damage):
        reference = Path(c.ref("fixed")["run"])
        out = c.copy(reference, "run")
        _replace(out / "best.safetensors", _damage((out / "best.safetensors").read_bytes()))
        before = snapshot(out)
        return _mended_or_refused(c, out, before, c.converge("resume", out), "best.safetensors", reference)

    @case(f"finished-best-{_name}-report", "corrupt", needs=("fixed",), cost=6)
    def _best_report(c, _damage=_damage):
        out = c.copy(c.ref("fixed")["run"], "run")
        _replace(out / "best.safetensors", _damage((out / "best.safetensors").read_bytes()))
        result = c.converge("report", out)
        said = "best.safetensors" in result.text
        if result.code == 0:
            expect(said, "report exits 0 and does not notice the corrupt best.safetensors")
            return "report says best.safetensors is corrupt"
        check(one_line_error(result, "best.safetensors"), "report with a corrupt best.safetensors")


# --- tuning.json of a run killed while tuning -----------------------------------------------------------
TUNING_DAMAGE = {"garbage": lambda data: GARBAGE, "truncated": lambda data: data[: len(data) // 2]}

for _name, _damage in TUNING_DAMAGE.items():
    @case(f"tuning-json-{_name}", "corrupt", needs=("auto_interrupted", "auto"), cost=14)
    def _tuning(c, _damage=_damage, _name=_name):
        """The finished tuning stages are unreadable: the run redoes tuning and ends as the reference."""
        out = c.copy(c.ref("auto_interrupted")["run"], "run")
        _replace(out / "tuning.json", _damage((out / "tuning.json").read_bytes()))
        result = c.converge("resume", out, "--quiet")
        if result.code != 0:
            raise Failed(f"tuning.json {_name} in a run killed while tuning: resume {result.brief()}")
        same_run(Path(c.ref("auto")["run"]), out, f"tuning.json {_name}, tuning redone")
        _, problem = read_jsonl(out / "events.jsonl")
        expect(problem is None, problem or "")
        return "tuning redone; the run as the reference"
