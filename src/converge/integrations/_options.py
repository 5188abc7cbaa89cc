"""What the callbacks share: their options, checked where they enter, and passed on to `converge.Monitor`."""

from __future__ import annotations

from pathlib import Path

# The decision options a callback passes on to Monitor unchanged (Monitor's docstring says what each means).
DECISION_OPTIONS = ("patience", "factor", "threshold", "threshold_mode", "cooldown", "min_lr", "unproductive_cuts",
                    "eps", "window", "stopping_threshold", "divergence_threshold", "baseline", "start_from_epoch",
                    "restart_from_best")


def decision_options(options: dict, callback: str) -> dict:
    """``options`` when each is one of `DECISION_OPTIONS`; else a TypeError naming the one that is not."""
    unknown = sorted(set(options) - set(DECISION_OPTIONS))
    if unknown:
        raise TypeError(f"{callback} got unknown option(s) {', '.join(unknown)}; it takes monitor, mode, guard, out, "
                        f"force, restore_best and {', '.join(DECISION_OPTIONS)}")
    return dict(options)


def check_mode(mode: str) -> str:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    return mode


def run_folder(out: str | Path | None, force: bool, default: str | Path | None) -> tuple[Path | None, bool]:
    """Where the run folder goes and whether converge's own files there may be replaced: ``out`` as given
    (replaced only with ``force``), else the framework's own folder for this run (``default``), where
    converge's files of an earlier fit are replaced and nothing else is touched."""
    if out is not None:
        return Path(out), force
    return (Path(default), True) if default is not None else (None, False)


def restart_option(options: dict, restore_best: bool, world_size: int) -> dict:
    """``options`` with ``restart_from_best`` settled: as given, else on with ``restore_best``; and off with
    several processes, where each judges its own values and a reload on one rank alone would leave the
    ranks' weights apart."""
    wanted = options.get("restart_from_best", restore_best)
    return {**options, "restart_from_best": bool(wanted) and world_size == 1}
