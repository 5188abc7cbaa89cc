"""Imports done late, without keeping the caller alive.

Some libraries make reference cycles through frames while they are imported (torch.fx's ``wrap``, run when
torch._dynamo is imported by the first optimizer, keeps its own frame, and with it every caller's frame,
until the garbage collector runs). Imported from inside a training run, such a cycle would hold the run's
whole state (model, optimizer, best weights) after it returned. :func:`preload` imports from a short-lived
thread instead, whose frames hold nothing of the caller's.

In a process converge owns (the command line), :func:`defer_dynamo` spares the import of torch._dynamo
altogether while nothing compiles: it is 1.2-1.5 s of a short run's start, paid for nothing.
"""

from __future__ import annotations

import importlib
import sys
import threading

_dynamo_deferred = False


def preload(*names: str) -> None:
    """Import the modules ``names`` (those already imported cost nothing) from a thread of their own;
    an import error is raised here, in the caller."""
    missing = [name for name in names if name not in sys.modules]
    if not missing:
        return
    failures: list[BaseException] = []

    def load() -> None:
        for name in missing:
            try:
                importlib.import_module(name)
            except BaseException as exc:  # raised again in the caller's thread
                failures.append(exc)
                return

    thread = threading.Thread(target=load, name="converge-import", daemon=True)
    thread.start()
    thread.join()
    if failures:
        raise failures[0]


def defer_dynamo() -> bool:
    """Let torch.optim's few dynamo-disabled methods (``add_param_group``, ``zero_grad``, ``state_dict``,
    ``load_state_dict``) run as they are, instead of importing torch._dynamo at the first optimizer to wrap
    them. Their wrapper exists only to keep ``torch.compile`` from tracing them; when nothing in the process has
    imported torch._dynamo, nothing is compiling, and the plain function is what the wrapper would run.

    Only for processes converge owns: it changes those methods for the whole process, so a later
    ``torch.compile`` of code that calls them would trace them. Returns whether it took effect: not when
    torch._dynamo is already imported (a task that compiles), or when this torch wraps them another way."""
    global _dynamo_deferred
    if "torch._dynamo" in sys.modules:
        return False
    import torch._compile
    from torch.optim import Optimizer

    wrapper_code = torch._compile._disable_dynamo(lambda: None).__code__
    methods = [method for method in vars(Optimizer).values() if getattr(method, "__code__", None) is wrapper_code]
    if not methods:
        return False
    for method in methods:
        plain = method.__wrapped__
        plain.__dynamo_disable = plain  # the wrapper's cache of the disabled function: see torch/_compile.py
    _dynamo_deferred = True
    return True


def dynamo_deferred() -> bool:
    """Whether :func:`defer_dynamo` took effect in this process."""
    return _dynamo_deferred


def preload_dynamo() -> None:
    """torch._dynamo, which the first optimizer imports (see the module's text), unless :func:`defer_dynamo`
    has spared it."""
    if not _dynamo_deferred:
        preload("torch._dynamo")
