"""Pure decisions: given scripted values in, verdicts out. No I/O, no tensors."""

from converge.decide.plateau import ConvergencePolicy, ConvergenceTracker, StopRule, Verdict, is_improvement

__all__ = ["ConvergencePolicy", "ConvergenceTracker", "StopRule", "Verdict", "is_improvement"]
