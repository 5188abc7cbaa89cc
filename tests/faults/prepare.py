"""The references the cases compare against, made once per battery run, and the services some cases need.

* ``fixed``: a 10-epoch run with fixed hyperparameters (and how many forward calls it makes after its
  run.json exists: the range that kills are drawn from);
* ``auto``: a run with every knob auto (tuning, then 3 epochs), with where tuning ends;
* ``tune``: a 3-trial `converge tune` study (journal storage), with the forward calls of trial 1 (those
  before its summary.json exists);
* ``interrupted``: the fixed run SIGKILLed at a fixed point in its 4th epoch, for the corruption and
  concurrency cases to copy;
* ``auto_interrupted``: the auto run SIGKILLed while tuning, after tuning.json was first written;
* ``loopfs``: whether scripts/setup-loopfs.sh can mount a small file system here (root, loop devices);
* ``pg``: a PostgreSQL server of scripts/setup-postgres.sh on its own port and folder (stopped at the end).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import _harness as h
import tasks

DEPENDS = {"interrupted": ("fixed",), "auto_interrupted": ("auto",), "tune": (), "fixed": (), "auto": ()}
PG_PORT = 54391


def prepare(needs: list[str], workdir: Path, *, jobs: int, seed: int) -> dict:
    wanted = set(needs)
    for need in list(wanted):
        wanted |= set(DEPENDS.get(need, ()))
    root = workdir / "refs"
    root.mkdir(parents=True, exist_ok=True)
    refs: dict = {"workdir": str(workdir)}
    refs["train_task"] = str(_write(root / "train_task.py", tasks.TRAIN_TASK))
    refs["tune_task"] = str(_write(root / "tune_task.py", tasks.TUNE_TASK))
    first = [name for name in ("fixed", "auto", "tune") if name in wanted]
    _run_parallel({name: _REFERENCES[name] for name in first}, refs, root, jobs)
    second = [name for name in ("interrupted", "auto_interrupted") if name in wanted]
    _run_parallel({name: _REFERENCES[name] for name in second}, refs, root, jobs)
    if "loopfs" in wanted:
        refs["loopfs"] = _loopfs_available(root)
    if "pg" in wanted:
        refs["pg"] = _start_postgres(workdir / "pg")
    return refs


def teardown(refs: dict, workdir: Path) -> None:
    pg = refs.get("pg")
    if isinstance(pg, dict) and not pg.get("skip"):
        subprocess.run(["bash", str(h.REPO / "scripts" / "setup-postgres.sh"), "stop"], env=_pg_env(pg),
                       capture_output=True, timeout=120)
        shutil.rmtree(Path(pg["root"]) / "data", ignore_errors=True)  # its server.log stays


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _run_parallel(steps: dict, refs: dict, root: Path, jobs: int) -> None:
    """Each step is (start(refs, root) -> Popen, finish(refs, root, returncode)); at most ``jobs`` at once."""
    pending = list(steps.items())
    running: list = []
    while pending or running:
        while pending and len(running) < max(1, jobs):
            name, (start, finish) = pending.pop(0)
            running.append((name, finish, start(refs, root)))
        name, finish, proc = running.pop(0)
        code = proc.wait(timeout=600)
        finish(refs, root, code, proc)


def _converge(argv: list, env: dict, log: Path) -> subprocess.Popen:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **{k: str(v) for k, v in env.items()}}
    handle = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "converge", *map(str, argv)], env=full_env, stdout=handle,
                            stderr=subprocess.STDOUT)


def _counted(refs: dict, root: Path, name: str) -> dict:
    path = root / f"{name}.count.json"
    return json.loads(path.read_text()) if path.exists() else {"calls": 0, "milestones": {}}


# fixed ---------------------------------------------------------------------------------------------
def _start_fixed(refs, root):
    out = root / "fixed"
    return _converge(h.train_args(refs["train_task"], out), {
        "FAULT_ARM": out / "run.json", "FAULT_COUNT": root / "fixed.count.json",
        "FAULT_MILESTONES": out / "checkpoint.pt"}, root / "fixed.log")


def _finish_fixed(refs, root, code, proc):
    _require(code == 0, "fixed", root)
    counted = _counted(refs, root, "fixed")
    refs["fixed"] = {"run": str(root / "fixed"), "calls": counted["calls"]}


# auto ----------------------------------------------------------------------------------------------
def _start_auto(refs, root):
    out = root / "auto"
    return _converge(h.auto_args(refs["train_task"], out), {
        "FAULT_ARM": out / "run.json", "FAULT_COUNT": root / "auto.count.json",
        "FAULT_MILESTONES": os.pathsep.join(map(str, (out / "tuning.json", out / "checkpoint.pt")))},
        root / "auto.log")


def _finish_auto(refs, root, code, proc):
    _require(code == 0, "auto", root)
    counted = _counted(refs, root, "auto")
    out = root / "auto"
    seen = counted["milestones"]
    refs["auto"] = {"run": str(out), "calls": counted["calls"],
                    "tuning_json_at": seen.get(str(out / "tuning.json"), 1),
                    "tuned_at": seen.get(str(out / "checkpoint.pt"), counted["calls"])}


# tune ----------------------------------------------------------------------------------------------
def _start_tune(refs, root):
    out = root / "tune"
    return _converge(h.tune_args(refs["tune_task"], out), {
        "FAULT_ARM": out / "trials" / "0001" / "run.json", "FAULT_COUNT": root / "tune.count.json",
        "FAULT_MILESTONES": out / "trials" / "0001" / "summary.json", "FAULT_SLEEP": "0.004"}, root / "tune.log")


def _finish_tune(refs, root, code, proc):
    _require(code == 0, "tune", root)
    counted = _counted(refs, root, "tune")
    out = root / "tune"
    refs["tune"] = {"out": str(out), "study": "tune_task", "calls": counted["calls"],
                    "trial1_calls": counted["milestones"].get(str(out / "trials" / "0001" / "summary.json"),
                                                              counted["calls"] + 1) - 1}


# interrupted ---------------------------------------------------------------------------------------
def _start_interrupted(refs, root):
    out = root / "interrupted"
    at = int(refs["fixed"]["calls"] * 0.35)
    refs.setdefault("_interrupted_at", at)
    return _converge(h.train_args(refs["train_task"], out), {"FAULT_ARM": out / "run.json", "FAULT_AT": at},
                     root / "interrupted.log")


def _finish_interrupted(refs, root, code, proc):
    out = root / "interrupted"
    if code != -9 or not (out / "checkpoint.pt").exists() or (out / "summary.json").exists():
        refs["interrupted"] = {"skip": f"the interrupted reference is not one (exit {code}; see {root}/interrupted.log)"}
        return
    refs["interrupted"] = {"run": str(out), "epochs_done": h.lines_in(out / "metrics.jsonl")}


def _start_auto_interrupted(refs, root):
    out = root / "auto_interrupted"
    auto = refs["auto"]
    at = auto["tuning_json_at"] + max(1, (auto["tuned_at"] - auto["tuning_json_at"]) // 2)
    return _converge(h.auto_args(refs["train_task"], out), {"FAULT_ARM": out / "run.json", "FAULT_AT": at},
                     root / "auto_interrupted.log")


def _finish_auto_interrupted(refs, root, code, proc):
    out = root / "auto_interrupted"
    if code != -9 or not (out / "tuning.json").exists() or (out / "checkpoint.pt").exists():
        refs["auto_interrupted"] = {"skip": f"the kill did not land in tuning after tuning.json (exit {code})"}
        return
    refs["auto_interrupted"] = {"run": str(out)}


_REFERENCES = {
    "fixed": (_start_fixed, _finish_fixed),
    "auto": (_start_auto, _finish_auto),
    "tune": (_start_tune, _finish_tune),
    "interrupted": (_start_interrupted, _finish_interrupted),
    "auto_interrupted": (_start_auto_interrupted, _finish_auto_interrupted),
}


def _require(ok: bool, name: str, root: Path) -> None:
    if not ok:
        log = (root / f"{name}.log").read_text(errors="replace")[-2000:]
        raise SystemExit(f"fault battery: the {name} reference run failed; the battery cannot judge anything:\n{log}")


# services ------------------------------------------------------------------------------------------
def _loopfs_available(root: Path) -> dict:
    done = subprocess.run(["bash", str(h.REPO / "scripts" / "setup-loopfs.sh"), "check"], capture_output=True,
                          text=True, timeout=60)
    line = (done.stdout.strip().splitlines() or ["skip: setup-loopfs.sh said nothing"])[-1]
    return {"ok": True} if line == "ok" else {"skip": line.removeprefix("skip: ")}


def _pg_env(pg: dict) -> dict:
    return {**os.environ, "CONVERGE_PG_ROOT": pg["root"], "CONVERGE_PG_PORT": str(pg["port"])}


def _start_postgres(root: Path) -> dict:
    pg = {"root": str(root), "port": PG_PORT, "url_file": str(root / "url")}
    script = h.REPO / "scripts" / "setup-postgres.sh"
    if os.geteuid() != 0 and not any(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        return {"skip": "PostgreSQL is not installed and this is not root (scripts/setup-postgres.sh cannot run)"}
    try:
        done = subprocess.run(["bash", str(script)], env=_pg_env(pg), capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return {"skip": "scripts/setup-postgres.sh took over 10 minutes"}
    if done.returncode != 0 or not Path(pg["url_file"]).exists():
        last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["no output"])[-1]
        return {"skip": f"scripts/setup-postgres.sh failed: {last[:200]}"}
    return pg
