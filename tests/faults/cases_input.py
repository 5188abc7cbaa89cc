"""Bad input: one `error:` line on stderr, exit status 2, no traceback, nothing written -- from a real
process, so the exit status and stderr are exactly what a user sees."""

from __future__ import annotations

import os
import shutil

import tasks
from _harness import Skipped, case, check, expect, one_line_error

BAD_TASKS = {
    "task-exits-at-import": ("sys.exit(5)\n", ["task.py"]),
    "string-labels": ("def data():\n    x, y = _xy()\n    y = np.array(['a', 'b', 'c'])[y.numpy()]\n"
                      "    return (x[:120], y[:120]), (x[120:160], y[120:160])\n", []),
    "model-without-parameters": ("def model():\n    return nn.Flatten()\n", ["parameters"]),
    "metric-raises": ("def _boom(outputs, targets):\n    raise ZeroDivisionError('division by zero in my metric')\n\n"
                      "metrics = {'boom': _boom}\n", ["boom"]),
}

for _name, (_body, _needles) in BAD_TASKS.items():
    @case(_name, "bad-input", cost=6)
    def _bad_task(c, _body=_body, _needles=_needles):
        task = c.path("task.py")
        task.write_text(tasks.plain(_body))
        out = c.path("run")
        result = c.converge("train", task, "--out", out, "--quiet")
        check(one_line_error(result, *_needles))
        expect(not out.exists(), "the run folder was created")
        return result.err.strip()[:140]


@case("seed-2-to-the-70", "bad-input", cost=6)
def _huge_seed(c):
    task = c.path("task.py")
    task.write_text(tasks.plain())
    out = c.path("run")
    result = c.converge("train", task, "--out", out, "--seed", str(2 ** 70), "--quiet")
    check(one_line_error(result, "--seed"))
    expect(not out.exists(), "the run folder was created")
    return result.err.strip()[:140]


@case("unreadable-task-file", "bad-input", cost=6)
def _unreadable(c):
    """Mode 000. Root reads anything, so as root the command runs without the capabilities that let it."""
    task = c.path("task.py")
    task.write_text(tasks.plain())
    os.chmod(task, 0)
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            raise Skipped("root, and no setpriv to drop CAP_DAC_OVERRIDE (util-linux)")
        prefix = ["setpriv", "--inh-caps=-all", "--bounding-set", "-dac_override,-dac_read_search", "--"]
    out = c.path("run")
    result = c.converge("train", task, "--out", out, "--quiet", prefix=prefix)
    check(one_line_error(result, "task.py"))
    expect(not out.exists(), "the run folder was created")
    return result.err.strip()[:140]


@case("no-command", "bad-input", cost=5)
def _no_command(c):
    """`converge` alone: exit 2 and an `error:` line saying a command is needed (the help may come too)."""
    result = c.converge()
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    expect(result.code == 2, f"exit {result.code}, wanted 2")
    expect("Traceback" not in result.err, "a traceback")
    expect(len(errors) == 1, f"{len(errors)} `error:` line(s) on stderr, wanted one")
    return errors[0][:140]
