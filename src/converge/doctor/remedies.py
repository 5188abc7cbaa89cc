"""Remedies for what the doctor finds, applied by `converge train --fix` / `--drop-label-issues`.

Decisions are pure (`plan`); the helpers below compute statistics, transform tensors and fold a
standardization into a model. Every remedy applied is recorded as ``{"remedy", "detail"}``.

- ``standardize_features``: z = (x - mean) / std per flattened input feature, statistics from the
  training split only (std 0 -> 1). For export it is folded into the first nn.Linear:
  W' = W / std (per input column), b' = b - W' mean, so the saved weights take raw inputs. A model
  whose first layer is not an nn.Linear keeps the statistics in ``standardize.json`` beside the
  weights, and `converge.load_weights` applies them (a forward pre-hook on the model).
- ``class_balanced_loss``: cross-entropy weighted by n / (C n_c) (each class weighs the same in total),
  from the first epoch on (deferring it needs a hook in the loop; see the README).
- ``drop_label_issues``: the training rows confident learning flags are left out (opt-in only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from converge.doctor._findings import Finding, severity_rank

STANDARDIZE_FILE = "standardize.json"


@dataclass(frozen=True)
class Remedy:
    remedy: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"remedy": self.remedy, "detail": dict(self.detail)}


def plan(findings: list[Finding], *, fix: bool, drop_label_issues: bool) -> list[str]:
    """Which remedies to apply: with ``fix``, those for warning-level (or worse) findings of unscaled
    features and class imbalance; label issues only when asked for."""
    serious = {f.code for f in findings if severity_rank(f.severity) <= severity_rank("warning")}
    chosen = ["drop_label_issues"] if drop_label_issues else []   # first: the statistics see the kept rows
    if fix and "unscaled_features" in serious:
        chosen.append("standardize_features")
    if fix and "class_imbalance" in serious:
        chosen.append("class_balanced_loss")
    return chosen


def standardization(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std of the (flattened) training inputs; a constant feature gets std 1."""
    x = inputs.reshape(inputs.shape[0], -1).double()
    mean, std = x.mean(0), x.std(0) if x.shape[0] > 1 else torch.ones(x.shape[1], dtype=torch.float64)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean.to(inputs.dtype), std.to(inputs.dtype)


def standardize(inputs: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    shape = inputs.shape
    flat = inputs.reshape(shape[0], -1)
    return ((flat - mean.to(flat.device)) / std.to(flat.device)).reshape(shape)


def first_linear(model: nn.Module, features: int) -> tuple[str, nn.Linear] | None:
    """The nn.Linear that sees the inputs first, when that is unambiguous: the model itself, or the
    first layer of (nested) nn.Sequential, after any nn.Flatten / nn.Identity; and it takes
    ``features`` inputs."""
    name, module = "", model
    while isinstance(module, nn.Sequential):
        children = [(n, c) for n, c in module.named_children() if not isinstance(c, (nn.Flatten, nn.Identity))]
        if not children:
            return None
        child_name, module = children[0]
        name = f"{name}.{child_name}" if name else child_name
    if isinstance(module, nn.Linear) and module.in_features == features:
        return name or "(model)", module
    return None


@torch.no_grad()
def fold_standardization(model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> str | None:
    """Fold z = (x - mean) / std into the first nn.Linear, in place; the layer's name, or None when the
    model has no such layer (then nothing changes)."""
    found = first_linear(model, mean.numel())
    if found is None:
        return None
    name, layer = found
    scale = (1.0 / std).to(layer.weight.device, layer.weight.dtype)
    shift = mean.to(layer.weight.device, layer.weight.dtype)
    layer.weight.mul_(scale)                       # W' = W / std
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(layer.out_features, device=layer.weight.device,
                                              dtype=layer.weight.dtype))
    layer.bias.sub_(layer.weight @ shift)          # b' = b - W' mean
    return name


def add_standardize_hook(model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Standardize the model's first positional input on every call (once, however often it is added)."""
    old = getattr(model, "_converge_standardize", None)
    if old is not None:
        old.remove()

    def hook(module, args):
        if not args:
            return None
        return (standardize(args[0], mean.to(args[0].dtype), std.to(args[0].dtype)), *args[1:])

    model._converge_standardize = model.register_forward_pre_hook(hook)


def balanced_class_weights(targets: torch.Tensor, classes: int) -> torch.Tensor:
    """n / (C n_c) per class, C the classes present (absent ones get 1): every class weighs n / C in total."""
    counts = torch.bincount(targets.reshape(-1).long().cpu(), minlength=classes).double()
    present = int((counts > 0).sum())
    weights = torch.where(counts > 0, counts.sum() / (present * counts.clamp(min=1)), torch.ones_like(counts))
    return weights.float()


class WeightedCrossEntropy:
    """Cross-entropy with per-class weights: the class-balanced loss.

    ``deferred``: training uses the plain loss until the first LR cut and the weighted one after it
    (deferred re-weighting, Cao et al. 2019, "Learning Imbalanced Datasets with Label-Distribution-Aware
    Margin Loss"): features are learnt from the data as it is, then the decision boundary is re-balanced.
    Evaluation (no gradient) always uses the weights, so the monitored value keeps one meaning."""

    def __init__(self, weights: torch.Tensor, *, deferred: bool = False) -> None:
        self.weights, self.deferred = weights, deferred
        self.active = not deferred

    def set_lr_cuts(self, cuts: int) -> None:
        """Told by the Trainer at every epoch's start: how many LR cuts the run has made."""
        self.active = not self.deferred or cuts >= 1

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.weights.device != outputs.device:
            self.weights = self.weights.to(outputs.device)
        weighted = self.active or not outputs.requires_grad
        return F.cross_entropy(outputs.float(), targets, weight=self.weights if weighted else None)
