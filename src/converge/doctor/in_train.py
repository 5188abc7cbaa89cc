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

from converge.data import TensorSplit, map_tensors
from converge.doctor import data_checks as dc
from converge.doctor import remedies as rx
from converge.decide.findings import Finding, at_least, ranked
from converge.decide.task_kind import IGNORE_INDEX
from converge.doctor.run import (check_all, class_labels, common_numeric_part, label_issues, matrix_columns,
                                 own_loss_head_targets, samples_from_splits, unscaled_head_targets,
                                 unscaled_targets)
from converge.engine.objective import HeadsLoss, head_name
from converge.standardize import InTargetUnits
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
    layer: str | None = None        # the nn.Linear the standardization is folded into (None: a hook)
    offset: int = 0                 # the standardized features' first column among the inputs of ``layer``
    checked: bool = False           # the quick checks ran: doctor.json is written
    explicit: bool = False          # --fix asked for the remedies (else the standardization is the default)
    unscaled: Finding | None = None  # what the standardization answers
    target_standardization: tuple[torch.Tensor, torch.Tensor] | None = None   # regression targets' (mean, std)
    target_layer: str | None = None  # the last nn.Linear that maps z back to the user's units
    # targets per head: each standardized head's (mean, std, the nn.Linear whose output it is), and the hooks
    # that map those layers' z back to the targets' units while the model trains
    head_scales: dict = field(default_factory=dict)
    head_hooks: list = field(default_factory=list)
    # a head's targets when they are not under its own key: None for all of them (`_own_loss_heads`)
    head_targets: dict = field(default_factory=dict)


def before_training(model: nn.Module, splits: dict, *, objective=None, recorded_targets: dict | None = None,
                    loss: Callable | None, metrics: dict | None, check: bool,
                    fix: bool, drop_label_issues: bool, seed: int, console, ignore_index: int = IGNORE_INDEX,
                    target_key: str = "labels", standardize: bool = False, recorded: bool | None = None,
                    monitor: str | None = None) -> Prepared:
    """Run the cheap checks (``check``) and apply the remedies asked for; returns the splits and loss to
    train with. ``standardize``: standardize unscaled plain feature matrices by default (without the
    other checks, only the cheap scale check runs). ``recorded``: a resumed run's decision, from its
    checkpoint: the standardization is applied (True) or not (False) as it was when the run started,
    whatever the checks would say now. ``objective``: the run's, on the splits as given (regression targets
    are standardized by default too, `standardize_targets`); ``recorded_targets``: a resumed run's
    recorded target standardization (its `remedy` event's detail), applied as it was. Neither the model
    nor the global RNG state is changed."""
    prepared = Prepared(dict(splits), loss, checked=check or fix or drop_label_issues, explicit=fix)
    if not (prepared.checked or standardize or recorded or recorded_targets):
        return prepared
    saved = capture_rng()
    run_objective = objective
    try:
        objective = None
        if prepared.checked:
            samples = samples_from_splits(splits, seed=seed, max_rows=TRAIN_MAX_ROWS)
            prepared.findings, objective = check_all(model, samples, loss=loss, metrics=metrics, cheap=True, seed=seed,
                                                     ignore_index=ignore_index, target_key=target_key,
                                                     monitor=monitor)
            scale = [f for f in prepared.findings if f.code == "unscaled_features"]
        else:
            scale = scale_findings(splits["train"], seed) if recorded is None else []
        prepared.unscaled = next(iter(scale), None)
        for name in _remedies(scale + prepared.findings, fix, drop_label_issues, standardize, recorded):
            remedy = _APPLY[name](prepared, model, seed, objective if objective is not None else run_objective)
            prepared.remedies.append(remedy)
        targets = _standardize_targets(prepared, model, run_objective, loss, by_default=standardize,
                                       recorded=recorded_targets)
        if targets is not None:
            prepared.remedies.append(targets)
        if prepared.checked and (prepared.standardization is not None or
                                 prepared.target_standardization is not None):
            # the model checks (initial loss, gradients, dead units) again, on the inputs training will see
            samples = samples_from_splits(prepared.splits, seed=seed, max_rows=TRAIN_MAX_ROWS)
            again, _ = check_all(model, samples, loss=loss, metrics=metrics, cheap=True, seed=seed,
                                 ignore_index=ignore_index, target_key=target_key, monitor=monitor)
            prepared.findings = ranked([f for f in prepared.findings if f.code == "unscaled_features"] +
                                       [f for f in again if f.code != "unscaled_features"])
    finally:
        restore_rng(saved)
    standardized = prepared.standardization is not None
    if not prepared.checked and recorded is None:
        # without the checks (converge.fit), too little data is still named, once (not again on resume): a count
        prepared.findings = size_findings(model, splits["train"])
    if check or not prepared.checked:
        for finding in at_least(prepared.findings, "warning"):
            if not (standardized and finding.code == "unscaled_features"):   # said once, by the remedy's line
                console.warning(f"doctor: {finding.code}: {finding.message} (fix: {finding.fix})")
    for remedy in prepared.remedies:
        console.message(_line(remedy))
    return prepared


def _remedies(findings: list[Finding], fix: bool, drop: bool, standardize: bool, recorded: bool | None) -> list[str]:
    """The remedies' plan, with a resumed run's recorded standardization decision in place of a new one."""
    names = rx.plan(findings, fix=fix, drop_label_issues=drop, by_default=standardize)
    if recorded is None:
        return names
    names = [name for name in names if name != "standardize_features"]
    if recorded:
        names.insert(1 if "drop_label_issues" in names else 0, "standardize_features")
    return names


def plain_features(split) -> bool:
    """A split whose inputs are one in-memory float feature matrix [N, F]: what is standardized by default,
    with `feature_sequences` (token ids, images, several inputs, dicts, Datasets and streams are left alone)."""
    return isinstance(split, TensorSplit) and rx.default_layout(split.inputs) == "matrix"


def feature_sequences(split) -> bool:
    """A split whose inputs are one in-memory float tensor [N, T, F] (a sequence of feature vectors: raw sensor
    readings for a recurrent layer): standardized by default, per feature over every step, when the layer
    that reads them first can absorb it."""
    return isinstance(split, TensorSplit) and rx.default_layout(split.inputs) == "sequences"


def numeric_part(split) -> int | str | None:
    """`standardize.numeric_part` of an in-memory split's inputs."""
    return rx.numeric_part(split.inputs) if isinstance(split, TensorSplit) else None


def size_findings(model: nn.Module, train) -> list[Finding]:
    """The doctor's too_few_samples from counts alone (no model run), for in-memory class labels [N] or float
    targets: what a run without the doctor's checks (`converge.fit`) still says before training."""
    if not isinstance(train, TensorSplit) or not isinstance(train.targets, torch.Tensor):
        return []
    targets = train.targets
    if not targets.dtype.is_floating_point and targets.ndim != 1:
        return []   # sequences: the doctor counts their labelled positions
    classes = None if targets.dtype.is_floating_point else int(torch.unique(targets).numel())
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return dc.too_few_samples(len(targets), params, classes, features=matrix_columns(train.inputs))


def scale_findings(train, seed: int) -> list[Finding]:
    """The unscaled_features check alone, on at most TRAIN_MAX_ROWS rows (a seeded sample) of a plain feature
    matrix, or of the one feature matrix among several inputs: the cheap decision behind the default
    standardization (one pass over a bounded sample)."""
    part = numeric_part(train)
    if not (plain_features(train) or feature_sequences(train) or part is not None):
        return []
    x = train.inputs if part is None else train.inputs[part]
    if x.shape[0] > TRAIN_MAX_ROWS:
        rows = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:TRAIN_MAX_ROWS]
        x = x[rows.sort().values.to(x.device)]
    matrix, _ = dc.feature_matrix(x)
    return dc.unscaled_features(matrix)


def _line(remedy: rx.Remedy) -> str:
    """The one console line that says what a remedy did."""
    detail = remedy.detail
    if remedy.remedy == "standardize_targets" and "heads" in detail:
        said = ", ".join(f"{h['head']} (mean {h['mean'][0]:.3g}, std {h['std'][0]:.3g})" for h in detail["heads"])
        return (f"standardize: the targets of head(s) {said} standardized with training-split statistics: their "
                f"layer trains on z and gives y = z * std + mean; losses and metrics are in the targets' units, "
                f"{detail['export']}; --no-standardize turns this off")
    if remedy.remedy == "standardize_targets":
        if not detail.get("applied"):
            return f"standardize: targets left as they are ({detail['finding']}): {detail['reason']}"
        spread = f"mean {detail['mean'][0]:.3g}, std {detail['std'][0]:.3g}" if detail["columns"] == 1 else \
            f"std {min(detail['std']):.3g} to {max(detail['std']):.3g}"
        return (f"standardize: {detail['columns']} regression target column(s) standardized with training-split "
                f"statistics ({spread}); losses and metrics are reported in the targets' units, {detail['export']}; "
                f"--no-standardize turns this off")
    if remedy.remedy != "standardize_features":
        return f"doctor: {remedy.remedy}: {json.dumps(detail)[:200]}"
    if not detail.get("applied"):
        return f"standardize: inputs left as they are: {detail.get('reason', '')}"
    low, high = detail["std_range"]
    tail = "; --no-standardize turns this off" if detail.get("by") == "default" else ""
    over = f" over {detail['over']}" if detail.get("over") else ""
    capped = detail.get("scaled_by_range") or 0
    rare = (f"; {capped} with rare large values scaled by their largest deviation / {rx.MAX_STANDARD_SCORE:g} "
            f"instead") if capped else ""
    return (f"standardize: {detail['features']} input features standardized{over} with training-split statistics "
            f"(feature std {low:.3g} to {high:.3g}{rare}), {detail['export']}{tail}")


def _not_standardized(reason: str, prepared: Prepared) -> rx.Remedy:
    return rx.Remedy("standardize_features", {"applied": False, "by": "--fix" if prepared.explicit else "default",
                                              "reason": reason})


def _standardize(prepared: Prepared, model: nn.Module, seed: int, objective) -> rx.Remedy:
    splits = prepared.splits
    train = splits["train"]
    part = common_numeric_part(splits)
    if part is not None:
        return _standardize_part(prepared, model, part)
    in_memory = all(isinstance(s, TensorSplit) and isinstance(s.inputs, torch.Tensor) for s in splits.values())
    if not in_memory or not train.inputs.dtype.is_floating_point:
        return _not_standardized("only one in-memory floating-point input tensor (in every split) is "
                                 "standardized", prepared)
    sequences = feature_sequences(train)
    if not prepared.explicit and not (plain_features(train) or sequences):
        return _not_standardized("by default only feature matrices [N, F] and sequences of feature vectors "
                                 "[N, T, F] are standardized (not images); converge train --fix standardizes "
                                 "these too", prepared)
    # a sequence: per feature over every step, which the layer that reads each step can absorb
    mean, std = rx.standardization(train.inputs, per_position=not sequences)
    layer = rx.foldable_layer(model, train.inputs[:16], mean, std)
    if layer is None and sequences and prepared.explicit:   # --fix on another layout: per position, hooked
        sequences = False
        mean, std = rx.standardization(train.inputs)
        layer = rx.foldable_layer(model, train.inputs[:16], mean, std)
    if layer is None and not prepared.explicit:
        return _not_standardized("the model's first layer cannot absorb the standardization, so the exported "
                                 "weights would not take raw inputs; standardize the inputs in data(), or pass "
                                 f"--fix (the statistics then go to {STANDARDIZE})", prepared)
    prepared.splits = {name: TensorSplit(rx.standardize(split.inputs, mean, std), split.targets, name)
                       for name, split in splits.items()}
    prepared.standardization, prepared.layer = (mean, std), layer
    export = (f"folded into layer {layer!r} of best.safetensors, which takes raw inputs" if layer else
              f"kept in {STANDARDIZE}, applied by converge.load_weights")
    over = {"over": f"every step of the [N, {train.inputs.shape[1]}, {train.inputs.shape[2]}] sequences"} \
        if sequences else {}
    return _standardized(prepared, train.inputs, not sequences, features=mean.numel(), export=export, layer=layer,
                         **over)


def _standardized(prepared: Prepared, x: torch.Tensor, per_position: bool, **specific) -> rx.Remedy:
    """The remedy of an applied input standardization: what is particular to it (``specific``) between what
    every one says (who asked, the statistics' ranges, the finding it answers, how to turn it off)."""
    mean, std = prepared.standardization
    found = prepared.unscaled
    return rx.Remedy("standardize_features", {
        "applied": True, "by": "--fix" if prepared.explicit else "default", "statistics": "training split",
        **specific,
        "mean_range": [float(mean.min()), float(mean.max())], "std_range": [float(std.min()), float(std.max())],
        "scaled_by_range": rx.capped_features(x, mean, std, per_position=per_position),
        **({"finding": found.message} if found is not None else {}),
        **({} if prepared.explicit else {"turn_off": "converge train --no-standardize, fit(standardize=False)"})})


def _standardize_part(prepared: Prepared, model: nn.Module, part: int | str) -> rx.Remedy:
    """The one feature matrix among several inputs (numeric columns beside category ids), standardized when
    the model's first nn.Linear reads its columns unchanged, so the fold reaches exactly them (a rent model
    on raw square feet and meters beside district embeddings: test MSE 489,864 with them raw, the race's
    SGD at LR 1e-7; the classic loop's AdamW 16,712)."""
    splits = prepared.splits
    x = splits["train"].inputs[part]
    mean, std = rx.standardization(x)
    found = rx.foldable_part(model, map_tensors(lambda t: t[:16], splits["train"].inputs), part, mean, std)
    if found is None:
        return _not_standardized(f"input {part!r} is not read unchanged by the model's first nn.Linear, so the "
                                 f"standardization could not be folded into the exported weights; standardize it "
                                 f"in data()", prepared)
    layer, offset = found
    prepared.splits = {name: TensorSplit(rx.with_part(split.inputs, part, rx.standardize(split.inputs[part], mean,
                                                                                      std)), split.targets, name)
                       for name, split in splits.items()}
    prepared.standardization, prepared.layer, prepared.offset = (mean, std), layer, offset
    return _standardized(prepared, x, True, input=part, features=mean.numel(), layer=layer,
                         columns=[offset, offset + mean.numel()],
                         export=f"folded into columns {offset}-{offset + mean.numel() - 1} of layer {layer!r} of "
                                f"best.safetensors, which takes raw inputs")


def _standardize_targets(prepared: Prepared, model: nn.Module, objective, loss: Callable | None, *,
                         by_default: bool, recorded: dict | None) -> rx.Remedy | None:
    """Standardize raw regression targets, z = (y - mean) / std per column with training-split statistics,
    as the inputs are: the optimizer, the range test and the gradient checks see well-scaled targets, and
    y = z std + mean is folded into the model's last nn.Linear (the returned model and best.safetensors
    predict in the user's units; losses and metrics are reported in them). Only for the mean-squared error
    (inferred or `nn.MSELoss`), whose optimum does not depend on the targets' scale, and targets far from
    standardized (the unscaled_features rule, on the target columns). Under another loss of the task's own,
    the heads it reads as predictions of raw targets (several outputs, or the one output) train on z through
    a hook instead (`_standardize_head_targets`): the loss keeps the targets' units. ``recorded``: a resumed
    run's decision and statistics. None when there is nothing to say (not such a task)."""
    by = "--fix" if prepared.explicit else "default"
    wanted = by_default or prepared.explicit
    if recorded is not None and "heads" in recorded:
        return _standardize_head_targets(prepared, model, {}, by, recorded=recorded)
    if objective is not None and isinstance(objective.loss_fn, HeadsLoss) and recorded is None:
        found = unscaled_head_targets(prepared.splits, objective) if wanted else {}
        return _standardize_head_targets(prepared, model, found, by, recorded=None)
    if recorded is not None:
        if not recorded.get("applied"):
            return None
        train = prepared.splits["train"]
        mean = torch.tensor(recorded["mean"], dtype=train.targets.dtype)
        std = torch.tensor(recorded["std"], dtype=train.targets.dtype)
        _apply_targets(prepared, mean, std, recorded["layer"])
        return rx.Remedy("standardize_targets", dict(recorded))
    found = unscaled_targets(prepared.splits, objective, loss) if wanted else []
    if loss is not None and wanted:
        # the heads of several outputs, or the one output unless the MSE path below takes it, that a loss of the
        # task's own reads as predictions of raw targets: trained on z through a hook, so the loss still sees
        # the targets' units (its weights, a Huber delta in kWh). One output used to stay raw, and a race
        # decided at the raw scale picked SGD, which took three plant outputs in kg/h, % and kWh 1000 epochs
        # to a loss 140x the other seeds'
        heads = _own_loss_heads(prepared, model, loss, one_output=not found)
        if heads is not None:
            return _standardize_head_targets(prepared, model, heads, by, recorded=None)
    if not found:
        return None
    unscaled = found[0].message
    train = prepared.splits["train"]
    per_step = train.targets.ndim >= 3
    mean, std = rx.target_standardization(train.targets)
    inputs, _ = train.probe(16)
    layer = rx.foldable_last_layer(model, inputs, mean, std)
    if layer is None:
        return rx.Remedy("standardize_targets", {
            "applied": False, "by": by, "finding": unscaled,
            "reason": "the model's output does not come from an nn.Linear that can absorb y = z * std + mean, so the "
                      "exported weights would not predict in the targets' units; standardize the targets in data()"})
    _apply_targets(prepared, mean, std, layer)
    return rx.Remedy("standardize_targets", {
        "applied": True, "by": by, "statistics": "training split", "columns": mean.numel(), "layer": layer,
        **({"over": f"every step of the {list(train.targets.shape[1:])} targets"} if per_step else {}),
        "mean": mean.tolist(), "std": std.tolist(), "finding": unscaled,
        "export": f"folded into layer {layer!r} of best.safetensors, which predicts in the targets' units",
        "turn_off": "converge train --no-standardize, fit(standardize=False)"})


def _standardize_head_targets(prepared: Prepared, model: nn.Module, found: dict, by: str, *,
                              recorded: dict | None) -> rx.Remedy | None:
    """Regression heads whose targets are far from standardized (a price in dollars), ``found`` as {head key:
    finding}: each trains its last nn.Linear on z = (y - mean) / std: a hook maps the layer's output back to
    y = z * std + mean while the model trains (so the loss and metrics see the targets' units; under
    `HeadsLoss` its division by the targets' variance makes it the MSE of z), and the map is folded into the
    layer at the end. Without it such a head would have to grow its outputs to the targets' scale by steps of
    about the LR (a price head stayed at R2 -10). ``recorded``: a resumed run's decision, applied as it was."""
    if recorded is not None:
        if not recorded.get("applied"):
            return None
        for head in recorded["heads"]:
            _hook_head(prepared, model, head["key"], torch.tensor(head["mean"]), torch.tensor(head["std"]),
                       head["layer"])
        return rx.Remedy("standardize_targets", dict(recorded))
    if not found:
        return None
    train = prepared.splits["train"]
    inputs, _ = train.probe(16)
    applied, refused = [], []
    for key, finding in found.items():
        name = "the output" if key is None else head_name(key)
        target_key = prepared.head_targets.get(key, key)
        mean, std = rx.target_standardization(train.targets if target_key is None else train.targets[target_key])
        layer = rx.foldable_last_layer(model, inputs, mean, std, key=key)
        if layer is None:
            refused.append(name)
            continue
        _hook_head(prepared, model, key, mean, std, layer)
        applied.append({"head": name, "key": key, "layer": layer, "mean": mean.tolist(), "std": std.tolist(),
                        "finding": finding.message})
    if not applied:
        return rx.Remedy("standardize_targets", {
            "applied": False, "by": by, "finding": next(iter(found.values())).message,
            "reason": f"no nn.Linear gives the output of {', '.join(refused)} alone, so the exported weights would "
                      f"not predict in its targets' units; standardize them in data()"})
    return rx.Remedy("standardize_targets", {
        "applied": True, "by": by, "statistics": "training split", "heads": applied,
        **({"left": refused} if refused else {}),
        "export": "folded into each head's layer of best.safetensors, which predicts in the targets' units",
        "turn_off": "converge train --no-standardize, fit(standardize=False)"})


def _own_loss_heads(prepared: Prepared, model: nn.Module, loss: Callable, *, one_output: bool = False
                    ) -> dict | None:
    """`own_loss_head_targets` on the prepared splits, each head's targets' key kept for its statistics."""
    found = own_loss_head_targets(model, prepared.splits, loss, one_output=one_output)
    if found is None:
        return None
    findings, targets_of = found
    prepared.head_targets.update(targets_of)
    return findings


def _hook_head(prepared: Prepared, model: nn.Module, key, mean: torch.Tensor, std: torch.Tensor, layer: str) -> None:
    module = model if layer == "(model)" else model.get_submodule(layer)
    prepared.head_hooks.append(module.register_forward_hook(InTargetUnits(mean, std)))
    prepared.head_scales[key] = (mean, std, layer)


def _apply_targets(prepared: Prepared, mean: torch.Tensor, std: torch.Tensor, layer: str) -> None:
    def scaled(targets: torch.Tensor) -> torch.Tensor:
        return rx.target_units(targets, mean, std, inverse=True)

    prepared.splits = {name: TensorSplit(split.inputs, scaled(split.targets), name)
                       for name, split in prepared.splits.items()}
    prepared.target_standardization, prepared.target_layer = (mean, std), layer


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


def recorded_target_standardization(events: list[dict]) -> dict | None:
    """A run's target standardization (its `remedy` event's detail: the decision, the statistics, the
    layer), from its events: resume applies the same. None when the run recorded none."""
    for event in events:
        if event.get("event") == "remedy" and event.get("remedy") == "standardize_targets":
            return dict(event.get("detail", {}))
    return None


def recorded_standardization(events: list[dict]) -> bool:
    """Whether a run standardized its inputs, from its events (a checkpoint's): resume applies the same."""
    for event in events:
        if event.get("event") == "remedy" and event.get("remedy") == "standardize_features":
            return bool(event.get("detail", {}).get("applied"))
    return False


def events_of(prepared: Prepared) -> list[dict]:
    """The findings and remedies as the run's events (before training: epoch 0, step 0)."""
    start = {"epoch": 0, "step": 0}
    return ([{"event": "doctor_finding", **start, "code": f.code, "severity": f.severity, "message": f.message}
             for f in prepared.findings] +
            [{"event": "remedy", **start, **remedy.to_dict()} for remedy in prepared.remedies])


def save(folder: RunFolder, prepared: Prepared) -> None:
    """doctor.json (every finding, when the checks ran) and remedies.json (what was changed) in the run
    folder."""
    if prepared.checked:
        folder.write_json(DOCTOR_FINDINGS, [f.to_dict() for f in prepared.findings])
    if prepared.remedies:
        folder.write_json(REMEDIES, [r.to_dict() for r in prepared.remedies])


def exporter(model: nn.Module, prepared: Prepared) -> Callable[[dict], dict] | None:
    """The Trainer's export_state: the best state with the inputs' standardization folded into the first
    linear layer and the targets' into the last, so best.safetensors takes raw inputs and predicts in the
    targets' units from its first write on. None when there is nothing to fold."""
    inputs = prepared is not None and prepared.standardization is not None and prepared.layer is not None
    targets = prepared is not None and (prepared.target_standardization is not None or bool(prepared.head_scales))
    if not (inputs or targets):
        return None
    import copy

    from converge.io.weights import snapshot

    shadow = copy.deepcopy(model)

    def export(state: dict) -> dict:
        with torch.no_grad():
            shadow.load_state_dict(state)
            _fold(shadow, prepared, inputs=inputs)
        return snapshot(shadow.state_dict())

    return export


def _fold(model: nn.Module, prepared: Prepared, *, inputs: bool) -> None:
    """Fold the standardizations into ``model`` (the two folds commute: one nn.Linear may take both)."""
    if inputs:
        rx.fold_standardization(model, *prepared.standardization, prepared.layer, prepared.offset)
    if prepared.target_standardization is not None:
        rx.fold_target_standardization(model, *prepared.target_standardization, prepared.target_layer)
    for mean, std, layer in prepared.head_scales.values():
        rx.fold_target_standardization(model, mean, std, layer)


def after_training(result, prepared: Prepared | None):
    """Make the returned model take raw inputs as best.safetensors does (the Trainer wrote the folded file):
    fold the standardization into result.model, or save standardize.json and hook the model."""
    if prepared is None or result.summary.get("status") == Status.INTERRUPTED:
        return result
    if prepared.target_standardization is not None:
        rx.fold_target_standardization(result.model, *prepared.target_standardization, prepared.target_layer)
    for handle in prepared.head_hooks:   # folded instead: the model predicts in the targets' units by itself
        handle.remove()
    for mean, std, layer in prepared.head_scales.values():
        rx.fold_target_standardization(result.model, mean, std, layer)
    if prepared.standardization is None:
        return result
    from converge.io.atomic import atomic_write_text

    mean, std = prepared.standardization
    with torch.no_grad():
        folded = rx.fold_standardization(result.model, mean, std, prepared.layer, prepared.offset) \
            if prepared.layer else None
    if folded is None:
        rx.add_standardize_hook(result.model, mean, std)
        if result.run_dir is not None:
            atomic_write_text(result.run_dir / STANDARDIZE,
                              json.dumps({"mean": mean.tolist(), "std": std.tolist()}) + "\n")
    return result
