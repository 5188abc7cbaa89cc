"""When the automatic choice's race is decided before its last rung (`converge.choose.auto`).

Successive halving trains every arm a short budget, keeps the better half and trains it again from the
start with twice the budget, until one arm is left. A later rung can only change the winner when the
runner-up catches up with the leader between the shorter and the longer budget. When it trails by a
wide margin after a rung, that does not happen, and the rest of the race (half of its steps with four
arms) only delays training.

The rule, in words: after a rung, the race is decided when the leader learned (did not collapse to a
constant prediction) and every other arm either collapsed or has a score worse than the leader's by more
than ``CLEAR_MARGIN`` times the leader's magnitude. Scores are "lower is better" (the race negates a
monitored value in mode "max"); a non-finite score (an arm that blew up) trails by any margin.

``CLEAR_MARGIN`` was read off the races of bench/alternatives.py (raw wine, the digits MLP and the LSTM
forecaster, 3 seeds; docs/performance-alternatives.md): of 7 races, the second rung changed the winner
twice, with first-rung margins of 0.05 and 0.17; it never did above that, and the margins of the races
it confirmed went up to 2.46. 0.5 keeps about three times the largest margin that was overturned.
"""

from __future__ import annotations

import math

CLEAR_MARGIN = 0.5


def race_decided(scores: list[float], collapsed: list[bool]) -> bool:
    """Whether the arm ranked first (``scores[0]``, lower is better, ranked with collapsed arms last) has won
    already. ``collapsed[i]``: arm i's validation loss sat at a constant prediction's."""
    if len(scores) != len(collapsed):
        raise ValueError(f"scores and collapsed differ in length ({len(scores)} and {len(collapsed)})")
    if len(scores) < 2:
        return True
    leader = scores[0]
    if collapsed[0] or not math.isfinite(leader):
        return False
    bar = leader + CLEAR_MARGIN * abs(leader)
    return all(gone or not math.isfinite(score) or score > bar
               for score, gone in zip(scores[1:], collapsed[1:]))
