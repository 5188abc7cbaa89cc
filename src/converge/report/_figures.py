"""A run's figures as PNG bytes: the curves of report.html (loss, each validation metric and the LR against
epoch, with a vertical line at every decision -- LR cut, rollback, best epoch, stop -- and non-finite values
marked) and the LR range test's lr_find.png. Each is drawn from plain values (lists, numbers, strings), by
name through `figure_png`, so that another process can draw it (`converge.report.figure_process`).

matplotlib is imported here only, when a report is drawn; the object API with the Agg canvas, never
pyplot: no global figure state, no GUI backend, safe in a background thread."""

from __future__ import annotations

import math

from converge.decide.lr_suggest import smooth
from converge.report._page import log_scale, png_bytes
from converge.status import STOP_EVENTS

CURVES_FIGURE = "curves"
RANGE_TEST_FIGURE = "range_test"

# kind -> (label, colour, line style); the order is the legend's.
MARKERS = {
    "best": ("best epoch", "#7b3fb5", "--"),
    "lr_reduced": ("LR cut", "#e07b00", ":"),
    "rollback": ("rollback", "#d1242f", "-."),
    "stop": ("stop", "#24292f", "-"),
}
_NONFINITE = "#d1242f"
LOG_SPAN = 100.0  # a loss spanning more than 2 decades is drawn on a log scale


def as_float(value) -> float:
    """metrics.jsonl writes NaN and inf as null; None and anything unreadable come back as NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def wants_log(values: list[float]) -> bool:
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > LOG_SPAN


def decision_marks(history: list[dict], events: list[dict], best_epoch) -> list[tuple[str, float]]:
    """(marker kind, x in epochs) for every decision. A rollback happens inside an epoch: it is placed
    by its step between the epochs' last steps, so it shows where in the epoch the blow-up was."""
    marks = []
    for event in events:
        kind = event.get("event")
        if kind == "lr_reduced":
            marks.append(("lr_reduced", as_float(event.get("epoch"))))
        elif kind == "rollback":
            marks.append(("rollback", _step_position(history, event.get("at_step", event.get("step")),
                                                      event.get("epoch"))))
        elif kind in STOP_EVENTS:
            marks.append(("stop", as_float(event.get("epoch"))))
    if best_epoch:
        marks.append(("best", as_float(best_epoch)))
    return [(kind, x) for kind, x in marks if math.isfinite(x)]


def _step_position(history: list[dict], step, epoch) -> float:
    step, done = as_float(step), as_float(epoch)
    previous_epoch, previous_step = 0.0, 0.0
    for record in history:
        end_epoch, end_step = as_float(record.get("epoch")), as_float(record.get("step"))
        if math.isfinite(step) and end_step >= step and end_step > previous_step:
            return previous_epoch + (step - previous_step) / (end_step - previous_step)
        previous_epoch, previous_step = end_epoch, end_step
    return done + 0.5  # in an epoch that never finished


def curves_png(history: list[dict], events: list[dict], *, best_epoch=None, monitor: str = "") -> bytes | None:
    """One figure, one panel per quantity sharing the epoch axis; None when no epoch has finished."""
    if not history:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [as_float(r.get("epoch")) for r in history]
    panels = _panels(history)
    fig = Figure(figsize=(9, 2.3 * len(panels) + 0.7), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    marks = decision_marks(history, events, best_epoch)
    for ax, (title, series, log) in zip(axes, panels):
        _draw_panel(ax, epochs, series, title, log)
        _draw_marks(ax, marks)
    axes[-1].set_xlabel("epoch")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole; rollbacks fall between
    _legend(axes[0], marks, monitor)
    return png_bytes(fig)


def _panels(history: list[dict]) -> list[tuple[str, dict[str, list[float]], bool]]:
    """(title, {label: values}, log scale) for loss, each validation metric and the LR."""
    keys = []
    for record in history:  # every key any epoch has, in first-seen order (older runs may lack some)
        keys += [k for k in record if k not in keys]
    column = {k: [as_float(r.get(k)) for r in history] for k in keys}
    loss = {label: column[k] for k, label in (("train_loss", "train loss"), ("val_loss", "val loss")) if k in column}
    panels = [("loss", loss, wants_log([v for values in loss.values() for v in values]))] if loss else []
    for key in keys:
        if key.startswith("val_") and key != "val_loss":
            panels.append((key, {key: column[key]}, False))
    if "lr" in column:
        panels.append(("learning rate", {"lr": column["lr"]}, any(v > 0 for v in column["lr"] if math.isfinite(v))))
    return panels


def _draw_panel(ax, epochs: list[float], series: dict[str, list[float]], title: str, log: bool) -> None:
    from matplotlib.transforms import blended_transform_factory

    colours = ("#1f6feb", "#d1242f", "#2da44e", "#8250df")
    small = len(epochs) < 40  # dots make a short run's few points visible (and a one-epoch run at all)
    for (label, values), colour in zip(series.items(), colours):
        # An epoch's LR holds over that epoch, (e-1, e]: steps-pre puts a cut's drop at the epoch it was made.
        style = {"drawstyle": "steps-pre"} if title == "learning rate" else {}
        ax.plot(epochs, values, label=label, color=colour, marker="o" if small else None, markersize=3, **style)
        bad = [x for x, v in zip(epochs, values) if not math.isfinite(v)]
        if bad:  # at the top edge of the panel: a NaN or inf has no place on the value axis
            top = blended_transform_factory(ax.transData, ax.transAxes)
            ax.plot(bad, [0.97] * len(bad), linestyle="none", marker="X", markersize=8, color=_NONFINITE,
                    transform=top, clip_on=False, label=f"{label} non-finite")
    if log:
        log_scale(ax, "y")
        _label_values(ax, [v for values in series.values() for v in values])
    ax.set_ylabel(title)
    ax.grid(alpha=0.25)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if len(series) > 1 or any(not math.isfinite(v) for values in series.values() for v in values):
        ax.legend(loc="upper right", fontsize=8, frameon=False)


def _label_values(ax, values: list[float]) -> None:
    """A step-wise LR takes a few values: label exactly those (log ticks within a decade say little)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    distinct = sorted({v for v in values if math.isfinite(v) and v > 0})
    if not 1 <= len(distinct) <= 6:
        return
    ax.yaxis.set_major_locator(FixedLocator(distinct))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())


def _draw_marks(ax, marks: list[tuple[str, float]]) -> None:
    for kind, x in marks:
        _, colour, style = MARKERS[kind]
        ax.axvline(x, color=colour, linestyle=style, linewidth=1.2, alpha=0.85)


def _legend(ax, marks: list[tuple[str, float]], monitor: str) -> None:
    """The decision lines' legend, above the first panel (its own artist: the loss legend stays in its corner)."""
    from matplotlib.legend import Legend
    from matplotlib.lines import Line2D

    present = [kind for kind in MARKERS if kind in {k for k, _ in marks}]
    handles = [Line2D([], [], color=MARKERS[k][1], linestyle=MARKERS[k][2], linewidth=1.2) for k in present]
    labels = [f"best {monitor}" if k == "best" and monitor else MARKERS[k][0] for k in present]
    if handles:
        legend = Legend(ax, handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(handles),
                        fontsize=9, frameon=False)
        ax.add_artist(legend)
        legend.set_clip_on(False)  # add_artist clips to the axes, and this legend sits above them


def range_test_png(*, optimizer: str, batch_size: int, lrs: list[float], losses: list[float],
                   chosen_lr: float | None, min_loss_lr: float | None) -> bytes:
    """lr_find.png: raw and smoothed loss against LR (log scale), the chosen LR and the loss minimum marked."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    fig = Figure(figsize=(7, 4), layout="constrained")  # tight_layout drew the figure twice: 0.17 s more
    ax = fig.subplots()
    finite = [(lr, loss) for lr, loss in zip(lrs, losses) if math.isfinite(loss)]
    if finite:
        ax.plot([p[0] for p in finite], [p[1] for p in finite], color="#bbbbbb", linewidth=1, label="loss")
    shown = [(lr, v) for lr, v in zip(lrs, smooth(losses)) if math.isfinite(v)]
    if shown:
        ax.plot([p[0] for p in shown], [p[1] for p in shown], color="#1f77b4", label="smoothed loss")
        low, high = min(v for _, v in shown), max(v for _, v in shown)
        top = min(high, low + 3 * (shown[0][1] - low)) if shown[0][1] > low else high
        pad = 0.05 * (top - low) if top > low else abs(low) * 0.05 + 1e-12
        ax.set_ylim(low - pad, top + pad)
    if chosen_lr:
        ax.axvline(chosen_lr, color="#d62728", linestyle="--", label=f"chosen {chosen_lr:.2g}")
    if min_loss_lr:
        ax.axvline(min_loss_lr, color="#999999", linestyle=":", label=f"loss minimum {min_loss_lr:.2g}")
    log_scale(ax, "x")
    ax.xaxis.set_minor_locator(NullLocator())  # 8 decades: ~70 minor ticks, 0.2 s of drawing, say nothing more
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test ({optimizer}, batch {batch_size})")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return png_bytes(fig)


_DRAWINGS = {CURVES_FIGURE: curves_png, RANGE_TEST_FIGURE: range_test_png}


def figure_png(figure: str, args: dict) -> bytes | None:
    """The figure named ``figure`` (`CURVES_FIGURE`, `RANGE_TEST_FIGURE`) drawn from ``args``, its keyword
    arguments; None when there is nothing to draw."""
    return _DRAWINGS[figure](**args)
