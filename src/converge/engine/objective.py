"""The objective: how the model is called, what its outputs are scored by (the loss) and what is reported
(the metrics). Decided once per run from the targets and a probe of the outputs (`converge.decide.task_kind`
states the rule); a task's own ``loss`` and ``metrics`` are trusted.

* A batch's inputs are a tensor (``model(x)``), a tuple or list of tensors (``model(*x)``) or a dict
  (``model(**x)``). The model may return a tensor, or an object with ``.logits`` / a dict with
  ``"logits"`` (Hugging Face models), or a tuple whose first element is the scores.
* A model fed dicts that takes the targets as a keyword (``labels=``, as Hugging Face models do) gets
  them; when it then returns its own ``.loss``, that is the loss trained on, as Hugging Face's Trainer
  does, and the metrics still come from its scores. It counts as a known loss (baseline, initial-loss
  check) when it equals converge's own loss for the kind on a probe batch.
* Inferred losses and built-in metrics leave out padding (targets equal to ``ignore_index``). A split's
  loss is the batches' losses weighted by the samples (tokens, for sequences) that count; its metrics are
  those of the whole split (`converge.engine.metrics`). Imbalanced multi-class or binary labels also get
  balanced accuracy and macro-F1 (`imbalance_metrics`).
* A task's own loss that converge recognizes (``nn.CrossEntropyLoss``, ``nn.NLLLoss``,
  ``nn.BCEWithLogitsLoss``, ``nn.BCELoss``, ``nn.MSELoss`` with mean reduction, or the matching
  ``torch.nn.functional`` functions) keeps the kind's metrics, the underfitting baseline and the doctor's
  initial-loss check; any other loss keeps only what does not depend on its meaning, and what
  `converge.engine.loss_probe` reads from its answers (its padding label; logits or probabilities).
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from converge.calling import call_model
from converge.data import (LoaderSplit, TensorSplit, joined, map_tensors, move_to, prepare_targets, rows_in,
                           split_batch, tensors_of)
from converge.decide.task_kind import IGNORE_INDEX, Kind, TargetFacts, decide_kind, soft_labels
from converge.engine import device as dev
from converge.engine import loss_probe
from converge.engine.loss_parameters import loss_module, loss_parameters, place_loss, trained_with_model
from converge.engine.optim import EagerLBFGS
from converge.engine.metrics import (IMBALANCED_RATIO, BalancedAccuracy, MacroF1, imbalance_ratio, is_stateful,
                                     prepare_stateful, regression_metrics, scores_of)
from converge.errors import ConvergeError
from converge.rng import capture_rng, restore_rng
from converge.standardize import target_units


@dataclass
class Objective:
    loss_fn: Callable                       # loss(scores, targets) -> scalar tensor
    kind: str                               # see converge.decide.task_kind.KINDS, or "custom"
    metric_fns: dict[str, Callable]         # name -> fn(scores, targets) or a stateful metric (engine.metrics)
    inferred: bool = True                   # the loss is converge's own (not the task's)
    known_loss: bool = True                 # a loss whose constant-prediction value is known (baseline, init check)
    # a standard loss with options (class weights, a positive weight, label smoothing): its constant
    # prediction's loss is found by minimizing it over one constant output (`searched_constant_loss`)
    constant_by_search: bool = False
    classes: int | None = None              # C, 2 (binary), L labels, V (sequence)
    class_dim: int | None = None            # where the class scores are: 1 or -1
    ignore_index: int | None = None         # integer targets with this value are padding
    description: str = ""                   # "multi-class classification, 10 classes (integer labels); ..."
    derived: dict[str, Callable] = field(default_factory=dict)   # name -> fn({"loss": ..., ...}) after a pass
    target_key: str | None = None           # pass the targets to the model as this keyword (dict inputs)
    model_loss: bool = False                # the loss is the model's own output ``.loss``
    loss_on_outputs: bool = False           # the task's loss takes what the model returned (a VAE's tuple), not
                                            # the score tensor in it
    # the task's own metrics that take what the model returned, as its loss does (a tuple of heads): the
    # others are given the score tensor in it
    metrics_on_outputs: frozenset[str] = frozenset()
    # (mean, std) per target column when the model trains on standardized regression targets z = (y - mean)
    # / std (`converge.doctor.in_train`): losses and metrics are reported on outputs and targets mapped back
    target_scale: tuple[torch.Tensor, torch.Tensor] | None = None
    # the task's own sequence loss compares position t with target t + target_shift (a language model's
    # loss on its inputs, `loss_probe.target_shift`): token accuracy and the token count compare the same
    target_shift: int = 0
    # what the loss is given, one row of it on the CPU (tensors of the probe's outputs, in their structure),
    # for a task's own loss of unknown meaning: `own_constant_loss` searches its best constant output
    output_template: Any = None

    @property
    def standard_loss(self) -> bool:
        """converge's own loss, or the task's standard loss with or without options (class weights,
        ``pos_weight``, label smoothing): the constant prediction's loss is known or searched, a reference
        model can train under it, and the kept weights can be scored on the training split beside validation."""
        return self.known_loss or self.constant_by_search

    @property
    def mean_over_samples(self) -> bool:
        """Whether a batch's loss is a mean over what counts in it (converge's own losses; a task's standard
        loss with the mean reduction), so that a split's loss does not depend on how the split is batched.
        A loss of the user's own may be a sum over the batch (a VAE's often is)."""
        return self.inferred or self.known_loss

    def forward(self, model: nn.Module, inputs: Any, targets: Any) -> tuple[Any, torch.Tensor]:
        """(the model's scores, the batch's loss); everything the model returned instead of its scores when a
        metric takes it (`metrics_on_outputs`)."""
        outputs = call_model(model, inputs, {self.target_key: targets} if self.target_key else None)
        scores = scores_of(outputs)
        if self.model_loss:
            return scores, own_loss(outputs)
        loss = self.loss_fn(outputs if self.loss_on_outputs else scores, targets)
        return (outputs if self.metrics_on_outputs else scores), loss

    def weight(self, targets: torch.Tensor):
        """How much a batch counts in an average: its samples, or the targets that are not padding. Targets
        given per head (a tuple or dict of tensors) count their samples, the rows of the first."""
        if not isinstance(targets, torch.Tensor):
            return rows_in(targets) or 1
        if self.ignore_index is None:
            return targets.shape[0]
        if self.target_shift:
            targets = targets[:, self.target_shift:]
        return (targets != self.ignore_index).sum()

    def user_units(self, values: Any) -> Any:
        """Outputs or targets in the user's units: z * std + mean per target column, or per feature of
        per-step targets (as they are when the targets are not standardized)."""
        if self.target_scale is None or not isinstance(values, torch.Tensor):
            return values
        mean, std = self.target_scale
        values = values.to(torch.promote_types(values.dtype, torch.float32))   # half precision: mapped in float32
        return target_units(values, mean, std)

    def reported_loss(self, scores: Any, targets: Any, loss: torch.Tensor) -> torch.Tensor:
        """A training batch's loss as reported (detached): in the user's units when the targets are
        standardized (the loss on the outputs and targets mapped back; on the device, no sync)."""
        if self.target_scale is None:
            return loss.detach()
        with torch.no_grad():
            return self.loss_fn(self.user_units(scores.detach()), self.user_units(targets)).detach()

    def reported(self) -> list[str]:
        """The names of the values an evaluation reports besides the loss."""
        return [*self.metric_fns, *self.derived]


# --- calling the model ---------------------------------------------------------------------------------
def own_loss(outputs: Any) -> torch.Tensor | None:
    """The loss a model returned itself (``.loss`` or ``["loss"]``), or None."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else getattr(outputs, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else None


def takes_keyword(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` accepts ``name`` as a keyword."""
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


# --- losses and metrics per kind -----------------------------------------------------------------------
def _rows(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(tensor.shape[0], -1)


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Multi-class cross-entropy; targets of shape (N, 1) are read as (N,); -100 is padding."""
    if targets.ndim == 2 and targets.shape[1] == 1:
        targets = targets.reshape(-1)
    return F.cross_entropy(outputs.float(), targets, ignore_index=IGNORE_INDEX)


def mean_squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # Targets of shape (N,) against outputs of shape (N, 1) would silently broadcast to (N, N).
    if targets.shape != outputs.shape:
        if targets.numel() != outputs.numel():
            raise ValueError(f"MSE needs outputs and targets of one shape, got {tuple(outputs.shape)} "
                             f"and {tuple(targets.shape)}")
        targets = targets.view_as(outputs)
    return F.mse_loss(outputs.float(), targets.float())


def binary_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits on one output or one per label; (N,) and (N, 1) are matched either way."""
    return F.binary_cross_entropy_with_logits(_rows(outputs).float(), _rows(targets).float())


@dataclass(frozen=True)
class SequenceCrossEntropy:
    """Cross-entropy at every position over the class dimension (1 or last); ``ignore_index`` is padding."""

    class_dim: int
    ignore_index: int = IGNORE_INDEX

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        scores = outputs.movedim(-1, 1) if self.class_dim == -1 else outputs
        return F.cross_entropy(scores.float(), targets, ignore_index=self.ignore_index)


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if targets.ndim == 2 and targets.shape[1] == 1:
        targets = targets.reshape(-1)
    return _masked_mean(outputs.argmax(dim=1) == targets, targets != IGNORE_INDEX)


@dataclass(frozen=True)
class TokenAccuracy:
    class_dim: int
    ignore_index: int = IGNORE_INDEX
    shift: int = 0      # position t's scores predict target t + shift (`Objective.target_shift`)

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        predicted = outputs.argmax(dim=self.class_dim)
        if self.shift:
            predicted, targets = predicted[:, :-self.shift], targets[:, self.shift:]
        return _masked_mean(predicted == targets, targets != self.ignore_index)


@dataclass(frozen=True)
class ThresholdAccuracy:
    """Binary (one output) accuracy: a score above ``threshold`` predicts 1."""

    threshold: float = 0.0

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ((_rows(outputs) > self.threshold) == (_rows(targets) > 0.5)).float().mean()


@dataclass(frozen=True)
class ExactMatch:
    """Multi-label: the share of samples whose every label is right."""

    threshold: float = 0.0

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ((_rows(outputs) > self.threshold) == (_rows(targets) > 0.5)).all(dim=1).float().mean()


@dataclass(frozen=True)
class SoftLabelAccuracy:
    """Soft labels: the share of samples whose highest score is the class their target row rates highest."""

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs.argmax(dim=1) == targets.argmax(dim=1)).float().mean()


def is_sample_mean(metric: Callable) -> bool:
    """converge's accuracies: a mean over the samples (or tokens) that count, so a split's value is the
    batches' values weighted by what counts in them (`Objective.weight`)."""
    return metric is accuracy or isinstance(metric, (TokenAccuracy, ThresholdAccuracy, ExactMatch,
                                                     SoftLabelAccuracy))


def _masked_mean(hits: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    return (hits & counted).sum() / counted.sum().clamp(min=1)


def perplexity(values: dict) -> float:
    loss = values["loss"]
    return math.exp(loss) if loss < 700 else math.inf


# --- recognizing a task's own loss -------------------------------------------------------------------
# name -> (the kind family it scores, decision threshold of binary scores)
_RECOGNIZED = {"cross_entropy": "classes", "nll": "classes", "bce_logits": "binary", "bce": "binary", "mse": "regression"}


_ELEMENTWISE = ("bce_logits", "bce", "mse")


def align_targets(outputs: Any, targets: Any, elementwise: bool) -> Any:
    """The targets in the shape a standard loss wants, where converge's own loss of the kind (and Keras)
    accept them as they are: for an element-wise loss (BCE, MSE), [N] against [N, 1] outputs or [N, 1]
    against [N] (shapes that differ by one trailing 1; MSELoss would broadcast them to [N, N]); for a class
    loss, [N, 1] labels against [N, C] scores. Any other pair is passed on unchanged (the loss judges it)."""
    if not (isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor)) or outputs.shape == targets.shape:
        return targets
    out, tgt = tuple(outputs.shape), tuple(targets.shape)
    if elementwise and (out == (*tgt, 1) or tgt == (*out, 1)) and len(tgt) >= 1 and len(out) >= 1:
        return targets.reshape(outputs.shape)
    if not elementwise and len(out) == 2 and tgt == (out[0], 1):
        return targets.reshape(-1)
    return targets


def alignment_note(loss_fn: Callable, outputs: Any, targets: Any) -> str:
    """What `AlignedLoss` does to this task's targets, said in the task's description ("" when nothing): the
    task's own loss gets them reshaped, which its loss alone would not do. A user who trains the model in a
    loop of their own with the same loss should know: nn.MSELoss broadcasts [N, 1] outputs against [N]
    targets to [N, N] with only a warning (a rent model, test MSE about 302,000 in such a loop against 22,800
    through converge), and most other losses refuse such shapes."""
    if not (isinstance(loss_fn, AlignedLoss) and isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor)):
        return ""
    aligned = align_targets(outputs, targets, loss_fn.elementwise)
    if aligned.shape == targets.shape:
        return ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = loss_fn.loss(outputs, targets)
        would = "refuse them" if not isinstance(value, torch.Tensor) else \
            "broadcast them against each other, with only a warning"
    except Exception:  # noqa: BLE001 -- whatever the loss raises, it refuses these shapes
        would = "refuse them"
    name = getattr(loss_fn.loss, "__name__", type(loss_fn.loss).__name__)

    def shape(tensor: torch.Tensor) -> str:
        return "[" + ", ".join(["N", *(str(d) for d in tensor.shape[1:])]) + "]"
    return (f"; targets {shape(targets)} reshaped to {shape(aligned)} for the outputs {shape(outputs)} "
            f"(your {name} alone would {would})")


@dataclass(frozen=True)
class AlignedLoss:
    """A task's own standard loss (recognized by `recognize_loss`), given targets aligned by `align_targets`:
    a recognized loss accepts the shapes an inferred one does."""

    loss: Callable
    elementwise: bool

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(outputs, align_targets(outputs, targets, self.elementwise))


# "kl_div": a distillation loss on log-probabilities against a teacher's probabilities; it tells the soft-label
# kind (an accuracy), but its constant prediction is not the label entropy's, so it is not "recognized"
_STANDARD_MODULES = {nn.CrossEntropyLoss: "cross_entropy", nn.NLLLoss: "nll", nn.BCEWithLogitsLoss: "bce_logits",
                     nn.BCELoss: "bce", nn.MSELoss: "mse", nn.KLDivLoss: "kl_div"}
_STANDARD_FUNCTIONS = {F.cross_entropy: "cross_entropy", F.nll_loss: "nll",
                       F.binary_cross_entropy_with_logits: "bce_logits", F.binary_cross_entropy: "bce",
                       F.mse_loss: "mse", F.kl_div: "kl_div"}


def loss_family(loss: Callable) -> str | None:
    """Which standard loss ``loss`` is, whatever its options (weights, reduction, smoothing): what its outputs
    mean (logits, probabilities) and how its targets align. None for anything else."""
    return _STANDARD_MODULES.get(type(loss)) or _STANDARD_FUNCTIONS.get(loss)


def recognize_loss(loss: Callable) -> tuple[str | None, int | None]:
    """(which standard loss ``loss`` is, its ignore_index), or (None, None) for anything else: a loss of the
    task's own says nothing of its padding label, which the task's ``ignore_index`` then gives. Only the plain
    loss counts: the mean reduction, no class weights, no positive weights, no label smoothing. The baseline
    (the constant prediction's loss: the label entropy) and the initial-loss check are those of the plain
    loss; a BCE with ``pos_weight`` 8 on rare tags scores a constant prediction far above the label entropy,
    and a run that learned was called "collapsed" and its LR too high."""
    family = loss_family(loss)
    if family not in _RECOGNIZED:
        return None, None
    if type(loss) not in _STANDARD_MODULES:
        return family, IGNORE_INDEX   # a torch function is at its defaults
    plain = getattr(loss, "reduction", "mean") == "mean" and getattr(loss, "weight", None) is None and \
        getattr(loss, "pos_weight", None) is None and not getattr(loss, "label_smoothing", 0.0)
    return (family if plain else None), getattr(loss, "ignore_index", IGNORE_INDEX)


# --- deciding the objective ---------------------------------------------------------------------------
def target_facts(split: TensorSplit | LoaderSplit, probe_targets: torch.Tensor,
                 ignore_index: int = IGNORE_INDEX) -> TargetFacts:
    """The facts the kind rule needs, from the whole split when it is in memory (else from the probe)."""
    targets = probe_targets
    if isinstance(split, TensorSplit):
        targets = split.targets
    elif isinstance(split, LoaderSplit) and split.whole_tensors() is not None:
        targets = split.whole_tensors()[1]
    integer = not targets.dtype.is_floating_point
    counted = targets[targets != ignore_index] if integer else targets
    if counted.numel() == 0:
        return TargetFacts(tuple(probe_targets.shape), integer, False)
    zero_one = bool(((counted == 0) | (counted == 1)).all())
    whole = integer or bool((counted == counted.round()).all())
    return TargetFacts(tuple(probe_targets.shape), integer, zero_one, float(counted.min()), float(counted.max()),
                       whole=whole)


def resolve_objective(model: nn.Module, splits: dict, loss: Callable | None, metrics: dict[str, Callable], *,
                      amp: str, device: torch.device, probe_size: int | str,
                      ignore_index: int = IGNORE_INDEX, target_key: str = "labels") -> Objective:
    """Run the model once on a probe batch (eval mode, no gradient: no side effects), decide the kind, build
    the loss and metrics, and check labels and shapes against the outputs before any training."""
    place_loss(loss, device)
    size = probe_size if isinstance(probe_size, int) else 64
    inputs, targets = splits["train"].probe(min(size, 256))
    inputs, targets = move_to(inputs, device), move_to(targets, device)
    passes = loss is None and isinstance(inputs, dict) and takes_keyword(model, target_key)
    outputs = _probe(model, inputs, amp, device, {target_key: targets} if passes else None)
    scores = scores_of(outputs)
    if passes and own_loss(outputs) is not None:
        return _model_loss(outputs, scores, targets, splits, metrics, ignore_index, target_key)
    if not isinstance(targets, torch.Tensor):
        if loss is None:
            objective = _per_head(outputs, targets, splits, ignore_index)
            if objective is None:
                raise ConvergeError(f"cannot infer a loss for targets of type {type(targets).__name__} and outputs "
                                    f"{describe(outputs)}; return one output per target (a tuple of as many "
                                    f"tensors, or a dict with the same keys), or define `loss` in the task")
        else:
            objective = Objective(loss, "custom", {}, inferred=False, known_loss=False,
                                  description="custom targets")
    else:
        objective = _decide(loss, scores, targets, splits, ignore_index)
        if loss is None and objective.kind in ("binary", "multilabel") and _ends_in_sigmoid(model, inputs, amp,
                                                                                            device):
            objective = _on_probabilities(_decide(nn.BCELoss(), scores, targets, splits, ignore_index))
    if loss is not None and outputs is not scores and _takes_outputs(loss, outputs, targets):
        # The model returns several things and the task's loss reads them (a VAE's reconstruction, mean and
        # log-variance): the loss is the task's alone, whatever the score tensor in them looks like.
        objective = replace(objective, loss_fn=loss, loss_on_outputs=True, known_loss=False,
                            derived={}, description=f"{objective.description.split('; loss')[0]}; loss: the "
                            f"task's own ({getattr(loss, '__name__', type(loss).__name__)}), on all the model "
                            f"returns")
    check_outputs_fit(objective, outputs if objective.loss_on_outputs else scores, targets)
    if not (objective.standard_loss or objective.model_loss):
        objective = replace(objective, output_template=_one_row(outputs if objective.loss_on_outputs else scores))
    if loss is not None:   # a loss converge chose aligns its targets as it likes: nothing to tell
        objective = replace(objective, description=objective.description + alignment_note(objective.loss_fn,
                                                                                            scores, targets))
    if owned := loss_parameters(loss, model):
        objective = replace(objective, description=f"{objective.description}; {trained_with_model(owned)}")
    metric_fns = {**objective.metric_fns, **imbalance_metrics(objective, splits["train"]), **metrics}
    for name in [*metric_fns, *objective.derived]:
        if name == "loss" or not name.isidentifier():
            raise ConvergeError(f"metric name {name!r} must be an identifier other than 'loss'")
    on_outputs = objective.metrics_on_outputs | frozenset(
        name for name, fn in metrics.items()
        if objective.loss_on_outputs and not is_stateful(fn) and _gives_number(fn, outputs, targets))
    check_metrics({name: fn for name, fn in metrics.items() if name not in on_outputs}, scores, targets)
    objective = replace(objective, metric_fns=metric_fns, metrics_on_outputs=on_outputs)
    check_missing_targets(model, splits, objective, amp=amp, device=device)
    return objective


def check_missing_targets(model: nn.Module, splits: dict, objective: Objective, *, amp: str,
                          device: torch.device) -> None:
    """NaN targets in memory (values not measured: a lab test not taken, one of several tasks not labelled)
    train only under a loss of the task's own that masks them: its value on rows that hold them must be
    finite. Otherwise the one-line error says what to do."""
    for name, split in splits.items():
        targets = getattr(split, "targets", None)
        if not isinstance(targets, torch.Tensor) or not targets.dtype.is_floating_point:
            continue
        missing = torch.isnan(targets.reshape(len(targets), -1)).any(dim=1)
        count = int(torch.isnan(targets).sum())
        if not count:
            continue
        if objective.inferred or objective.model_loss:
            raise ConvergeError(f"{name} targets contain {count} NaN value(s); clean or impute them first, or give "
                                f"a loss of your own that masks them (missing targets)")
        rows = torch.nonzero(missing).reshape(-1)[:32]
        inputs = map_tensors(lambda t: t[rows.to(t.device)], split.inputs)
        outputs = _probe(model, move_to(inputs, device), amp, device)
        with torch.no_grad():
            value = objective.loss_fn(outputs if objective.loss_on_outputs else scores_of(outputs),
                                      move_to(targets[rows.to(targets.device)], device))
        if not (isinstance(value, torch.Tensor) and value.numel() == 1 and bool(torch.isfinite(value))):
            raise ConvergeError(f"{name} targets contain {count} NaN value(s), and the task's loss gives "
                                f"{float(value) if isinstance(value, torch.Tensor) and value.numel() == 1 else value} "
                                f"on rows that hold them; mask them in the loss (measured = ~torch.isnan(target)) "
                                f"or impute them")


def check_metrics(metrics: dict[str, Callable], scores, targets) -> None:
    """Run the task's own metrics once on the probe batch: one that fails, or returns no single number,
    is reported before training starts."""
    for name, fn in metrics.items():
        try:
            if is_stateful(fn):   # a torchmetrics Metric: update / compute, then back to its empty state
                prepare_stateful(fn, scores.device if isinstance(scores, torch.Tensor) else torch.device("cpu"))
                fn.reset()
                fn.update(scores, targets)
                value = fn.compute()
                fn.reset()
            else:
                value = fn(scores, targets)
            float(torch.as_tensor(value).reshape(()))
        except Exception as exc:
            raise ConvergeError(f"metric {name!r} fails on a batch of outputs {describe(scores)} and targets "
                                f"{describe(targets)}: {type(exc).__name__}: {exc}") from exc


def imbalance_metrics(objective: Objective, train) -> dict[str, Callable]:
    """Balanced accuracy and macro-F1 for imbalanced multi-class or binary labels (largest over smallest
    class count at least `IMBALANCED_RATIO`, on the training labels held in memory), where predictions are
    clear: the argmax of class scores, or a binary score above the accuracy's threshold."""
    targets = targets_in_memory(train)
    if targets is None or objective.kind not in ("classification", "binary"):
        return {}
    accuracy_fn = objective.metric_fns.get("accuracy")
    if accuracy_fn is None:   # no prediction to count (outputs that are not class scores to the loss)
        return {}
    threshold = accuracy_fn.threshold if isinstance(accuracy_fn, ThresholdAccuracy) else None
    if objective.kind == "binary" and threshold is None:
        return {}
    ratio = imbalance_ratio(targets, objective.kind, objective.ignore_index)
    if ratio is None or ratio < IMBALANCED_RATIO:
        return {}
    classes = 2 if objective.kind == "binary" else objective.classes
    options = dict(threshold=threshold, ignore_index=objective.ignore_index)
    return {"balanced_accuracy": BalancedAccuracy(classes, **options), "macro_f1": MacroF1(classes, **options)}


def _model_loss(outputs, scores, targets, splits: dict, metrics: dict, ignore_index: int,
                target_key: str) -> Objective:
    """A model that computes its own loss from the targets it is given: that loss is trained on; the kind's
    metrics come from its scores when the kind is clear."""
    loss = own_loss(outputs)
    try:
        ours = _decide(None, scores, targets, splits, ignore_index)
        same = math.isclose(float(ours.loss_fn(scores, targets)), float(loss), rel_tol=1e-4, abs_tol=1e-6)
    except (ConvergeError, RuntimeError, ValueError):
        ours, same = Objective(loss_fn=lambda *args: loss, kind="custom", metric_fns={}), False
    equal = f"equal to {ours.description.split('; loss ')[-1]}" if same else "its own"
    objective = replace(ours, inferred=False, known_loss=same, target_key=target_key, model_loss=True,
                        description=f"{ours.description.split('; loss')[0]}; loss: the model's own .loss ({equal})")
    if not same:
        objective = replace(objective, derived={})   # perplexity means exp(cross-entropy) only
    return replace(objective, metric_fns={**objective.metric_fns, **metrics})


def _on_all_outputs(fn: Callable, outputs: Any, targets: Any) -> Any:
    """``fn(outputs, targets)`` on everything the model returned (a tuple, a dict, an object), without
    gradient; None when it fails: a loss or metric written for the score tensor alone fails on the rest (and
    is checked next on the scores, with its own error)."""
    try:
        with torch.no_grad():
            return fn(outputs, targets)
    except Exception:  # noqa: BLE001 -- any failure says it wants the score tensor
        return None


def _takes_outputs(loss: Callable, outputs: Any, targets: Any) -> bool:
    """Whether the task's ``loss`` gives a scalar tensor on everything the model returned, as a loss written
    for that model does."""
    value = _on_all_outputs(loss, outputs, targets)
    return isinstance(value, torch.Tensor) and value.numel() == 1


# Operations that pass a tensor on unchanged in its values: the sigmoid behind them is still the model's last.
_VIEWS = ("View", "Reshape", "Squeeze", "Unsqueeze", "Permute", "Transpose", "Clone", "Flatten", "Unsafe")


def _ends_in_sigmoid(model: nn.Module, inputs: Any, amp: str, device: torch.device) -> bool:
    """Whether the model's scores come out of a sigmoid (an nn.Sigmoid last, or torch.sigmoid in forward,
    then at most reshapes): read from the autograd graph of a forward on two rows."""
    node = getattr(scores_of(_probe(model, map_tensors(lambda t: t[:2], inputs), amp, device, grad=True)),
                   "grad_fn", None)
    while node is not None and node.name().startswith(_VIEWS):
        node = next((fn for fn, _ in node.next_functions if fn is not None), None)
    return node is not None and node.name().startswith("Sigmoid")


def _on_probabilities(objective: Objective) -> Objective:
    """The objective of a model that ends in a sigmoid when no loss is given: the BCE on its probabilities (as
    nn.BCELoss), accuracy at 0.5. A BCE-with-logits would take the probabilities for logits: every output
    above logit 0, the accuracy the share of positives (breast cancer: 0.614), the verdict "underfitting"."""
    kind = objective.description.partition("; loss")[0]
    return replace(objective, inferred=True, description=f"{kind}; loss BCE on probabilities (the model ends in "
                   f"a sigmoid: accuracy at 0.5)")


def _gives_number(metric: Callable, outputs: Any, targets: Any) -> bool:
    """Whether a task's metric gives one number on everything the model returned (a tuple of heads)."""
    try:
        float(torch.as_tensor(_on_all_outputs(metric, outputs, targets)).reshape(()))
    except Exception:  # noqa: BLE001 -- None (it failed), or not one number
        return False
    return True


def _probe(model: nn.Module, inputs: Any, amp: str, device: torch.device, extra: dict | None = None, *,
           grad: bool = False) -> Any:
    """The model's outputs on ``inputs`` in eval mode (its own mode put back); without gradient unless
    ``grad`` (to read the autograd graph of what it returns)."""
    was_training = model.training
    model.eval()
    try:
        with torch.set_grad_enabled(grad), dev.autocast(amp, device):
            return call_model(model, inputs, extra)
    except Exception as exc:
        raise ConvergeError(f"the model fails on a batch of inputs {describe(inputs)}: "
                            f"{type(exc).__name__}: {str(exc).strip()}{_dtype_hint(inputs, exc)}") from exc
    finally:
        model.train(was_training)


def _dtype_hint(inputs: Any, exc: Exception) -> str:
    """What to do when the model failed on integer inputs it reads as numbers (8-bit images into a Conv2d):
    PyTorch says only that the types differ."""
    integer = [t for t in tensors_of(inputs) if not t.dtype.is_floating_point and t.dtype != torch.bool]
    if not integer or "type" not in str(exc).lower():
        return ""
    kind = str(integer[0].dtype).replace("torch.", "")
    return (f" (the inputs are {kind}: if they are numbers such as pixels, make them float in data(), "
            f"e.g. x.float() / 255, or in forward)")


def _decide(loss: Callable | None, scores: Any, targets: torch.Tensor, splits: dict, ignore_index: int) -> Objective:
    recognized, loss_ignore = recognize_loss(loss) if loss is not None else (None, None)
    skipped = None
    own = loss is not None and loss_family(loss) is None
    shift = (loss_probe.target_shift(loss, scores, targets) or 0) if own else 0
    if own and ignore_index == IGNORE_INDEX:
        # A loss of the task's own that skips a label (its padding) says so only by not reading it; the
        # task's explicit ignore_index wins over what the probe finds.
        skipped = loss_probe.skipped_label(loss, scores, targets, shift)
        loss_ignore = skipped
    ignore = loss_ignore if loss_ignore is not None else ignore_index
    facts = target_facts(splits["train"], targets, ignore)
    if not isinstance(scores, torch.Tensor):
        if loss is None:
            raise ConvergeError(f"cannot infer a loss for model outputs {describe(scores)}; return a tensor (or "
                                f"an object with .logits) from the model, or define `loss` in the task")
        return Objective(loss, "custom", {}, inferred=False, known_loss=False, description="custom outputs")
    try:
        kind = decide_kind(facts, tuple(scores.shape))
    except ConvergeError:
        if loss is None:
            raise
        # The task's own loss is trusted with shapes converge has no rule for: no metrics of its own.
        return Objective(loss, "custom", {}, inferred=False, known_loss=False,
                         description=f"targets {tuple(targets.shape)}, outputs {tuple(scores.shape)}")
    if kind.kind == "regression" and loss is not None and loss_family(loss) in ("cross_entropy", "kl_div"):
        kind = soft_labels(tuple(targets.shape), tuple(scores.shape), _probability_rows(splits["train"], targets)) \
            or kind
    for split in splits.values():
        if split is not splits["train"] and kind.kind in ("classification", "sequence"):
            _check_other_split(split, kind, ignore)
    columns = targets[0].numel() if len(targets) else 1
    if loss is None:
        return _inferred(kind, ignore, columns)
    family = loss_family(loss)
    link = loss_probe.binary_link(loss, scores, targets) \
        if family is None and kind.kind in ("binary", "multilabel") else None
    predicts = kind.kind == "regression" and (family == "mse" or loss_probe.predicts_targets(loss, scores, targets))
    objective = _own(loss, recognized, family, kind, ignore, link, r2_columns=columns if predicts else None)
    if kind.kind == "classification" and family is None and \
            loss_probe.reads_class_scores(loss, scores, targets) is False:
        # The outputs' width is no number of classes either (an embedding's): the line says what was seen.
        _, _, rest = objective.description.partition(";")
        objective = replace(objective, metric_fns={}, description=f"integer labels, outputs of {scores.shape[1]} "
                            f"values per sample;{rest} (its outputs are not class scores to it: no accuracy)")
    if shift and kind.kind == "sequence":
        objective = replace(objective, target_shift=shift,
                            metric_fns={**objective.metric_fns,
                                        "token_accuracy": TokenAccuracy(kind.class_dim, ignore, shift)},
                            description=f"{objective.description} (it scores position t against target t + "
                                        f"{shift}: token accuracy so)")
    if skipped is not None:
        objective = replace(objective, description=f"{objective.description} (targets {skipped} are padding: "
                                                   f"the loss skips them)")
    return objective


# --- several heads, no loss of the task's own -----------------------------------------------------------
@dataclass(frozen=True)
class HeadsLoss:
    """One inferred loss per head, summed; a regression head's MSE is divided by the variance of its training
    targets, so that each head's constant prediction scores about 1 (a cross-entropy over 10 classes starts at
    2.3): a head in raw units (an amount of about 300, whose MSE starts near 1e5) would otherwise be all the
    sum sees. ``heads``: (key, loss, divisor) per head."""

    heads: tuple[tuple[Any, Callable, float], ...]

    def __call__(self, outputs: Any, targets: Any) -> torch.Tensor:
        return sum(loss(outputs[key], targets[key]) / divisor for key, loss, divisor in self.heads)


@dataclass(frozen=True)
class OnHead:
    """A metric of one head, given everything the model returned and every target."""

    metric: Callable
    key: Any

    def __call__(self, outputs: Any, targets: Any) -> torch.Tensor:
        return self.metric(outputs[self.key], targets[self.key])


def _r2(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """R² of a head over the split it is given (the mean over its target columns)."""
    outputs, targets = _rows(outputs).float(), _rows(targets).float().view(len(outputs), -1)
    residual = ((outputs - targets) ** 2).sum(0)
    total = ((targets - targets.mean(0)) ** 2).sum(0).clamp(min=1e-12)
    return (1 - residual / total).mean()


def head_name(key: Any) -> str:
    """How a head is named in metrics and messages: a dict's key, or "head0" for a tuple's first."""
    return str(key) if isinstance(key, str) else f"head{key}"


def head_keys(outputs: Any, targets: Any) -> list | None:
    """The heads when outputs and targets pair up one to one: tuples (or lists) of one length, or dicts with one
    set of keys; else None."""
    if isinstance(targets, dict) and isinstance(outputs, dict) and set(outputs) == set(targets):
        return list(targets)
    if isinstance(targets, (tuple, list)) and isinstance(outputs, (tuple, list)) and len(outputs) == len(targets):
        return list(range(len(targets)))
    return None


def _head_view(split, key) -> Any:
    """A split whose targets are one head's, for the facts the kind rule reads (a split whose targets are not in
    memory as it is: the facts then come from the probe)."""
    held = _held_targets(split)
    return TensorSplit(None, held[key], split.name) if held is not None else split


def _per_head(outputs: Any, targets: Any, splits: dict, ignore_index: int) -> Objective | None:
    """Targets per head and no loss: each head's loss and metrics are inferred as for one head
    (`decide_kind`), and the losses summed (`HeadsLoss`); metrics are named after the head ("digit_accuracy"
    for a dict's key "digit", "head0_accuracy" for a tuple's first). None when outputs and targets do not pair
    up head by head."""
    keys = head_keys(outputs, targets)
    if keys is None or not all(isinstance(outputs[k], torch.Tensor) and isinstance(targets[k], torch.Tensor)
                               for k in keys):
        return None
    heads, metrics, said = [], {}, []
    for key in keys:
        name = head_name(key)
        try:
            head = _decide(None, outputs[key], targets[key],
                           {split_name: _head_view(split, key) for split_name, split in splits.items()}, ignore_index)
        except ConvergeError as exc:
            raise ConvergeError(f"{name}: {exc}") from exc
        divisor = _target_variance(splits["train"], key, targets[key]) if head.kind == "regression" else 1.0
        heads.append((key, head.loss_fn, divisor))
        head_metrics = {"mse": mean_squared_error, "r2": _r2} if head.kind == "regression" else head.metric_fns
        metrics.update({f"{name}_{metric}": OnHead(fn, key) for metric, fn in head_metrics.items()})
        said.append(f"{name}: {head.description}" + (f" / {divisor:.4g} (its training targets' variance)"
                                                       if divisor != 1.0 else ""))
    return Objective(HeadsLoss(tuple(heads)), "custom", metrics, inferred=False, known_loss=False,
                     loss_on_outputs=True, metrics_on_outputs=frozenset(metrics),
                     description=f"{len(keys)} heads, one loss each, summed ({'; '.join(said)})")


def _target_variance(split, key, probe_targets: torch.Tensor) -> float:
    """The variance of one head's training targets (the mean over its columns; the probe's when they are not
    in memory); 1 when it is not a positive number."""
    held = _held_targets(split)
    targets = held[key] if held is not None else probe_targets
    values = _rows(targets.float())
    variance = float(values.var(dim=0, unbiased=False).mean()) if len(values) > 1 else 1.0
    return variance if math.isfinite(variance) and variance > 0 else 1.0


def _probability_rows(split, probe_targets: torch.Tensor) -> bool:
    """Whether float targets [N, C] (the whole split when in memory) are rows of class probabilities."""
    targets = targets_in_memory(split, limit=None)
    targets = targets if isinstance(targets, torch.Tensor) else probe_targets
    if not targets.dtype.is_floating_point or targets.ndim != 2 or targets.numel() == 0:
        return False
    return bool((targets >= 0).all()) and bool(((targets.sum(dim=1) - 1).abs() <= 1e-3).all())


def _check_other_split(split, kind: Kind, ignore: int) -> None:
    """Validation and test labels must index the same classes as the training labels."""
    probe = split.targets if isinstance(split, TensorSplit) else None
    if probe is None and isinstance(split, LoaderSplit) and split.whole_tensors() is not None:
        probe = split.whole_tensors()[1]
    if probe is None or probe.dtype.is_floating_point:
        return
    counted = probe[probe != ignore]
    if counted.numel() and (int(counted.min()) < 0 or int(counted.max()) >= kind.classes):
        raise ConvergeError(f"{split.name} labels range over [{int(counted.min())}, {int(counted.max())}] but the "
                            f"model scores {kind.classes} classes, so labels must lie in [0, {kind.classes - 1}]")


def _inferred(kind: Kind, ignore: int, columns: int = 1) -> Objective:
    base = dict(classes=kind.classes, class_dim=kind.class_dim)
    if kind.kind == "classification":
        return Objective(cross_entropy, kind.kind, {"accuracy": accuracy}, ignore_index=ignore,
                         description=f"{kind.description}; loss cross-entropy", **base)
    if kind.kind == "binary":
        return Objective(binary_cross_entropy, kind.kind, {"accuracy": ThresholdAccuracy(0.0)},
                         description=f"{kind.description}; loss BCE-with-logits (accuracy at logit 0)", **base)
    if kind.kind == "multilabel":
        return Objective(binary_cross_entropy, kind.kind, {"label_accuracy": ThresholdAccuracy(0.0),
                                                           "exact_match": ExactMatch(0.0)},
                         description=f"{kind.description}; loss BCE-with-logits per label", **base)
    if kind.kind == "sequence":
        return Objective(SequenceCrossEntropy(kind.class_dim, ignore), kind.kind,
                         {"token_accuracy": TokenAccuracy(kind.class_dim, ignore)}, ignore_index=ignore,
                         derived={"perplexity": perplexity},
                         description=f"{kind.description}; loss cross-entropy per position "
                                     f"(targets {ignore} are padding)", **base)
    return Objective(mean_squared_error, kind.kind, regression_metrics(columns),
                     description=f"{kind.description}; loss MSE")


def _own(loss: Callable, recognized: str | None, family: str | None, kind: Kind, ignore: int,
         link: str | None = None, r2_columns: int | None = None) -> Objective:
    """The task's loss with the kind's metrics where their meaning does not depend on it (argmax over class
    scores) or the loss tells it (``family``: logits or probabilities, whatever its weights; for a loss of
    the task's own, ``link``: what `loss_probe.binary_link` read from it; ``r2_columns``: a regression whose
    outputs predict its targets, with this many values per sample). ``recognized``: the plain standard loss
    it is, whose constant prediction's value is known (`recognize_loss`)."""
    name = getattr(loss, "__name__", type(loss).__name__)
    known = recognized is not None and _fits(recognized, kind.kind)
    base = dict(inferred=False, known_loss=known,
                constant_by_search=not known and family in _RECOGNIZED and _fits(family, kind.kind) and
                getattr(loss, "reduction", "mean") == "mean",   # a sum's value depends on the batch's size
                classes=kind.classes, class_dim=kind.class_dim, description=f"{kind.description}; loss: the task's "
                f"own ({name})")
    metrics: dict[str, Callable] = {}
    derived: dict[str, Callable] = {}
    if kind.kind == "classification":
        metrics = {"accuracy": accuracy}
    elif kind.kind == "soft_labels":
        metrics = {"accuracy": SoftLabelAccuracy()}
    elif kind.kind == "regression" and r2_columns is not None:
        metrics = regression_metrics(r2_columns)
    elif kind.kind == "sequence":
        metrics = {"token_accuracy": TokenAccuracy(kind.class_dim, ignore)}
        if recognized == "cross_entropy":
            derived = {"perplexity": perplexity}
    elif kind.kind in ("binary", "multilabel") and (family in ("bce_logits", "bce") or link is not None):
        threshold = 0.0 if family == "bce_logits" or link == "logits" else 0.5
        if link is not None:
            base["description"] += f" (it reads {link}: accuracy at {'logit 0' if link == 'logits' else '0.5'})"
        metrics = {"accuracy": ThresholdAccuracy(threshold)} if kind.kind == "binary" else \
            {"label_accuracy": ThresholdAccuracy(threshold), "exact_match": ExactMatch(threshold)}
    ignore_index = ignore if kind.kind in ("classification", "sequence") else None
    if family is not None:
        loss = AlignedLoss(loss, elementwise=family in _ELEMENTWISE)
    return Objective(loss, kind.kind, metrics, ignore_index=ignore_index, derived=derived, **base)


def _fits(recognized: str, kind: str) -> bool:
    family = _RECOGNIZED[recognized]
    return {"classes": kind in ("classification", "sequence", "soft_labels"), "binary": kind in ("binary", "multilabel"),
            "regression": kind == "regression"}[family]


def check_outputs_fit(objective: Objective, outputs, targets) -> None:
    """Run the loss once on a probe batch, so a shape mismatch is reported before training starts."""
    if objective.model_loss:
        return
    try:
        value = objective.loss_fn(outputs, targets)
    except Exception as exc:
        hint = ""
        if objective.kind == "sequence" and objective.class_dim == -1 and not objective.inferred:
            hint = (" (torch's cross-entropy wants the class dimension second, (N, V, T); leave `loss` out and "
                    "converge takes (N, T, V) as it is)")
        raise ConvergeError(f"the loss cannot compare the model's outputs {describe(outputs)} with targets "
                            f"{describe(targets)}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                            f"{hint}") from exc
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise ConvergeError(f"the loss must return a scalar tensor, got {describe(value)}")
    if isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor) and \
            outputs.shape[0] != targets.shape[0]:
        raise ConvergeError(f"the model returns {outputs.shape[0]} outputs for a batch of {targets.shape[0]}")


def describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}"
                               for k, v in value.items()) + "}"
    if isinstance(value, (tuple, list)):
        return f"({', '.join(describe(v) for v in value)})"
    return f"of type {type(value).__name__}"


def monitor_key(monitor: str, objective_or_metrics) -> str:
    """The record key of the monitored value ("val_loss", "val_accuracy", ...); an error for a value that
    is not reported."""
    names = objective_or_metrics.reported() if isinstance(objective_or_metrics, Objective) \
        else list(objective_or_metrics)
    name = monitor[4:] if monitor.startswith("val_") else monitor
    if name != "loss" and name not in names:
        known = ", ".join(["val_loss", *(f"val_{m}" for m in names)])
        raise ConvergeError(f"--monitor {monitor!r} is not a reported value; choose one of {known}")
    return f"val_{name}"


# --- the constant-prediction baseline --------------------------------------------------------------------
BASELINE_SAMPLES = 100_000


def _entropy(p: torch.Tensor) -> float:
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-12, 1 - 1e-12)
    return -(p * p.log() + (1 - p) * (1 - p).log())


@torch.no_grad()
def constant_prediction_loss(targets: torch.Tensor, objective: Objective) -> float | None:
    """The loss of the best constant prediction on these targets: the label entropy for cross-entropy
    (over the labels that count), the mean per-label binary entropy for BCE, the mean target variance for
    MSE. The yardstick for "the model learned nothing"; None when it does not apply."""
    if not objective.known_loss or not isinstance(targets, torch.Tensor) or targets.numel() == 0:
        return None
    y = objective.user_units(targets.detach()).cpu()
    if objective.kind in ("classification", "sequence"):
        counted = y[y != objective.ignore_index] if objective.ignore_index is not None else y.reshape(-1)
        if counted.numel() == 0 or counted.dtype.is_floating_point:
            return None
        counts = torch.bincount(counted.reshape(-1).long()).double()
        return _entropy(counts / counts.sum())
    if objective.kind in ("binary", "multilabel"):
        return float(_binary_entropy(_rows(y).double().mean(dim=0)).mean())
    if objective.kind == "soft_labels":   # the best constant prediction is the mean target row
        return _entropy(_rows(y).double().mean(dim=0))
    if objective.kind == "regression":
        y = _rows(y).double()
        return float(y.var(dim=0, unbiased=False).mean()) if y.shape[0] > 1 else None
    return None


class TargetStats:
    """The sufficient statistics of the targets for :func:`constant_prediction_loss`, summed batch by batch
    on the device (no sync: the training loop feeds it the first epoch's batches): the count of each class
    (ignored labels in an extra bin), or the per-column sums (and sums of squares) and the row count."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.sums: torch.Tensor | None = None   # one row of statistics per kind; see update()
        self.usable = objective.known_loss and objective.kind in (
            "classification", "sequence", "binary", "multilabel", "regression", "soft_labels")

    def update(self, targets, outputs=None) -> None:
        """Add a batch. ``outputs`` gives the number of classes (their last dimension) for classification."""
        if not self.usable:
            return
        if not isinstance(targets, torch.Tensor) or targets.dtype.is_complex:
            self.usable = False  # the baseline only knows tensors of targets
            return
        y = targets.detach()
        kind = self.objective.kind
        if kind in ("classification", "sequence"):
            if y.dtype.is_floating_point:
                self.usable = False
                return
            classes = outputs.shape[-1] if isinstance(outputs, torch.Tensor) else int(y.max()) + 1
            labels = y.reshape(-1).long()
            if self.objective.ignore_index is not None:
                labels = torch.where(labels == self.objective.ignore_index, classes, labels)
            add = torch.zeros(classes + 1, dtype=torch.float64, device=y.device)
            add.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        else:
            rows = _rows(y).double()
            add = torch.stack([rows.sum(0), (rows * rows).sum(0),
                               torch.full_like(rows[0], rows.shape[0])]) if rows.shape[0] else None
            if add is None:
                return
        if self.sums is None:
            self.sums = add
        elif self.sums.shape != add.shape:
            self.usable = False  # targets whose shape changes between batches: no constant prediction
        else:
            self.sums.add_(add)

    def loss(self, world=None) -> float | None:
        """The constant-prediction loss from the statistics so far (a sync point); ``world``: summed over the
        data-parallel ranks first (a collective: every rank calls it)."""
        sums = self.sums
        if world is not None:
            present = world.any_flags([sums is not None and self.usable], sums.device if sums is not None else "cpu")
            if not present[0]:
                return None
            sums = world.sum_(sums.clone())
        if sums is None or not self.usable:
            return None
        sums = sums.cpu()
        kind = self.objective.kind
        if kind in ("classification", "sequence"):
            counts = sums[:-1]
            return _entropy(counts / counts.sum()) if counts.sum() > 0 else None
        total, squares, n = sums[0], sums[1], sums[2]
        if kind == "soft_labels":
            return _entropy(total / n[0])
        if kind in ("binary", "multilabel"):
            return float(_binary_entropy(total / n).mean())
        if n[0] <= 1:
            return None
        mean = total / n
        return float((squares / n - mean * mean).clamp(min=0).mean())

    def state_dict(self) -> dict:
        return {"sums": self.sums, "usable": self.usable}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.usable = state["sums"], bool(state["usable"])


class TargetSample:
    """Up to SEARCH_ROWS rows of the first epoch's training targets (a tensor, or a tuple or dict of them), kept
    as the loop feeds them (shuffled batches: a random sample), for `own_constant_loss` when the targets are
    not in memory (a Dataset). At most SEARCH_ELEMENTS target values are kept; nothing is synced."""

    def __init__(self) -> None:
        self.parts: list = []
        self.rows = 0
        self.full = False

    def update(self, targets, outputs=None) -> None:
        if self.full:
            return
        leaves = tensors_of(targets)
        if not leaves or any(t.ndim == 0 for t in leaves):
            self.full = True   # nothing a row can be taken from: no sample
            return
        per_row = sum(math.prod(t.shape[1:]) for t in leaves)
        wanted = min(SEARCH_ROWS, SEARCH_ELEMENTS // max(1, per_row))
        take = min(leaves[0].shape[0], wanted - self.rows)
        if take > 0:
            self.parts.append(map_tensors(lambda t: t[:take].detach().clone(), targets))
            self.rows += take
        self.full = self.rows >= wanted

    def targets(self) -> Any:
        """The rows kept, joined, on the CPU (None: none)."""
        if not self.parts:
            return None
        try:
            return joined([map_tensors(torch.Tensor.cpu, part) for part in self.parts])
        except (RuntimeError, TypeError):   # batches whose targets change shape: no sample
            return None

    def state_dict(self) -> dict:
        return {"parts": [map_tensors(lambda t: t.cpu(), part) for part in self.parts], "rows": self.rows,
                "full": self.full}

    def load_state_dict(self, state: dict) -> None:
        self.parts, self.rows, self.full = list(state["parts"]), int(state["rows"]), bool(state["full"])


def targets_in_memory(split, limit: int = BASELINE_SAMPLES) -> torch.Tensor | None:
    """Up to ``limit`` targets of a split held in memory as one tensor, None for others (nothing is loaded;
    targets given as a tuple or dict, one per head, are left to the task's own loss)."""
    targets = _held_targets(split)
    return targets[:limit] if isinstance(targets, torch.Tensor) else None


def _held_targets(split) -> Any:
    """A split's targets when they are held in memory (a tensor, or a tuple or dict of them), else None."""
    if isinstance(split, TensorSplit):
        return split.targets
    if isinstance(split, LoaderSplit) and split.whole_tensors() is not None:
        return split.whole_tensors()[1]
    return None


def in_memory_constant_loss(split, objective: "Objective") -> float | None:
    """The constant prediction's loss on a split's targets when they are held in memory (None: a loss of
    unknown meaning, or targets that only a pass over a Dataset would give)."""
    targets = targets_in_memory(split) if objective.standard_loss else None
    return _constant_loss(targets, objective) if targets is not None else None


def _constant_loss(targets: torch.Tensor, objective: "Objective") -> float | None:
    """The constant prediction's loss on these targets: known in closed form, or searched."""
    return constant_prediction_loss(targets, objective) if objective.known_loss else \
        searched_constant_loss(targets, objective)


TUNING_SAMPLE_ROWS = 2048   # samples of a Dataset read for the tuning's estimate of the constant prediction


def sampled_constant_loss(split, objective: "Objective", rows: int = TUNING_SAMPLE_ROWS) -> float | None:
    """The constant prediction's loss estimated on up to ``rows`` samples of a map-style Dataset (drawn at
    random with a generator of its own, the run's random state put back: a Dataset's transforms may draw from
    it), for the automatic choice, whose race must tell arms that learned nothing from arms that learned: a
    tiny BERT on a Dataset of dicts had both arms at the constant's level after 40 steps (SGD 0.6901, AdamW
    0.6902), and without the constant the race took SGD by that noise; it never left the level (test accuracy
    0.514, against 1.0 for AdamW at 1e-3). None for a loss of unknown meaning, a stream, a user's DataLoader
    (its batches are its own business), targets that are not one tensor per sample, or a Dataset that fails."""
    if not objective.standard_loss or not isinstance(split, LoaderSplit) or \
            split.stream or split.user_loader:
        return None
    dataset = split.source
    state = capture_rng()
    try:
        n = len(dataset)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:rows].tolist()
        parts = [split_batch(dataset[i], split.name, split.target_key)[1] for i in order]
        targets = prepare_targets(torch.stack([torch.as_tensor(t) for t in parts]))
    except Exception:   # noqa: BLE001 -- a Dataset that cannot be read this way: no estimate, as before
        return None
    finally:
        restore_rng(state)
    return _constant_loss(targets, objective)


SEARCH_STEPS = 100   # L-BFGS iterations for the best constant output (a convex problem in a few numbers)
SEARCH_ELEMENTS = 1_000_000   # output values in the final evaluation: rows beyond them are left out
SEARCH_ROWS = 2048            # rows the search itself reads (spread over the split): it only places the optimum


def output_link(objective: "Objective") -> Callable | None:
    """What turns raw scores into what the task's standard loss reads: probabilities for a BCE on
    probabilities (a model ending in a sigmoid), log-probabilities over the class dimension for an NLL loss
    (one ending in a log-softmax); None where the loss reads raw scores. A raw score is no probability:
    nn.BCELoss refuses it, and an NLL loss on raw scores has no floor."""
    loss = objective.loss_fn
    family = loss_family(loss.loss if isinstance(loss, AlignedLoss) else loss)   # it wraps a task's standard loss
    if family == "bce":
        return torch.sigmoid
    if family == "nll":
        return lambda scores: torch.log_softmax(scores, dim=objective.class_dim or 1)
    return None


def searched_constant_loss(targets: torch.Tensor, objective: "Objective") -> float | None:
    """The task's standard loss with options (class weights, ``pos_weight``, label smoothing) at its best
    constant output: one score vector (one value per output, for element-wise losses) shared by every
    sample, found by L-BFGS from zeros. There is no closed form with the options (a BCE with ``pos_weight``
    8 is best at a logit above the log-odds of the labels), and without a baseline a run that learned
    nothing was called "converged". None when the targets do not say the outputs' shape."""
    if not isinstance(targets, torch.Tensor) or targets.numel() == 0 or objective.target_scale is not None:
        return None
    n = targets.shape[0]
    if objective.kind in ("classification", "sequence", "soft_labels"):
        if objective.classes is None:
            return None
        per_sample = (objective.classes,) if objective.kind != "sequence" else \
            ((*targets.shape[1:], objective.classes) if objective.class_dim == -1 else
             (objective.classes, *targets.shape[1:]))
        constant = torch.zeros(objective.classes, dtype=torch.float32, device=targets.device, requires_grad=True)
        where = [1] * len(per_sample)
        where[-1 if objective.kind == "sequence" and objective.class_dim == -1 else 0] = objective.classes
    else:
        per_sample = tuple(targets.shape[1:])
        constant = torch.zeros(per_sample, dtype=torch.float32, device=targets.device, requires_grad=True)
        where = list(per_sample)

    rows = min(n, SEARCH_ELEMENTS // max(1, math.prod(per_sample)))
    if rows < 1:
        return None   # one sample's outputs alone are too many (a language model's [T, V]): no baseline
    scored = targets[:: max(1, n // rows)][:rows]
    searched = scored[:: max(1, len(scored) // SEARCH_ROWS)][:SEARCH_ROWS]
    link = output_link(objective) or (lambda scores: scores)

    def outputs(rows: int) -> torch.Tensor:
        return link(constant.reshape(where).expand(rows, *per_sample))

    try:
        minimize([constant], lambda: objective.loss_fn(outputs(len(searched)), searched))
        with torch.no_grad():   # near its optimum the loss is flat: the sample's optimum scores the split
            value = float(objective.loss_fn(outputs(len(scored)), scored))
    except (RuntimeError, ValueError):   # shapes the loss does not take as given: no baseline, as before
        return None
    return value if math.isfinite(value) else None


def minimize(constants: list[torch.Tensor], loss_at: Callable[[], torch.Tensor], *, steps: int = SEARCH_STEPS,
             history: int = 100) -> None:
    """``constants`` moved to the minimum of ``loss_at()`` by L-BFGS, which needs no step size: a convex problem
    in a few numbers (the best constant output), or a batch's outputs freed from their model (the doctor's
    floor of a loss). ``history``: the L-BFGS memory, two copies of ``constants`` per step remembered."""
    search = EagerLBFGS(constants, lr=1.0, max_iter=steps, history_size=history, line_search_fn="strong_wolfe")

    def closure():
        search.zero_grad()
        value = loss_at()
        value.backward()
        return value

    with torch.enable_grad():
        search.step(closure)


def _one_row(given: Any) -> Any:
    """The first row of every tensor in ``given`` on the CPU in float32, or None when one is not floating point
    (no constant of it to search) or has no rows."""
    parts = tensors_of(given)
    if not parts or any(not t.is_floating_point() or t.ndim == 0 or t.shape[0] == 0 for t in parts):
        return None
    return map_tensors(lambda t: t[:1].detach().to("cpu", torch.float32), given)


def _target_rows(split, limit: int) -> Any:
    """Up to ``limit`` rows of a split's targets held in memory (a tensor, or a tuple or dict of them, one per
    head), spread over the split, on the CPU; None when only a pass over a Dataset would give them."""
    targets = _held_targets(split)
    n = rows_in(targets)
    if n is None:
        return None
    rows = torch.arange(0, n, max(1, n // limit))[:limit]
    return map_tensors(lambda t: t.index_select(0, rows.to(t.device)).cpu(), targets)


def _isolated(loss: Callable) -> Callable | None:
    """A copy of a task's loss for the constant search, whose hundred-odd calls there then leave the task's own
    loss as it was (one that counts its calls: an annealing schedule, a fault injected at its n-th call).
    None for a loss that holds parameters, itself or as a bound method of a module (a network such as a
    perceptual loss: costly to copy and to search through), or that cannot be copied."""
    owner = loss_module(loss)
    if owner is not None and next(owner.parameters(), None) is not None:
        return None
    try:
        copied = copy.deepcopy(loss)
    except Exception:   # noqa: BLE001 -- a loss that cannot be copied gets no searched scale
        return None
    module = loss_module(copied)
    if module is not None:   # its own copy: to the CPU, where the search runs
        module.to("cpu")
    return copied


@torch.no_grad()
def own_constant_loss(split, objective: "Objective", sample: Any = None) -> float | None:
    """A task's own loss of unknown meaning at its best constant output: one value per output element shared by
    every sample (each tensor the loss is given, in its structure), found by L-BFGS from zeros on up to
    SEARCH_ROWS training targets held in memory. The scale "what the task allows to gain" for the plateau's
    negligible gain when no constant prediction is known: the first epoch's mean training loss stands in
    for it otherwise, and a model that starts far from its targets' scale (raw amounts under a loss of the
    task's own: 8e4 there against 1.6e3 for the constant) made every later gain look negligible. Computed on
    the CPU with the random state put back: every rank gets the same number and a run the same trajectory.
    ``sample``: the first epoch's targets (`TargetSample.targets`) for targets not held in memory. None when
    there is no template, no targets, or the loss refuses constants."""
    template = objective.output_template
    targets = None if template is None else sample if sample is not None else _target_rows(split, SEARCH_ROWS)
    loss_fn = _isolated(objective.loss_fn) if targets is not None else None
    if loss_fn is None:
        return None
    n = tensors_of(targets)[0].shape[0]
    constants = [torch.zeros(t.shape[1:], requires_grad=True) for t in tensors_of(template)]

    def outputs():
        given = iter(constants)
        return map_tensors(lambda t: next(given).expand(n, *t.shape[1:]), template)

    state = capture_rng()
    try:
        minimize(constants, lambda: loss_fn(outputs(), targets))
        value = loss_fn(outputs(), targets)
        value = float(value) if isinstance(value, torch.Tensor) and value.numel() == 1 else math.nan
    except Exception:   # a loss that does not take constants (shapes, devices, types): no scale  # noqa: BLE001
        return None
    finally:
        restore_rng(state)
    return value if math.isfinite(value) else None
