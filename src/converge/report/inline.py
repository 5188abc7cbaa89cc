"""A run shown inside a notebook: what `FitResult._repr_html_` displays. The status, the stop reason, the
numbers a reader wants first, the diagnosis and the curves, built by report.html's own pieces from the
result's summary, history and events (no file is read), with report.html's style scoped to the fragment so
it leaves the notebook's own look alone."""

from __future__ import annotations

import re
from pathlib import Path

from converge.report._page import escape
from converge.report.html import _STATUS_TONE, _STYLE, RunFiles, _curves, _diagnosis, _facts, run_status

SCOPE = "converge-result"


def result_html(summary: dict, history: list[dict], events: list[dict], run_dir: str | Path | None = None) -> str:
    """One HTML fragment (no script, no external resource) about a finished run."""
    run = RunFiles(path=Path(run_dir) if run_dir is not None else Path("."), info={}, summary=summary,
                   history=history, events=events, doctor=None, remedies=None, lr_find_png=None)
    status, reason = run_status(run)
    tone = _STATUS_TONE.get(status, "muted")
    folder = (f"<p class='sub'>run folder <code>{escape(run_dir)}</code> (report.html there has the whole "
              f"story)</p>" if run_dir is not None else "")
    return (f"<div class='{SCOPE}'><style>{scoped_style(_STYLE, '.' + SCOPE)}</style>"
            f"<div class='title'><span class='badge tone-{tone}'>{escape(status)}</span></div>"
            f"<p class='reason'>{escape(reason)}</p>{folder}{_facts(run)}"
            f"<h3>Diagnosis</h3>{_diagnosis(run)}<h3>Curves</h3>{_curves(run)}</div>")


def scoped_style(style: str, scope: str) -> str:
    """``style`` with every rule limited to the elements inside ``scope`` (the page-wide ``:root``,
    ``body``, ``main`` and ``*`` rules apply to the fragment's own box instead)."""
    rules = []
    for selectors, body in re.findall(r"([^{}]+)\{([^{}]*)\}", style):
        names = [s.strip() for s in selectors.split(",")]
        scoped = [scope if name in (":root", "body", "main") else f"{scope} {name}" for name in names]
        rules.append(f"{', '.join(scoped)} {{ {' '.join(body.split())} }}")  # one rule a line
    return "\n".join(rules)
