"""Findings for a person: a table ranked by severity (rich, as the run summary), one short evidence line each."""

from __future__ import annotations

import json
from typing import Iterable

from converge.decide.findings import SEVERITIES, Finding, ranked

_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}


def evidence_line(evidence: dict, width: int = 160) -> str:
    """The evidence as compact JSON, cut at ``width`` characters."""
    text = json.dumps(evidence, separators=(", ", ": "), default=str)
    return text if len(text) <= width else text[:width - 1] + "…"


def headline(findings: list[Finding]) -> str:
    counts = [f"{sum(f.severity == s for f in findings)} {s}(s)" for s in SEVERITIES]
    return "no findings" if not findings else ", ".join(counts)


def print_findings(findings: Iterable[Finding], *, title: str = "converge doctor") -> None:
    from rich.console import Console
    from rich.table import Table

    findings = ranked(findings)
    console = Console(highlight=False)
    table = Table(title=f"{title}: {headline(findings)}", title_justify="left", show_lines=True)
    table.add_column("severity")
    table.add_column("code")
    table.add_column("finding")
    for finding in findings:
        fix = f"\nfix: {finding.fix}" if finding.fix else ""
        text = f"{finding.message}{fix}\nevidence: {evidence_line(finding.evidence)}"
        table.add_row(finding.severity, finding.code, text, style=_STYLE[finding.severity])
    console.print(table)
