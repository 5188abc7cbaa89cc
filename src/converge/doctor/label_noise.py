"""Label noise by confident learning (Northcutt, Jiang & Chuang, "Confident Learning: Estimating
Uncertainty in Dataset Labels", JAIR 70, 2021), implemented here so that cleanlab is not a dependency:

1. out-of-sample predicted probabilities P (rows x classes) from k-fold trainings of a cheap proxy;
2. per-class thresholds t_j = mean of P[i, j] over the rows labelled j (the class's self-confidence);
3. the confident joint C[i][j]: rows labelled i whose P[row, j] >= t_j for some j, counted at the
   largest such P[row, j];
4. calibrate C so that row i sums to the count of label i, normalise to the joint Q (sum 1); the
   estimated noise rate is the off-diagonal mass 1 - trace(Q);
5. prune by noise rate: for each i != j, the round(n Q[i][j]) rows labelled i with the largest margin
   P[row, j] - P[row, i] are label issues.

Confident learning is only as good as the proxy. Where the proxy itself cannot read the inputs well
(augmented or hard images for an MLP on pixels), its confident out-of-fold errors look exactly like flipped
labels: clean digits shifted by up to 2 pixels "had" 30 % noise. cleanlab (2.9) on the same probabilities
flags the same rows, so the library would not help; what tells the two apart is the proxy's own error on
the rows it does *not* flag (`proxy_error`, the proxy trained again k-fold on those rows alone). Where the
flags are label noise, the rest is clean and the proxy is accurate on it (digits with 10 % / 30 % flipped
labels: 3.2 % / 6.3 % error, against an estimated 14 % / 40 % noise); where they are the proxy's errors, it
errs on the rest about as often as it flagged (shifted digits: 29 % against 34 %; noisier ones: 20 % against
19 %). The estimate is a warning only when that error is at most ``NOISE_PROXY_SHARE`` of the estimated rate.

Nor are labels that disagree with the inputs always wrong. Where the classes overlap (a default drawn from a
logistic model of income and debt, a diagnosis the measurements cannot settle), a share of the labels
disagrees with the likelier class by nature, and confident learning counts it as noise: 19-27 % on such
loan tasks. Dropping those rows removes the evidence that the classes overlap and makes the model
overconfident (a loan task: test loss 0.456 / 0.451 -> 0.464 / 0.670 with --drop-label-issues). What tells
the two apart is where the flagged rows sit in the proxy's confidence (`where_flagged`). Flipped labels
land anywhere, so the flagged rows are as confident as the rest of their predicted class, and as frequent
among the most confident rows as overall. Labels drawn near a class boundary sit where the proxy is least
sure on both counts (`classes_overlap`; measured on 39 generated cases and 18 held out, see thresholds.py).
"""

from __future__ import annotations

import torch
from torch import nn

from converge.doctor import thresholds as T
from converge.decide.findings import Finding
from converge.engine.optim import adamw


def confident_joint(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """C[i][j] (classes x classes, integer counts), steps 2 and 3 above."""
    classes = probs.shape[1]
    thresholds = torch.stack([probs[labels == j, j].mean() if bool((labels == j).any()) else probs.new_tensor(1.0)
                              for j in range(classes)])
    above = probs >= thresholds - 1e-6
    masked = torch.where(above, probs, torch.full_like(probs, -1.0))
    confident = above.any(dim=1)
    guess = masked.argmax(dim=1)
    joint = torch.zeros(classes, classes, dtype=torch.long)
    joint.index_put_((labels[confident], guess[confident]), torch.ones(int(confident.sum()), dtype=torch.long),
                     accumulate=True)
    return joint


def noise_joint(joint: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Q: the confident joint calibrated to the label counts and normalised to sum 1 (step 4)."""
    classes = joint.shape[0]
    label_counts = torch.bincount(labels, minlength=classes).double()
    rows = joint.double().sum(dim=1, keepdim=True)
    calibrated = torch.where(rows > 0, joint.double() / rows.clamp(min=1) * label_counts[:, None],
                             torch.diag(label_counts))
    return calibrated / calibrated.sum()


def find_label_issues(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor]:
    """(a bool mask of label issues, the estimated noise rate, Q), by pruning by noise rate (step 5)."""
    probs, labels = probs.double(), labels.long()
    joint = noise_joint(confident_joint(probs, labels), labels)
    n, classes = len(labels), probs.shape[1]
    issues = torch.zeros(n, dtype=torch.bool)
    for i in range(classes):
        rows = torch.nonzero(labels == i).reshape(-1)
        for j in range(classes):
            count = min(int(round(n * float(joint[i, j]))), len(rows)) if i != j else 0
            if count:
                margin = probs[rows, j] - probs[rows, i]
                issues[rows[margin.argsort(descending=True)[:count]]] = True
    noise_rate = float(1.0 - joint.trace())
    return issues, noise_rate, joint


def out_of_sample_probs(x: torch.Tensor, labels: torch.Tensor, classes: int, *, folds: int = T.NOISE_FOLDS,
                        seed: int = 0, epochs: int = 40, hidden: int = 64) -> torch.Tensor:
    """Predicted probabilities for every row from a proxy that never saw it: a one-hidden-layer MLP on
    standardized flattened inputs, trained on the other k-1 folds (AdamW, a few dozen epochs)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    probs = torch.full((len(labels), classes), 1.0 / classes)
    for fold in range(folds):
        held = order[fold::folds]
        train = torch.ones(len(labels), dtype=torch.bool)
        train[held] = False
        mean, std = x[train].mean(0), x[train].std(0).clamp(min=1e-8)
        model = _fit_proxy((x[train] - mean) / std, labels[train], classes, generator, epochs, hidden)
        with torch.no_grad():
            probs[held] = model((x[held] - mean) / std).softmax(dim=1)
    return probs


def _fit_proxy(x, y, classes, generator, epochs, hidden) -> nn.Module:
    torch_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch_seed)
        model = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, classes))
        optimizer = adamw(model.parameters(), lr=3e-3, weight_decay=1e-2)
        batch = max(32, min(256, len(y) // 20))
        for _ in range(epochs):
            for rows in torch.randperm(len(y)).split(batch):
                optimizer.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(x[rows]), y[rows]).backward()
                optimizer.step()
    return model.eval()


def proxy_error(x: torch.Tensor, labels: torch.Tensor, issues: torch.Tensor, classes: int, *,
                seed: int = 0) -> float:
    """The proxy's own out-of-fold error rate on the rows confident learning did not flag: the same k-fold
    proxy trained on those rows alone (see the module text)."""
    keep = ~issues
    probs = out_of_sample_probs(x[keep], labels[keep], classes, seed=seed)
    return float((probs.argmax(dim=1) != labels[keep]).double().mean())


def where_flagged(probs: torch.Tensor, issues: torch.Tensor, *, min_flagged: int = T.NOISE_OVERLAP_MIN_FLAGGED
                  ) -> dict | None:
    """Where the flagged rows sit in the proxy's confidence (its largest probability), as two numbers:

    * ``confidence_rank``: the chance that a flagged row is more confident than an unflagged row that the
      proxy assigns to the same class (ties count half), averaged over the flagged rows' classes: 0.5 when
      the flags land anywhere, lower when they gather where the proxy is unsure;
    * ``top_quarter_share``: the flagged share of the proxy's most confident quarter of rows over the flagged
      share of all rows: about 1 when the flags land anywhere, near 0 when confident rows are never flagged.

    None with fewer than ``min_flagged`` flagged or unflagged rows: too few to say."""
    issues = issues.bool()
    flagged = int(issues.sum())
    if flagged < min_flagged or len(issues) - flagged < min_flagged:
        return None
    confidence, predicted = probs.double().max(dim=1)
    weighted = 0.0
    counted = 0
    for cls in predicted[issues].unique():
        same = predicted == cls
        mine, others = confidence[issues & same], confidence[~issues & same]
        if len(others) == 0:
            continue
        higher = (mine[:, None] > others[None, :]).double().mean()
        above = higher + 0.5 * (mine[:, None] == others[None, :]).double().mean()
        weighted += float(above) * len(mine)
        counted += len(mine)
    if counted == 0:
        return None
    most_confident = confidence >= confidence.quantile(0.75)
    top_share = float(issues[most_confident].double().mean() / issues.double().mean())
    return {"confidence_rank": round(weighted / counted, 3), "top_quarter_share": round(top_share, 3)}


def classes_overlap(where: dict | None, *, rank_below: float = T.NOISE_OVERLAP_RANK,
                    top_share_below: float = T.NOISE_OVERLAP_TOP_SHARE) -> bool:
    """Whether the flagged rows read as overlapping classes rather than wrong labels (see the module text):
    they gather where the proxy is unsure within their predicted class *and* among all rows."""
    return where is not None and where["confidence_rank"] < rank_below and where["top_quarter_share"] < top_share_below


def label_noise_finding(probs: torch.Tensor, labels: torch.Tensor, *, indices: torch.Tensor | None = None,
                        warn_rate: float = T.NOISE_WARN, min_per_class: float = T.NOISE_MIN_PER_CLASS,
                        worst: int = 20, extra: dict | None = None, own_error: float | None = None,
                        proxy_share: float = T.NOISE_PROXY_SHARE) -> tuple[list[Finding], torch.Tensor]:
    """The `label_noise` finding from out-of-sample probabilities, and the issue mask (rows of ``probs``).
    ``indices`` map rows back to positions in the whole split. It is a warning when the estimated rate
    reaches ``warn_rate``, the proxy had at least ``min_per_class`` rows per class (on average): with
    fewer, the proxy's own out-of-fold errors are as frequent as the noise it would find (on clean digits
    with 12 rows per class it "found" 11-15 %), and the proxy's ``own_error`` (`proxy_error`; None: not
    measured) is at most ``proxy_share`` of the estimated rate. When that error is larger, the flags are the
    proxy's errors as much as the labels': the finding is information and flags no rows (nothing for
    --drop-label-issues to drop). So it is when the flagged rows gather where the proxy is unsure
    (`classes_overlap`): the classes overlap, and those labels are uncertain, not wrong."""
    issues, rate, joint = find_label_issues(probs, labels)
    count = int(issues.sum())
    if count == 0:
        return [], issues
    unreadable = own_error is not None and own_error > proxy_share * rate
    self_confidence = probs.double()[torch.arange(len(labels)), labels]
    flagged = torch.nonzero(issues).reshape(-1)
    worst_rows = flagged[self_confidence[flagged].argsort()][:worst]
    position = indices[worst_rows] if indices is not None else worst_rows
    evidence = {"noise_rate": float(f"{rate:.4g}"), "issues": count, "rows_checked": len(labels),
                "worst_indices": position.tolist(),
                "worst_given_labels": labels[worst_rows].tolist(),
                "worst_predicted": probs[worst_rows].argmax(dim=1).tolist(), **(extra or {})}
    if joint.shape[0] <= 20:
        evidence["noise_joint"] = [[float(f"{v:.3g}") for v in row] for row in joint.tolist()]
    per_class = len(labels) / max(int((torch.bincount(labels.long()) > 0).sum()), 1)
    evidence["rows_per_class"] = round(per_class, 1)
    judged = per_class >= min_per_class
    where = None if unreadable else where_flagged(probs, issues)
    if where is not None:
        evidence["flagged_where"] = where
    overlap = classes_overlap(where)
    severity = "warning" if rate >= warn_rate and judged and not unreadable and not overlap else "info"
    caveat = "" if judged else (f"; with {per_class:.0f} rows per class (fewer than {min_per_class:g}) the proxy's "
                                "own errors cannot be told apart from label noise")
    fix = "review the flagged samples (worst_indices); converge train --drop-label-issues leaves them out of training"
    if own_error is not None:
        evidence["proxy_error_on_unflagged"] = float(f"{own_error:.4g}")
    if unreadable:
        caveat += (f"; but the proxy model errs on {100 * own_error:.1f}% of the rows it does not flag, about as "
                   f"often: its own errors (inputs it reads poorly, such as augmented or hard images) cannot be "
                   f"told apart from label noise")
        fix = ("nothing to conclude from this proxy: review a few of worst_indices by hand if in doubt; "
               "--drop-label-issues drops none of them")
        issues = torch.zeros_like(issues)
    elif overlap:
        caveat += (f"; they gather where the proxy is least sure (confidence rank {where['confidence_rank']:.2f} "
                   f"within their class, 0.5 if spread evenly; {where['top_quarter_share']:.2f}x as often among its "
                   f"most confident quarter of rows as overall), as where classes overlap: uncertain labels, not "
                   f"wrong ones")
        fix = ("nothing to drop: near a class boundary the same inputs carry either label, and dropping those rows "
               "makes the model overconfident; judge the model by its loss, which prices that uncertainty. If "
               "annotators may have erred on hard cases, review a few of worst_indices; --drop-label-issues "
               "drops none of them")
        issues = torch.zeros_like(issues)
    reading = "disagree with the likelier class" if overlap else "look wrong"
    return [Finding("label_noise", severity,
                    f"about {100 * rate:.1f}% of training labels {reading} (confident learning); {count} "
                    f"sample(s) flagged{caveat}", evidence, fix)], issues
