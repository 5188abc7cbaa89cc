"""The fault battery's pieces: the case registry, a case's context (its folder, the references, ways to
run `converge`), and the checks every case is judged by.

A case is a function ``fn(c: Ctx) -> str | None`` registered with ``@case(name, group)``. It holds when it
returns (optionally with a note), fails when it raises ``Failed(detail)`` (the detail says what differed),
and is skipped with ``Skipped(reason)``. Anything else it raises is a failure of the case itself, reported
with its type and message.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LOCK_FILE = ".converge.lock"   # converge.io.lock.LOCK_FILE; a failed command may take and leave it
TIMING_KEYS = ("seconds", "wall_seconds")
RESUME_ONLY_EVENTS = ("resumed", "checkpoint_fallback")


class Failed(Exception):
    """The case did not hold; the message says what differed."""


class Skipped(Exception):
    """The case cannot run here; the message says why."""


@dataclass
class Case:
    name: str
    group: str
    fn: Callable
    needs: tuple[str, ...] = ()     # references (see battery.prepare) the case reads
    serial: str | None = None       # cases with the same key run one after another, in one worker
    cost: float = 10.0              # rough seconds, to start the long ones first


CASES: list[Case] = []


def case(name: str, group: str, *, needs: tuple[str, ...] = (), serial: str | None = None, cost: float = 10.0):
    def register(fn: Callable) -> Callable:
        CASES.append(Case(f"{group}/{name}", group, fn, needs, serial, cost))
        return fn
    return register


# --- running converge ------------------------------------------------------------------------------
@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err

    def brief(self) -> str:
        """Exit status and the last stderr line, for a failure's detail."""
        return f"exit {self.code}, stderr: {self.last_line()[:220]}"

    def last_line(self) -> str:
        lines = [line for line in self.err.splitlines() if line.strip()]
        return lines[-1] if lines else "(nothing)"


class Proc:
    """A `converge` process started in its own session (so a kill reaches it and its children only)."""

    def __init__(self, argv: list[str], env: dict, cwd: Path, log: Path) -> None:
        self.log = log
        self._out = open(f"{log}.out", "w")
        self._err = open(f"{log}.err", "w")
        self.popen = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._out, stderr=self._err,
                                      start_new_session=True)
        self.started = time.monotonic()

    def poll(self) -> int | None:
        return self.popen.poll()

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def wait(self, timeout: float = 180) -> Result:
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.popen.wait(30)
            self._close()
            raise Failed(f"{self.log.name}: still running after {timeout:.0f} s (killed)") from None
        self._close()
        return Result(code, Path(f"{self.log}.out").read_text(errors="replace"),
                      Path(f"{self.log}.err").read_text(errors="replace"))

    def _close(self) -> None:
        for handle in (self._out, self._err):
            if not handle.closed:
                handle.close()


@dataclass
class Ctx:
    """One case's world: its own folder, the shared references, a seeded random source."""

    name: str
    root: Path
    refs: dict
    seed: int
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"{self.seed}:{self.name}")
        self._logs = 0

    # paths and references
    def path(self, name: str) -> Path:
        return self.root / name

    def ref(self, name: str):
        if name not in self.refs:
            raise Skipped(f"reference {name!r} was not prepared")
        value = self.refs[name]
        if isinstance(value, dict) and value.get("skip"):
            raise Skipped(value["skip"])
        return value

    def copy(self, src: str | Path, name: str) -> Path:
        dst = self.root / name
        shutil.copytree(src, dst, symlinks=True)
        (dst / LOCK_FILE).unlink(missing_ok=True)
        return dst

    # processes
    def env(self, extra: dict | None = None) -> dict:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        env.pop("FAULT_AT", None)
        env.update({k: str(v) for k, v in (extra or {}).items()})
        return env

    def argv(self, args, inject: list[str] | None = None, prefix: list[str] | None = None) -> list[str]:
        head = [sys.executable, str(HERE / "inject.py"), *inject, "--"] if inject else \
            [sys.executable, "-m", "converge"]
        return [*(prefix or []), *head, *map(str, args)]

    def start(self, *args, env: dict | None = None, inject: list[str] | None = None,
              prefix: list[str] | None = None) -> Proc:
        self._logs += 1
        proc = Proc(self.argv(args, inject, prefix), self.env(env), self.root, self.root / f"cmd{self._logs}")
        self.procs.append(proc)
        return proc

    def converge(self, *args, env: dict | None = None, inject: list[str] | None = None,
                 prefix: list[str] | None = None, timeout: float = 180) -> Result:
        return self.start(*args, env=env, inject=inject, prefix=prefix).wait(timeout)

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                try:
                    proc.popen.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            proc._close()


# --- waiting --------------------------------------------------------------------------------------
def wait_for(condition: Callable[[], bool], what: str, *, proc: Proc | None = None, timeout: float = 120,
             step: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise Failed(f"the command ended (exit {proc.poll()}) before {what}")
        if time.monotonic() > deadline:
            raise Failed(f"gave up waiting {timeout:.0f} s for {what}")
        time.sleep(step)


def lines_in(path: Path) -> int:
    try:
        with open(path, "rb") as handle:
            return handle.read().count(b"\n")
    except OSError:
        return 0


# --- checks ---------------------------------------------------------------------------------------
def one_line_error(result: Result, *needles: str, code: int | tuple = 2, warnings_ok: bool = False) -> str | None:
    """None when ``result`` keeps the bad-input contract: exit ``code``, exactly one stderr line
    ``error: ...`` holding every needle, no traceback. Else what broke it. ``warnings_ok``: `warning:` lines
    before it are allowed (a failing disk may cost a derived file first, with its own warning)."""
    codes = code if isinstance(code, tuple) else (code,)
    lines = [line for line in result.err.splitlines() if line.strip()]
    if warnings_ok:
        lines = [line for line in lines if not line.startswith("warning: ")]
    if result.code not in codes:
        return f"exit {result.code} (wanted {'/'.join(map(str, codes))}), stderr: {result.last_line()[:220]}"
    if "Traceback" in result.err:
        return f"a traceback on stderr (exit {result.code}, last line: {result.last_line()[:200]})"
    if len(lines) != 1:
        return f"{len(lines)} stderr lines, wanted one `error:` line: {' | '.join(lines[-3:])[:300]}"
    if not lines[0].startswith("error: "):
        return f"stderr line is not `error: ...`: {lines[0][:200]}"
    missing = [n for n in needles if n not in lines[0]]
    if missing:
        return f"error line lacks {missing}: {lines[0][:240]}"
    return None


def check(problem: str | None, context: str = "") -> None:
    if problem:
        raise Failed(f"{context}: {problem}" if context else problem)


def expect(condition: bool, detail: str) -> None:
    if not condition:
        raise Failed(detail)


def read_jsonl(path: Path) -> tuple[list[dict], str | None]:
    """The records of a JSON-lines file, and what was wrong with it (None when every line is a record)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return [], f"{path.name} cannot be read ({exc.strerror})"
    records, problem = [], None
    for number, line in enumerate(raw.split(b"\n")[:-1] if raw.endswith(b"\n") else raw.split(b"\n"), 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            problem = problem or f"{path.name} line {number} is not JSON ({line[:60]!r})"
    if raw and not raw.endswith(b"\n"):
        problem = problem or f"{path.name} ends without a newline"
    return records, problem


def _strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if not (k in TIMING_KEYS or k.endswith("_seconds"))}


def diff_runs(reference: Path, run: Path, *, events: bool = True) -> list[str]:
    """How ``run`` differs from ``reference``: metrics.jsonl without timing, events.jsonl without timing
    and without the events only a resumed run has, best.safetensors byte for byte, summary.json without
    timing. Empty when they are the same run."""
    problems = []
    ref_metrics, _ = read_jsonl(reference / "metrics.jsonl")
    metrics, bad = read_jsonl(run / "metrics.jsonl")
    if bad:
        problems.append(bad)
    problems += _diff_records("metrics.jsonl", [_strip(r) for r in ref_metrics], [_strip(r) for r in metrics])
    if events:
        ref_events, _ = read_jsonl(reference / "events.jsonl")
        got, bad = read_jsonl(run / "events.jsonl")
        if bad:
            problems.append(bad)
        keep = lambda rs: [_strip(r) for r in rs if r.get("event") not in RESUME_ONLY_EVENTS]  # noqa: E731
        problems += _diff_records("events.jsonl", keep(ref_events), keep(got))
    best_ref, best = reference / "best.safetensors", run / "best.safetensors"
    if not best.exists():
        problems.append("best.safetensors is missing")
    elif best.read_bytes() != best_ref.read_bytes():
        problems.append("best.safetensors differs from the reference's")
    problems += _diff_summary(reference / "summary.json", run / "summary.json")
    return problems


def _diff_records(name: str, want: list[dict], got: list[dict]) -> list[str]:
    if want == got:
        return []
    if name == "metrics.jsonl":
        epochs = [r.get("epoch") for r in got]
        repeated = sorted({e for e in epochs if epochs.count(e) > 1}, key=str)
        if repeated:
            return [f"metrics.jsonl repeats epoch(s) {', '.join(map(str, repeated[:8]))} "
                    f"({len(got)} lines, the reference {len(want)})"]
    if len(want) != len(got):
        return [f"{name} has {len(got)} records, the reference {len(want)}"]
    for number, (a, b) in enumerate(zip(want, got), 1):
        if a != b:
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            shown = ", ".join(f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in keys[:3])
            return [f"{name} record {number} differs: {shown}"[:300]]
    return []


def _diff_summary(ref_path: Path, path: Path) -> list[str]:
    try:
        got = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        return [f"summary.json unreadable ({type(exc).__name__})"]
    want = json.loads(ref_path.read_bytes())
    if not isinstance(got, dict):
        return ["summary.json is not an object"]
    want, got = _strip(want), _strip(got)
    if want == got:
        return []
    keys = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    return [f"summary.json differs in {', '.join(keys[:5])}" +
            (f" (status {got.get('status')!r}, reference {want.get('status')!r})" if "status" in keys else "")]


def same_run(reference: Path, run: Path, context: str = "", *, events: bool = True) -> None:
    problems = diff_runs(reference, run, events=events)
    if problems:
        raise Failed((f"{context}: " if context else "") + "; ".join(problems))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` but the lock file: relative path -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


def changed(before: dict[str, bytes], after: dict[str, bytes]) -> str | None:
    names = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if not names:
        return None
    what = [f"{n} ({'new' if n not in before else 'gone' if n not in after else 'changed'})" for n in names[:5]]
    return "files changed: " + ", ".join(what)


# --- the commands the cases run --------------------------------------------------------------------
FIXED_EPOCHS = 10


def train_args(task: Path, out: Path, *, epochs: int = FIXED_EPOCHS) -> list:
    """A fixed-hyperparameter run: the reference for kills, corruption and concurrency."""
    return ["train", task, "--out", out, "--max-epochs", epochs, "--batch-size", "32", "--optimizer", "adamw",
            "--lr", "1e-3", "--weight-decay", "1e-2", "--seed", "3", "--device", "cpu", "--checkpoint-seconds",
            "0.05", "--quiet"]


def auto_args(task: Path, out: Path) -> list:
    """Every knob auto: the run tunes first (range tests, race), then trains 3 epochs."""
    return ["train", task, "--out", out, "--max-epochs", "3", "--seed", "3", "--device", "cpu", "--quiet"]


TUNE_TRIALS = 3


def tune_args(task: Path, out: Path, *extra) -> list:
    return ["tune", task, "--trials", TUNE_TRIALS, "--out", out, "--max-epochs", "6", "--pruner", "none",
            "--no-warm-start", "--seed", "0", "--quiet", *extra]


def study_trials(journal: Path, study: str) -> list:
    """The study's trials as Optuna's own journal reader sees them (no converge code in between)."""
    import optuna
    from optuna.storages import JournalStorage

    try:
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
    except ImportError:  # optuna 3.x
        from optuna.storages import JournalFileOpenLock
        from optuna.storages import JournalFileStorage as JournalFileBackend
    storage = JournalStorage(JournalFileBackend(str(journal), lock_obj=JournalFileOpenLock(str(journal))))
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
