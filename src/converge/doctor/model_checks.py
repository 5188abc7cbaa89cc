"""Model checks: small functions taking a model and one batch, returning findings. Each works on a deep
copy of the model, so the model handed in keeps its weights (and no gradients) whatever a check does.
Thresholds are documented in `converge.doctor.thresholds`."""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import torch
from torch import nn

from converge.doctor import thresholds as T
from converge.data import map_tensors, tensors_of
from converge.decide.findings import Finding, rounded
from converge.engine.objective import Objective, call_model, minimize, scores_of
from converge.engine.optim import adamw
from converge.standardize import probing, target_units


def forward(model: nn.Module, inputs):
    """The model's scores on a batch, however it takes its inputs and returns its outputs."""
    return scores_of(call_model(model, inputs))


def batch_loss(model: nn.Module, inputs, targets, loss_fn) -> torch.Tensor:
    """The loss on a batch: ``loss_fn(scores, targets)``, or, given the run's Objective, its own way (a model
    that computes its loss from the targets gets them)."""
    if isinstance(loss_fn, Objective):
        return loss_fn.forward(model, inputs, targets)[1]
    return loss_fn(forward(model, inputs), targets)


def expected_init_loss(kind: str, targets: torch.Tensor, outputs: torch.Tensor,
                       classes: int | None = None) -> tuple[float, str] | None:
    """The loss a freshly initialised model should start near, and why: ln C for C classes (uniform
    predictions; per position for sequences), ln 2 for each binary output (logits near 0), mean(y^2) for
    MSE (predictions near 0)."""
    if kind in ("classification", "sequence", "soft_labels") and (classes or outputs.ndim >= 2):
        classes = classes or outputs.shape[1]
        where = " at every position" if kind == "sequence" else ""
        return math.log(classes), f"ln {classes} (uniform predictions over the classes{where})"
    if kind in ("binary", "multilabel"):
        return math.log(2), "ln 2 (logits near 0: probability 1/2 for every output)"
    if kind == "regression":
        return float(targets.float().pow(2).mean()), "mean of the squared targets (predictions near 0)"
    return None


@torch.no_grad()
def probabilities_into_cross_entropy(model: nn.Module, inputs, class_dim: int | None) -> list[Finding]:
    """A model whose class scores are already probabilities (each in [0, 1], each row summing to 1: it ends
    in a softmax) trained with a cross-entropy, which applies a softmax of its own. Its outputs then move
    within [0, 1] as logits: the loss cannot fall below about 1.46 for 10 classes, and the model is
    confidently right on nothing (digits: accuracy 0.885 against 0.97 without the softmax, where the run's
    verdict said `underfitting` and advised a larger model). ``class_dim``: where the class scores are."""
    was_training = model.training
    model.eval()
    try:
        scores = forward(model, inputs)
    except Exception:   # noqa: BLE001 -- the other checks report a model that fails
        return []
    finally:
        model.train(was_training)
    if not isinstance(scores, torch.Tensor) or not scores.dtype.is_floating_point or scores.ndim < 2 or \
            class_dim is None or scores.shape[class_dim] < 2 or not bool(torch.isfinite(scores).all()):
        return []
    scores = scores.float()
    sums = scores.sum(dim=class_dim)
    if not (bool((scores >= 0).all()) and bool((scores <= 1).all()) and bool(((sums - 1).abs() < 1e-3).all())):
        return []
    return [Finding("probabilities_into_cross_entropy", "error",
                    "the model's outputs are already probabilities (each row sums to 1: it ends in a softmax), and "
                    "the cross-entropy applies a softmax of its own: the loss cannot get near 0 and the model "
                    "learns slowly and badly",
                    {"row_sum_min": rounded(float(sums.min())), "row_sum_max": rounded(float(sums.max())),
                     "classes": int(scores.shape[class_dim])},
                    "remove the final nn.Softmax (nn.CrossEntropyLoss takes raw scores, logits), or end in "
                    "nn.LogSoftmax with nn.NLLLoss; take a softmax of the outputs when you want probabilities")]


def init_loss_off(model: nn.Module, inputs, targets, loss_fn: Callable, kind: str, *, classes: int | None = None,
                  ratio: float = T.INIT_LOSS_RATIO) -> list[Finding]:
    """The loss at initialisation, against its expected value (for a loss whose expected value is known:
    converge's own, or a standard one the task names)."""
    model = copy.deepcopy(model).eval()
    # Batch norms as training's first step runs them, with the batch's statistics: their untrained running
    # statistics (mean 0, variance 1) leave raw inputs raw (a BatchNorm1d first on raw features: 5.1 against
    # an expected 0.69, on a model whose first training step sees standardized features).
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and len(targets) > 1:
            module.train()
    with torch.no_grad():
        outputs = forward(model, inputs)
        loss = float(batch_loss(model, inputs, targets, loss_fn))
    expected = expected_init_loss(kind, targets, outputs, classes)
    if expected is None:
        return []
    value, why = expected
    if math.isfinite(loss) and loss <= ratio * max(value, 1e-8):
        return []
    evidence = {"initial_loss": rounded(loss), "expected": rounded(value), "expected_because": why, "ratio_bound": ratio,
                "output_abs_mean": rounded(outputs.float().abs().mean())}
    return [Finding("init_loss_off", "warning",
                    f"the loss at initialisation is {loss:.4g}, more than {ratio:g}x the expected {value:.4g}",
                    evidence, "initialise the last layer smaller (outputs near 0; for classification, bias at "
                              "the log class priors) and check the input scale")]


def next_token_floor(inputs, targets, objective: Objective) -> float | None:
    """The lowest loss a model that reads each sequence left to right can reach on this batch, when the batch
    is next-token prediction: integer targets that are the inputs shifted by one, or the inputs themselves
    with the task's own loss doing the shift (``logits[:, :-1]`` against ``ids[:, 1:]``, the GPT habit).
    After a prefix that several sequences of the batch share, it can only give the share of each next token
    among them. The task's own loss scores those shares, as log-probabilities, so padding and reduction count
    as they do in training. None for any other batch. Names drawn from a small grammar (two thirds of a batch
    of 32 starting alike) cannot be fitted below 0.15x their start: the check called that a bug; so it did a
    tiny Transformer LM whose loss shifts (0.54 from 3.79, every sentence after one start token)."""
    if objective.kind != "sequence" or objective.model_loss or objective.loss_on_outputs or not (
            isinstance(inputs, torch.Tensor) and isinstance(targets, torch.Tensor)):
        return None
    if inputs.dtype.is_floating_point or targets.dtype.is_floating_point or inputs.ndim != 2 or \
            inputs.shape != targets.shape:
        return None
    if torch.equal(targets[:, :-1], inputs[:, 1:]):
        floor = _shares_loss(inputs, targets.tolist(), targets, objective)
    elif torch.equal(targets, inputs) and inputs.shape[1] > 1:
        # the loss may shift, or the task may be to copy each token (floor 0): the shares of the *next* token
        # score below a uniform guess only under a loss that shifts, so anything else is not this batch
        nexts = [row[1:] + [None] for row in inputs.tolist()]
        floor = _shares_loss(inputs, nexts, targets, objective)
        with torch.no_grad():
            uniform = float(objective.loss_fn(_scores_layout(torch.zeros(*inputs.shape, objective.classes),
                                                             objective).to(inputs.device), targets))
        if not (floor is not None and math.isfinite(uniform) and floor < uniform):
            return None
    else:
        return None
    return floor


def _shares_loss(inputs, nexts: list[list], targets, objective: Objective) -> float | None:
    """The task's loss at scores that give, after each prefix, the share of each next token among the rows of
    the batch that share it (``nexts[n][t]``: the token after ``inputs[n, :t + 1]``; None: none, a uniform
    guess)."""
    classes = objective.classes
    rows = inputs.tolist()
    after: dict[tuple, dict[int, int]] = {}
    for row, following in zip(rows, nexts):
        for t, token in enumerate(following):
            if token is not None:
                seen = after.setdefault(tuple(row[:t + 1]), {})
                seen[token] = seen.get(token, 0) + 1
    shares = torch.full((*inputs.shape, classes), 1.0 / classes)
    for n, (row, following) in enumerate(zip(rows, nexts)):
        for t, token in enumerate(following):
            if token is None:
                continue
            seen = after[tuple(row[:t + 1])]
            total = sum(seen.values())
            shares[n, t] = 0.0
            for nxt, count in seen.items():
                if 0 <= nxt < classes:
                    shares[n, t, nxt] = count / total
    scores = _scores_layout(shares.clamp_min(1e-12).log(), objective).to(inputs.device)
    with torch.no_grad():
        floor = float(objective.loss_fn(scores, targets))
    return floor if math.isfinite(floor) else None


def _scores_layout(scores: torch.Tensor, objective: Objective) -> torch.Tensor:
    """[N, T, C] scores as the task's model gives them ([N, C, T] when its classes are dimension 1)."""
    return scores.transpose(1, 2) if objective.class_dim == 1 else scores


def soft_label_floor(targets, objective: Objective) -> float | None:
    """The lowest loss any model can reach on a batch of soft labels: the task's loss at scores whose softmax
    is each target row itself (for a cross-entropy, the rows' mean entropy). A teacher's probabilities of
    0.8 for the right digit cannot be fitted below about 0.9 from a start of ln 10 = 2.3: the check called
    that a bug. None for any other batch."""
    if objective.kind != "soft_labels" or not isinstance(targets, torch.Tensor):
        return None
    with torch.no_grad():
        floor = float(objective.loss_fn(targets.clamp_min(1e-12).log(), targets))
    return floor if math.isfinite(floor) else None


def outputs_floor(model: nn.Module, inputs, targets, loss_fn, *, steps: int = T.FLOOR_STEPS) -> float | None:
    """The least loss on this batch that any outputs reach: the model's own outputs on it, freed from the
    model (each floating-point tensor the loss is given becomes a parameter), moved by L-BFGS, which needs no
    step size (targets in the thousands of kWh, from outputs near 0). No model can go lower, so a model's
    loss is judged above it. It is the floor of losses whose floor is not known in advance: a cross-entropy
    with label smoothing inside the task's own loss (a GRU's running sum of digits, smoothing 0.05: 2.306 ->
    0.288 on one batch, the smoothing's floor about 0.28, was called a bug by the bound 0.1x its start), a
    penalty that does not depend on the outputs. None for a loss the model computes itself, one that refuses
    detached outputs, or more than ``FLOOR_ELEMENTS`` output values."""
    objective = loss_fn if isinstance(loss_fn, Objective) else None
    if objective is not None and (objective.model_loss or objective.target_key):
        return None
    score = objective.loss_fn if objective is not None else loss_fn
    try:
        score = copy.deepcopy(score)   # its own copy: a loss that counts its calls, or holds parameters
    except Exception:   # noqa: BLE001 -- a loss that cannot be copied is called as it is
        pass
    try:
        with torch.no_grad(), probing(model):
            outputs = call_model(model, inputs)
        given = outputs if objective is not None and objective.loss_on_outputs else scores_of(outputs)
        free = [t.detach().float().clone().requires_grad_() for t in tensors_of(given) if t.is_floating_point()]
        if not free or sum(t.numel() for t in free) > T.FLOOR_ELEMENTS:
            return None
        order = iter(free)
        outputs_at = map_tensors(lambda t: next(order) if t.is_floating_point() else t.detach(), given)
        minimize(free, lambda: score(outputs_at, targets), steps=steps, history=T.FLOOR_HISTORY)
        with torch.no_grad():
            least = score(outputs_at, targets)
    except Exception:   # noqa: BLE001 -- a loss or model that does not take this: no floor, the bound as it was
        return None
    if not (isinstance(least, torch.Tensor) and least.numel() == 1):
        return None
    least = float(least)
    return least if math.isfinite(least) else None


def cannot_overfit_batch(model: nn.Module, inputs, targets, loss_fn: Callable, *, steps: int = T.OVERFIT_STEPS,
                         lrs: tuple = T.OVERFIT_LRS, ratio: float = T.OVERFIT_RATIO,
                         seconds: float = T.OVERFIT_SECONDS, floor: float | None = None) -> list[Finding]:
    """Train copies of the model on this one batch with Adam (one LR after another); the loss (in eval
    mode) must fall below ``ratio`` times its start, or, above a ``floor`` no model can pass (the batch's
    `next_token_floor` or `soft_label_floor`), to within ``ratio`` of the way from its start down to it. A
    model that misses that is judged again above the floor its outputs themselves reach (`outputs_floor`)
    before it is failed. A model that cannot memorise one small batch has a bug (inputs ignored, gradients
    cut) or too little capacity. Each LR gets at most ``seconds``: a slow model that has not got there by
    then is not judged (said as information), never failed."""
    low = floor or 0.0
    tried = []
    for lr in lrs:
        start, end, used = _overfit(copy.deepcopy(model), inputs, targets, loss_fn, lr, steps, ratio, seconds,
                                    low)
        tried.append({"lr": lr, "start_loss": rounded(start), "end_loss": rounded(end), "steps": used})
        if _reached(start, end, low, ratio):
            return []
    evidence = {"batch_size": len(targets), "ratio_bound": ratio, "tries": tried, "seconds_per_lr": seconds}
    bound = f"{ratio:g}x its start"
    if floor is not None:
        evidence["floor"] = rounded(floor)
        bound = f"{ratio:g}x of the way from its start to {floor:.4g}, the least any model can reach on this batch"
    if any(t["steps"] < steps for t in tried if t["end_loss"] is not None):
        return [Finding("cannot_overfit_batch", "info",
                        f"not judged: fitting one batch of {len(targets)} samples took longer than {seconds:g} s per "
                        f"LR before the loss fell to {bound}", evidence, "")]
    judged = [t for t in tried if t["end_loss"] is not None and t["start_loss"] is not None]
    reachable = outputs_floor(model, inputs, targets, loss_fn) if judged else None
    # a floor within FLOOR_NEGLIGIBLE of the way down is the bound as it was (a plain loss: about 0); one
    # above what the model itself reached is no floor (the search fell short)
    if reachable is not None and reachable > low + T.FLOOR_NEGLIGIBLE * (max(t["start_loss"] for t in judged) - low):
        evidence["outputs_floor"] = rounded(reachable)
    if "outputs_floor" in evidence and reachable <= min(t["end_loss"] for t in judged):
        if any(_reached(t["start_loss"], t["end_loss"], reachable, ratio) for t in judged):
            return []
        bound = (f"{ratio:g}x of the way from its start to {reachable:.4g}, the least its outputs themselves "
                 f"reach on this batch")
    if _draws_at_random(model, inputs, targets, loss_fn):
        return [Finding("cannot_overfit_batch", "info",
                        f"not judged: the loss on one batch of {len(targets)} samples changes from one call to the "
                        f"next in eval mode (random views or noise inside forward, or a loss that samples): such "
                        f"a batch has no fixed answer to memorise", evidence, "")]
    return [Finding("cannot_overfit_batch", "error",
                    f"the model cannot fit a single batch of {len(targets)} samples: the loss stays above "
                    f"{bound} after {steps} Adam steps", evidence,
                    "look for a bug (inputs detached or ignored, a wrong loss, frozen layers) or add capacity")]


def _reached(start: float, end: float, floor: float, ratio: float) -> bool:
    return math.isfinite(end) and end <= floor + ratio * (start - floor)


def _draws_at_random(model: nn.Module, inputs, targets, loss_fn) -> bool:
    """Whether the loss on the same batch, in eval mode, differs between two calls (a model that augments its
    inputs inside forward: a SimCLR-style model's two noisy views, under an NT-Xent loss, was called a bug)."""
    model = copy.deepcopy(model).eval()
    try:
        with torch.no_grad():
            first, second = (float(batch_loss(model, inputs, targets, loss_fn)) for _ in range(2))
    except Exception:   # noqa: BLE001 -- the other checks report a model or loss that fails
        return False
    return math.isfinite(first) and math.isfinite(second) and abs(first - second) > 1e-6 * (abs(first) + 1e-12)


class AtTargetScale(nn.Module):
    """The model with its output mapped to ``output * std + mean``: the same functions, started at the targets'
    scale instead of near 0 (for the overfit check on raw regression targets that training leaves raw)."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, *args, **kwargs):
        return target_units(self.model(*args, **kwargs), self.mean, self.std)


def _overfit(model, inputs, targets, loss_fn, lr, steps, ratio, seconds=math.inf,
             floor: float = 0.0) -> tuple[float, float, int]:
    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(batch_loss(model, inputs, targets, loss_fn))

    deadline = time.monotonic() + seconds
    start = eval_loss()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return start, start, 0
    optimizer = adamw(params, lr=lr, weight_decay=0.0)  # Adam: without weight decay the two are one
    end = start
    for step in range(1, steps + 1):
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(model, inputs, targets, loss_fn)
        if not loss.requires_grad or not torch.isfinite(loss):
            return start, float(loss), step
        loss.backward()
        optimizer.step()
        out_of_time = time.monotonic() > deadline
        if step % 25 == 0 or step == steps or out_of_time:  # an eval-mode loss (no dropout) every 25 steps
            end = eval_loss()
            if _reached(start, end, floor, ratio) or out_of_time:
                return start, end, step
    return start, end, steps


def layer_gradient_norms(model: nn.Module, inputs, targets, loss_fn: Callable) -> list[tuple[str, float, float]]:
    """(name, gradient norm, weight norm) of each weight with ndim >= 2, in registration order (input to
    output for a Sequential), after one backward pass at initialisation. Embedding tables are left out: a
    batch touches a few of their rows, so their gradient norm says how many rows it touched, not how deep
    the layer sits (a district embedding beside raw numeric columns read as gradients 47,000x smaller than
    the last layer's: "vanishing")."""
    model = copy.deepcopy(model).train()
    model.zero_grad(set_to_none=True)
    batch_loss(model, inputs, targets, loss_fn).backward()
    tables = {id(module.weight) for module in model.modules() if isinstance(module, (nn.Embedding, nn.EmbeddingBag))}
    return [(name, float(p.grad.norm()), float(p.detach().norm())) for name, p in model.named_parameters()
            if p.ndim >= 2 and p.grad is not None and id(p) not in tables]


def gradient_flow(norms: list[tuple[str, float, float]], *, vanishing: float = T.VANISHING_RATIO,
                  exploding: float = T.EXPLODING_RATIO, relative: float | None = T.EXPLODING_RELATIVE
                  ) -> list[Finding]:
    """Vanishing or exploding gradients from per-layer norms: the first layer's gradient norm over the
    last layer's (below ``vanishing``: vanishing; above ``exploding``: exploding), or any layer whose
    gradient norm is more than ``relative`` times its weights' norm (exploding everywhere at once).
    ``relative`` None leaves the second test out: it reads the loss's scale, which only a mean over the
    samples fixes (a VAE's loss summed over a batch of images had gradients 400x its weights, and trained
    well: Adam does not see the scale)."""
    if len(norms) < 2:
        return []
    evidence = {"layers": [{"name": n, "grad_norm": rounded(g, 3), "weight_norm": rounded(w, 3)} for n, g, w in norms]}
    if not all(math.isfinite(g) for _, g, _ in norms):
        return [Finding("exploding_gradients", "error", "gradients at initialisation are NaN or infinite",
                        evidence, "lower the initial weight scale, normalize the inputs, add normalization layers")]
    first, last = norms[0][1], norms[-1][1]
    ratio = first / last if last > 0 else math.inf
    largest = max(g / w if w > 0 else 0.0 for _, g, w in norms)
    evidence.update(first_over_last=rounded(ratio, 3), max_grad_over_weight=rounded(largest, 3),
                    bounds={"vanishing": vanishing, "exploding": exploding, "relative": relative})
    if relative is None:
        relative = math.inf
    if ratio < vanishing:
        return [Finding("vanishing_gradients", "warning",
                        f"gradients shrink {1 / max(ratio, 1e-300):.3g}x from the last layer to the first at "
                        "initialisation", evidence,
                        "use ReLU-family activations with He initialisation, residual connections or "
                        "normalization layers; avoid deep stacks of sigmoid/tanh")]
    if ratio > exploding or largest > relative:
        what = (f"grow {ratio:.3g}x from the last layer to the first" if ratio > exploding else
                f"reach {largest:.3g}x the weights' norm")
        return [Finding("exploding_gradients", "warning", f"gradients at initialisation {what}",
                        evidence, "lower the initial weight scale (default or He initialisation), normalize the "
                                  "inputs and targets, add normalization layers, clip gradients (--clip-grad)")]
    return []


RELU_TYPES = (nn.ReLU, nn.ReLU6)


def relu_activity(model: nn.Module, inputs) -> dict[str, tuple[int, int]]:
    """{layer: (dead units, units)} for every ReLU module call on the batch (eval mode). A unit is a
    channel (dim 1) and is dead when it is 0 for every sample and position."""
    model = copy.deepcopy(model).eval()
    activity: dict[str, tuple[int, int]] = {}
    calls: dict[str, int] = {}

    def hook(name):
        def record(module, args, output):
            if not isinstance(output, torch.Tensor) or output.ndim < 2:
                return
            calls[name] = calls.get(name, 0) + 1
            key = name if calls[name] == 1 else f"{name}#{calls[name]}"
            alive = (output.detach() > 0).transpose(0, 1).reshape(output.shape[1], -1).any(dim=1)
            activity[key] = (int((~alive).sum()), int(alive.numel()))
        return record

    handles = [m.register_forward_hook(hook(n or "relu")) for n, m in model.named_modules()
               if isinstance(m, RELU_TYPES)]
    try:
        with torch.no_grad():
            forward(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return activity


def dead_units(activity: dict[str, tuple[int, int]], *, warn_fraction: float = T.DEAD_WARN_FRACTION
               ) -> list[Finding]:
    """ReLU units never active on the batch: a `warning` when a layer has at least ``warn_fraction`` of
    them, `info` for a few."""
    dead = {name: counts for name, counts in activity.items() if counts[0]}
    if not dead:
        return []
    layers = [{"layer": name, "dead": d, "units": u, "fraction": rounded(d / u)} for name, (d, u) in dead.items()]
    worst = max(layers, key=lambda layer: layer["fraction"])
    severity = "warning" if worst["fraction"] >= warn_fraction else "info"
    total = sum(d for d, _ in dead.values())
    return [Finding("dead_units", severity,
                    f"{total} ReLU unit(s) never activate on a batch; worst layer {worst['layer']} "
                    f"({100 * worst['fraction']:.0f}% dead)",
                    {"layers": layers, "warn_fraction": warn_fraction},
                    "check the input scale and the biases' initialisation; lower the LR; consider LeakyReLU/GELU")]


def output_mismatch(message: str, evidence: dict | None = None) -> list[Finding]:
    """The finding for an objective that cannot be resolved (converge's own check failed with ``message``)."""
    return [Finding("output_mismatch", "error", message, dict(evidence or {}),
                    "make the last layer's output fit the targets: C outputs for labels 0..C-1 "
                    "(cross-entropy), the target's shape for MSE, or define `loss` in the task")]
