"""When a checkpoint is due: often enough that a crash loses little, rarely enough that checkpoints cost at
most a small share of the training time.

The rule, given the seconds of training since the last checkpoint written (``since_last``) and what this
one is expected to cost the loop (``cost``: seconds spent serializing it on the training thread; its size
at what the last one cost per byte):

* before ``floor`` seconds nothing is due (inside an epoch the floor is ``--checkpoint-seconds``; at an
  epoch's end there is none);
* until one has been timed the rate is a guess (``ASSUMED_BYTES_PER_SECOND``); a checkpoint whose cost is unknown or negligible (at most
  ``NEGLIGIBLE_SECONDS``: below about 25 MiB of state) is due every time: small models checkpoint every
  epoch, as before;
* otherwise it is due once ``cost <= MAX_SHARE * since_last``: a checkpoint that costs 0.3 s is
  written at most every 6 s of training, across epoch boundaries.

A checkpoint at the end of the run, or at a stop, is always written (the engine does not ask).
"""

from __future__ import annotations

MAX_SHARE = 0.05            # checkpoints may take at most this share of the training time
NEGLIGIBLE_SECONDS = 0.05   # a checkpoint cheaper than this is always due
# A first guess, until one is timed. Serializing a 384 MiB state (a 25M-parameter model, AdamW, best
# weights) alone took 0.15-0.3 s on the 2-core development machine (1.3-2.7 GB/s), inside runs on that
# machine under load 0.7-1.25 s (0.3-0.5 GB/s): a guess on the fast side of runs, so that it errs towards
# writing.
ASSUMED_BYTES_PER_SECOND = 2**29


def estimated_cost(nbytes: int, seconds_per_byte: float | None = None) -> float:
    """The seconds a checkpoint of ``nbytes`` is expected to cost: at what the last one cost per byte
    (``seconds_per_byte``), or before one has been timed at ``ASSUMED_BYTES_PER_SECOND``."""
    return nbytes * (seconds_per_byte if seconds_per_byte is not None else 1 / ASSUMED_BYTES_PER_SECOND)


def negligible(cost: float | None) -> bool:
    """A checkpoint this cheap is due every time."""
    return cost is not None and cost <= NEGLIGIBLE_SECONDS


def checkpoint_due(since_last: float, cost: float | None, *, floor: float = 0.0) -> bool:
    """Whether to write a checkpoint now (see the module's rule)."""
    if since_last < floor:
        return False
    if cost is None or negligible(cost):
        return True
    return cost <= MAX_SHARE * since_last
