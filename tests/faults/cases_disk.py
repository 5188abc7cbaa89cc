"""The disk under the run folder fails: full (a small loop-mounted ext4), read-only, or the folder deleted
or replaced while the run writes it. Each must end in one `error:` line (no traceback) and exit status 2
(docs/storage-errors.md), lose nothing already written, and -- once the disk is usable again -- resume
to the reference result. A run never ends in success over a folder it could not finish.

The loop file system is made by scripts/setup-loopfs.sh (root only); without it these cases are skipped
with its reason."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from _harness import (
    REPO,
    TUNE_TRIALS,
    Failed,
    Skipped,
    case,
    changed,
    check,
    expect,
    lines_in,
    one_line_error,
    read_jsonl,
    same_run,
    snapshot,
    study_trials,
    train_args,
    tune_args,
    wait_for,
)

SCRIPT = REPO / "scripts" / "setup-loopfs.sh"


class LoopFs:
    """A fresh 16 MiB ext4 mounted at ``c.path('disk')`` for one case; unmounted when the case ends."""

    def __init__(self, c, size_mib: int = 16) -> None:
        c.ref("loopfs")  # skips the case with the reason when loop mounts cannot work here
        self.mount = c.path("disk")
        done = self._script(str(self.mount), str(size_mib))
        if "mounted" not in done.stdout:
            raise Skipped(done.stdout.strip().removeprefix("skip: ") or done.stderr.strip()[-200:])
        self.ballast = self.mount / "ballast"

    def _script(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120)

    def free(self) -> int:
        """Bytes a writer can still use (ext4 keeps a pool of reserved clusters that even root cannot)."""
        stat = os.statvfs(self.mount)
        return stat.f_bavail * stat.f_frsize

    def fill(self, leave: int) -> int:
        """Take the free space but about ``leave`` bytes (the file system's own metadata takes a little
        too: the size is lowered until it fits). Returns the bytes left free."""
        size = max(0, self.free() - leave)
        with open(self.ballast, "wb") as handle:
            while size > 0:
                try:
                    os.posix_fallocate(handle.fileno(), 0, size)
                    break
                except OSError:
                    handle.truncate(0)
                    size -= 16_384
        os.sync()
        return self.free()

    def empty(self) -> None:
        self.ballast.unlink(missing_ok=True)
        os.sync()

    def read_only(self, flag: bool) -> None:
        done = self._script("ro" if flag else "rw", str(self.mount))
        if done.returncode != 0:
            raise Failed(f"cannot remount {'ro' if flag else 'rw'}: {done.stderr.strip()[-200:]}")

    def __enter__(self) -> "LoopFs":
        return self

    def __exit__(self, *exc) -> None:
        self._script("stop", str(self.mount))


def _failed_in_one_line(result, what: str, *needles: str) -> None:
    expect(result.code not in (0, -9), f"{what}: exit {result.code}, wanted a failure in one line")
    check(one_line_error(result, *needles, code=2, warnings_ok=True), what)


def _every_json_readable(folder: Path) -> str | None:
    """None when every converge JSON file in ``folder`` that exists is whole."""
    import json

    for name in ("run.json", "summary.json", "tuning.json", "doctor.json"):
        path = folder / name
        if path.exists():
            try:
                json.loads(path.read_bytes())
            except ValueError:
                return f"{name} is corrupt after the failure"
    return None


# --- disk full ----------------------------------------------------------------------------------------
# Bytes left free. Training needs room for three ~47 KB checkpoints while it rotates them (one every 0.05 s),
# the end ~140 KB more for the curves and the report. So 40 KB fails the first checkpoint, 120 KB the first
# rotation, and 170 KB the final files (the report and curves are derived: a run may end with a warning
# instead, as long as everything else is the reference's).
for _name, _leave in (("first-checkpoint", 40_000), ("checkpoint-rotation", 120_000), ("final-files", 170_000)):
    @case(f"full-disk-train-{_name}", "disk", needs=("loopfs", "fixed"), cost=16)
    def _full_train(c, _leave=_leave):
        with LoopFs(c) as disk:
            out = disk.mount / "run"
            left = disk.fill(_leave)
            result = c.converge(*train_args(c.ref("train_task"), out))
            if result.code == 0:
                same_run(Path(c.ref("fixed")["run"]), out, f"disk full ({left} bytes free), exit 0")
                missing = [n for n in ("report.html", "curves.png") if not (out / n).exists()]
                warned = [line for line in result.err.splitlines() if line.startswith("warning:")]
                expect(not missing or warned, f"exit 0 without {missing} and without a warning")
                return f"{left // 1000} KB free: finished, {missing or 'nothing'} missing, " \
                       f"{len(warned)} warning(s): {(warned or [''])[0][:80]}"
            _failed_in_one_line(result, f"disk full ({_leave} bytes free)", "No space left on device")
            check(_every_json_readable(out), "disk full")
            epochs = lines_in(out / "metrics.jsonl")
            there = sorted(p.name for p in out.iterdir()) if out.exists() else []
            disk.empty()
            again = c.converge("resume", out, "--quiet") if (out / "run.json").exists() else \
                c.converge(*train_args(c.ref("train_task"), out), "--force")
            if again.code != 0:
                raise Failed(f"after freeing the disk: {again.brief()}")
            same_run(Path(c.ref("fixed")["run"]), out, f"disk full after {epochs} epoch(s), then resumed")
            return f"{left // 1000} KB free: exit {result.code} after {epochs} epoch(s) ({len(there)} files): " \
                   f"{result.err.strip()[:70]}; resumed to the reference"


@case("full-disk-tune", "disk", needs=("loopfs", "tune"), cost=30)
def _full_tune(c):
    """The journal's append fails half-way: one line; with space again the study finishes, and Optuna's own
    reader takes the journal (no torn record left behind)."""
    tune = c.ref("tune")
    with LoopFs(c) as disk:
        out = disk.mount / "tune"
        left = disk.fill(60_000)
        result = c.converge(*tune_args(c.ref("tune_task"), out), env={"FAULT_SLEEP": "0"})
        if result.code == 0:
            raise Skipped("the study fitted in 60 KB: no ENOSPC hit")
        _failed_in_one_line(result, "disk full during converge tune")
        disk.empty()
        again = c.converge(*tune_args(c.ref("tune_task"), out), env={"FAULT_SLEEP": "0"})
        if again.code != 0:
            raise Failed(f"tune again after freeing the disk: {again.brief()}")
        try:
            trials = study_trials(out / "study.journal", tune["study"])
        except Exception as exc:  # noqa: BLE001 - what Optuna's reader says is the finding
            raise Failed(f"Optuna cannot read the journal after the full disk: {type(exc).__name__}: {exc}") from None
        finished = sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
        expect(finished == TUNE_TRIALS, f"{finished} finished trials after the rerun, wanted {TUNE_TRIALS}")
        return f"{left // 1000} KB free: exit {result.code}: {result.err.strip()[:90]}; the rerun finished the study"


# --- read-only -------------------------------------------------------------------------------------------
@case("read-only-resume", "disk", needs=("loopfs", "interrupted", "fixed"), cost=14)
def _read_only_resume(c):
    with LoopFs(c) as disk:
        out = disk.mount / "run"
        shutil.copytree(c.ref("interrupted")["run"], out)
        before = snapshot(out)
        disk.read_only(True)
        result = c.converge("resume", out)
        check(one_line_error(result, code=2), "resume into a read-only folder")
        check(changed(before, snapshot(out)), "read-only resume")
        disk.read_only(False)
        again = c.converge("resume", out, "--quiet")
        if again.code != 0:
            raise Failed(f"resume once writable: {again.brief()}")
        same_run(Path(c.ref("fixed")["run"]), out, "after the read-only refusal")
        return f"exit {result.code}: {result.err.strip()[:110]}"


@case("read-only-train", "disk", needs=("loopfs",), cost=8)
def _read_only_train(c):
    with LoopFs(c) as disk:
        disk.read_only(True)
        out = disk.mount / "run"
        result = c.converge(*train_args(c.ref("train_task"), out))
        check(one_line_error(result, code=2), "train into a read-only file system")
        expect(not out.exists(), "a folder was created")
        return f"exit {result.code}: {result.err.strip()[:110]}"


@case("read-only-report", "disk", needs=("loopfs", "fixed"), cost=8)
def _read_only_report(c):
    with LoopFs(c) as disk:
        out = disk.mount / "run"
        shutil.copytree(c.ref("fixed")["run"], out)
        before = snapshot(out)
        disk.read_only(True)
        result = c.converge("report", out)
        check(one_line_error(result, "Read-only file system", code=2), "report of a read-only run folder")
        check(changed(before, snapshot(out)), "read-only report")
        return f"exit {result.code}: {result.err.strip()[:110]}"


# --- disk full at a chosen write -------------------------------------------------------------------------
# inject.py's `fill` takes every free block just before one write of the run (a checkpoint's serialization,
# a metrics line that needs a new block, the report), so that write meets the kernel's ENOSPC. The run
# stops there: exit 2, one line naming the file, the cause, the checkpoint left intact and the command that
# continues; no summary.json (a summary means a finished folder). Freed, `converge resume` ends in the
# reference, bit for bit.
for _what, _file, _nth in (("checkpoint", "checkpoint.pt", 4), ("metrics", "metrics.jsonl", 3),
                           ("report", "report.html", 1)):
    @case(f"full-disk-during-{_what}-write", "disk", needs=("loopfs", "fixed"), cost=16)
    def _full_during(c, _file=_file, _nth=_nth):
        with LoopFs(c) as disk:
            out = disk.mount / "run"
            result = c.converge(*train_args(c.ref("train_task"), out), inject=[f"fill:{_file}:{_nth}"],
                                env={"FAULT_BALLAST": disk.ballast})
            _failed_in_one_line(result, f"disk filled at a write of {_file}", f"{out / _file}'",
                                "No space left on device", "is intact", f"`converge resume {out}`")
            check(_every_json_readable(out), f"disk full at {_file}")
            # A slow first epoch may hold the nth checkpoint write (they are timed): then no epoch has ended,
            # and no metrics line is due yet.
            in_first_epoch = "(epoch 1, step" in result.err or "(before the first step)" in result.err
            if (out / "metrics.jsonl").exists() or not in_first_epoch:
                _, torn = read_jsonl(out / "metrics.jsonl")
                check(torn, f"disk full at {_file}")
            expect(not (out / "summary.json").exists(), "summary.json written by a run that failed")
            epochs = lines_in(out / "metrics.jsonl")
            disk.empty()
            again = c.converge("resume", out, "--quiet")
            if again.code != 0:
                raise Failed(f"resume after freeing the disk: {again.brief()}")
            same_run(Path(c.ref("fixed")["run"]), out, f"disk full at {_file} after {epochs} epoch(s), then resumed")
            return f"after {epochs} epoch(s): {result.err.strip()[:150]}; resumed to the reference"


# --- the folder deleted or replaced while the run writes it ---------------------------------------------
@case("folder-deleted-mid-run", "disk", needs=("fixed",), cost=12)
def _deleted(c):
    out = c.path("run")
    train = c.start(*train_args(c.ref("train_task"), out), env={"FAULT_SLEEP": "0.004"})
    wait_for(lambda: lines_in(out / "metrics.jsonl") >= 2, "2 epochs", proc=train)
    for _ in range(20):  # the run may add a file while the tree is being removed
        shutil.rmtree(out, ignore_errors=True)
        if not out.exists():
            break
    result = train.wait(timeout=120)
    _failed_in_one_line(result, "run folder deleted mid-run", "deleted", "the run stopped")
    if out.exists():
        raise Failed(f"the deleted folder is back, holding {sorted(p.name for p in out.iterdir())}")
    resumed = c.converge("resume", out)
    check(one_line_error(resumed, "not a converge run folder"), "resume of the deleted folder")
    return f"exit {result.code}: {result.err.strip()[:110]}"


@case("folder-replaced-mid-run", "disk", needs=("fixed",), cost=16)
def _replaced(c):
    """`mv runs/x elsewhere && mkdir runs/x` while it trains: the run writes nothing into the new folder and
    stops in one line; the moved folder resumes where it is now to the reference."""
    out, moved = c.path("run"), c.path("moved")
    train = c.start(*train_args(c.ref("train_task"), out), env={"FAULT_SLEEP": "0.004"})
    wait_for(lambda: lines_in(out / "metrics.jsonl") >= 2, "2 epochs", proc=train)
    os.rename(out, moved)
    out.mkdir()
    result = train.wait(timeout=120)
    _failed_in_one_line(result, "run folder replaced mid-run", "another one made at its path")
    there = sorted(p.name for p in out.iterdir())
    expect(not there, f"the run wrote {there} into the folder put in its place")
    again = c.converge("resume", moved, "--quiet")
    if again.code != 0:
        raise Failed(f"resume of the moved folder: {again.brief()}")
    same_run(Path(c.ref("fixed")["run"]), moved, "replaced mid-run, the moved folder resumed")
    return f"exit {result.code}: {result.err.strip()[:110]}; the moved folder resumed to the reference"
