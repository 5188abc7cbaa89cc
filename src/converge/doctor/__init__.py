"""converge doctor: checks on a task's data and model that find why it will not converge, before the
compute is spent. Checks are pure functions returning `Finding`s; `run_doctor` runs them all."""

from converge.decide.findings import SEVERITIES, Finding, at_least, ranked, severity_rank
from converge.doctor.run import CHEAP_CODES, CODES, EXPENSIVE_CODES, diagnose, diagnose_task, run_checks, run_doctor

__all__ = ["CHEAP_CODES", "CODES", "EXPENSIVE_CODES", "SEVERITIES", "Finding", "at_least", "diagnose",
           "diagnose_task", "ranked", "run_checks", "run_doctor", "severity_rank"]
