"""The automatic choice's race (`converge.choose.auto`): how its arms rank after a rung, and when it is
decided before its last rung.

**Ranking.** Arms that learned rank first, by their score. Then the arms that learned nothing (their
validation loss is no better than a constant prediction's, or they blew up). Among those, the arms whose last
validation losses lie within ``TIE_SHARE`` of the constant prediction's loss of the lowest such loss are tied
and keep the order they were proposed in (the default optimizer first, the larger LR first); the others follow
by score (an arm clearly worse than a constant must not outrank one that merely sits at it: raw diabetes, seed
1, SGD 6460 against AdamW 6052), and arms that blew up come last. Between arms that sit at the constant's
level the score difference is noise: an LSTM on token ids that learns only after some 200 steps had both arms
of its 40-step rung there (SGD 0.6896, AdamW 0.6903, the constant's 0.6893) and the race took SGD at 0.01,
which was still at that level after 11 epochs (test accuracy 0.52), where AdamW at 1e-3 learned by epoch 5
(0.73). Raw diabetes with ``--lr 1e-3`` lost the same way (SGD 6521 against AdamW 6545 after 40 steps, on
validation targets whose spread is not the training targets' 6001): SGD went on to a test MSE of 5126.

**Decision.**
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

from converge.decide.collapse import COLLAPSE_SHARE

CLEAR_MARGIN = 0.5
TIE_SHARE = 1 - COLLAPSE_SHARE  # arms that learned nothing and lie this share of the constant loss apart are tied


def race_order(scores: list[float], learned_nothing: list[bool], losses: list[float | None],
               baseline: float | None) -> list[int]:
    """The arms' indices, best first (see the module's ranking). ``scores``: lower is better, non-finite for
    an arm that blew up; ``learned_nothing[i]``: arm i's validation loss is no better than a constant's (or it
    blew up); ``losses[i]``: its last validation loss; ``baseline``: the constant prediction's loss (None:
    unknown, no ties). The arms are given in the order proposed."""
    if not len(scores) == len(learned_nothing) == len(losses):
        raise ValueError(f"scores, learned_nothing and losses differ in length "
                         f"({len(scores)}, {len(learned_nothing)} and {len(losses)})")
    nothing = [i for i in range(len(scores)) if learned_nothing[i] and math.isfinite(scores[i])
               and losses[i] is not None and math.isfinite(losses[i])]
    tied = set()
    if nothing and baseline is not None and math.isfinite(baseline) and baseline > 0:
        lowest = min(losses[i] for i in nothing)
        tied = {i for i in nothing if losses[i] <= lowest + TIE_SHARE * baseline}

    def rank(i: int) -> tuple:
        if not learned_nothing[i]:
            return 0, scores[i], i
        if not math.isfinite(scores[i]):
            return 3, 0.0, i
        if i in tied:
            return 1, 0.0, i
        return 2, scores[i], i

    return sorted(range(len(scores)), key=rank)


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
