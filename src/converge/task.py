"""Load a user's task file: a Python file with `model()` and `data()`, and optional `loss`, `metrics`,
`monitor`, `mode`, `ignore_index` (the padding label, -100 by default) and `search_space(trial)` (the
knobs `converge tune` may turn: keyword arguments for `model(**kw)` and `data(**kw)`)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from torch import nn

from converge.errors import ConvergeError
from converge.rng import seed_everything


@dataclass
class Task:
    path: Path
    module: ModuleType
    loss: Callable | None = None
    metrics: dict[str, Callable] = field(default_factory=dict)
    monitor: str = "val_loss"
    mode: str | None = None
    search_space: Callable | None = None   # search_space(trial) -> {"model": {...}, "data": {...}}
    ignore_index: int = -100               # integer targets with this value are padding
    target_key: str = "labels"             # the entry of dict batches that holds the targets

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def sha256(self) -> str:
        return file_sha256(self.path)

    def build_model(self, **kwargs: Any) -> nn.Module:
        model = self._call("model", kwargs)
        if not isinstance(model, nn.Module):
            raise ConvergeError(f"model() in {self.path.name} must return a torch.nn.Module, "
                                f"got {type(model).__name__}")
        return model

    def build_data(self, **kwargs: Any) -> tuple:
        splits = self._call("data", kwargs)
        if not isinstance(splits, (tuple, list)) or len(splits) not in (2, 3):
            raise ConvergeError(f"data() in {self.path.name} must return (train, val) or (train, val, test), "
                                f"got {_describe(splits)}")
        return tuple(splits) + (None,) * (3 - len(splits))

    def _call(self, name: str, kwargs: dict | None = None) -> Any:
        try:
            return getattr(self.module, name)(**(kwargs or {}))
        except ConvergeError:
            raise
        except SystemExit as exc:
            raise ConvergeError(f"{name}() in {self.path.name} called sys.exit({exc.code!r})") from None
        except Exception as exc:
            raise ConvergeError(f"{name}() in {self.path.name} raised {type(exc).__name__}: {exc}") from exc


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    return type(value).__name__


def load_task(path: str | Path, seed: int = 0) -> Task:
    """The task file at ``path``, imported with the random generators seeded with ``seed``: what it builds
    when it is imported (a loss holding parameters drawn at random, a data set drawn at module level) is the
    same in every run of that seed, as what ``model()`` and ``data()`` build is."""
    path = Path(path)
    if not path.exists():
        raise ConvergeError(f"task file {str(path)!r} does not exist")
    if not path.is_file():
        raise ConvergeError(f"task file {str(path)!r} is not a file")
    if path.suffix != ".py":
        raise ConvergeError(f"task file {str(path)!r} is not a Python file (expected a .py file)")
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConvergeError(f"task file {str(path)!r} is not Python source (not UTF-8 text)") from None
    except OSError as exc:
        raise ConvergeError(f"task file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    try:
        compile(source, str(path), "exec")
    except SyntaxError as exc:
        where = f"line {exc.lineno}: " if exc.lineno else ""
        raise ConvergeError(f"task file {str(path)!r} does not parse: {where}{exc.msg}") from None
    seed_everything(seed)
    module = _import(path.resolve())
    for required in ("model", "data"):
        if not callable(getattr(module, required, None)):
            raise ConvergeError(f"task file {str(path)!r} has no {required}() function")
    metrics = getattr(module, "metrics", None) or {}
    if callable(metrics) and not isinstance(metrics, dict):
        metrics = metrics()
    if not isinstance(metrics, dict) or not all(callable(fn) for fn in metrics.values()):
        raise ConvergeError(f"metrics in {path.name} must be a dict of name -> fn(outputs, targets)")
    loss = getattr(module, "loss", None)
    if isinstance(loss, type) and issubclass(loss, nn.Module):
        loss = loss()
    if loss is not None and not callable(loss):
        raise ConvergeError(f"loss in {path.name} must be callable as loss(outputs, targets)")
    search_space = getattr(module, "search_space", None)
    if search_space is not None and not callable(search_space):
        raise ConvergeError(f"search_space in {path.name} must be a function search_space(trial) -> "
                            "{'model': {...}, 'data': {...}}")
    ignore_index = getattr(module, "ignore_index", -100)
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise ConvergeError(f"ignore_index in {path.name} must be an integer (the padding label), got {ignore_index!r}")
    target_key = getattr(module, "target_key", "labels")
    if not isinstance(target_key, str) or not target_key:
        raise ConvergeError(f"target_key in {path.name} must be the name of the dict entry holding the targets, "
                            f"got {target_key!r}")
    return Task(path=path.resolve(), module=module, loss=loss, metrics=dict(metrics),
                monitor=getattr(module, "monitor", "val_loss"), mode=getattr(module, "mode", None),
                search_space=search_space, ignore_index=ignore_index, target_key=target_key)


def _import(path: Path) -> ModuleType:
    module_name = f"converge_task_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    # Let the task import modules that sit beside it, as it would when run as a script.
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:  # a script-style task file: sys.exit() at import is an error here, not an exit
        sys.modules.pop(module_name, None)
        raise ConvergeError(f"task file {path.name} called sys.exit({exc.code!r}) while loading; a task file "
                            f"defines model() and data(), it does not run") from None
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ConvergeError(f"task file {path.name} raised {type(exc).__name__} while loading: {exc}") from exc
    return module


TASK_ARG_KEYS = ("model", "data")


def check_task_args(value: Any, where: str = "--task-args") -> dict[str, dict]:
    """Keyword arguments for the task's `model(**kw)` and `data(**kw)`: ``{"model": {...}, "data": {...}}``
    (either may be left out). Returned as a plain dict with both keys."""
    if value is None:
        return {"model": {}, "data": {}}
    if not isinstance(value, dict) or set(value) - set(TASK_ARG_KEYS):
        raise ConvergeError(f"{where} must be a dict with keys 'model' and/or 'data' holding keyword "
                            f"arguments, got {value!r}")
    for key, kwargs in value.items():
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
            raise ConvergeError(f"{where}[{key!r}] must be a dict of keyword arguments, got {kwargs!r}")
    return {key: dict(value.get(key) or {}) for key in TASK_ARG_KEYS}
