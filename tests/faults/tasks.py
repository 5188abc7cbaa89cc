"""Task files for the fault battery, written into each case's folder.

Every model starts with ``_Hook``, an identity layer that does two things, both under environment
variables so that the file (and its hash in run.json) is the same for the reference and the faulted run:

* it sleeps ``FAULT_SLEEP`` seconds per forward call (default 1 ms), so that a run lasts long enough to
  be interrupted and two commands overlap; sleeping costs no CPU on this 2-core machine;
* it plants a fault at an exact, reproducible point: once the file ``FAULT_ARM`` exists (the run folder's
  run.json, say), it counts forward calls and at call ``FAULT_AT`` sends its own process ``FAULT_SIGNAL``
  (KILL by default, INT for a Ctrl-C). With ``FAULT_COUNT`` it writes, at exit, how many calls it counted
  and at which count each path in ``FAULT_MILESTONES`` first existed: the reference run measures where
  the points worth hitting lie.

Nothing in the hook touches a random number generator, so the runs stay bit-identical with and without it.
"""

from __future__ import annotations

HOOK = '''
import atexit
import json
import os
import signal
import time

import torch
from torch import nn

_ENV = os.environ
_ARM = _ENV.get("FAULT_ARM")
_AT = int(_ENV.get("FAULT_AT", "0"))
_SIGNAL = getattr(signal, "SIG" + _ENV.get("FAULT_SIGNAL", "KILL"))
_SLEEP = float(_ENV.get("FAULT_SLEEP", "0.001"))
_MILESTONES = [p for p in _ENV.get("FAULT_MILESTONES", "").split(os.pathsep) if p]
_STATE = {"armed": not _ARM, "calls": 0, "seen": {}}


def _write_count():
    with open(_ENV["FAULT_COUNT"], "w") as handle:
        json.dump({"calls": _STATE["calls"], "milestones": _STATE["seen"]}, handle)


if _ENV.get("FAULT_COUNT"):
    atexit.register(_write_count)


class _Hook(nn.Module):
    def forward(self, x):
        if _SLEEP:
            time.sleep(_SLEEP)
        state = _STATE
        if not state["armed"]:
            state["armed"] = os.path.exists(_ARM)
            if not state["armed"]:
                return x
        state["calls"] += 1
        for path in _MILESTONES:
            if path not in state["seen"] and os.path.exists(path):
                state["seen"][path] = state["calls"]
        if state["calls"] == _AT:
            os.kill(os.getpid(), _SIGNAL)
        return x
'''

# Runs, kills and resumes: 2000 training samples, 63 steps per epoch at batch 32, dropout (so the random
# state must travel in the checkpoint too).
TRAIN_TASK = HOOK + '''

def model():
    return nn.Sequential(_Hook(), nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 4))


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3000, 16, generator=g)
    y = (x[:, :4] + 0.5 * torch.randn(3000, 4, generator=g)).argmax(1)
    return (x[:2000], y[:2000]), (x[2000:2600], y[2000:2600]), (x[2600:], y[2600:])
'''

# `converge tune`: 200 samples, 3 classes, a few steps per epoch.
TUNE_TASK = HOOK + '''

def model():
    return nn.Sequential(_Hook(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return (x[:120], y[:120]), (x[120:160], y[120:160]), (x[160:], y[160:])
'''

# Bad input: the plain tiny task of tests/conftest.py, to which each case adds or changes one thing.
PLAIN = '''
import sys

import numpy as np
import torch
from torch import nn


def _xy(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return x, y
'''
PLAIN_MODEL = '''

def model():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
'''
PLAIN_DATA = '''

def data():
    x, y = _xy()
    return (x[:120], y[:120]), (x[120:160], y[120:160]), (x[160:], y[160:])
'''


def plain(body: str = "", *, model: bool = True, data: bool = True) -> str:
    """The plain task with ``body`` added; its model() and data() unless ``body`` defines its own."""
    parts = [PLAIN, body]
    if model and "def model(" not in body:
        parts.append(PLAIN_MODEL)
    if data and "def data(" not in body:
        parts.append(PLAIN_DATA)
    return "\n".join(parts)
