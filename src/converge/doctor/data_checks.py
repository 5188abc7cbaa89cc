"""Data checks: pure functions over tensors that return findings. Nothing here trains or writes.

``x`` below is a feature matrix: the inputs flattened to (rows, features), float, finite rows only (see
`feature_matrix`). Thresholds are documented in `converge.doctor.thresholds`.
"""

from __future__ import annotations

import hashlib
import math

import torch

from converge.doctor import thresholds as T
from converge.decide.findings import Finding, rounded



def feature_matrix(inputs, *, max_features: int = T.MAX_FEATURES, seed: int = 0):
    """(rows, features) float32 of floating inputs with only finite rows, plus the kept feature indices
    (None: all) — or (None, None) when the inputs are not a floating tensor (token ids, dicts...)."""
    if not isinstance(inputs, torch.Tensor) or not inputs.dtype.is_floating_point or inputs.ndim == 0:
        return None, None
    x = inputs.detach().reshape(inputs.shape[0], -1).float().cpu()
    x = x[torch.isfinite(x).all(dim=1)]
    kept = None
    if x.shape[1] > max_features:
        kept = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(seed))[:max_features].sort().values
        x = x[:, kept]
    return x, kept


def class_imbalance(targets: torch.Tensor, *, info_ratio: float = T.IMBALANCE_INFO,
                    warn_ratio: float = T.IMBALANCE_WARN, kind: str = "classification",
                    ignore_index: int | None = None, own_loss: str | None = None,
                    own_monitor: str | None = None) -> list[Finding]:
    """Largest over smallest class count among the classes present in the training labels (multi-class and
    binary; padding labels left out). Multi-label targets are counted per label: each label's positives
    against its negatives, reported as information (rare labels are the nature of such tasks, and
    re-weighting them is not `--fix`'s to do). Token frequencies of sequence targets are skewed by nature:
    not checked (said as information).

    The advice knows the task: ``own_loss`` (the name of the task's own loss, which `--fix` leaves alone: it
    decides how much each class weighs) and ``own_monitor`` (a metric of the task's own that the run monitors:
    the task chose what to watch, so "watch a balanced metric" is not said). A task with both has answered
    the imbalance itself: the finding is information."""
    if not isinstance(targets, torch.Tensor) or targets.numel() == 0:
        return []
    if kind == "sequence":
        return [skipped("class_imbalance", "token frequencies of sequence targets are skewed by nature; "
                                           "class balance is not checked for them")]
    if kind == "multilabel":
        return _label_imbalance(targets, info_ratio)
    if kind == "binary":
        labels = (targets.reshape(-1) > 0.5).long()
    elif targets.dtype.is_floating_point:
        return []
    else:
        labels = targets.reshape(-1).long()
        labels = labels[labels != ignore_index] if ignore_index is not None else labels
    counts = torch.bincount(labels.clamp(min=0))
    present = counts[counts > 0]
    if present.numel() < 2:
        return []
    ratio = float(present.max() / present.min())
    if ratio < info_ratio:
        return []
    frequencies = {str(c): int(n) for c, n in enumerate(counts.tolist()) if n}
    smallest = int(torch.where(counts == present.min())[0][0])
    largest = int(torch.where(counts == present.max())[0][0])
    severity = "warning" if ratio >= warn_ratio and not (own_loss and own_monitor) else "info"
    if own_loss:
        fix = (f"your own loss ({own_loss}) decides how much each class weighs (converge train --fix re-weights "
               f"only the loss converge infers): weight the classes there if the rare ones matter")
    else:
        fix = ("use class-balanced loss weights (converge train --fix: a pos_weight for the positive class)"
               if kind == "binary" else "use class-balanced loss weights or sampling (converge train --fix)")
    if own_monitor:
        fix += f"; the run monitors your own {own_monitor}, which chooses the kept epoch"
    else:
        fix += ("; and monitor a metric that weighs every class (e.g. a macro-F1 of your own in `metrics`, "
                "with `monitor`) rather than the loss or accuracy")
    evidence = {"class_counts": frequencies, "ratio": rounded(ratio), "largest_class": largest,
                "smallest_class": smallest}
    evidence.update({key: value for key, value in (("own_loss", own_loss), ("monitor", own_monitor)) if value})
    return [Finding("class_imbalance", severity,
                    f"classes are imbalanced: class {largest} has {ratio:.1f}x the samples of class {smallest}",
                    evidence, fix)]


def _label_imbalance(targets: torch.Tensor, info_ratio: float) -> list[Finding]:
    y = targets.reshape(targets.shape[0], -1) > 0.5
    positives = y.sum(dim=0).double()
    negatives = y.shape[0] - positives
    ratios = torch.maximum(positives, negatives) / torch.minimum(positives, negatives).clamp(min=1)
    worst = int(ratios.argmax())
    if float(ratios[worst]) < info_ratio:
        return []
    return [Finding("class_imbalance", "info",
                    f"label {worst} is positive in {100 * float(positives[worst]) / y.shape[0]:.3g}% of the samples "
                    f"(labels are counted one by one)",
                    {"positives_per_label": [int(p) for p in positives.tolist()], "samples": int(y.shape[0]),
                     "worst_label": worst, "worst_ratio": rounded(ratios[worst])},
                    "nothing to do unless a rare label matters most: then weight it in your own loss "
                    "(BCEWithLogitsLoss(pos_weight=...)) and watch per-label recall")]


def skipped(code: str, reason: str) -> Finding:
    """A check that does not apply to this task, said so (information, never a warning)."""
    return Finding(code, "info", f"not checked: {reason}", {"skipped": True}, "")


def unscaled_features(x: torch.Tensor, *, std_high: float = T.SCALE_STD_HIGH, mean_high: float = T.SCALE_MEAN_HIGH,
                      std_low: float = T.SCALE_STD_LOW, spread: float = T.SCALE_SPREAD, worst: int = 5
                      ) -> list[Finding]:
    """Features far from standardized: std above ``std_high``, abs(mean) above ``mean_high`` (and above the
    std), all features squashed (median std below ``std_low``) or one dominating (largest / median std
    above ``spread``). Constant features are left to `constant_features`."""
    if x is None or x.shape[0] < 2:
        return []
    mean, std = x.mean(0).double(), x.std(0).double()
    varying = std > 0
    if not bool(varying.any()):
        return []
    mean, std = mean[varying], std[varying]
    index = torch.nonzero(varying).reshape(-1)
    median_std = float(std.median())
    problems = []
    big_std, big_mean = std > std_high, (mean.abs() > mean_high) & (mean.abs() > std)
    if bool(big_std.any()):
        problems.append(f"{int(big_std.sum())} feature(s) with std above {std_high:g}")
    if bool(big_mean.any()):
        problems.append(f"{int(big_mean.sum())} feature(s) with abs(mean) above {mean_high:g}")
    if median_std < std_low:
        problems.append(f"median feature std {median_std:.3g} below {std_low:g}")
    if float(std.max()) / median_std > spread:
        problems.append(f"largest feature std is {float(std.max()) / median_std:.3g}x the median")
    if not problems:
        return []
    # worst first: far from unit scale, far from the other features' scale, or far off centre
    badness = (std.log10().abs() + (std / median_std).log10().abs()
               + (mean.abs() / std.clamp(min=1e-12)).clamp(min=1).log10())
    order = badness.argsort(descending=True)[:worst]
    evidence = {"worst_features": [{"feature": int(index[i]), "mean": rounded(mean[i]), "std": rounded(std[i])}
                                   for i in order.tolist()],
                "std_min": rounded(std.min()), "std_median": rounded(median_std), "std_max": rounded(std.max()),
                "abs_mean_max": rounded(mean.abs().max()), "features": int(x.shape[1])}
    return [Finding("unscaled_features", "warning", "inputs are far from standardized: " + "; ".join(problems),
                    evidence, UNSCALED_FIX)]


# What converge does about unscaled inputs today (see `converge.doctor.remedies`): said the same way wherever
# the finding is shown (converge doctor, the checks at the start of converge train).
UNSCALED_FIX = ("standardize each feature with training-split statistics: converge train and converge.fit do it "
                "by default for one feature matrix [N, F], or sequences of feature vectors [N, T, F], whose first "
                "nn.Linear or recurrent layer can absorb it (unless --no-standardize / standardize=False), and "
                "--fix does it for other float inputs too (images); otherwise scale the inputs in data()")


def constant_features(x: torch.Tensor, *, warn_fraction: float = T.CONSTANT_WARN_FRACTION) -> list[Finding]:
    """Features with one value in every row: they carry nothing (info), or most of the inputs (warning)."""
    if x is None or x.shape[0] < 2:
        return []
    constant = (x == x[0:1]).all(dim=0)
    count = int(constant.sum())
    if count == 0:
        return []
    fraction = count / x.shape[1]
    indices = torch.nonzero(constant).reshape(-1)[:20].tolist()
    severity = "warning" if fraction >= warn_fraction else "info"
    return [Finding("constant_features", severity,
                    f"{count} of {x.shape[1]} feature(s) are constant in the training data",
                    {"count": count, "fraction": rounded(fraction), "features": indices,
                     "values": [rounded(x[0, i]) for i in indices]},
                    "drop the constant features (they carry no information), or check how the data was read")]


def outliers(x: torch.Tensor, *, z: float = T.OUTLIER_Z, warn_fraction: float = T.OUTLIER_WARN_FRACTION,
             warn_z: float = T.OUTLIER_WARN_Z, zero_share: float = T.OUTLIER_ZERO_SHARE,
             worst: int = 10) -> list[Finding]:
    """Rows holding a value whose robust z-score abs(x - median) / (1.4826 MAD) exceeds ``z``. Features
    whose MAD is 0 (mostly one value, e.g. sparse pixels) are skipped. In a feature that is 0 in at least
    ``zero_share`` of the rows (padding after the end of shorter sequences, sparse counts), the median and
    MAD come from its other values: with 40-50 % zeros the MAD of the whole column is a sliver, and every
    real value looked like an outlier (padded sensor traces: 40 % of rows, a warning). A `warning` needs
    ``warn_fraction`` of the rows and a value beyond ``warn_z`` (a gross error, not a heavy tail); else
    `info`."""
    if x is None or x.shape[0] < 10:
        return []
    zero_heavy = (x == 0).double().mean(dim=0) >= zero_share
    spread = torch.where(zero_heavy & (x == 0), torch.full_like(x, math.nan), x)
    median = spread.nanmedian(dim=0).values
    mad = (spread - median).abs().nanmedian(dim=0).values * 1.4826
    usable = torch.isfinite(mad) & (mad > 0)
    if not bool(usable.any()):
        return []
    scores = ((x[:, usable] - median[usable]) / mad[usable]).abs()
    row_score = scores.max(dim=1).values
    bad = row_score > z
    count = int(bad.sum())
    if count == 0:
        return []
    fraction = count / x.shape[0]
    order = row_score.argsort(descending=True)[:min(worst, count)]
    severity = "warning" if fraction >= warn_fraction and float(row_score.max()) >= warn_z else "info"
    return [Finding("outliers", severity,
                    f"{count} row(s) ({100 * fraction:.2g}%) hold values more than {z:g} robust standard "
                    "deviations from the median",
                    {"rows": count, "fraction": rounded(fraction), "z_bound": z, "max_z": rounded(row_score.max()),
                     "worst_rows": order.tolist(), "features_checked": int(usable.sum())},
                    "check those rows for entry or unit errors; clip or winsorize the features, or use a robust "
                    "loss (Huber) for regression targets")]


def input_parts(inputs) -> list[tuple[str, torch.Tensor]]:
    """Each input tensor with a name for messages: the inputs, or each of several inputs."""
    if isinstance(inputs, torch.Tensor):
        return [("inputs", inputs)]
    if isinstance(inputs, dict):
        return [(f"input {key!r}", value) for key, value in inputs.items() if isinstance(value, torch.Tensor)]
    if isinstance(inputs, (tuple, list)):
        return [(f"input {i}", value) for i, value in enumerate(inputs) if isinstance(value, torch.Tensor)]
    return []


def nonfinite_values(splits: dict) -> list[Finding]:
    """NaN/Inf counts in the inputs and targets of each split: ``{name: (inputs, targets)}``."""
    counts = {}
    for name, (inputs, targets) in splits.items():
        for role, tensor in [*input_parts(inputs), ("targets", targets)]:
            if isinstance(tensor, torch.Tensor) and tensor.dtype.is_floating_point:
                nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
                if nan or inf:
                    rows = int((~torch.isfinite(tensor.reshape(tensor.shape[0], -1))).any(dim=1).sum())
                    counts[f"{name}_{role}"] = {"nan": nan, "inf": inf, "rows": rows}
    if not counts:
        return []
    where = ", ".join(f"{key.replace('_', ' ')} ({v['nan']} NaN, {v['inf']} Inf)" for key, v in counts.items())
    return [Finding("nonfinite_values", "error", f"non-finite values in {where}", counts,
                    "impute or drop the rows with NaN/Inf in data(); converge train refuses them")]


def row_hashes(inputs: torch.Tensor) -> list[str]:
    """One digest per row of the inputs' bytes (identical rows, identical digests)."""
    rows = inputs.detach().cpu().contiguous().reshape(inputs.shape[0], -1)
    if rows.dtype.is_floating_point:
        rows = rows.float() + 0.0  # -0.0 and 0.0 hash alike
    data = rows.numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in data]


def train_val_overlap(train_inputs: torch.Tensor, others: dict, *, warn_rows: int = T.OVERLAP_WARN_ROWS
                      ) -> list[Finding]:
    """Rows of the validation/test inputs that also appear, byte for byte, in the training inputs: a
    `warning` from ``warn_rows`` rows in one split, else `info` (a row or two can repeat by chance in
    low-resolution data)."""
    if not isinstance(train_inputs, torch.Tensor):
        return []
    seen = set(row_hashes(train_inputs))
    evidence = {}
    for name, inputs in others.items():
        if not isinstance(inputs, torch.Tensor) or inputs.shape[0] == 0:
            continue
        hashes = row_hashes(inputs)
        shared = [i for i, h in enumerate(hashes) if h in seen]
        if shared:
            evidence[name] = {"rows": len(shared), "fraction": rounded(len(shared) / len(hashes)), "examples": shared[:10]}
    if not evidence:
        return []
    where = ", ".join(f"{v['rows']} {name} row(s) ({100 * v['fraction']:.2g}%)" for name, v in evidence.items())
    severity = "warning" if max(v["rows"] for v in evidence.values()) >= warn_rows else "info"
    return [Finding("train_val_overlap", severity, f"{where} also appear in the training data (leakage)",
                    evidence, "deduplicate before splitting, so validation and test measure generalization")]


def too_few_samples(n_train: int, n_params: int, num_classes: int | None, *, min_per_class: int = T.MIN_PER_CLASS,
                    min_samples: int = T.MIN_SAMPLES, max_params_per_sample: float = T.MAX_PARAMS_PER_SAMPLE,
                    unit: str = "samples", features: int | None = None,
                    min_rows_per_feature: float = T.MIN_ROWS_PER_FEATURE) -> list[Finding]:
    """Too little training data for the task (per class), for the model's size, or for the inputs' width.
    ``n_train`` counts what the loss sees: samples, or labelled positions (``unit="labelled positions"``) for
    sequences, where ``num_classes`` is None (a vocabulary is not a set of classes that each need examples).
    ``features``: the columns of a plain feature matrix [N, F] (None for images, sequences, several inputs:
    their pixels or steps are not independent features); fewer than ``min_rows_per_feature`` rows per column
    is too few."""
    problems = []
    if features and n_train < min_rows_per_feature * features:
        problems.append(f"{n_train} {unit} for {features} input features ({n_train / features:.3g} per feature, "
                        f"fewer than {min_rows_per_feature:g})")
    per_class = n_train / num_classes if num_classes else None
    if num_classes and per_class < min_per_class:
        problems.append(f"{per_class:.3g} {unit} per class (fewer than {min_per_class})")
    elif not num_classes and n_train < min_samples:
        problems.append(f"{n_train} {unit} (fewer than {min_samples})")
    ratio = n_params / max(n_train, 1)
    if ratio > max_params_per_sample:
        problems.append(f"{ratio:.3g} trainable parameters per {unit.split()[-1][:-1]} "
                        f"(more than {max_params_per_sample:g})")
    if not problems:
        return []
    evidence = {"train_samples": n_train, "counted": unit, "trainable_parameters": n_params,
                "params_per_sample": rounded(ratio)}
    if features:
        evidence.update(input_features=features, rows_per_feature=rounded(n_train / features))
    if num_classes:
        evidence.update(classes=num_classes, samples_per_class=rounded(per_class))
    return [Finding("too_few_samples", "warning", "too little training data: " + "; ".join(problems), evidence,
                    "gather more data or augment it, use a smaller model (or a pretrained one), and regularize")]
