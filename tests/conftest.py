"""Shared fixtures for the CLI and bad-input tests: tiny task files and ways to call `converge`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from converge.cli import main

# The tests train tiny models: one thread is faster for them, and it keeps their timing independent of
# whatever else loads the machine (spinning OpenMP threads degrade badly when cores are oversubscribed).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the subprocesses the tests start

# Every generated task file starts with this: imports and `_xy()`, 200 samples x 8 features, 3 classes.
TASK_HEADER = '''
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset


def _xy(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return x, y
'''

DEFAULT_MODEL = '''
def model():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
'''

DEFAULT_DATA = '''
def data():
    x, y = _xy()
    return (x[:120], y[:120]), (x[120:160], y[120:160]), (x[160:], y[160:])
'''


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def single_error(self, *needles: str, code: int = 2) -> str:
        """Assert the bad-input contract: the exit status, exactly one stderr line `error: ...` holding
        every needle, and no traceback. Returns the line."""
        assert self.code == code, (self.code, self.err)
        assert "Traceback" not in self.err, self.err
        lines = self.err.splitlines()
        assert len(lines) == 1, self.err
        line = lines[0]
        assert line.startswith("error: "), line
        for needle in needles:
            assert needle in line, (needle, line)
        return line


@pytest.fixture
def make_task(tmp_path):
    """Write a task file into tmp_path. `body` is added to the common header; model() and data() are the
    defaults (a 3-class MLP; 120/40/40 train/val/test tensors) unless `body` defines them or they are
    turned off with model=False / data=False. raw=True writes `body` alone, byte for byte."""

    def make(body: str = "", name: str = "task.py", *, model: bool = True, data: bool = True,
             raw: bool = False) -> Path:
        path = tmp_path / name
        if raw:
            path.write_bytes(body if isinstance(body, bytes) else body.encode())
            return path
        body = textwrap.dedent(body)
        parts = [TASK_HEADER, body]
        if model and "def model(" not in body:
            parts.append(DEFAULT_MODEL)
        if data and "def data(" not in body:
            parts.append(DEFAULT_DATA)
        path.write_text("\n".join(parts))
        return path

    return make


@pytest.fixture(scope="session")
def default_task_source() -> str:
    """The default task's whole source, for fixtures wider than one test (which cannot use make_task)."""
    return TASK_HEADER + DEFAULT_MODEL + DEFAULT_DATA


@pytest.fixture
def task_file(make_task):
    """The default tiny classification task (does not converge within a few epochs at its default LR)."""
    return make_task()


@pytest.fixture
def cli(capsys):
    """Call `converge` in-process: cli("train", path, "--quiet") -> CliResult."""

    def run(*args) -> CliResult:
        capsys.readouterr()
        code = main([str(arg) for arg in args])
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture
def cli_subprocess():
    """Call `python -m converge` (or another command line) in a fresh interpreter: proves the real exit
    status and exactly what reaches stderr."""

    def run(*args, cwd=None, command=None, timeout=120, env=None) -> CliResult:
        command = command or [sys.executable, "-m", "converge"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.run([*command, *(str(arg) for arg in args)], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), to prove a failed command changed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture
def folder_snapshot():
    return snapshot


@pytest.fixture(scope="session")
def train_once():
    """train_once(root, source, *flags): write `source` as root/task.py and train it into root/run
    in-process; returns (task, run, exit status). For module-scoped fixtures that share one finished run
    between read-only checks."""

    def train(root: Path, source: str, *flags: str) -> tuple[Path, Path, int]:
        task = root / "task.py"
        task.write_text(source)
        run = root / "run"
        return task, run, main(["train", str(task), "--out", str(run), "--quiet", *flags])

    return train


@pytest.fixture(scope="session")
def tiny_finished_run():
    """tiny_finished_run(out, hidden=16, n=160, lr=0.05): a real short run (seeded MLP on random 3-class data,
    AdamW, patience 1 so an LR cut happens, 8 epochs at most) written to ``out``; returns ``out``."""
    from converge import fit

    def train(out: Path, *, hidden: int = 16, n: int = 160, lr: float = 0.05) -> Path:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, 8, generator=g)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3))
        a, b = int(n * 0.6), int(n * 0.8)
        fit(model, (x[:a], y[:a]), (x[a:b], y[a:b]), (x[b:], y[b:]), optimizer="adamw", lr=lr, weight_decay=0.01,
            batch_size=32, max_epochs=8, patience=1, seed=0, out=out, verbose=False)
        return out

    return train
