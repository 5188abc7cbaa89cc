"""tune_report.html: one self-contained page (plots inlined as PNG data) about a `converge tune` study:
optimization history, the pruned trials' curves, parameter importances, the best configuration and
the command that reproduces it, and every trial."""

from __future__ import annotations

from pathlib import Path

from converge.io.atomic import atomic_write_text
from converge.report._page import escape, img, log_scale, number, png_bytes, table

_STATE_COLOURS = {"complete": "#1f77b4", "pruned": "#ff7f0e", "fail": "#d62728"}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
code, pre { background: #f6f6f6; padding: 0.2em 0.4em; }
pre { white-space: pre-wrap; word-break: break-all; padding: 0.6em; }
.state-pruned { color: #b25f00; } .state-fail { color: #c00; } .state-complete { color: #1f5fa4; }
img { max-width: 100%; }
"""


def write_tune_report(path: Path, summary: dict, rows: list[dict], histories: dict[int, dict]) -> None:
    mode = summary["mode"]
    parts = [f"<h1>converge tune: {escape(Path(summary['task']).name)}</h1>", _overview(summary),
             _best(summary), "<h2>Optimization history</h2>", img(_history_png(rows, mode, summary["monitor"]), "optimization history"),
             "<h2>Reported values per epoch</h2>",
             "<p>The best monitored value so far, as reported to the pruner after every epoch; pruned trials "
             "stop where their line ends.</p>", img(_curves_png(rows, histories, summary["monitor"]), "reported values per epoch"),
             "<h2>Parameter importances</h2>", _importances(summary), "<h2>Trials</h2>", _trials_table(rows)]
    page = ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>converge tune report</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(p for p in parts if p) + "\n</body></html>\n")
    atomic_write_text(path, page)


def _num(value) -> str:
    return escape(number(value, digits=6, missing=""))


def _overview(summary: dict) -> str:
    t = summary["trials"]
    rows = [["study", escape(summary["study"])], ["storage", escape(summary["storage"])],
            ["objective", f"{'minimize' if summary['mode'] == 'min' else 'maximize'} {escape(summary['monitor'])}"],
            ["status", escape(summary["status"])],
            ["trials", f"{t['complete']} complete, {t['pruned']} pruned, {t['fail']} failed, "
                       f"{t.get('requeued', 0)} queued again, {t['running']} running "
                       f"({summary['trials_wanted']} finished wanted)"],
            ["epochs, all trials", _num(summary["epochs_total"])], ["seed", _num(summary["seed"])]]
    return table(["", ""], rows)


def _best(summary: dict) -> str:
    if summary["best_trial"] is None:
        return "<h2>Best configuration</h2><p>No trial has completed yet.</p>"
    hp = summary["best_hyperparameters"]
    rows = [["trial", _num(summary["best_trial"])], [escape(summary["monitor"]), _num(summary["best_value"])],
            *[[escape(k), _num(v)] for k, v in hp.items()]]
    if summary.get("best_reason"):
        rows.insert(1, ["why this trial", escape(summary["best_reason"])])
    for part, kwargs in (summary.get("task_args") or {}).items():
        rows += [[escape(f"{part}.{k}"), _num(v)] for k, v in kwargs.items()]
    test = (summary.get("best_summary") or {}).get("test") or {}
    rows += [[escape(f"test {k}"), _num(v)] for k, v in test.items()]
    return ("<h2>Best configuration</h2>" + table(["", ""], rows) +
            "<p>Reproduce it (same seed: the same result on CPU):</p>"
            f"<pre>{escape(summary['reproduce'])}</pre>")


def _importances(summary: dict) -> str:
    found = summary.get("importances") or {}
    note = f"<p>{escape(summary.get('importance_method', ''))}</p>"
    if not found:
        return note + "<p>Not enough trials to say.</p>"
    return note + img(_importance_png(found), "parameter importances") + table(["parameter", "importance"],
                                                         [[escape(k), f"{v:.3f}"] for k, v in found.items()])


def _trials_table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        params = ", ".join(f"{k}={_num(v)}" for k, v in r["params"].items())
        extra = ", ".join(f"{part}.{k}={v}" for part, kw in (r.get("task_args") or {}).items() for k, v in kw.items())
        note = f"retry of {r['retry_of']}" if r.get("retry_of") is not None else ""
        state = r["state"]
        body.append([_num(r["number"]), f"<span class='state-{escape(state.split()[0])}'>{escape(state)}</span>",
                     _num(r["value"]), _num(r["epochs"]), escape(params + (", " + extra if extra else "")),
                     escape(note), _num(None if r["seconds"] is None else round(r["seconds"], 1))])
    return table(["trial", "state", "value", "epochs", "parameters", "note", "seconds"], body)


# --- plots (matplotlib's object API: no global state, no GUI backend) -------------------------------
def _png(fig) -> bytes:
    return png_bytes(fig, dpi=90)


def _history_png(rows: list[dict], mode: str, monitor: str) -> bytes | None:
    from matplotlib.figure import Figure

    points = [(r["number"], r["value"], r["state"]) for r in rows if r["value"] is not None]
    if not points:
        return None
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.subplots()
    for state, colour in _STATE_COLOURS.items():
        chosen = [(n, v) for n, v, s in points if s == state]
        if chosen:
            ax.scatter(*zip(*chosen), color=colour, s=18, label=f"{state} (pruned at last value)"
                       if state == "pruned" else state)
    best, line = None, []
    for trial, value, state in points:
        if state == "complete" and (best is None or (value < best if mode == "min" else value > best)):
            best = value
        line.append((trial, best))
    drawn = [(n, b) for n, b in line if b is not None]
    if drawn:
        ax.plot(*zip(*drawn), color="#2ca02c", drawstyle="steps-post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(monitor)
    if all(v > 0 for _, v, _ in points) and max(v for _, v, _ in points) / min(v for _, v, _ in points) > 20:
        log_scale(ax, "y")
    ax.legend(fontsize=8)
    return _png(fig)


def _curves_png(rows: list[dict], histories: dict[int, dict], monitor: str) -> bytes | None:
    from matplotlib.figure import Figure

    if not any(histories.values()):
        return None
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.subplots()
    states = {r["number"]: r["state"] for r in rows}
    for trial, history in histories.items():
        if history:
            colour = _STATE_COLOURS.get(states.get(trial, ""), "#999999")
            ax.plot(list(history), list(history.values()), color=colour, alpha=0.6, linewidth=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"best {monitor} so far")
    values = [v for h in histories.values() for v in h.values()]
    if values and all(v > 0 for v in values) and max(values) / min(values) > 20:
        log_scale(ax, "y")
    return _png(fig)


def _importance_png(found: dict) -> bytes:
    from matplotlib.figure import Figure

    names = list(found)[::-1]
    fig = Figure(figsize=(6, 0.4 * len(names) + 1), layout="constrained")
    ax = fig.subplots()
    ax.barh(names, [found[n] for n in names], color="#1f77b4")
    ax.set_xlabel("importance (share)")
    return _png(fig)
