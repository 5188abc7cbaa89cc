"""`converge tune` under faults: a worker SIGKILLed mid-trial or while choosing its warm start, Ctrl-C
during a trial, a torn study.journal (the last record cut at every byte offset), and -- with a PostgreSQL
server of scripts/setup-postgres.sh -- the database stopped in the middle of the study.

A trial lost to a fault is failed and queued again with the same values; retried, it must give the very
run the reference study's trial gave (same values, same seed: bit-identical on CPU)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from _harness import (
    HERE,
    REPO,
    TUNE_TRIALS,
    Failed,
    case,
    check,
    diff_runs,
    expect,
    lines_in,
    one_line_error,
    study_trials,
    tune_args,
    wait_for,
)

KILLED = -signal.SIGKILL
FINISHED = ("COMPLETE", "PRUNED")


def _states(trials) -> str:
    return ", ".join(f"{t.number}:{t.state.name}" for t in trials)


def _retry_of(trials, number: int):
    return next((t for t in trials if t.system_attrs.get("failed_trial") == number), None)


def _check_study(trials, lost: int | None, reference_out: Path, out: Path) -> str:
    """Every trial finished, none running or waiting; the lost trial (-1: the one trial that failed)
    failed and its retry (same values) ran exactly as the reference's trial of that number."""
    finished = sum(t.state.name in FINISHED for t in trials)
    stuck = [t.number for t in trials if t.state.name in ("RUNNING", "WAITING")]
    expect(finished == TUNE_TRIALS and not stuck, f"trials {_states(trials)}: wanted {TUNE_TRIALS} finished, none "
                                                  f"running or waiting")
    if lost is None:
        return ""
    if lost == -1:
        failed = [t.number for t in trials if t.state.name == "FAIL"]
        expect(len(failed) == 1, f"wanted the one trial the fault hit to have failed: {_states(trials)}")
        lost = failed[0]
    retry = _retry_of(trials, lost)
    expect(retry is not None, f"trial {lost} was not queued again ({_states(trials)})")
    expect(retry.params == trials[lost].params, f"the retry of trial {lost} has other values")
    problems = diff_runs(reference_out / "trials" / f"{lost:04d}", out / "trials" / f"{retry.number:04d}")
    expect(not problems, f"trial {lost}'s retry (trial {retry.number}) differs from the reference trial {lost}: "
                         f"{'; '.join(problems)}")
    return f"trial {lost} retried as trial {retry.number}, identical to the reference"


def _fresh_copy(c, tune: dict) -> Path:
    """The reference study's folder, copied (tune.json names its journal by absolute path: fixed up)."""
    out = c.copy(tune["out"], "tune")
    info = json.loads((out / "tune.json").read_text())
    info["storage"] = f"journal:{out / 'study.journal'}"
    (out / "tune.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(out / "workers", ignore_errors=True)
    return out


# --- kills ---------------------------------------------------------------------------------------------
@case("kill-mid-trial", "tune", needs=("tune",), cost=40)
def _kill_mid_trial(c):
    tune = c.ref("tune")
    out = c.path("tune")
    at = c.rng.randint(1, max(2, tune["trial1_calls"] - 1))
    env = {"FAULT_SLEEP": "0.004", "FAULT_ARM": out / "trials" / "0001" / "run.json", "FAULT_AT": at}
    first = c.converge(*tune_args(c.ref("tune_task"), out), env=env)
    expect(first.code == KILLED, f"the planted kill at forward {at} of trial 1 did not happen ({first.brief()})")
    again = c.converge(*tune_args(c.ref("tune_task"), out), env={"FAULT_SLEEP": "0.004"})
    if again.code != 0:
        raise Failed(f"tune again after the kill: {again.brief()}")
    trials = study_trials(out / "study.journal", tune["study"])
    return f"killed at forward {at} of {tune['trial1_calls']} in trial 1; " + \
        _check_study(trials, -1, Path(tune["out"]), out)


@case("kill-during-warm-start", "tune", needs=("tune",), cost=40)
def _kill_warm_start(c):
    """Killed while choosing trial 0 (converge's automatic choice): a rerun starts the study properly."""
    out = c.path("tune")
    at = c.rng.randint(1, 200)
    args = ["tune", c.ref("tune_task"), "--trials", "2", "--out", out, "--max-epochs", "4", "--pruner", "none",
            "--seed", "0", "--quiet"]
    first = c.converge(*args, env={"FAULT_SLEEP": "0.002", "FAULT_ARM": out / "tune.json", "FAULT_AT": at})
    expect(first.code == KILLED, f"the planted kill at forward {at} did not happen ({first.brief()})")
    again = c.converge(*args, env={"FAULT_SLEEP": "0"})
    if again.code != 0:
        raise Failed(f"tune again after the kill: {again.brief()}")
    trials = study_trials(out / "study.journal", c.ref("tune")["study"])
    finished = [t for t in trials if t.state.name in FINISHED]
    expect(len(finished) == 2 and not any(t.state.name in ("RUNNING", "WAITING") for t in trials),
           f"trials {_states(trials)}")
    expect(any(t.user_attrs.get("warm_start") for t in finished), "no finished trial is the warm start")
    return f"killed at forward {at} after tune.json; the rerun finished with the warm start"


# --- Ctrl-C --------------------------------------------------------------------------------------------
@case("ctrl-c-mid-trial", "tune", needs=("tune",), cost=40)
def _ctrl_c(c):
    """docs/tune.md: Ctrl-C stops the running trial at a checkpoint, queues it again and exits 130."""
    tune = c.ref("tune")
    out = c.path("tune")
    at = c.rng.randint(1, max(2, tune["trial1_calls"] // 2))
    env = {"FAULT_SLEEP": "0.004", "FAULT_ARM": out / "trials" / "0001" / "run.json", "FAULT_AT": at,
           "FAULT_SIGNAL": "INT"}
    first = c.converge(*tune_args(c.ref("tune_task"), out), env=env)
    problems = []
    if first.code != 130:
        problems.append(f"Ctrl-C: {first.brief()}, wanted exit 130")
    trials = study_trials(out / "study.journal", tune["study"])
    queued = [t for t in trials if t.state.name == "WAITING" and t.params == trials[1].params] \
        if len(trials) > 1 else []
    if not queued:
        problems.append(f"after Ctrl-C trial 1 is not queued again (trials {_states(trials)})")
    again = c.converge(*tune_args(c.ref("tune_task"), out), env={"FAULT_SLEEP": "0.004"})
    if again.code != 0:
        raise Failed("; ".join([*problems, f"tune again after Ctrl-C: {again.brief()}"]))
    trials = study_trials(out / "study.journal", tune["study"])
    try:
        note = _check_study(trials, -1, Path(tune["out"]), out)
    except Failed as exc:
        problems.append(str(exc))
    counts = json.loads((out / "summary.json").read_text())["trials"]
    if counts.get("fail"):
        problems.append(f"the interrupted trial is counted as failed in summary.json after the rerun ({counts})")
    if problems:
        raise Failed("; ".join(problems))
    return "queued again, not counted as failed; " + note


# --- a torn journal ------------------------------------------------------------------------------------
@case("journal-torn-every-offset", "journal", needs=("tune",), cost=25)
def _torn_every_offset(c):
    """Every byte offset of the last record: the study opens, the torn bytes are kept aside, and after one
    more append Optuna's own reader takes the whole journal (tests/faults/journal_offsets.py)."""
    tune = c.ref("tune")
    done = subprocess.run([sys.executable, str(HERE / "journal_offsets.py"), str(Path(tune["out"]) / "study.journal"),
                           tune["study"], str(c.path("cuts"))], capture_output=True, text=True, timeout=300)
    try:
        report = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise Failed(f"journal_offsets.py: exit {done.returncode}: {done.stderr.strip()[-300:]}") from None
    bad = report["failed"]
    if bad:
        first = bad[0]
        kinds = sorted({part.split(":")[0] for b in bad for part in b["problem"].split("; ")})
        raise Failed(f"{len(bad)} of {report['cuts']} cuts fail ({', '.join(kinds)}); first, cut at byte "
                     f"{first['cut']}: {first['problem']}")
    return f"all {report['cuts']} cuts of the {report['record_bytes']}-byte last record"


for _where in ("first-byte", "all-but-newline"):
    @case(f"journal-torn-{_where}-rerun", "journal", needs=("tune",), cost=25)
    def _torn_rerun(c, _where=_where):
        """The real command on a journal whose last record (trial 2 finishing) is cut: it runs the lost trial
        again, exits 0, keeps the torn bytes, and the run after it is clean too."""
        tune = c.ref("tune")
        out = _fresh_copy(c, tune)
        journal = out / "study.journal"
        data = journal.read_bytes()
        start = data.rstrip(b"\n").rfind(b"\n") + 1
        size = len(data) - start
        cut = {"first-byte": 1, "all-but-newline": size - 1}[_where]
        journal.write_bytes(data[:start + cut])
        torn = data[start:start + cut]
        first = c.converge(*tune_args(c.ref("tune_task"), out), env={"FAULT_SLEEP": "0"})
        if first.code != 0:
            raise Failed(f"rerun on a journal cut {cut} bytes into its last record: {first.brief()}")
        kept = [p.name for p in out.iterdir() if p.is_file() and p != journal and p.read_bytes() == torn]
        expect(kept, f"the {cut} torn bytes are kept nowhere in the tune folder")
        second = c.converge(*tune_args(c.ref("tune_task"), out), env={"FAULT_SLEEP": "0"})
        if second.code != 0:
            raise Failed(f"the run after the repair: {second.brief()}")
        trials = study_trials(journal, tune["study"])
        _check_study(trials, None, Path(tune["out"]), out)
        return f"cut {cut} of {size} bytes; torn bytes in {kept[0]}"


@case("journal-broken-by-old-converge", "journal", needs=("tune",), cost=20)
def _old_break(c):
    """What the old code left: a torn record with the next record appended onto it (every later run
    failed with JSONDecodeError). A rerun mends it and finishes."""
    tune = c.ref("tune")
    out = _fresh_copy(c, tune)
    journal = out / "study.journal"
    data = journal.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    journal.write_bytes(data[:start] + data[start:start + 30] + data[start:])
    first = c.converge(*tune_args(c.ref("tune_task"), out), env={"FAULT_SLEEP": "0"})
    if first.code != 0:
        raise Failed(f"rerun on a journal with a record appended onto a torn one: {first.brief()}")
    trials = study_trials(journal, tune["study"])
    _check_study(trials, None, Path(tune["out"]), out)
    return "mended"


# --- PostgreSQL outage ----------------------------------------------------------------------------------
def _pg_script(pg: dict, *args) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "CONVERGE_PG_ROOT": pg["root"], "CONVERGE_PG_PORT": str(pg["port"])}
    return subprocess.run(["bash", str(REPO / "scripts" / "setup-postgres.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def _pg_study(url: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


for _when in ("mid-trial", "trial-end"):
    @case(f"postgres-outage-{_when}", "tune", needs=("pg", "tune"), serial="pg", cost=60)
    def _pg_outage(c, _when=_when):
        """The server stops while trial 1 trains (or as it ends): one line `error: cannot use storage ...`
        with the password scrubbed, exit 2; the server back, a rerun finishes the study with trial 1 retried."""
        pg, tune = c.ref("pg"), c.ref("tune")
        url = Path(pg["url_file"]).read_text().strip()
        password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
        study = f"outage-{_when}-{c.seed}"
        out = c.path("tune")
        args = tune_args(c.ref("tune_task"), out, "--storage-file", pg["url_file"], "--study", study,
                         "--heartbeat", "1")
        proc = c.start(*args, env={"FAULT_SLEEP": "0.004"})
        trial = out / "trials" / "0001"
        try:
            if _when == "mid-trial":
                wait_for(lambda: lines_in(trial / "metrics.jsonl") >= 2, "trial 1's second epoch", proc=proc)
            else:
                wait_for(lambda: (trial / "summary.json").exists(), "trial 1's end", proc=proc, step=0.002)
            _pg_script(pg, "stop")
            result = proc.wait(timeout=120)
        finally:
            _pg_script(pg)  # the server back, whatever happened
        leaked = password in result.text + "".join(
            p.read_bytes().decode("latin-1") for p in out.rglob("*") if p.is_file())
        expect(not leaked, "the database password appears in the output or the files")
        check(one_line_error(result, "cannot use storage postgresql+psycopg://converge:***@"), "database stopped")
        again = c.converge(*args, env={"FAULT_SLEEP": "0.004"})
        if again.code != 0:
            raise Failed(f"tune again with the server back: {again.brief()}")
        trials = _pg_study(url, study)
        return _check_study(trials, -1, Path(tune["out"]), out) if _when == "mid-trial" else \
            _check_study(trials, None, Path(tune["out"]), out) or "the study finished"
