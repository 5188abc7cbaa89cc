"""Remedies for what the doctor finds, applied by `converge train --fix` / `--drop-label-issues`.

Decisions are pure (`plan`); the helpers below compute statistics, transform tensors and fold a
standardization into a model. Every remedy applied is recorded as ``{"remedy", "detail"}``.

- ``standardize_features``: z = (x - mean) / std per flattened input feature, statistics from the
  training split only, folded into the exported model (`converge.standardize`). Applied by default
  (without ``--fix``) to plain feature matrices (one float tensor of shape [N, F] in memory) when it
  folds into the model's first nn.Linear; ``--no-standardize`` / ``fit(standardize=False)`` turns the
  default off.
- ``standardize_targets``: raw regression targets (the mean-squared error; the unscaled_features rule on
  the target columns) are standardized the same way by default, z = (y - mean) / std per column with
  training-split statistics, and y = z std + mean is folded into the model's last nn.Linear; the
  statistics are in the remedy's detail, so a resumed run uses the same ones.
- ``class_balanced_loss``: cross-entropy weighted by n / (C n_c) (each class weighs the same in total),
  from the first epoch on (deferring it needs a hook in the loop; see docs/doctor.md).
- ``drop_label_issues``: the training rows confident learning flags are left out (opt-in only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from converge.decide.findings import Finding, severity_rank
from converge.standardize import (MAX_STANDARD_SCORE, add_standardize_hook, capped_features,  # noqa: F401
                                  default_layout, first_linear, fold_standardization, fold_target_standardization,
                                  foldable_last_layer, foldable_layer, foldable_part, numeric_part,
                                  standardization, standardize, target_standardization, target_units,
                                  with_part)



@dataclass(frozen=True)
class Remedy:
    remedy: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"remedy": self.remedy, "detail": dict(self.detail)}


def plan(findings: list[Finding], *, fix: bool, drop_label_issues: bool, by_default: bool = False) -> list[str]:
    """Which remedies to apply: with ``fix``, those for warning-level (or worse) findings of unscaled
    features and class imbalance; with ``by_default`` (standardizing is the default of `converge train` and `fit`), the
    standardization alone; label issues only when asked for. Class weights and dropping rows change the
    objective, so they are never applied by default."""
    serious = {f.code for f in findings if severity_rank(f.severity) <= severity_rank("warning")}
    chosen = ["drop_label_issues"] if drop_label_issues else []   # first: the statistics see the kept rows
    if (fix or by_default) and "unscaled_features" in serious:
        chosen.append("standardize_features")
    if fix and "class_imbalance" in serious:
        chosen.append("class_balanced_loss")
    return chosen


def balanced_class_weights(targets: torch.Tensor, classes: int, ignore_index: int | None = None) -> torch.Tensor:
    """n / (C n_c) per class, C the classes present (absent ones get 1): every class weighs n / C in total.
    Padding labels (``ignore_index``) are left out."""
    labels = targets.reshape(-1).long().cpu()
    labels = labels[labels != ignore_index] if ignore_index is not None else labels
    counts = torch.bincount(labels, minlength=classes).double()
    present = int((counts > 0).sum())
    weights = torch.where(counts > 0, counts.sum() / (present * counts.clamp(min=1)), torch.ones_like(counts))
    return weights.float()


class _DeferredWeights:
    """A class-balanced loss whose weights apply, in training, from the first LR cut on (``deferred``;
    deferred re-weighting, Cao et al. 2019, "Learning Imbalanced Datasets with Label-Distribution-Aware
    Margin Loss": features are learnt from the data as it is, then the decision boundary is re-balanced).
    Evaluation (no gradient) always uses the weights, so the monitored value keeps one meaning."""

    def __init__(self, weights: torch.Tensor, deferred: bool) -> None:
        self.weights, self.deferred = weights, deferred
        self.active = not deferred

    def set_lr_cuts(self, cuts: int) -> None:
        """Told by the Trainer at every epoch's start: how many LR cuts the run has made."""
        self.active = not self.deferred or cuts >= 1

    def weights_for(self, outputs: torch.Tensor) -> torch.Tensor | None:
        """The weights on the outputs' device, or None while training before the first cut."""
        if self.weights.device != outputs.device:
            self.weights = self.weights.to(outputs.device)
        return self.weights if self.active or not outputs.requires_grad else None


class WeightedCrossEntropy(_DeferredWeights):
    """Cross-entropy with per-class weights: the class-balanced loss (see :class:`_DeferredWeights`)."""

    def __init__(self, weights: torch.Tensor, *, deferred: bool = False, ignore_index: int | None = -100) -> None:
        super().__init__(weights, deferred)
        self.ignore_index = -100 if ignore_index is None else ignore_index

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.ndim == 2 and targets.shape[1] == 1:
            targets = targets.reshape(-1)
        return F.cross_entropy(outputs.float(), targets, weight=self.weights_for(outputs),
                               ignore_index=self.ignore_index)


class WeightedBinaryCrossEntropy(_DeferredWeights):
    """BCE-with-logits with the positive class weighted by ``pos_weight`` (negatives / positives), so each
    class weighs the same (see :class:`_DeferredWeights`). (N,) and (N, 1) are matched either way."""

    def __init__(self, pos_weight: float, *, deferred: bool = False) -> None:
        super().__init__(torch.tensor(float(pos_weight)), deferred)

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        scores, labels = outputs.reshape(outputs.shape[0], -1).float(), targets.reshape(targets.shape[0], -1).float()
        return F.binary_cross_entropy_with_logits(scores, labels, pos_weight=self.weights_for(outputs))
