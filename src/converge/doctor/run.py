"""Run the checks: read bounded samples of the splits, run the data checks on them, resolve the objective
as `converge train` would, then run the model checks on one batch. Returns findings, most severe first;
printing and writing them is the caller's business."""

from __future__ import annotations

import copy
from pathlib import Path
from dataclasses import replace
from typing import Any, Callable

import torch
from torch import nn

from converge.data import (TARGET_KEY, TensorSplit, as_float64, first_rows, is_classification, map_tensors, tensors_of,
                           wants_float64)
from converge.doctor import data_checks as dc
from converge.doctor import model_checks as mc
from converge.doctor import thresholds as T
from converge.decide.findings import Finding, ranked
from converge.doctor._sample import Sample, sample_of, sample_split
from converge.doctor.label_noise import find_label_issues, label_noise_finding, out_of_sample_probs, proxy_error
from converge.engine import device as dev
from converge.decide.task_kind import IGNORE_INDEX
from converge.calling import call_model, move_to
from converge.engine.loss_probe import predicts_targets
from converge.engine.objective import (HeadsLoss, Objective, head_keys, head_name, loss_family, mean_squared_error,
                                      recognize_loss, resolve_objective)
from converge.errors import ConvergeError
from converge.rng import capture_rng, restore_rng, seed_everything
from converge.standardize import (default_layout, first_batch_norm, foldable_last_layer, foldable_layer,
                                  foldable_part, numeric_part, probing, standardization, standardize,
                                  target_standardization, with_part)

CHEAP_CODES = ("nonfinite_values", "class_imbalance", "unscaled_features", "unscaled_targets", "constant_features",
               "outliers",
               "train_val_overlap", "too_few_samples", "output_mismatch", "init_loss_off",
               "vanishing_gradients", "exploding_gradients", "dead_units")
EXPENSIVE_CODES = ("label_noise", "cannot_overfit_batch")
CODES = CHEAP_CODES + EXPENSIVE_CODES


def finite_rows(inputs: Any, targets: Any) -> torch.Tensor | None:
    """A mask of the rows whose inputs and targets (tensors, or tuples/dicts of them) are all finite; None
    when there are no tensors to check."""
    parts = tensors_of(inputs) + tensors_of(targets)
    if not tensors_of(inputs) or not tensors_of(targets):
        return None
    mask = torch.ones(parts[0].shape[0], dtype=torch.bool)
    for tensor in parts:
        if tensor.dtype.is_floating_point:
            mask &= torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=1).cpu()
    return mask


SEVERAL_INPUTS_SCALE_FIX = ("converge train and converge.fit standardize it by default when it is the one float "
                            "feature matrix [N, F] among the inputs and the model's first nn.Linear reads its columns "
                            "unchanged (beside category embeddings: the fold reaches those columns alone; unless "
                            "--no-standardize / standardize=False); otherwise standardize it with training-split "
                            "statistics in data()")


def data_findings(samples: dict[str, Sample], kind: str | None = None, ignore_index: int | None = None, *,
                  own_loss: str | None = None, own_monitor: str | None = None) -> list[Finding]:
    """Every data check but label_noise and too_few_samples (which need the model). ``kind``: the task
    kind (`converge.decide.task_kind`), guessed from the targets' type when the objective is unknown;
    ``own_loss``/``own_monitor``: the task's own loss and monitored metric, which the advice takes in."""
    train = samples["train"]
    kind = kind or ("classification" if is_classification(train.targets) else "regression")
    findings = dc.nonfinite_values({name: (s.inputs, s.targets) for name, s in samples.items()})
    if kind in ("classification", "binary", "multilabel", "sequence"):
        findings += dc.class_imbalance(train.targets, kind=kind, ignore_index=ignore_index, own_loss=own_loss,
                                       own_monitor=own_monitor)
    parts = dc.input_parts(train.inputs)
    for role, tensor in parts:
        x, kept = dc.feature_matrix(tensor)
        sampled = {**train.evidence(), **({"features_sampled": len(kept)} if kept is not None else {})}
        for check in (dc.unscaled_features, dc.constant_features, dc.outliers):
            found = [_with(f, sampled) for f in check(x)]
            if len(parts) > 1:   # several inputs: say which one
                found = [replace(f, message=f"{role}: {f.message}", evidence={**f.evidence, "input": role},
                                 fix=SEVERAL_INPUTS_SCALE_FIX if f.code == "unscaled_features" else f.fix)
                         for f in found]
            findings += found
    others = {name: _joined(s.inputs) for name, s in samples.items() if name != "train"}
    findings += [_with(f, train.evidence()) for f in dc.train_val_overlap(_joined(train.inputs), others)]
    return findings


def _joined(inputs: Any) -> torch.Tensor | None:
    """Several inputs as one row per sample (for comparing rows across splits); None when not tensors."""
    parts = [t.detach().cpu().reshape(t.shape[0], -1).double() for _, t in dc.input_parts(inputs)]
    return torch.cat(parts, dim=1) if parts and len({p.shape[0] for p in parts}) == 1 else None


def _with(finding: Finding, evidence: dict) -> Finding:
    """The finding with sampling facts added to its evidence (when the split was sampled)."""
    if not evidence.get("sampled"):
        return finding
    return Finding(finding.code, finding.severity, finding.message, {**finding.evidence, **evidence}, finding.fix)


def resolve(model: nn.Module, samples: dict[str, Sample], loss, metrics, device, ignore_index: int = IGNORE_INDEX,
            target_key: str = TARGET_KEY) -> tuple[Objective | None, dict, list]:
    """The objective `converge train` would use, on the finite rows; an output/label mismatch becomes an
    `output_mismatch` finding instead of an error. Returns (objective or None, finite splits, findings)."""
    splits = {}
    for name, sample in samples.items():
        mask = finite_rows(sample.inputs, sample.targets)
        if mask is None:
            raise ConvergeError(f"converge doctor needs {name} inputs and targets that are tensors or arrays")
        if not bool(mask.any()):
            return None, {}, []
        keep = (lambda t: t[mask.to(t.device)]) if not bool(mask.all()) else (lambda t: t)
        splits[name] = TensorSplit(map_tensors(keep, sample.inputs), map_tensors(keep, sample.targets), name).to(device)
    try:
        objective = resolve_objective(model, splits, loss, metrics or {}, amp="off", device=device, probe_size=64,
                                      ignore_index=ignore_index, target_key=target_key)
        return objective, splits, []
    except ConvergeError as exc:
        if str(exc).startswith("the model fails on a batch") or "metric name" in str(exc):
            raise
        targets = splits["train"].targets
        evidence = {"target_shape": list(targets.shape[1:]), "target_dtype": str(targets.dtype).replace("torch.", "")} \
            if isinstance(targets, torch.Tensor) else {}
        return None, splits, mc.output_mismatch(str(exc), evidence)


def model_findings(model: nn.Module, splits: dict, objective: Objective, *, cheap: bool, seed: int,
                   progress: Callable[[str], None], scale_targets: bool = False,
                   cross_entropy: bool = False) -> list[Finding]:
    """The model checks on one batch; with ``cheap=False`` also the overfit-one-batch check, which fits a
    feature matrix, and with ``scale_targets`` regression targets, standardized. ``cross_entropy``: the loss
    is a cross-entropy on logits (inferred, or the task's standard one)."""
    inputs, targets = splits["train"].probe(T.MODEL_BATCH)
    loss_fn, findings = objective, []   # the objective computes a batch's loss the way training will
    if cross_entropy and objective.kind in ("classification", "sequence") and not objective.loss_on_outputs:
        findings += mc.probabilities_into_cross_entropy(model, inputs, objective.class_dim)
    if objective.known_loss:
        findings += mc.init_loss_off(model, inputs, targets, loss_fn, objective.kind, classes=objective.classes)
    else:
        findings.append(dc.skipped("init_loss_off", "the task's own loss has no known value at initialisation"))
    findings += mc.gradient_flow(mc.layer_gradient_norms(model, inputs, targets, loss_fn),
                                 relative=T.EXPLODING_RELATIVE if objective.mean_over_samples else None)
    findings += mc.dead_units(mc.relu_activity(model, inputs))
    if not cheap:
        progress(f"doctor: fitting one batch of {min(T.OVERFIT_BATCH, len(targets))} samples")
        seed_everything(seed)
        batch, batch_targets = first_rows(inputs, targets, T.OVERFIT_BATCH)
        layout = default_layout(batch)
        stats = standardization(batch, per_position=layout == "matrix") if layout is not None else None
        if stats is not None and foldable_layer(model, batch[:16], *stats) is not None:
            # what training standardizes by default is fitted standardized: this check asks for bugs and
            # capacity; the inputs' scale is unscaled_features' question (raw diabetes, std 0.05, failed it
            # within 200 steps). Only where the model's first layer reads those features, as training asks:
            # a Conv1d's [N, C, T] windows are no [N, T, F] sequences, and statistics per time index over
            # the channels squashed raw accelerometer signals (z near 9.81) until one batch did not fit
            batch = standardize(batch, *stats)
        if scale_targets and isinstance(batch_targets, torch.Tensor):
            # the same for regression targets that `unscaled_targets` flags: on a price in dollars (std 2e5)
            # the mean-squared error stayed at its start for 200 Adam steps, a capacity "error" training
            # never meets (it standardizes them); the scale is unscaled_targets' question
            batch_targets = standardize(batch_targets, *standardization(batch_targets, max_score=None))
        overfit = mc.cannot_overfit_batch(model, batch, batch_targets, loss_fn,
                                          floor=mc.next_token_floor(batch, batch_targets, objective) or
                                          mc.soft_label_floor(batch_targets, objective))
        if overfit and overfit[0].severity == "error" and objective.kind == "regression":
            overfit = _at_target_scale(model, batch, batch_targets, loss_fn, overfit)
        findings += overfit
    return findings


def _at_target_scale(model: nn.Module, batch, targets, loss_fn, failed: list[Finding]) -> list[Finding]:
    """The overfit check again, with the model's output put at the targets' scale, for raw regression targets
    that training leaves raw (the task's own loss, such as a Huber loss with its delta in kWh). From outputs
    near 0, Adam's steps of about the LR need far more than 200 to reach targets in the hundreds (daily energy
    use: 199,000 -> 71,000 at LR 1e-2, "cannot fit"); training gets there with its own LR and epochs. Where
    the check passes this way, the trouble was the scale (training's LR search meets it), not a bug. A model
    that ignores its inputs still fails: from the targets' mean it cannot go lower."""
    if not (isinstance(targets, torch.Tensor) and targets.dtype.is_floating_point and len(targets) > 1):
        return failed
    columns = targets.reshape(len(targets), -1).double()
    if not dc.unscaled_features(columns):
        return failed
    mean, std = target_standardization(targets)
    try:
        again = mc.cannot_overfit_batch(mc.AtTargetScale(copy.deepcopy(model), mean, std), batch, targets, loss_fn)
    except (RuntimeError, TypeError, ValueError):   # an output the mapping does not fit: the first answer stands
        return failed
    if not again:
        return []
    again[0].evidence["first_from_outputs_near_0"] = failed[0].evidence["tries"]
    return again


def noise_findings(sample: Sample, classes: int, *, seed: int, progress: Callable[[str], None]) -> list[Finding]:
    """label_noise on at most NOISE_MAX_ROWS finite training rows, with the k-fold MLP proxy."""
    return label_issues(sample, classes, seed=seed, progress=progress)[0]


def label_issues(sample: Sample, classes: int, *, seed: int, progress: Callable[[str], None]
                 ) -> tuple[list[Finding], torch.Tensor]:
    """(the label_noise findings, the positions in the whole split of every flagged row)."""
    none = torch.zeros(0, dtype=torch.long)
    mask = finite_rows(sample.inputs, sample.targets)
    if not isinstance(sample.inputs, torch.Tensor):
        return [dc.skipped("label_noise", "the proxy model reads one feature tensor; these inputs are several")], none
    inputs = sample.inputs[mask]
    # raw image bytes are pixels, not token ids: the proxy standardizes them like any numeric feature
    x, _ = dc.feature_matrix(inputs.float() if inputs.dtype == torch.uint8 else inputs)
    labels = sample.targets[mask].cpu()
    if x is None:   # silence would read as "the labels are clean"
        return [dc.skipped("label_noise", "the proxy model reads numeric features; these inputs are not floating "
                                          "point (token ids?)")], none
    if len(labels) < 10 * T.NOISE_FOLDS or int(labels.max()) >= classes:
        return [], none
    positions = sample.indices[mask] if sample.indices is not None else torch.nonzero(mask).reshape(-1)
    if len(labels) > T.NOISE_MAX_ROWS:
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:T.NOISE_MAX_ROWS].sort().values
        x, labels, positions = x[keep], labels[keep], positions[keep]
    progress(f"doctor: {T.NOISE_FOLDS}-fold proxy trainings on {len(labels)} rows for label noise")
    probs = out_of_sample_probs(x, labels, classes, seed=seed)
    flagged, rate, _ = find_label_issues(probs, labels)
    own_error = None
    if rate >= T.NOISE_WARN and len(labels) / classes >= T.NOISE_MIN_PER_CLASS and \
            int((~flagged).sum()) >= 10 * T.NOISE_FOLDS:
        # the estimate would be a warning: first ask whether the proxy can read these inputs at all
        progress(f"doctor: {T.NOISE_FOLDS}-fold proxy trainings on the {int((~flagged).sum())} rows not flagged, "
                 f"for the proxy's own error")
        own_error = proxy_error(x, labels, flagged, classes, seed=seed)
    extra = {"proxy": f"MLP (64 hidden units) on standardized flattened inputs, {T.NOISE_FOLDS}-fold",
             "sampled": len(labels) < (sample.total or 0)}
    findings, issues = label_noise_finding(probs, labels, indices=positions, extra=extra, own_error=own_error)
    return findings, positions[issues]


def run_checks(model: nn.Module, samples: dict[str, Sample], *, loss: Callable | None = None,
               metrics: dict | None = None, cheap: bool = False, seed: int = 0, device: str | None = None,
               progress: Callable[[str], None] | None = None, ignore_index: int = IGNORE_INDEX,
               target_key: str = TARGET_KEY, monitor: str | None = None) -> list[Finding]:
    """All checks on sampled splits; ``cheap=True`` leaves out label_noise and cannot_overfit_batch.
    The model is not changed and the global RNG state is put back afterwards. ``monitor``: the value the
    run will monitor (the advice takes it in)."""
    return check_all(model, samples, loss=loss, metrics=metrics, cheap=cheap, seed=seed, device=device,
                     progress=progress, ignore_index=ignore_index, target_key=target_key, monitor=monitor,
                     like_training=True)[0]


def check_all(model: nn.Module, samples: dict[str, Sample], *, loss: Callable | None = None,
              metrics: dict | None = None, cheap: bool = False, seed: int = 0, device: str | None = None,
              progress: Callable[[str], None] | None = None, ignore_index: int = IGNORE_INDEX,
              target_key: str = TARGET_KEY, monitor: str | None = None,
              like_training: bool = False) -> tuple[list[Finding], Objective | None]:
    """:func:`run_checks`, and the objective the checks resolved (None when it could not be). With
    ``like_training`` the model checks see what `converge train` trains on by default: inputs and regression
    targets standardized where training would standardize them (`converge.doctor.in_train` runs the checks
    on the splits it has standardized itself)."""
    progress = progress or (lambda text: None)
    if wants_float64(model):   # as `converge train` gives a model made .double() its data (in_model_precision)
        samples = {name: replace(sample, inputs=as_float64(sample.inputs),
                                 targets=as_float64(sample.targets)) for name, sample in samples.items()}
    saved = capture_rng()
    try:
        device_ = dev.pick_device(device)
        model_copy = _copy_to(model, device_)
        objective, splits, problems = resolve(model_copy, samples, loss, metrics, device_, ignore_index, target_key)
        kind = objective.kind if objective is not None else None
        findings = data_findings(samples, kind, objective.ignore_index if objective is not None else ignore_index,
                                 **_the_tasks_own(loss, metrics, monitor))
        findings += problems
        findings = _normalized_by_the_model(findings, model_copy, splits)
        if objective is not None and not (objective.inferred or objective.model_loss):
            findings = [_masked_targets(f) if f.code == "nonfinite_values" else f for f in findings]
        target_scale = unscaled_targets(splits, objective, loss)
        findings += target_scale + as_training_acts(model_copy, splits, unscaled_head_targets(splits, objective))
        train = samples["train"]
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        counted, unit = _counted(train, objective)
        classes = objective.classes if kind in ("classification", "binary") else None
        findings += dc.too_few_samples(counted, params, classes, unit=unit, features=matrix_columns(train.inputs))
        if objective is not None:
            scaled = [f for f in findings if f.code == "unscaled_features"]
            trained_on, said = _as_trained(model_copy, splits, inputs=bool(scaled), targets=bool(target_scale)) \
                if like_training else (splits, "")
            # on the inputs training sees: a head's term is read beside the others', which raw inputs can swamp
            own_heads = own_loss_head_targets(model_copy, trained_on, loss, one_output=not target_scale) \
                if loss is not None else None
            findings += as_training_acts(model_copy, trained_on, *own_heads) if own_heads else []
            cross_entropy = objective.inferred if loss is None else loss_family(loss) == "cross_entropy"
            model_found = model_findings(model_copy, trained_on, objective, cheap=cheap, seed=seed,
                                         progress=progress, scale_targets=bool(target_scale),
                                         cross_entropy=cross_entropy)
            findings += [replace(f, evidence={**f.evidence, "judged_on": said}) if said and f.code in _ON_INPUTS
                         else f for f in model_found]
            if not cheap and kind in ("classification", "binary"):
                findings += noise_findings(class_labels(train, kind), objective.classes, seed=seed, progress=progress)
            elif not cheap:
                findings.append(dc.skipped("label_noise", f"confident learning needs one class label per sample; "
                                                          f"not for {kind} targets"))
    finally:
        restore_rng(saved)
    return ranked(findings), objective


def _normalized_by_the_model(findings: list[Finding], model: nn.Module, splits: dict) -> list[Finding]:
    """Inputs far from standardized that the model's first layer standardizes itself (an nn.BatchNorm1d over
    the raw features): said as information, not as a problem (a BatchNorm1d first on raw breast-cancer
    features was warned about, and trained as well as on standardized ones)."""
    if not splits or not any(f.code == "unscaled_features" and f.severity == "warning" for f in findings):
        return findings
    layer = first_batch_norm(model, splits["train"].probe(T.MODEL_BATCH)[0])
    if layer is None:
        return findings
    return [replace(f, severity="info", message=f"{f.message}; the model's first layer ({layer!r}, a batch "
                    f"normalization) standardizes each feature itself", fix="", evidence={**f.evidence,
                    "normalized_by": layer}) if f.code == "unscaled_features" else f for f in findings]


def _masked_targets(finding: Finding) -> Finding:
    """NaN targets alone (no Inf, no input), under a loss of the task's own that is finite on rows holding
    them (resolving the objective asked it): values not measured, which the loss masks, and training takes."""
    counts = finding.evidence
    if not counts or any(not key.endswith("_targets") or value.get("inf") for key, value in counts.items()):
        return finding
    where = ", ".join(f"{key.replace('_', ' ')} ({value['nan']})" for key, value in counts.items())
    return replace(finding, severity="info", fix="",
                   message=f"missing targets (NaN) in {where}, which the task's own loss masks: it is finite on "
                           f"rows that hold them, so training takes them")


_ON_INPUTS = ("init_loss_off", "vanishing_gradients", "exploding_gradients", "dead_units")


def _as_trained(model: nn.Module, splits: dict, *, inputs: bool, targets: bool) -> tuple[dict, str]:
    """The splits as `converge train` trains on them by default, and a note saying so ("" when unchanged):
    flagged inputs standardized when they are one feature matrix [N, F] or one tensor of feature sequences
    [N, T, F] that the model's first layer absorbs (or the one feature matrix among several inputs whose
    columns the first nn.Linear reads unchanged), and flagged regression targets standardized when its
    last nn.Linear absorbs them, with the training split's statistics. A model that reads raw gauge
    pressures in mbar has gradients a million times its input layer's at initialisation, which training
    never sees."""
    if not all(isinstance(s, TensorSplit) for s in splits.values()):
        return splits, ""
    train, notes = splits["train"], []
    probe = map_tensors(lambda t: t[:16], train.inputs)
    part = common_numeric_part(splits)
    x_stats = y_stats = None
    layout = default_layout(train.inputs) if inputs else None
    if layout is not None:
        stats = standardization(train.inputs, per_position=layout == "matrix")
        if foldable_layer(model, probe, *stats) is not None:
            x_stats = stats
            notes.append("inputs")
    elif inputs and part is not None:
        stats = standardization(train.inputs[part])
        if foldable_part(model, probe, part, *stats) is not None:
            x_stats = stats
            notes.append(f"input {part!r}")
    if targets and isinstance(train.targets, torch.Tensor):
        stats = target_standardization(train.targets)
        if foldable_last_layer(model, probe, *stats) is not None:
            y_stats = stats
            notes.append("regression targets")
    if not notes:
        return splits, ""
    scaled = {}
    for name, split in splits.items():
        x = split.inputs
        if x_stats is not None:
            x = standardize(x, *x_stats) if part is None or layout is not None else \
                with_part(x, part, standardize(x[part], *x_stats))
        y = standardize(split.targets, *y_stats) if y_stats is not None else split.targets
        scaled[name] = TensorSplit(x, y, name)
    return scaled, (f"{' and '.join(notes)} standardized with training-split statistics, as converge train does "
                    f"by default")


def common_numeric_part(splits: dict):
    """The key of the one float feature matrix among every split's several inputs, the same in each (None:
    not that case, or splits that are not in memory)."""
    if not all(isinstance(split, TensorSplit) for split in splits.values()):
        return None
    keys = {numeric_part(split.inputs) for split in splits.values()}
    return keys.pop() if len(keys) == 1 else None


UNSCALED_TARGETS_FIX = ("converge train and converge.fit standardize them by default with training-split "
                        "statistics and fold y = z * std + mean into the model's last nn.Linear (predictions, "
                        "losses and metrics stay in the targets' units; unless --no-standardize / "
                        "standardize=False); otherwise scale them in data()")

HEAD_LEFT_RAW_FIX = ("converge train leaves these targets raw: no nn.Linear gives this head's output alone (it "
                     "shares its last layer with another output); scale them in data(), or give the head an "
                     "nn.Linear of its own")


def as_training_acts(model: nn.Module, splits: dict, found: dict, targets_of: dict | None = None) -> list[Finding]:
    """The heads' findings of ``found`` ({head key: finding}; a head's targets under ``targets_of[key]``, None
    for all of them, or else under its own key), each with the fix training will apply: a head whose output
    no nn.Linear gives alone keeps its raw targets (`converge.doctor.in_train`), and its fix says so."""
    if not found:
        return []
    train = splits["train"]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = move_to(train.probe(16)[0], device)
    said = []
    for key, finding in found.items():
        target_key = key if targets_of is None else targets_of[key]
        targets = train.targets if target_key is None else train.targets[target_key]
        mean, std = target_standardization(targets.cpu())
        foldable = foldable_last_layer(model, inputs, mean.to(device), std.to(device), key=key) is not None
        said.append(finding if foldable else replace(finding, fix=HEAD_LEFT_RAW_FIX))
    return said


def unscaled_targets(splits: dict, objective: Objective | None, loss: Callable | None) -> list[Finding]:
    """Regression targets far from standardized (the inputs' rule, `unscaled_features`, on the target
    columns), for a task whose targets `converge train` standardizes by default: in-memory floating-point
    targets in every split, under the mean-squared error. The model checks (initial loss, gradients) on raw
    targets see a scale that training, by default, never does."""
    if objective is None or objective.kind != "regression" or objective.model_loss or \
            not (loss is None or recognize_loss(loss)[0] == "mse"):
        return []
    if not all(isinstance(s, TensorSplit) and isinstance(s.targets, torch.Tensor) and
               s.targets.dtype.is_floating_point for s in splits.values()):
        return []
    return unscaled_target_columns(splits["train"].targets)


def unscaled_target_columns(targets: torch.Tensor, head: str | None = None) -> list[Finding]:
    """The inputs' scale rule (`unscaled_features`) on the columns of regression targets, said of targets (of
    the head ``head``, when there are several)."""
    fix = UNSCALED_TARGETS_FIX if head is None else \
        UNSCALED_TARGETS_FIX.replace("into the model's last nn.Linear", "into the head's last nn.Linear")
    return [Finding("unscaled_targets", f.severity,
                    (f"{head}: " if head else "") +
                    f.message.replace("inputs are", "targets are").replace("feature", "target column"),
                    {**f.evidence, **({"head": head} if head else {})}, fix)
            for f in dc.unscaled_features(targets.reshape(len(targets), -1).double())]


def unscaled_head_targets(splits: dict, objective: Objective | None) -> dict:
    """Targets per head and no loss (`HeadsLoss`): each regression head whose in-memory floating-point targets
    are far from standardized (the inputs' rule), as {head key: finding}. `converge train` standardizes them
    by default, head by head (`converge.doctor.in_train`)."""
    if objective is None or not isinstance(objective.loss_fn, HeadsLoss) or \
            not all(isinstance(s, TensorSplit) for s in splits.values()):
        return {}
    found = {}
    for key, loss, _ in objective.loss_fn.heads:
        if loss is not mean_squared_error:
            continue
        parts = [s.targets[key] for s in splits.values()]
        if not all(isinstance(t, torch.Tensor) and t.dtype.is_floating_point for t in parts):
            continue
        found.update((key, finding) for finding in unscaled_target_columns(parts[0], head_name(key)))
    return found


def own_loss_head_targets(model: nn.Module, splits: dict, loss: Callable, *, one_output: bool = False
                          ) -> tuple[dict, dict] | None:
    """A loss of the task's own on a model with several outputs: the heads whose in-memory float targets are
    far from standardized (the inputs' rule) and whose output the loss reads as a prediction in the targets'
    units (`predicts_targets`, the other heads held at the model's outputs: an MSE or L1 term, not a
    log-rate), as {head key: finding}. A head's targets are its own where outputs and targets pair up (tuples
    of one length, or dicts with one set of keys); where one target tensor meets several outputs, they are
    the targets of the one output of their shape that the loss reads as their prediction (an autoencoder's
    (reconstruction, code); a Gaussian likelihood's (mean, log-variance), whose variance is not a
    prediction of the targets). Returns ({head key: finding}, {head key: its targets' key, None for all of
    them}); None when the model has one output (the one-output path decides), unless ``one_output``: then the
    one output is the head, under the key None, where the loss reads it as a prediction of the whole targets
    (a weighted squared error of three plant outputs in kg/h, % and kWh). `converge train` trains such a
    head on standardized targets by default (`converge.doctor.in_train`)."""
    if not all(isinstance(s, TensorSplit) for s in splits.values()):
        return None
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs, targets = move_to(splits["train"].probe(64), device)
    try:
        with torch.no_grad(), probing(model):
            outputs = call_model(model, inputs)
    except Exception:   # noqa: BLE001 -- the run itself will say what is wrong with the model
        return None
    alone = isinstance(outputs, torch.Tensor)
    if not (isinstance(outputs, (tuple, list, dict)) or (alone and one_output)):
        return None
    found, targets_of, shared = {}, {}, []
    for key, target_key in ({None: None} if alone else _head_targets(outputs, targets)).items():
        head = outputs if alone else outputs[key]
        wanted, held = (targets, [s.targets for s in splits.values()]) if target_key is None else \
            (targets[target_key], [s.targets[target_key] for s in splits.values()])
        if not (isinstance(head, torch.Tensor) and isinstance(wanted, torch.Tensor) and head.numel() == wanted.numel()
                and all(isinstance(t, torch.Tensor) and t.dtype.is_floating_point for t in held)):
            continue
        unscaled = unscaled_target_columns(held[0].cpu(), None if alone else head_name(key))
        if unscaled and predicts_targets(loss if alone else _with_head(loss, outputs, targets, key), head, wanted):
            found[key], targets_of[key] = unscaled[0], target_key
            if target_key is None:
                shared.append(key)
    if len(shared) > 1:   # two outputs the loss reads as predictions of the same targets: which one is not said
        for key in shared:
            del found[key], targets_of[key]
    return found, targets_of


def _head_targets(outputs, targets) -> dict:
    """{output key: its targets' key, None for all the targets} (`own_loss_head_targets`): the pairs, or every
    output of the shape of one target tensor."""
    keys = head_keys(outputs, targets)
    if keys is not None:
        return {key: key for key in keys}
    if isinstance(targets, torch.Tensor):
        leaves = outputs.keys() if isinstance(outputs, dict) else range(len(outputs))
        return {key: None for key in leaves
                if isinstance(outputs[key], torch.Tensor) and outputs[key].shape == targets.shape}
    return {}


def _with_head(loss: Callable, outputs, targets, key) -> Callable:
    """``loss`` as a function of head ``key``'s output alone, the other heads at ``outputs``."""
    return lambda head, _targets: loss(with_part(outputs, key, head), targets)


def matrix_columns(inputs: Any) -> int | None:
    """The columns of one float feature matrix [N, F]; None for any other inputs."""
    if isinstance(inputs, torch.Tensor) and inputs.dtype.is_floating_point and inputs.ndim == 2:
        return int(inputs.shape[1])
    return None


def _the_tasks_own(loss: Callable | None, metrics: dict | None, monitor: str | None) -> dict:
    """The task's own loss (its name) and monitored metric (one of its own ``metrics``), for the advice."""
    name = monitor[4:] if monitor and monitor.startswith("val_") else monitor
    return {"own_loss": getattr(loss, "__name__", type(loss).__name__) if loss is not None else None,
            "own_monitor": f"val_{name}" if name and name in (metrics or {}) else None}


def _counted(train: Sample, objective: Objective | None) -> tuple[int, str]:
    """How much training data the loss sees: samples, or labelled positions for sequences (estimated from
    the sample when the split was sampled)."""
    total = train.total or len(train)
    if objective is None or objective.kind != "sequence" or not isinstance(train.targets, torch.Tensor):
        return total, "samples"
    labelled = int((train.targets != objective.ignore_index).sum())
    return round(labelled * total / max(len(train), 1)), "labelled positions"


def class_labels(sample: Sample, kind: str) -> Sample:
    """The sample with one integer class label per row (binary 0/1 floats become 0/1 integers)."""
    if kind != "binary":
        return sample
    labels = (sample.targets.reshape(sample.targets.shape[0], -1)[:, 0] > 0.5).long()
    return Sample(sample.name, sample.inputs, labels, sample.total, sample.indices)


def _copy_to(model: nn.Module, device: torch.device) -> nn.Module:
    import copy
    return copy.deepcopy(model).to(device)


def samples_from_splits(splits: dict, *, seed: int = 0, max_rows: int = T.MAX_ROWS) -> dict[str, Sample]:
    """Samples of splits already made by `converge.data.make_splits` (in-memory ones are used whole)."""
    return {name: sample_of(split, max_rows=max_rows, seed=seed) for name, split in splits.items()}


def sample_splits(train: Any, val: Any, test: Any = None, *, seed: int = 0, max_rows: int = T.MAX_ROWS,
                  target_key: str = TARGET_KEY) -> dict[str, Sample]:
    given = {"train": train, "val": val, "test": test}
    return {name: sample_split(data, name, max_rows=max_rows, seed=seed, target_key=target_key)
            for name, data in given.items() if data is not None}


def diagnose(model: nn.Module, train: Any, val: Any, test: Any = None, *, loss: Callable | None = None,
             metrics: dict | None = None, cheap: bool = False, seed: int = 0, device: str | None = None,
             progress: Callable[[str], None] | None = None, ignore_index: int = IGNORE_INDEX,
             target_key: str = TARGET_KEY, monitor: str | None = None) -> list[Finding]:
    """The doctor on objects in memory (the model and splits as `converge.fit` takes them, with its ``loss``,
    ``metrics`` and ``target_key``): a list of `Finding`, most severe first. ``cheap`` leaves out the checks
    that train small models (label noise, overfitting one batch); ``seed`` seeds them and the sampling of
    large splits; ``progress`` receives a line of text as the checks proceed; ``ignore_index``: the padding
    label of integer targets; ``monitor``: the value the run will judge (the advice names it)."""
    if not isinstance(model, nn.Module):
        raise ConvergeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return run_checks(model, sample_splits(train, val, test, seed=seed, target_key=target_key), loss=loss,
                      metrics=metrics, cheap=cheap, seed=seed, device=device, progress=progress,
                      ignore_index=ignore_index, target_key=target_key, monitor=monitor)


def diagnose_task(task, *, task_args: dict | None = None, cheap: bool = False, seed: int = 0,
                  device: str | None = None, progress: Callable[[str], None] | None = None) -> list[Finding]:
    """The doctor on a loaded task: builds the model and data with the seed, as `converge train` does."""
    from converge.task import check_task_args

    task_args = check_task_args(task_args)
    seed_everything(seed)
    model = task.build_model(**task_args["model"])
    splits = task.build_data(**task_args["data"])
    return diagnose(model, *splits, loss=task.loss, metrics=task.metrics, cheap=cheap, seed=seed, device=device,
                    progress=progress, ignore_index=task.ignore_index, target_key=task.target_key,
                    monitor=task.monitor)


def run_doctor(task_path: str | Path, *, cheap: bool = False, seed: int = 0, device: str | None = None,
               task_args: dict | None = None, progress: Callable[[str], None] | None = None) -> list[Finding]:
    """What `converge doctor TASK` does: every check on the task file's model and data, most severe first
    (a list of `Finding`). ``cheap``, ``seed`` and ``device`` as for `diagnose`; ``task_args``
    (``{"model": {...}, "data": {...}}``) are keyword arguments for the task's ``model()`` and ``data()``."""
    from converge.task import load_task

    return diagnose_task(load_task(task_path, seed=seed), task_args=task_args, cheap=cheap, seed=seed, device=device,
                         progress=progress)
