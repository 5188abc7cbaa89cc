"""Read a learning-rate range test: which LR to train with, from (lrs, losses) alone.

Each single rule fails on some curve: the steepest slope lands on noise at the start of a flat
curve (Lightning's `lr_find` picked 1.1e-7 on an unscaled tabular task), "minimum / 10" is too bold
when the minimum sits right at the divergence cliff, and fastai's valley rule is fooled by a long
flat stretch. So the suggestion combines evidence:

1. The sweep is cut where the loss stops being finite, where its trailing median passes
   ``diverge_factor`` x its best, or where, after a clear fall, it climbs back above where it started --
   both judged against the batch noise measured at the sweep's start, so that a noisy flat start (a
   regression at batch 32 swings by +-50% from batch to batch) is not read as a fall and a rebound. The rules then read a *zero-phase* smoothing of what is left (a centred median against spikes, then
   an EMA forwards and backwards): a causal EMA lags the sweep by about beta / (1 - beta) steps --
   nearly a decade of LR in a short sweep -- and would place the minimum several times too high.
2. A curve whose smoothed loss never falls by ``min_drop`` of its starting value gives no suggestion
   (``ok=False``): the caller falls back to a safe default and says so.
3. Three rules propose, each only over the points up to the loss minimum and past the first
   ``skip_start`` of the sweep: the steepest descent, the valley (the longest stretch of falling
   loss, two thirds of the way along it), and the minimum's LR / 10.
   A loss that reached its floor and lay there (a separable task's cross-entropy at 0) has no minimum:
   where it reached the floor stands for it (`floor_start`).
4. The suggestion is the largest proposal, clamped to [min LR / 100, min LR / 3] -- never at the edge
   of divergence, never orders of magnitude below where the loss actually moved. On recorded curves
   with an LR grid trained to find the truly good range (tests/data/lr_curves), the best LR sat at
   0.05-2x the loss minimum's LR; the median proposal was mostly min / 10, too timid, and the
   largest one landed closer (the caller checks it, and a third of it, on validation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# The range test's cut-off (usable_prefix): where the rest of a sweep would tell nothing.
DIVERGE_WINDOW = 5          # trailing median for divergence (x diverge_factor its best): one spike cannot stop it
LEVEL_WINDOW = 10           # wider trailing median for the rebound: a sustained rise above the start, not a batch
START_POINTS = 10           # the start level: the median of the sweep's first losses
NOISE_POINTS = 20           # the batch noise: from the first losses too; no rebound is judged before
REBOUND_DROP = 0.2          # a clear fall is at least this fraction of the start level...
REBOUND_NOISE_SDS = 4.0     # ...and this many standard deviations (of a difference of two LEVEL_WINDOW medians)
DIVERGE_NOISE_SDS = 6.0     # a divergence must also rise this many sds of a DIVERGE_WINDOW median (skewed losses)
# The loss at its floor: a bottom within FLOOR_TOLERANCE of the fall's depth that spans more than FLOOR_DECADES of
# LR is a floor the loss reached (a separable task's cross-entropy at 0), not a minimum; its start stands for the
# minimum. The recorded U-shaped curves' bottoms span at most 1.75x at this tolerance; a one-logit binary task on
# 93 separable rows sat at 0 from LR 0.4 to the sweep's end at 10, and "minimum / 10" chose AdamW at LR 1.
FLOOR_TOLERANCE = 0.02
FLOOR_DECADES = 1.0


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


def rolling_median(values: list[float], window: int = 5, centered: bool = True) -> list[float]:
    """Median over a sliding window (centred, or trailing): one spiky batch cannot move it."""
    out = []
    for i in range(len(values)):
        lo = max(0, i - window // 2) if centered else max(0, i - window + 1)
        part = sorted(values[lo:lo + window] if centered else values[lo:i + 1])
        out.append(part[len(part) // 2])
    return out


def smooth_zero_phase(losses: list[float], beta: float = 0.8) -> list[float]:
    """A centred median (against spikes), then the EMA forwards and backwards: smooth without shifting
    features along the LR axis."""
    forward = smooth(rolling_median(losses), beta)
    return smooth(forward[::-1], beta)[::-1]


def usable_prefix(lrs: list[float], losses: list[float], diverge_factor: float = 4.0,
                  rebound_drop: float = REBOUND_DROP) -> int:
    """How many leading points to trust: up to the first one that is non-finite, or where the trailing
    median of the loss passes ``diverge_factor`` x its best, or -- once it has clearly fallen -- climbs
    back above where the sweep started: a chaotic stretch that never "diverges" numerically still tells
    nothing.

    The rebound is judged on a wider trailing median (``LEVEL_WINDOW`` points) than the divergence: a
    rise counts only when most of the recent batches sit above the start, not one or two noisy ones.
    And a fall is "clear" only when it is ``rebound_drop`` of the start level (the median of the first
    ``START_POINTS`` losses) *and* ``REBOUND_NOISE_SDS`` standard deviations of such medians below it,
    the batch noise measured on the first ``NOISE_POINTS`` losses (where the LR is too small to move the
    model): the lowest of a few dozen noisy medians sits well below the true level, so a small margin
    reads batch noise as "fell, then climbed back" (a regression sweep at batch 32 stopped at LR 1e-5,
    two decades into its flat start, and the run trained at 1.1e-6). A divergence must likewise rise
    ``DIVERGE_NOISE_SDS`` standard deviations above the best (skewed batch losses -- an MSE of few
    samples -- put 4x between two medians of five by chance); a real one grows by orders of magnitude.
    Causal: the answer for a prefix is the answer for the whole sweep, cut there (the range test stops
    at the first cut prefix, and `suggest_lr` reads the recorded sweep again)."""
    finite = next((i for i, (lr, loss) in enumerate(zip(lrs, losses))
                   if not (math.isfinite(loss) and math.isfinite(lr) and lr > 0)), len(losses))
    if finite == 0:
        return 0
    # Spikes before a final NaN or inf are judged by the checks below like any other point.
    losses = list(losses[:finite])
    medians = rolling_median(losses, DIVERGE_WINDOW, centered=False)
    levels = rolling_median(losses, LEVEL_WINDOW, centered=False)
    start = _median(losses[:START_POINTS])
    # A median of w normal values has a standard deviation of ~1.25 sigma / sqrt(w), and the difference
    # of two such medians is sqrt(2) times as noisy: the noise margins of the two rules.
    diverge_sd = math.sqrt(2) * 1.25 / math.sqrt(DIVERGE_WINDOW)
    rebound_sd = math.sqrt(2) * 1.25 / math.sqrt(LEVEL_WINDOW)
    best = best_level = math.inf
    for i, (value, level) in enumerate(zip(medians, levels)):
        sigma = _batch_noise(losses[:min(i + 1, NOISE_POINTS)])
        if i > 0 and _far_above(value, best, start, diverge_factor) and \
                value - best > DIVERGE_NOISE_SDS * diverge_sd * sigma:
            return i
        if (i >= NOISE_POINTS and level > start and start - best_level > rebound_drop * abs(start)
                and start - best_level > REBOUND_NOISE_SDS * rebound_sd * sigma):
            return i
        if i >= START_POINTS - 1:
            best = min(best, value)
            best_level = min(best_level, level)
    return finite


def _far_above(value: float, best: float, start: float, factor: float) -> bool:
    """Whether the loss has risen ``factor`` x its best. A best at or below zero (a negative log-likelihood)
    has no ratio: there a rise of ``factor - 1`` times the larger of the start's and the best's magnitude
    counts, the same amount as ``factor`` x for a positive best (for which the test is the ratio, as ever).
    With the ratio, a sweep whose loss went below zero stopped at its first bump (-0.25 is above 4 x -0.3)."""
    if best > 0:
        return value > factor * best
    return value - best > (factor - 1) * max(abs(start), abs(best))


def _batch_noise(losses: list[float]) -> float:
    """The standard deviation of batch-to-batch noise, from the differences of neighbouring losses (a slow
    trend hardly moves them, and they are symmetric even when the losses are skewed): 1.4826 MAD / sqrt(2)."""
    diffs = [b - a for a, b in zip(losses, losses[1:])]
    centre = _median(diffs)
    return 1.4826 * _median([abs(d - centre) for d in diffs]) / math.sqrt(2)


def _median(values: list[float]) -> float:
    """The middle value (the mean of the middle two for an even count); 0 for none."""
    if not values:
        return 0.0
    part, half = sorted(values), len(values) // 2
    return part[half] if len(part) % 2 else (part[half - 1] + part[half]) / 2


def suggest_lr(lrs: list[float], losses: list[float], *, beta: float = 0.8, diverge_factor: float = 4.0,
               min_drop: float = 0.05, skip_start: float = 0.1, min_points: int = 8,
               max_lr: float | None = None) -> LrSuggestion:
    """The LR to train with, read from a range test's curve (see the module's docstring). ``max_lr``: the
    largest LR plausible for the optimizer; a suggestion above it is capped there, and says so."""
    if len(lrs) != len(losses):
        raise ValueError(f"lrs and losses differ in length: {len(lrs)} and {len(losses)}")
    n = usable_prefix(list(lrs), list(losses), diverge_factor)
    if n < min_points:
        return LrSuggestion(None, False, f"only {n} usable point(s) before the loss diverged or became NaN",
                            used_points=n)
    lrs, smoothed = list(lrs[:n]), smooth_zero_phase(list(losses[:n]), beta)
    # The fall is measured from the start *level*, the median of the first losses -- one smoothed value
    # at the very start is as noisy as any, and a lucky low one read a real fall as none -- and the
    # minimum is sought past the middle of that window, so that it cannot be such a lucky start either.
    head = min(START_POINTS // 2, n - 1)
    low = min(range(head, n), key=smoothed.__getitem__)
    start_loss = _median(list(losses[:min(n, START_POINTS)]))
    drop = (start_loss - smoothed[low]) / abs(start_loss) if start_loss else 0.0
    if drop < min_drop:
        return LrSuggestion(None, False, f"the loss never fell by {min_drop:.0%} (best drop {drop:.1%})",
                            min_loss_lr=lrs[low], used_points=n)
    low = floor_start(lrs, smoothed, low, head, start_loss)
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
    suggestion = min(max(10 ** votes[-1], lrs[low] / 100), lrs[low] / 3)
    reason = (f"largest of {len(candidates)} rules ({', '.join(f'{k} {v:.2g}' for k, v in candidates.items())}), "
              f"kept within [min-loss LR / 100, min-loss LR / 3] around {lrs[low]:.2g}")
    if max_lr is not None and suggestion > max_lr:
        # A loss that falls only at an LR no optimizer step can use (a task that learns suddenly, after
        # a long flat start: at those LRs the sweep's last steps only move the output's bias).
        suggestion = max_lr
        reason += f"; capped at {max_lr:g}, the largest LR plausible for the optimizer"
    return LrSuggestion(suggestion, True, reason, min_loss_lr=lrs[low], candidates=candidates, used_points=n)


def floor_start(lrs: list[float], smoothed: list[float], low: int, head: int, start_loss: float) -> int:
    """The minimum's index ``low``, or where the loss reached its floor when it then lay there (within
    ``FLOOR_TOLERANCE`` of the fall's depth) over more than ``FLOOR_DECADES`` of LR: along a floor the lowest
    point is wherever the last batches happened to sit, up to the sweep's end."""
    level = smoothed[low] + FLOOR_TOLERANCE * (start_loss - smoothed[low])
    reached = next(i for i in range(head, low + 1) if smoothed[i] <= level)
    return reached if math.log10(lrs[low] / lrs[reached]) > FLOOR_DECADES else low


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
