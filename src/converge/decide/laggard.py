"""A search trial that lags the finished trials for good: stop it (`converge tune`'s second pruning rule).

Hyperband compares a trial only with the trials of its own bracket at the same rung, and the first
trial to reach a rung has nobody to be compared with: it is promoted. So a trial that improves slowly
but steadily (a small SGD step, a huge batch) can run for hundreds of epochs, never converging by the
plateau rule and never pruned: measured in bench/tune.py on the digits MLP, one such trial (SGD, LR
2e-3, batch 256) took 416 of the search's 820 epochs to end at a validation loss 2.6x the best. It was
trial 1: only trial 0 had finished, which is why one finished trial is enough for the rule to speak.

The rule, in words: once at least ``MIN_FINISHED`` trials have finished (converged or stopped by their
epoch cap; with the warm start, trial 0 is the first), a running trial is stopped when it has trained ``LAG_FACTOR`` times as many epochs as the
median finished trial needed, and its best value so far is still worse than the median finished
trial's best. A slow starter is left alone while it is within that many epochs; so is any trial that is
already as good as the middle of the field. Directions are explicit (``mode`` "min" or "max").
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

LAG_FACTOR = 2.0     # epochs, as a multiple of the median finished trial's, before a lagging trial is stopped
MIN_FINISHED = 1     # finished trials needed before the rule speaks (trial 0, the warm start, is enough)


@dataclass(frozen=True)
class Finished:
    """A finished trial: its best value (the search's objective) and the epochs it trained."""

    value: float
    epochs: int


def lags_behind(best: float, epoch: int, finished: list[Finished], mode: str) -> str | None:
    """Why the running trial (best value ``best`` after ``epoch`` epochs) should stop, or None."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    if len(finished) < MIN_FINISHED:
        return None
    typical_epochs = statistics.median(f.epochs for f in finished)
    typical_value = statistics.median(f.value for f in finished)
    behind = best > typical_value if mode == "min" else best < typical_value
    if behind and epoch >= LAG_FACTOR * typical_epochs:
        return (f"still behind the median finished trial ({typical_value:.6g}) after {epoch} epochs, "
                f"{LAG_FACTOR:g}x the {typical_epochs:g} it needed")
    return None
