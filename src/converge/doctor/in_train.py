"""The doctor inside `converge train`: the cheap checks before training (printed as warnings, logged as
`doctor_finding` events, saved as doctor.json), the remedies asked for (`--fix`, `--drop-label-issues`;
logged as `remedy` events, saved as remedies.json), and, after training, the standardization folded
into the exported weights."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from converge.data import TensorSplit
from converge.doctor import remedies as rx
from converge.decide.findings import Finding, at_least
from converge.decide.task_kind import IGNORE_INDEX
from converge.doctor.run import check_all, class_labels, label_issues, samples_from_splits
from converge.io.runfolder import DOCTOR_FINDINGS, REMEDIES, STANDARDIZE, RunFolder
from converge.rng import capture_rng, restore_rng
from converge.status import Status

TRAIN_MAX_ROWS = 5000   # rows per split the checks at the start of `converge train` read


@dataclass
class Prepared:
    """What the doctor changed before training, and what it must do after."""
    splits: dict
    loss: Callable | None
    findings: list[Finding] = field(default_factory=list)
    remedies: list[rx.Remedy] = field(default_factory=list)
    standardization: tuple[torch.Tensor, torch.Tensor] | None = None


def before_training(model: nn.Module, splits: dict, *, loss: Callable | None, metrics: dict | None, check: bool,
                    fix: bool, drop_label_issues: bool, seed: int, console, ignore_index: int = IGNORE_INDEX,
                    target_key: str = "labels") -> Prepared:
    """Run the cheap checks (``check``) and apply the remedies asked for; returns the splits and loss to
    train with. Neither the model nor the global RNG state is changed."""
    prepared = Prepared(dict(splits), loss)
    if not (check or fix or drop_label_issues):
        return prepared
    saved = capture_rng()
    try:
        samples = samples_from_splits(splits, seed=seed, max_rows=TRAIN_MAX_ROWS)
        prepared.findings, objective = check_all(model, samples, loss=loss, metrics=metrics, cheap=True, seed=seed,
                                                 ignore_index=ignore_index, target_key=target_key)
        for name in rx.plan(prepared.findings, fix=fix, drop_label_issues=drop_label_issues):
            remedy = _APPLY[name](prepared, model, seed, objective)
            prepared.remedies.append(remedy)
    finally:
        restore_rng(saved)
    if check:
        for finding in at_least(prepared.findings, "warning"):
            console.warning(f"doctor: {finding.code}: {finding.message} (fix: {finding.fix})")
    for remedy in prepared.remedies:
        console.message(f"doctor: {remedy.remedy}: {json.dumps(remedy.detail)[:200]}")
    return prepared


def _standardize(prepared: Prepared, model: nn.Module, seed: int, objective) -> rx.Remedy:
    train = prepared.splits["train"]
    if not isinstance(train, TensorSplit) or not isinstance(train.inputs, torch.Tensor) or \
            not train.inputs.dtype.is_floating_point:
        return rx.Remedy("standardize_features", {"applied": False, "reason": "only one in-memory floating-point "
                                                  "input tensor is standardized"})
    mean, std = rx.standardization(train.inputs)
    prepared.splits = {name: TensorSplit(rx.standardize(split.inputs, mean, std), split.targets, name)
                       if isinstance(split, TensorSplit) else split for name, split in prepared.splits.items()}
    prepared.standardization = (mean, std)
    layer = rx.first_linear(model, mean.numel())
    export = (f"folded into layer {layer[0]!r} of best.safetensors" if layer else
              f"kept in {STANDARDIZE}, applied by converge.load_weights")
    return rx.Remedy("standardize_features", {
        "applied": True, "statistics": "training split", "features": mean.numel(), "export": export,
        "mean_range": [float(mean.min()), float(mean.max())], "std_range": [float(std.min()), float(std.max())]})


def _balance(prepared: Prepared, model: nn.Module, seed: int, objective) -> rx.Remedy:
    """Class-balanced weights, deferred to the first LR cut: per class for multi-class cross-entropy, a
    pos_weight for binary BCE; never for multi-label or sequence targets (token frequencies are the task)."""
    train = prepared.splits["train"]
    kind = objective.kind if objective is not None else None
    if prepared.loss is not None:
        return rx.Remedy("class_balanced_loss", {"applied": False, "reason": "the task defines its own loss"})
    if kind not in ("classification", "binary"):
        return rx.Remedy("class_balanced_loss", {"applied": False, "reason": f"not for {kind} targets: only "
                                                 f"multi-class and binary labels are re-weighted"})
    if not isinstance(train, TensorSplit):
        return rx.Remedy("class_balanced_loss", {"applied": False,
                                                 "reason": "only in-memory class labels are re-weighted"})
    common = {"training_from": "the first LR cut (deferred re-weighting)",
              "note": "the validation loss is weighted from the start"}
    if kind == "binary":
        positive = float((train.targets > 0.5).float().mean())
        pos_weight = (1 - positive) / max(positive, 1e-12)
        prepared.loss = rx.WeightedBinaryCrossEntropy(pos_weight, deferred=True)
        return rx.Remedy("class_balanced_loss", {"applied": True, "pos_weight": round(pos_weight, 4), **common})
    weights = rx.balanced_class_weights(train.targets, objective.classes, ignore_index=objective.ignore_index)
    prepared.loss = rx.WeightedCrossEntropy(weights, deferred=True, ignore_index=objective.ignore_index)
    return rx.Remedy("class_balanced_loss", {"applied": True, "weights": [round(float(w), 4) for w in weights],
                                             **common})


def _drop(prepared: Prepared, model: nn.Module, seed: int, objective) -> rx.Remedy:
    train = prepared.splits["train"]
    kind = objective.kind if objective is not None else None
    if not isinstance(train, TensorSplit) or kind not in ("classification", "binary"):
        return rx.Remedy("drop_label_issues", {"applied": False,
                                               "reason": "only in-memory multi-class or binary splits"})
    sample = class_labels(samples_from_splits({"train": train}, seed=seed)["train"], kind)
    _, flagged = label_issues(sample, objective.classes, seed=seed, progress=lambda text: None)
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[flagged] = False
    kept = keep.to(train.inputs.device)
    prepared.splits["train"] = TensorSplit(train.inputs[kept], train.targets[kept], "train")
    return rx.Remedy("drop_label_issues", {"applied": True, "dropped": int(len(flagged)),
                                           "train_rows_left": int(keep.sum()),
                                           "dropped_indices": sorted(int(i) for i in flagged)})


_APPLY = {"standardize_features": _standardize, "class_balanced_loss": _balance, "drop_label_issues": _drop}


def events_of(prepared: Prepared) -> list[dict]:
    """The findings and remedies as the run's events (before training: epoch 0, step 0)."""
    start = {"epoch": 0, "step": 0}
    return ([{"event": "doctor_finding", **start, "code": f.code, "severity": f.severity, "message": f.message}
             for f in prepared.findings] +
            [{"event": "remedy", **start, **remedy.to_dict()} for remedy in prepared.remedies])


def save(folder: RunFolder, prepared: Prepared) -> None:
    """doctor.json (every finding) and remedies.json (what was changed) in the run folder."""
    folder.write_json(DOCTOR_FINDINGS, [f.to_dict() for f in prepared.findings])
    if prepared.remedies:
        folder.write_json(REMEDIES, [r.to_dict() for r in prepared.remedies])


def exporter(model: nn.Module, prepared: Prepared) -> Callable[[dict], dict] | None:
    """The Trainer's export_state: the best state with the standardization folded into the first linear
    layer, so best.safetensors takes raw inputs from its first write on. None when there is nothing to fold."""
    if prepared is None or prepared.standardization is None or rx.first_linear(model, prepared.standardization[0].numel()) is None:
        return None
    import copy

    from converge.io.weights import snapshot

    mean, std = prepared.standardization
    shadow = copy.deepcopy(model)

    def export(state: dict) -> dict:
        with torch.no_grad():
            shadow.load_state_dict(state)
            rx.fold_standardization(shadow, mean, std)
        return snapshot(shadow.state_dict())

    return export


def after_training(result, prepared: Prepared | None):
    """Make the returned model take raw inputs as best.safetensors does (the Trainer wrote the folded file):
    fold the standardization into result.model, or save standardize.json and hook the model."""
    if prepared is None or prepared.standardization is None or result.summary.get("status") == Status.INTERRUPTED:
        return result
    from converge.io.atomic import atomic_write_text

    mean, std = prepared.standardization
    with torch.no_grad():
        folded = rx.fold_standardization(result.model, mean, std)
    if folded is None:
        rx.add_standardize_hook(result.model, mean, std)
        if result.run_dir is not None:
            atomic_write_text(result.run_dir / STANDARDIZE,
                              json.dumps({"mean": mean.tolist(), "std": std.tolist()}) + "\n")
    return result
