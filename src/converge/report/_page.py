"""The HTML pieces both reports are made of (report.html and tune_report.html): escaping, numbers as text,
tables, and plots inlined as PNG data (the pages load nothing from outside)."""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def number(value: Any, digits: int = 4, missing: str = "—") -> str:
    """Plain text for a value: floats to ``digits`` significant digits, NaN/inf by name, None as ``missing``."""
    if value is None:
        return missing
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        shown = ", ".join(number(v, digits, missing) for v in value[:12])
        return f"[{shown}{f', … ({len(value)} in all)' if len(value) > 12 else ''}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {number(v, digits, missing)}" for k, v in value.items()) + "}"
    return str(value)


def table(header: list[str] | None, rows: list[list[str]], cls: str = "") -> str:
    """Cells are HTML already (callers escape); the header is plain text."""
    head = "<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr></thead>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table class='{cls}'>{head}<tbody>{body}</tbody></table>"


def img(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    return f"<img alt='{escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"


def log_scale(ax, which: str) -> None:
    """Put ``ax``'s ``which`` ("x" or "y") axis on a log scale labelled in plain text ("1e-05", "0.01").
    matplotlib's default labels (10 to a power) are typeset by mathtext, whose parser is built on the first
    use: 0.15-0.2 s of a run's end, more than the rest of a figure (an LR range test's figure took 0.5 s)."""
    from matplotlib.ticker import LogFormatter

    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_formatter(LogFormatter(10))
    axis.set_minor_formatter(LogFormatter(10, labelOnlyBase=False))


def png_bytes(fig, dpi: int = 100) -> bytes:
    """A matplotlib Figure as PNG bytes (the object API: no global figure state, no GUI backend)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
