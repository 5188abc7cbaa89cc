"""Read a learning-rate range test: which LR to train with, from (lrs, losses) alone.

Each single rule fails on some curve: the steepest slope lands on noise at the start of a flat
curve (Lightning's `lr_find` picked 1.1e-7 on an unscaled tabular task), "minimum / 10" is too bold
when the minimum sits right at the divergence cliff, and fastai's valley rule is fooled by a long
flat stretch. So the suggestion combines evidence:

1. The losses are smoothed (bias-corrected EMA) and cut where they stop being finite or climb past
   ``diverge_factor`` x the best smoothed loss.
2. A curve whose smoothed loss never falls by ``min_drop`` of its starting value gives no suggestion
   (``ok=False``): the caller falls back to a safe default and says so.
3. Three rules vote, each only over the points up to the loss minimum and past the first
   ``skip_start`` of the sweep: the steepest descent, the valley (the longest stretch of falling
   loss, two thirds of the way along it), and the minimum's LR / 10.
4. The suggestion is their median in log space, clamped to [min LR / 100, min LR / 3] -- never at the
   edge of divergence, never orders of magnitude below where the loss actually moved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LrSuggestion:
    lr: float | None                 # None when the curve gives no usable evidence (ok=False)
    ok: bool
    reason: str
    min_loss_lr: float | None = None
    candidates: dict = field(default_factory=dict)
    used_points: int = 0


def smooth(losses: list[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average; non-finite values stay non-finite."""
    out, average = [], 0.0
    for i, loss in enumerate(losses, start=1):
        if not math.isfinite(loss):
            out.append(math.inf)
            average = math.inf
            continue
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta**i))
    return out


def usable_prefix(lrs: list[float], smoothed: list[float], diverge_factor: float) -> int:
    """How many leading points to trust: up to the first non-finite or diverged one."""
    best = math.inf
    for i, value in enumerate(smoothed):
        if not math.isfinite(value) or not math.isfinite(lrs[i]) or lrs[i] <= 0:
            return i
        if value > diverge_factor * best and i > 0:
            return i
        best = min(best, value)
    return len(smoothed)


def suggest_lr(lrs: list[float], losses: list[float], *, beta: float = 0.9, diverge_factor: float = 4.0,
               min_drop: float = 0.05, skip_start: float = 0.1, min_points: int = 8) -> LrSuggestion:
    if len(lrs) != len(losses):
        raise ValueError(f"lrs and losses differ in length: {len(lrs)} and {len(losses)}")
    smoothed = smooth(list(losses), beta)
    n = usable_prefix(list(lrs), smoothed, diverge_factor)
    if n < min_points:
        return LrSuggestion(None, False, f"only {n} usable point(s) before the loss diverged or became NaN",
                            used_points=n)
    lrs, smoothed = list(lrs[:n]), smoothed[:n]
    low = min(range(n), key=smoothed.__getitem__)
    start_loss = smoothed[0]
    drop = (start_loss - smoothed[low]) / abs(start_loss) if start_loss else 0.0
    if drop < min_drop:
        return LrSuggestion(None, False, f"the loss never fell by {min_drop:.0%} (best drop {drop:.1%})",
                            min_loss_lr=lrs[low], used_points=n)
    first = min(int(skip_start * n), max(low - 2, 0))
    logs = [math.log10(lr) for lr in lrs]
    candidates = {"min_over_10": lrs[low] / 10}
    steep = _steepest(logs, smoothed, first, low)
    if steep is not None:
        candidates["steepest"] = lrs[steep]
    valley = _valley(smoothed, first, low)
    if valley is not None:
        candidates["valley"] = lrs[valley]
    votes = sorted(math.log10(v) for v in candidates.values())
    middle = votes[len(votes) // 2] if len(votes) % 2 else (votes[len(votes) // 2 - 1] + votes[len(votes) // 2]) / 2
    suggestion = min(max(10**middle, lrs[low] / 100), lrs[low] / 3)
    reason = (f"median of {len(candidates)} rules ({', '.join(f'{k} {v:.2g}' for k, v in candidates.items())}), "
              f"kept within [min-loss LR / 100, min-loss LR / 3] around {lrs[low]:.2g}")
    return LrSuggestion(suggestion, True, reason, min_loss_lr=lrs[low], candidates=candidates, used_points=n)


def _steepest(logs: list[float], smoothed: list[float], first: int, last: int) -> int | None:
    """The point where the loss falls fastest per decade of LR (a centred difference)."""
    best, best_index = 0.0, None
    for i in range(max(first, 1), last):
        slope = (smoothed[i + 1] - smoothed[i - 1]) / (logs[i + 1] - logs[i - 1] or 1e-12)
        if slope < best:
            best, best_index = slope, i
    return best_index


def _valley(smoothed: list[float], first: int, last: int) -> int | None:
    """Two thirds along the longest run of (non-strictly) falling smoothed loss before the minimum."""
    best_start, best_length, start = None, 0, first
    for i in range(first + 1, last + 1):
        if smoothed[i] > smoothed[i - 1]:
            start = i
        elif i - start > best_length:
            best_start, best_length = start, i - start
    if best_start is None or best_length < 2:
        return None
    return best_start + (2 * best_length) // 3
