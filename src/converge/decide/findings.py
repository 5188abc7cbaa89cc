"""A finding: what a check or a rule saw, how bad it is, the numbers behind it, and what to do about it.

One type for everything converge tells a person about a task or a run: the doctor's data and model
checks (`converge.doctor`) and the diagnosis of a finished run (`converge.decide.diagnosis`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

SEVERITIES = ("error", "warning", "info")          # most severe first
_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class Finding:
    """One thing a check or a rule saw. The doctor returns a list of them (`converge.run_doctor`,
    `converge.diagnose`), and so does the diagnosis of a finished run (``summary.json``'s ``diagnosis``).

    Attributes:
        code: a stable name ("class_imbalance", "overfitting", ...).
        severity: "error", "warning" or "info".
        message: one sentence a person can read.
        evidence: the numbers behind it (JSON-ready).
        fix: what to do about it.
    """

    code: str                 # a stable name ("class_imbalance", "overfitting", ...)
    severity: str             # "error" | "warning" | "info"
    message: str              # one sentence a person can read
    evidence: dict[str, Any] = field(default_factory=dict)   # the numbers behind it (JSON-ready)
    fix: str = ""             # what to do about it

    def __post_init__(self) -> None:
        if self.severity not in _RANK:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, got {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        """The finding as the JSON files write it: ``{code, severity, message, evidence, fix}``."""
        return {"code": self.code, "severity": self.severity, "message": self.message,
                "evidence": dict(self.evidence), "fix": self.fix}

    def with_evidence(self, **extra: Any) -> "Finding":
        """The same finding with more evidence (sampling facts, say)."""
        return Finding(self.code, self.severity, self.message, {**self.evidence, **extra}, self.fix)


def severity_rank(severity: str) -> int:
    """0 for error, 1 for warning, 2 for info: sort ascending for most severe first."""
    return _RANK[severity]


def ranked(findings: Iterable[Finding]) -> list[Finding]:
    """Most severe first; checks keep their order within a severity (sorting is stable)."""
    return sorted(findings, key=lambda f: severity_rank(f.severity))


def at_least(findings: Iterable[Finding], severity: str) -> list[Finding]:
    """The findings at ``severity`` or worse."""
    return [f for f in findings if severity_rank(f.severity) <= severity_rank(severity)]


def rounded(value: float, digits: int = 4) -> float | None:
    """A number for evidence: ``digits`` significant digits, None when it is not finite."""
    value = float(value)
    return None if not math.isfinite(value) else float(f"{value:.{digits}g}")
