"""What kind of task a (targets, outputs) pair is: decided once, from shapes and a few facts about the
target values, before any training. Pure: no tensors here, only shapes and numbers.

The rule (``N`` samples; the model's outputs on a probe batch decide the class dimension):

| targets | outputs | kind |
| --- | --- | --- |
| integer ``[N]`` (or ``[N, 1]``) | ``[N, C]``, C >= 2 | ``classification``: multi-class, cross-entropy |
| 0/1 values (bool, float or integer) ``[N]`` or ``[N, 1]`` | ``[N]`` or ``[N, 1]`` (one output) | ``binary``: BCE-with-logits |
| 0/1 values ``[N, L]``, L >= 2 | ``[N, L]`` | ``multilabel``: BCE-with-logits per label |
| integer ``[N, T]`` (or ``[N, T1, T2, ...]``) | ``[N, T, V]`` or ``[N, V, T]`` | ``sequence``: cross-entropy per position over V |
| float, anything else | as many values per sample | ``regression``: MSE |
| float ``[N, C]`` rows of class probabilities, under the task's cross-entropy | ``[N, C]`` | ``soft_labels`` (`soft_labels`) |

Integer labels equal to ``ignore_index`` (-100 by default, as torch) are padding: they count in no loss,
metric or label check. A combination that fits no row is an error that names both shapes and says what
was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from converge.errors import ConvergeError

KINDS = ("classification", "binary", "multilabel", "sequence", "regression", "soft_labels")
IGNORE_INDEX = -100


@dataclass(frozen=True)
class TargetFacts:
    """What the rule needs to know about the training targets."""

    shape: tuple[int, ...]          # of a batch (N first)
    integer: bool                   # integer dtype (bool targets arrive as 0/1 floats)
    zero_one: bool                  # every counted value is 0 or 1
    low: float | None = None        # smallest counted value (None: none counted)
    high: float | None = None       # largest counted value
    split: str = "train"            # where they come from (for messages)
    whole: bool = False             # every counted value is a whole number (float class labels, say)


@dataclass(frozen=True)
class Kind:
    kind: str                       # one of KINDS
    classes: int | None = None      # C (classification), 2 (binary), L labels (multilabel), V (sequence)
    class_dim: int | None = None    # where the class scores are in the outputs: 1, or -1 (last)
    description: str = ""           # for a person: "multi-label classification, 5 labels (0/1 targets)"


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _single_column(shape: tuple[int, ...]) -> bool:
    return len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)


def decide_kind(targets: TargetFacts, outputs: tuple[int, ...]) -> Kind:
    """The task kind for targets with ``targets`` facts and model outputs of shape ``outputs`` (a probe
    batch of the same N). Raises ConvergeError when the pair fits no kind."""
    y, o = tuple(targets.shape), tuple(outputs)
    if not o or o[0] != y[0]:
        raise ConvergeError(f"the model returns outputs of shape {_shape(o)} for a batch of {y[0]} samples")
    values = "integer" if targets.integer else "float"
    if targets.zero_one and _single_column(y) and _single_column(o):
        return Kind("binary", 2, None, f"binary classification, one output (0/1 {values} targets)")
    if targets.integer and _single_column(y):
        return _multiclass(targets, y, o)
    if targets.integer and len(o) == len(y) + 1:
        return _sequence(targets, y, o)
    if targets.zero_one and len(y) == 2 and o == y:
        return Kind("multilabel", y[1], None, f"multi-label classification, {y[1]} labels (0/1 {values} targets)")
    if targets.zero_one and _single_column(y) and len(o) == 2:
        raise ConvergeError(f"0/1 {values} targets of shape {_shape(y)} but the model has {o[1]} outputs "
                            f"{_shape(o)}: for {o[1]} classes give integer labels (targets.long()); for binary "
                            f"classification give the model one output")
    if targets.integer:
        raise ConvergeError(f"integer targets of shape {_shape(y)} do not fit outputs of shape {_shape(o)}: "
                            f"converge expected outputs (N, C) for labels (N,), or logits (N, T, V) or (N, V, T) "
                            f"for labels (N, T); for regression give float targets; or define `loss`")
    if prod(o[1:]) != prod(y[1:]):
        labels = targets.whole and _single_column(y) and len(o) == 2 and targets.low is not None and \
            targets.low >= 0 and targets.high is not None and targets.high < o[1]
        hint = (f"; they hold whole numbers {_num(targets.low)} to {_num(targets.high)}: if they are class labels, "
                f"give them as integers (targets.long())") if labels else ""
        raise ConvergeError(f"float targets of shape {_shape(y)} (regression) need as many outputs per sample, "
                            f"but the model returns {_shape(o)}{hint}; or define `loss`")
    return Kind("regression", None, None, f"regression, {prod(y[1:])} value(s) per sample (float targets)")


def _multiclass(targets: TargetFacts, y: tuple[int, ...], o: tuple[int, ...]) -> Kind:
    if len(o) != 2 or o[1] < 2:
        if _single_column(o):
            raise ConvergeError(f"integer labels over [{_num(targets.low)}, {_num(targets.high)}] with one model "
                                f"output {_shape(o)}: give the model one output per class for multi-class "
                                f"classification, 0/1 labels for binary, or float targets for regression")
        raise ConvergeError(f"integer labels of shape {_shape(y)} need outputs (N, C) with one score per class, "
                            f"got {_shape(o)}; or define `loss`")
    _check_range(targets, o[1], "the model has", f"{o[1]} outputs")
    return Kind("classification", o[1], 1, f"multi-class classification, {o[1]} classes (integer labels)")


def _sequence(targets: TargetFacts, y: tuple[int, ...], o: tuple[int, ...]) -> Kind:
    last, second = o[:-1] == y, o[0] == y[0] and o[2:] == y[1:]
    if not (last or second):
        raise ConvergeError(f"integer targets of shape {_shape(y)} need logits {_shape((*y, 'V'))} or "
                            f"{_shape((y[0], 'V', *y[1:]))} (one score per class at every position), got {_shape(o)}")
    class_dim = -1 if last else 1     # both fit only when V equals the last target size: the usual [N, T, V]
    classes = o[class_dim]
    layout = _shape((y[0], *y[1:], "V")) if last else _shape((y[0], "V", *y[1:]))
    _check_range(targets, classes, "the model scores", f"{classes} classes per position (logits {layout})")
    return Kind("sequence", classes, class_dim,
                f"sequence classification, {classes} classes at each of {prod(y[1:])} positions "
                f"(integer targets {_shape(y)}, logits {layout})")


def _check_range(targets: TargetFacts, classes: int, verb: str, what: str) -> None:
    if targets.low is None:
        return
    if targets.low < 0 or targets.high >= classes:
        numbered_from_one = targets.low == 1 and targets.high == classes
        hint = "; they look numbered from 1: give labels - 1" if numbered_from_one else ""
        raise ConvergeError(f"{targets.split} labels range over [{_num(targets.low)}, {_num(targets.high)}] but "
                            f"{verb} {what}, so "
                            f"labels must lie in [0, {classes - 1}] (or be {IGNORE_INDEX}, the padding label){hint}")


def _num(value) -> str:
    return "?" if value is None else f"{value:g}"


def soft_labels(target_shape: tuple[int, ...], output_shape: tuple[int, ...], distributions: bool) -> Kind | None:
    """Classification with soft labels: float targets ``[N, C]`` whose rows are class probabilities
    (``distributions``: non-negative, summing to 1; a teacher's probabilities, smoothed or mixed labels)
    against ``[N, C]`` scores. Only a cross-entropy the task names makes such targets this kind (torch's
    takes probabilities as targets); without it they stay a regression, whose inferred loss is MSE. None
    when the shapes or the values do not fit."""
    y, o = tuple(target_shape), tuple(output_shape)
    if not distributions or len(y) != 2 or y != o or y[1] < 2:
        return None
    return Kind("soft_labels", y[1], 1, f"classification with class probabilities as targets (soft labels), "
                                        f"{y[1]} classes")
