"""What a task's own loss means, read from how it answers on made-up outputs.

converge recognizes the standard losses by type. A loss the task writes itself (a function that flattens
``[N, T, V]`` logits, a focal loss, a BCE on a squeezed one-output head) says nothing of its meaning, so
converge used to report no accuracy for it, or count its padding as tokens. Two questions are answered by
calling it on a probe batch, a few times, without gradient and without touching the global RNG:

* `skipped_label`: which integer label the loss never reads (its padding), so token accuracy and the
  doctor leave those positions out as the loss does;
* `binary_link`: whether a one-output (or multi-label) head's outputs are logits or probabilities to the
  loss, so accuracy can threshold them where the loss puts its boundary (logit 0, or 0.5);
* `predicts_targets`: whether a regression's outputs are predictions in the targets' units to the loss
  (an L1, a Huber, a pinball loss: smallest where the outputs equal the targets), so R2 can score them;
  a Poisson loss on log-rates is not;
* `reads_class_scores`: whether a classifier's outputs are class scores to the loss at all (a
  cross-entropy, a focal or hinge loss) or something it compares among samples (a triplet or contrastive
  loss on embeddings), so accuracy (an argmax over them) is reported only where it means something;
* `target_shift`: whether the loss compares position t's scores with target t + 1, as a language model's
  loss does that takes its inputs as targets (``logits[:, :-1]`` against ``ids[:, 1:]``), so token
  accuracy compares the same pairs (it scored a tiny Transformer LM at 0.07 %).

Each answer comes only when the loss's behaviour leaves no doubt; otherwise None, and converge keeps to
what does not depend on the loss.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

# How far a perturbation must move the loss to count as read, and how little to count as not read: relative
# to the loss's value, far apart so that rounding of a mean over a few thousand positions cannot decide.
READ_CHANGE = 1e-4
UNREAD_CHANGE = 1e-6
LOGIT = 12.0                # a confident logit: BCE-with-logits is 6e-6 there, its mirror 12
CLASS_LOGIT = 30.0          # a confident class score: cross-entropy over 50,000 classes is 5e-9 there
WRONG_COSTS = 1e-6          # a confidently wrong alignment costs at least this (cross-entropy: about 30 a token)
CONFIDENT_SHARE = 0.01      # a right answer's loss is at most this share of the mirror answer's
_SEED = 20261207            # a generator of its own: the probe never moves the run's random stream


def _loss_at(loss: Callable, outputs: torch.Tensor, targets) -> float:
    try:
        with torch.no_grad():
            value = loss(outputs, targets)
        return float(value) if isinstance(value, torch.Tensor) and value.numel() == 1 else math.nan
    except Exception:   # a loss that refuses made-up outputs (BCE on a logit of 12) answers "not this one"
        return math.nan


def class_dim_of(scores: torch.Tensor, targets: torch.Tensor) -> int | None:
    """Where the class scores sit when ``scores`` hold one score vector per target position: -1 for
    ``[N, T, V]`` against ``[N, T]``, 1 for ``[N, V, T]``; None for other shapes."""
    if scores.ndim != targets.ndim + 1:
        return None
    if tuple(scores.shape[:-1]) == tuple(targets.shape):
        return -1
    if scores.shape[0] == targets.shape[0] and tuple(scores.shape[2:]) == tuple(targets.shape[1:]):
        return 1
    return None


def _candidates(targets: torch.Tensor) -> list[int]:
    """Labels that may be padding: negative labels, and the label most sequences end with."""
    found = [int(v) for v in torch.unique(targets[targets < 0])[:2]]
    if targets.ndim >= 2 and targets.shape[-1] > 1:
        trailing = int(torch.mode(targets.reshape(targets.shape[0], -1)[:, -1].cpu()).values)
        if trailing not in found:
            found.append(trailing)
    return found


def reads_class_scores(loss: Callable, scores: torch.Tensor, targets: torch.Tensor) -> bool | None:
    """Whether ``loss`` takes ``[N, C]`` outputs as class scores for integer labels ``[N]``: confident scores
    on each sample's own label cost clearly less (by more than half the other's value) than the same scores
    on the next label. A loss that compares samples with each other (a triplet loss on embeddings) costs the
    same either way: any relabelling of the classes is as good to it, and an argmax over its outputs is no
    prediction. None when the loss refuses such outputs or the shapes differ (nothing read)."""
    if not isinstance(scores, torch.Tensor) or not isinstance(targets, torch.Tensor) or scores.ndim != 2 or \
            targets.ndim != 1 or targets.dtype.is_floating_point or not scores.dtype.is_floating_point or \
            scores.shape[0] != targets.shape[0] or scores.shape[1] < 2:
        return None
    classes = scores.shape[1]
    labels = targets.long()
    if bool(((labels < 0) | (labels >= classes)).any()):
        return None

    def confident_on(chosen: torch.Tensor) -> float:
        return _loss_at(loss, torch.nn.functional.one_hot(chosen, classes).to(torch.float32) * CLASS_LOGIT, targets)

    right, wrong = confident_on(labels), confident_on((labels + 1) % classes)
    if not (math.isfinite(right) and math.isfinite(wrong)):
        return None
    return wrong - right > max(WRONG_COSTS, 0.5 * abs(wrong))


def target_shift(loss: Callable, scores: torch.Tensor, targets: torch.Tensor) -> int | None:
    """1 when ``loss`` scores position t's class scores against target t + 1 (the targets are the inputs
    and the loss shifts them), 0 when against target t. Confident made-up scores, right at one alignment:
    the loss's own alignment costs almost nothing, the other a lot. None when neither or both do (a loss
    converge cannot read, or sequences that repeat one token), or for shapes other than integer targets
    [N, T] with one score vector per position."""
    if not isinstance(scores, torch.Tensor) or not isinstance(targets, torch.Tensor) or \
            targets.dtype.is_floating_point or not scores.dtype.is_floating_point or targets.ndim != 2 or \
            targets.shape[1] < 2:
        return None
    class_dim = class_dim_of(scores, targets)
    if class_dim is None:
        return None
    classes = scores.shape[class_dim]

    def right_at(shift: int) -> float:
        labels = torch.cat([targets[:, shift:], targets[:, targets.shape[1] - shift:]], dim=1) if shift else targets
        labels = torch.where((labels >= 0) & (labels < classes), labels, torch.zeros_like(labels))
        made_up = torch.nn.functional.one_hot(labels.long(), classes).to(torch.float32) * CLASS_LOGIT
        return _loss_at(loss, made_up.movedim(-1, 1) if class_dim == 1 else made_up, targets)

    same, next_one = right_at(0), right_at(1)
    if not (math.isfinite(same) and math.isfinite(next_one)) or max(same, next_one) < WRONG_COSTS:
        return None   # neither alignment costs anything: sequences of one repeated token cannot tell
    if next_one <= CONFIDENT_SHARE * same:
        return 1
    if same <= CONFIDENT_SHARE * next_one:
        return 0
    return None


def skipped_label(loss: Callable, scores: torch.Tensor, targets: torch.Tensor, shift: int = 0) -> int | None:
    """The integer label whose positions ``loss`` does not read: moving the class scores there leaves the
    loss as it was, while moving them anywhere else changes it. None when no candidate label is skipped
    (or the shapes are not one score vector per target position). ``shift``: the loss compares position t
    with target t + shift (`target_shift`); its last ``shift`` positions are read by nothing."""
    if not isinstance(scores, torch.Tensor) or not isinstance(targets, torch.Tensor) or \
            targets.dtype.is_floating_point or not scores.dtype.is_floating_point:
        return None
    class_dim = class_dim_of(scores, targets)
    if class_dim is None:
        return None
    base = _loss_at(loss, scores, targets)
    if not math.isfinite(base):
        return None
    generator = torch.Generator().manual_seed(_SEED)
    noise = torch.randn(scores.shape, generator=generator, dtype=torch.float32).to(scores.device, scores.dtype) * 3
    for label in _candidates(targets):
        aligned = torch.cat([targets[:, shift:], torch.full_like(targets[:, :shift], label)], dim=1) \
            if shift else targets
        at_label = (aligned == label).unsqueeze(class_dim)
        if not bool(at_label.any()) or bool(at_label.all()):
            continue
        moved_there = _loss_at(loss, scores + noise * at_label, targets)
        moved_elsewhere = _loss_at(loss, scores + noise * ~at_label, targets)
        scale = max(1.0, abs(base))
        if abs(moved_there - base) <= UNREAD_CHANGE * scale and abs(moved_elsewhere - base) > READ_CHANGE * scale:
            return label
    return None


def binary_link(loss: Callable, scores: torch.Tensor, targets: torch.Tensor) -> str | None:
    """"logits" or "probabilities": what ``loss`` takes a one-output (or one-per-label) head's outputs to be,
    for 0/1 targets with as many values as ``scores``. Logits: confident right logits (+-12) cost almost
    nothing against their mirror; probabilities: the targets themselves do. None when neither or both hold
    (a loss converge cannot read)."""
    if not isinstance(scores, torch.Tensor) or not isinstance(targets, torch.Tensor) or \
            scores.numel() != targets.numel() or not scores.dtype.is_floating_point:
        return None
    labels = targets.reshape(scores.shape).to(scores.dtype)
    if not bool(((labels == 0) | (labels == 1)).all()):
        return None
    positive = labels > 0.5

    def confident(right: torch.Tensor, wrong: torch.Tensor) -> bool:
        at_right, at_wrong = _loss_at(loss, right, targets), _loss_at(loss, wrong, targets)
        return math.isfinite(at_right) and math.isfinite(at_wrong) and at_wrong > 0 and \
            at_right <= CONFIDENT_SHARE * at_wrong

    high, low = torch.full_like(labels, LOGIT), torch.full_like(labels, -LOGIT)
    reads_logits = confident(torch.where(positive, high, low), torch.where(positive, low, high))
    reads_probabilities = confident(labels, 1 - labels)
    if reads_logits == reads_probabilities:
        return None
    return "logits" if reads_logits else "probabilities"


def predicts_targets(loss: Callable, scores: torch.Tensor, targets: torch.Tensor) -> bool:
    """Whether ``loss`` is smallest where the outputs equal the float targets (as many values as ``scores``):
    moving them away by half the targets' spread, up, down or at random per value, or out to 1.5 times the
    targets, costs more. Then the outputs are predictions in the targets' units and a regression metric can
    compare the two."""
    if not isinstance(scores, torch.Tensor) or not isinstance(targets, torch.Tensor) or \
            scores.numel() != targets.numel() or not scores.dtype.is_floating_point or \
            not targets.dtype.is_floating_point or targets.numel() < 2:
        return False
    exact = targets.reshape(scores.shape).to(scores.dtype)
    spread = float(exact.std())
    step = 0.5 * (spread if math.isfinite(spread) and spread > 0 else 1.0)
    noise = torch.randn(exact.shape, generator=torch.Generator().manual_seed(_SEED)).to(exact.device, exact.dtype)
    at = _loss_at(loss, exact, targets)
    if not math.isfinite(at):
        return False
    # ... and 1.5 times the targets: a margin loss on labels -1 / +1 (a hinge) is as pleased there as at the
    # targets, since its outputs are scores, not predictions (R² -102 was reported for one)
    away = [_loss_at(loss, exact + step, targets), _loss_at(loss, exact - step, targets),
            _loss_at(loss, exact + step * noise, targets), _loss_at(loss, exact * 1.5, targets)]
    return all(math.isfinite(value) and value - at > READ_CHANGE * max(abs(at), abs(value)) for value in away)
