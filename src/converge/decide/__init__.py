"""Pure decisions: given scripted values in, verdicts out. No I/O, no tensors."""

from converge.decide.plateau import ConvergencePolicy, ConvergenceTracker, Verdict, is_improvement

__all__ = ["ConvergencePolicy", "ConvergenceTracker", "Verdict", "is_improvement"]
