"""When a checkpoint is due: often enough that a crash loses little, rarely enough that checkpoints cost at
most a small share of the training time.

The rule, given the seconds of training since the last checkpoint written (``since_last``) and what the
last one cost the loop (``cost``: seconds spent serializing it on the training thread):

* before ``floor`` seconds nothing is due (inside an epoch the floor is ``--checkpoint-seconds``; at an
  epoch's end there is none);
* a checkpoint whose cost is unknown (none written yet) or negligible (at most ``NEGLIGIBLE_SECONDS``)
  is due every time: small models checkpoint every epoch, as before;
* otherwise it is due once ``cost <= MAX_SHARE * since_last``: a checkpoint that costs 0.3 s is
  written at most every 6 s of training, across epoch boundaries.

A checkpoint at the end of the run, or at a stop, is always written (the engine does not ask).
"""

from __future__ import annotations

MAX_SHARE = 0.05            # checkpoints may take at most this share of the training time
NEGLIGIBLE_SECONDS = 0.05   # a checkpoint cheaper than this is always due


def checkpoint_due(since_last: float, cost: float | None, *, floor: float = 0.0) -> bool:
    """Whether to write a checkpoint now (see the module's rule)."""
    if since_last < floor:
        return False
    if cost is None or cost <= NEGLIGIBLE_SECONDS:
        return True
    return cost <= MAX_SHARE * since_last
