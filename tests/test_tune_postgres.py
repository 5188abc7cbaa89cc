"""`converge tune` on a real PostgreSQL server: parallel workers, a worker killed mid-trial, credentials.

The server is started by scripts/setup-postgres.sh (`make test-postgres` runs it and then these tests);
it writes the URL, password included, to the file named by $CONVERGE_TEST_PG_URL_FILE."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.postgres

SLOW_TASK = '''
import time


class _Slow(nn.Module):
    def forward(self, x):
        time.sleep(0.004)
        return x


def model():
    return nn.Sequential(_Slow(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
'''


@pytest.fixture(scope="module")
def pg_url() -> str:
    path = Path(os.environ.get("CONVERGE_TEST_PG_URL_FILE", "/tmp/converge-pg/url"))
    if not path.is_file():
        pytest.fail(f"no PostgreSQL URL in {path}: run scripts/setup-postgres.sh (or `make test-postgres`)")
    return path.read_text().strip()


def _password(url: str) -> str:
    from converge.tune.storage import _split_userinfo

    password = _split_userinfo(url)[1]
    assert password and len(password) >= 8
    return password


def _worker(args: list, env: dict, log: Path) -> subprocess.Popen:
    handle = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "converge", *map(str, args)], stdout=handle,
                            stderr=subprocess.STDOUT, env={**os.environ, **env})


def _every_file_text(*folders: Path) -> str:
    return "\n".join(p.read_bytes().decode("latin-1") for folder in folders for p in Path(folder).rglob("*")
                     if p.is_file())


def test_two_workers_share_a_study_and_a_killed_one_loses_nothing(make_task, tmp_path, pg_url):
    import optuna

    task = make_task(SLOW_TASK)
    study_name = f"converge-test-{uuid.uuid4().hex[:8]}"
    url_file = tmp_path / "storage-url"
    url_file.write_text(pg_url + "\n")
    wanted = 6
    common = ["tune", task, "--trials", wanted, "--study", study_name, "--max-epochs", "25", "--pruner", "none",
              "--heartbeat", "1"]
    # Worker A reads the URL from the environment, worker B from a file.
    a = _worker([*common, "--out", tmp_path / "a"], {"CONVERGE_STORAGE": pg_url}, tmp_path / "a.log")
    b = _worker([*common, "--out", tmp_path / "b", "--storage-file", url_file], {}, tmp_path / "b.log")
    try:
        deadline = time.monotonic() + 120
        while not any(p.read_text().count("\n") >= 2 for p in (tmp_path / "b" / "trials").glob("*/metrics.jsonl")):
            assert b.poll() is None and time.monotonic() < deadline, (tmp_path / "b.log").read_text()
            time.sleep(0.05)
        b.send_signal(signal.SIGKILL)  # mid-trial: its trial stays RUNNING until the heartbeat says otherwise
        b.wait()
        killed = [int(p.parent.name) for p in (tmp_path / "b" / "trials").glob("*/metrics.jsonl")
                  if not (p.parent / "summary.json").exists()]
        assert len(killed) == 1
        assert a.wait(timeout=300) == 0, (tmp_path / "a.log").read_text()
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.kill()
    study = optuna.load_study(study_name=study_name, storage=pg_url)
    states = {t.number: t.state.name for t in study.trials}
    assert "RUNNING" not in states.values() and "WAITING" not in states.values(), states
    assert sum(s in ("COMPLETE", "PRUNED") for s in states.values()) == wanted, states
    assert states[killed[0]] == "FAIL"
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed[0]]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"
    assert retried[0].params == study.trials[killed[0]].params
    assert len({t.user_attrs.get("worker") for t in study.trials}) == 2  # both workers ran trials
    a_log = (tmp_path / "a.log").read_text()
    assert f"trial {killed[0]}: its worker died; failed and queued again" in a_log
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["storage"] == pg_url.replace(f":{_password(pg_url)}@", ":***@")
    # The password is nowhere: not in what either worker printed, not in any file they wrote.
    everything = (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()
    everything += _every_file_text(tmp_path / "a", tmp_path / "b")
    assert _password(pg_url) not in everything


def test_a_wrong_password_is_one_redacted_line(task_file, tmp_path, pg_url):
    from converge.tune.storage import _split_userinfo

    user, password, tail = _split_userinfo(pg_url)
    wrong = f"{user}:Wrong-{password[::-1]}@{tail}"
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "converge", "tune", str(task_file), "--trials", "2", "--out",
                           str(out), "--storage", wrong], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot use storage {user}:***@{tail}"), proc.stderr
    assert "password authentication failed" in lines[0]
    for secret in (password, password[::-1]):
        assert secret not in proc.stdout + proc.stderr
    assert not out.exists()


def test_the_same_command_again_continues_the_study(task_file, tmp_path, pg_url):
    study_name = f"converge-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "CONVERGE_STORAGE": pg_url}
    args = [sys.executable, "-m", "converge", "tune", str(task_file), "--study", study_name, "--out",
            str(tmp_path / "out"), "--max-epochs", "4"]
    first = subprocess.run([*args, "--trials", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    second = subprocess.run([*args, "--trials", "3"], capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("\ntrial ") == 1 and "trial 2:" in second.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == 3
    assert _password(pg_url) not in first.stdout + first.stderr + second.stdout + second.stderr
