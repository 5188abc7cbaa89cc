"""Input standardization, z = (x - mean) / std per flattened feature (per feature over every position for
sequences [N, T, F]), and how a trained model keeps taking raw inputs afterwards: folded into the layer
that reads them first, an nn.Linear (W' = W / std per input column, b' = b - W' mean) or a recurrent
layer's input projection (the same on ``weight_ih_l0``, ``bias_ih_l0``, both directions), or, when there is
no such layer, applied by a forward pre-hook from statistics saved beside the weights
(``standardize.json``, read by `converge.load_weights`). Regression targets the same way,
z = (y - mean) / std per target column, folded into the model's last nn.Linear (y = z std + mean).

Plain tensor functions: `converge doctor`'s remedies use them, and so does loading weights."""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from converge.calling import call_model, like, move_to


# The largest standard score a training value may get. A feature that is nearly constant with rare large
# values (a pixel lit in 2 of 1078 digits) has a tiny std: divided by it, a value it takes in validation
# reaches z of several hundred, and one such input dominates the logits (raw digits as numpy arrays: test loss
# 0.106 / 0.232 / 0.113 standardized, 0.058 / 0.072 / 0.072 with this cap, 0.055 / 0.057 / 0.071 for the classic
# loop on the raw pixels). Such a feature is scaled by its largest deviation / MAX_STANDARD_SCORE instead, so
# its training values stay within +-10. A bell-shaped feature never reaches the cap (its largest |z| over a
# million rows is about 5), so it keeps its std; so does a 0/1 flag set in more than 1 % of the rows.
MAX_STANDARD_SCORE = 10.0


def standardization(inputs: torch.Tensor, per_position: bool = True,
                    max_score: float | None = MAX_STANDARD_SCORE) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and scale of the (flattened) training inputs; with ``per_position=False``, of the last
    dimension over every other (a sequence's F features over all N x T steps, which a recurrent layer or a
    per-step nn.Linear reads with the same weights at every step). The scale is the std, or the largest
    deviation from the mean / ``max_score`` when that is larger (see ``MAX_STANDARD_SCORE``; None: the std
    always, as for regression targets). A constant feature gets scale 1."""
    x = _features(inputs, per_position).double()
    mean, std = x.mean(0), x.std(0) if x.shape[0] > 1 else torch.ones(x.shape[1], dtype=torch.float64)
    std = torch.where(std > 0, std, torch.ones_like(std))
    if max_score is not None:
        std = torch.maximum(std, _largest_deviation(x, mean) / max_score)
    return mean.to(inputs.dtype), std.to(inputs.dtype)


def capped_features(inputs: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, per_position: bool = True,
                    max_score: float = MAX_STANDARD_SCORE) -> int:
    """How many features `standardization` scaled by their largest deviation rather than their std."""
    x = _features(inputs, per_position)   # the extremes in the inputs' own dtype: no float64 copy of the data
    if x.shape[0] < 2:
        return 0
    largest = torch.maximum(x.amax(0).double() - mean.double(), mean.double() - x.amin(0).double()) / std.double()
    return int((largest >= max_score * (1 - 1e-6)).sum())


def _features(inputs: torch.Tensor, per_position: bool) -> torch.Tensor:
    return inputs.reshape(inputs.shape[0], -1) if per_position else inputs.reshape(-1, inputs.shape[-1])


def _largest_deviation(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """max |x - mean| per column, from the column's extremes (no copy of the data the size of ``x``)."""
    return torch.maximum(x.amax(0) - mean, mean - x.amin(0))


def default_layout(inputs: Any) -> str | None:
    """What converge standardizes by default (when unscaled, and when it folds): "matrix" for one float feature
    matrix [N, F], statistics per feature; "sequences" for one float tensor [N, T, F], statistics per feature
    over every step; None for anything else (token ids, images, several inputs, dicts)."""
    if not isinstance(inputs, torch.Tensor) or not inputs.dtype.is_floating_point or inputs.ndim not in (2, 3) \
            or inputs.shape[-1] == 0:
        return None
    return "matrix" if inputs.ndim == 2 else "sequences"


def standardize(inputs: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """z = (x - mean) / std, with statistics per flattened feature, or per last-dimension feature (one value
    per feature of a sequence, `standardization(per_position=False)`)."""
    shape = inputs.shape
    if inputs.ndim > 2 and mean.numel() == shape[-1] != math.prod(shape[1:]):
        return (inputs - mean.to(inputs.device)) / std.to(inputs.device)
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


def _absorbs(layer: nn.Module, features: int) -> bool:
    """Whether ``layer`` can take a standardization of its ``features`` inputs into its parameters: an
    nn.Linear, or a recurrent layer (nn.RNN, nn.GRU, nn.LSTM) with biases, whose first layer projects each
    step's inputs with ``weight_ih_l0`` and ``bias_ih_l0``."""
    if isinstance(layer, nn.Linear):
        return layer.in_features == features
    return isinstance(layer, nn.RNNBase) and layer.input_size == features and bool(layer.bias)


def _projections(layer: nn.Module) -> list[tuple[str, str]]:
    """The (weight, bias) parameter names that read the layer's inputs."""
    if isinstance(layer, nn.Linear):
        return [("weight", "bias")]
    return [(f"weight_ih_l0{s}", f"bias_ih_l0{s}") for s in ("", "_reverse")[: 2 if layer.bidirectional else 1]]


@torch.no_grad()
def _fold_into(layer: nn.Module, mean: torch.Tensor, std: torch.Tensor, offset: int = 0) -> None:
    """W' = W / std per input column, b' = b - W' mean, in place (an nn.Linear without a bias gets one).
    ``offset``: the standardized features are the layer's input columns from there on (an nn.Linear that
    reads them concatenated with others)."""
    if isinstance(layer, nn.Linear) and layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(layer.out_features, device=layer.weight.device, dtype=layer.weight.dtype))
    for weight_name, bias_name in _projections(layer):
        weight, bias = getattr(layer, weight_name).detach().clone(), getattr(layer, bias_name)
        columns = weight[:, offset:offset + mean.numel()]
        columns.mul_((1.0 / std).to(weight.device, weight.dtype))
        bias.sub_(columns @ mean.to(weight.device, weight.dtype))
        _set_weight(layer, weight_name, weight)


def _set_weight(layer: nn.Module, name: str, value: torch.Tensor) -> None:
    """``layer.<name> = value`` in place. A parametrized weight (weight_norm, spectral_norm) is computed on
    each read, so writing into what a read returns changes nothing: it is assigned, which goes through the
    parametrization's right_inverse (one without it cannot take a fold)."""
    if parametrize.is_parametrized(layer, name):
        setattr(layer, name, value)
    else:
        getattr(layer, name).copy_(value)


@torch.no_grad()
def foldable_layer(model: nn.Module, probe: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                   tolerance: float = 1e-3) -> str | None:
    """The name of the layer into which z = (x - mean) / std can be folded, for any model (not only
    nn.Sequential): the first nn.Linear or recurrent layer called on the raw input itself, on a forward of
    ``probe`` (a few raw rows), and only when the folded model on raw rows gives what the model gives on
    standardized rows (largest difference at most ``tolerance`` x (largest output + 1); this rules out inputs
    that also reach the model another way). None when there is no such layer. Neither the model (its
    parameters are folded for the check and put back) nor its train/eval modes change. A model that returns
    a tuple, list or dict of tensors is judged on every one of them."""
    device = next((p.device for p in model.parameters()), probe.device)
    probe = probe.to(device)
    found = first_linear(model, mean.numel())
    name = found[0] if found is not None else _first_reader_called(model, probe)
    if name is None:
        return None
    layer = model if name == "(model)" else model.get_submodule(name)
    if not _absorbs(layer, mean.numel()):
        return None
    standardized = standardize(probe, mean.to(probe.dtype), std.to(probe.dtype))
    return name if _fold_matches(model, layer, mean, std, 0, lambda: model(standardized), lambda: model(probe),
                                 tolerance) else None


@torch.no_grad()
def _fold_matches(model: nn.Module, layer: nn.Module, mean: torch.Tensor, std: torch.Tensor, offset: int,
                  on_standardized: Callable[[], Any], on_raw: Callable[[], Any], tolerance: float) -> bool:
    """Whether, with the standardization folded into ``layer`` (from input column ``offset``), the model on
    raw inputs (``on_raw``) gives what it gives on standardized ones (``on_standardized``): largest
    difference at most ``tolerance`` x (largest output + 1). The layer's parameters and every module's
    train/eval mode are put back."""
    modes = {module: module.training for module in model.modules()}
    # its whole state: a parametrized weight lives in the layer's parametrizations (weight_norm's g and v)
    saved = {key: value.detach().clone() for key, value in layer.state_dict().items()}
    had_bias = not isinstance(layer, nn.Linear) or layer.bias is not None
    model.eval()
    try:
        expected = on_standardized()
        _fold_into(layer, mean, std, offset)
        folded = on_raw()
    except Exception:   # a model that fails on the probe: not judged, not folded  # noqa: BLE001
        return False
    finally:
        if not had_bias:
            layer.bias = None
        layer.load_state_dict(saved)
        for module, training in modes.items():
            module.training = training
    if not isinstance(expected, torch.Tensor):   # several outputs (heads): every one must be kept
        pairs = list(zip(_leaves(expected), _leaves(folded)))
        return bool(pairs) and len(pairs) == len(_leaves(expected)) and \
            all(_close(want, got, tolerance) for want, got in pairs)
    return _close(expected, folded, tolerance)


def _close(expected: Any, folded: Any, tolerance: float) -> bool:
    """Two outputs of one shape within ``tolerance`` x (largest expected value + 1), the expected all finite."""
    if not isinstance(expected, torch.Tensor) or not isinstance(folded, torch.Tensor) or \
            expected.shape != folded.shape or not bool(torch.isfinite(expected).all()):
        return False
    gap = float((folded.float() - expected.float()).abs().max()) if expected.numel() else 0.0
    return gap <= tolerance * (float(expected.float().abs().max()) + 1.0)


def _leaves(value: Any) -> list:
    """The tensors (and anything else) of a tuple, list or dict of outputs, in order."""
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def _first_reader_called(model: nn.Module, probe: torch.Tensor,
                         kinds: tuple[type, ...] = (nn.Linear, nn.RNNBase)) -> str | None:
    """The first module of ``kinds`` (by default an nn.Linear or a recurrent layer) a forward of ``probe``
    calls with the probe itself (same shape and values)."""
    names = {module: name for name, module in model.named_modules() if isinstance(module, kinds)}
    calls: list[str] = []

    def record(module, args):
        if not calls and args and isinstance(args[0], torch.Tensor) and args[0].shape == probe.shape \
                and torch.equal(args[0], probe):
            calls.append(names[module])

    handles = [module.register_forward_pre_hook(record) for module in names]
    try:
        with probing(model, handles), torch.no_grad():
            model(probe)
    except Exception:   # noqa: BLE001 -- a model that cannot be probed this way is not folded into
        return None
    return calls[0] if calls else None


def numeric_part(inputs: Any):
    """Of several inputs (a tuple, list or dict), the key of the one float feature matrix [N, F]: the numeric
    columns beside category ids, standardized by default like a feature matrix alone when the model's first
    nn.Linear reads them unchanged (`foldable_part`). None otherwise (one input tensor, or several float
    matrices: which to fold would be a guess)."""
    items = inputs.items() if isinstance(inputs, dict) else enumerate(inputs) if isinstance(inputs, (tuple, list)) \
        else ()
    parts = [key for key, value in items if default_layout(value) == "matrix"]
    return parts[0] if len(parts) == 1 else None


def with_part(inputs: Any, key, value: torch.Tensor) -> Any:
    """``inputs`` (a tuple, list or dict) with the part at ``key`` replaced."""
    if isinstance(inputs, dict):
        return {**inputs, key: value}
    return like(inputs, (value if i == key else part for i, part in enumerate(inputs)))


@torch.no_grad()
def foldable_part(model: nn.Module, probe: Any, key, mean: torch.Tensor, std: torch.Tensor,
                  tolerance: float = 1e-3) -> tuple[str, int] | None:
    """Where z = (x - mean) / std of one part of several inputs (``probe[key]``, a float matrix [n, F]) can
    be folded: (the name of the first nn.Linear a forward of ``probe`` calls on an input that holds the part's
    columns unchanged, side by side from some column on, and that column). The usual tabular network
    concatenates its numeric columns with its categories' embeddings before its first nn.Linear, so the fold
    is W' = W / std and b' = b - W' mean on those columns alone. Only when the folded model on raw inputs
    gives what the model gives with the part standardized (as `foldable_layer`); None otherwise. Neither
    the model nor its train/eval modes change."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    probe = move_to(probe, device)
    part = probe[key]
    features = part.shape[1]
    names = {module: name or "(model)" for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    seen: list[tuple[str, int]] = []

    def record(module, args):
        if seen or not args or not isinstance(args[0], torch.Tensor) or args[0].ndim != 2 or \
                args[0].shape[0] != part.shape[0] or args[0].shape[1] < features:
            return
        given = args[0]
        for offset in range(given.shape[1] - features + 1):
            if torch.equal(given[:, offset:offset + features], part.to(given.dtype)):
                seen.append((names[module], offset))
                return

    handles = [module.register_forward_pre_hook(record) for module in names]
    try:
        with probing(model, handles):
            call_model(model, probe)
    except Exception:   # noqa: BLE001 -- a model that cannot be probed this way is not folded into
        return None
    if not seen:
        return None
    name, offset = seen[0]
    layer = model if name == "(model)" else model.get_submodule(name)
    standardized = with_part(probe, key, standardize(part, mean.to(part.dtype), std.to(part.dtype)))
    return (name, offset) if _fold_matches(model, layer, mean, std, offset, lambda: call_model(model, standardized),
                                           lambda: call_model(model, probe), tolerance) else None


def first_batch_norm(model: nn.Module, probe: Any) -> str | None:
    """The name of the batch normalization a model applies to its raw input before any other layer reads it
    (an nn.BatchNorm1d over a feature matrix): such a model standardizes each feature itself, per batch in
    training. None otherwise, or for inputs that are not one tensor."""
    if not isinstance(probe, torch.Tensor) or not probe.is_floating_point():
        return None
    readers = (nn.Linear, nn.RNNBase, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.LayerNorm,
               nn.GroupNorm, nn.Embedding)
    name = _first_reader_called(model, probe, readers)
    if name is None:
        return None
    return name if isinstance(model.get_submodule(name), nn.modules.batchnorm._BatchNorm) else None


@contextmanager
def probing(model: nn.Module, handles: list = ()):
    """A probe's forward in eval mode with ``handles``' hooks; afterwards, also when it fails, the hooks are
    gone and every module is back in its own train/eval mode."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training


@torch.no_grad()
def fold_standardization(model: nn.Module, mean: torch.Tensor, std: torch.Tensor,
                         layer_name: str | None = None, offset: int = 0) -> str | None:
    """Fold z = (x - mean) / std into a layer, in place: ``layer_name`` (from `foldable_layer`, or with its
    column ``offset`` from `foldable_part`), else the first nn.Linear of an nn.Sequential; the layer's name,
    or None when there is no such layer (then nothing changes)."""
    if layer_name is not None:
        found = (layer_name, model if layer_name == "(model)" else model.get_submodule(layer_name))
    else:
        found = first_linear(model, mean.numel())
    if found is None:
        return None
    name, layer = found
    _fold_into(layer, mean, std, offset)
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


# --- regression targets: z = (y - mean) / std, folded into the LAST nn.Linear -------------------------------
# A model trained on standardized targets predicts z; with y = z * std + mean folded into the layer that
# makes its output (W' = std W, b' = std b + mean, per output column), it predicts in the user's units.
@torch.no_grad()
def foldable_last_layer(model: nn.Module, probe: Any, mean: torch.Tensor, std: torch.Tensor,
                        tolerance: float = 1e-3, key: Any = None) -> str | None:
    """The name of the nn.Linear whose output is the model's output (the last one a forward of ``probe``
    calls, with ``mean.numel()`` outputs), when folding y = z * std + mean into it makes the model give
    its outputs so mapped (largest difference at most ``tolerance`` x (largest output + 1); this rules out
    a last layer followed by anything but a reshape). None when there is no such layer. ``key``: of a model
    with several outputs (a tuple, list or dict of tensors), the output ``key``: its layer is the last one
    called whose output holds exactly that output's values, and the fold must leave the other outputs as they
    were. Neither the model nor its train/eval modes change."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    probe = move_to(probe, device)
    names = {module: name or "(model)" for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    calls: list[tuple[str, Any]] = []
    handles = [module.register_forward_hook(lambda module, args, out: calls.append((names[module], out)))
               for module in names]
    try:
        with probing(model, handles):
            expected = call_model(model, probe)
            for handle in handles:
                handle.remove()
            head = expected if key is None else expected[key]
            if not calls or not isinstance(head, torch.Tensor) or head.ndim == 0 or head.shape[0] == 0:
                return None
            name = calls[-1][0] if key is None else next(
                (name for name, out in reversed(calls) if isinstance(out, torch.Tensor) and
                 out.numel() == head.numel() and torch.equal(out.reshape(-1), head.reshape(-1))), None)
            layer = None if name is None else model if name == "(model)" else model.get_submodule(name)
            per_row = head.numel() == head.shape[0] * mean.numel()
            per_step = head.ndim >= 3 and head.shape[-1] == mean.numel()   # a per-step nn.Linear
            if layer is None or layer.out_features != mean.numel() or not (per_row or per_step):
                return None
            # The fold itself, on a copy of the layer: a parametrized weight (weight_norm) takes it through its
            # right_inverse, and one whose forward would undo it (spectral_norm) fails the check below.
            folded_layer = copy.deepcopy(layer)
            fold_target_standardization(folded_layer, mean, std, "(model)")
            folding = layer.register_forward_hook(lambda module, args, out: folded_layer(args[0]))
            try:
                folded = call_model(model, probe)
            finally:
                folding.remove()
    except Exception:   # noqa: BLE001 -- a model that cannot be probed this way is not folded into
        return None
    others = [] if key is None else [k for k in (expected if isinstance(expected, dict) else range(len(expected)))
                                     if k != key]
    if not all(isinstance(folded[k], torch.Tensor) and torch.equal(folded[k], expected[k]) for k in others):
        return None
    folded_head = folded if key is None else folded[key]
    if not isinstance(folded_head, torch.Tensor) or folded_head.shape != head.shape or \
            not bool(torch.isfinite(head).all()):
        return None
    wanted = target_units(head.float(), mean, std)
    gap = float((folded_head.float() - wanted).abs().max())
    return name if gap <= tolerance * (float(wanted.abs().max()) + 1.0) else None


class InTargetUnits:
    """A forward hook that maps an nn.Linear's output z to y = z * std + mean: the layer trains on standardized
    targets while the model gives the targets' units, until `fold_target_standardization` folds the map into
    it and the hook is removed."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean, self.std = mean, std

    def __call__(self, module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        return target_units(out, self.mean, self.std)


def target_standardization(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of regression targets, their plain std (no cap): per column of [N] or [N, K] targets, or per
    K over every step of per-step targets [N, T, K] (a forecast of every hour, made by one per-step nn.Linear
    that absorbs K statistics and not T x K). A constant column gets std 1."""
    per_step = targets.ndim >= 3
    return standardization(targets if per_step else targets.reshape(len(targets), -1), per_position=not per_step,
                           max_score=None)


def target_units(values: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, *, inverse: bool = False
                 ) -> torch.Tensor:
    """y = z * std + mean (``inverse``: z = (y - mean) / std) per target column: over each row's flattened
    values when the statistics hold one per value ([N, K] targets), else along the last dimension (per-step
    targets [N, T, K], statistics per K over every step, which one per-step nn.Linear absorbs)."""
    rows = values.reshape(values.shape[0], -1)
    shaped = rows if rows.shape[1] == mean.numel() else values
    mean, std = mean.to(shaped), std.to(shaped)
    return ((shaped - mean) / std if inverse else shaped * std + mean).reshape(values.shape)


def _target_folded(layer: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(std W, std b + mean): the layer's parameters that predict in the user's units."""
    scale = std.to(layer.weight.device, layer.weight.dtype).reshape(-1)
    shift = mean.to(layer.weight.device, layer.weight.dtype).reshape(-1)
    bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_features, device=layer.weight.device,
                                                                 dtype=layer.weight.dtype)
    return layer.weight * scale[:, None], bias * scale + shift


@torch.no_grad()
def fold_target_standardization(model: nn.Module, mean: torch.Tensor, std: torch.Tensor, layer_name: str) -> None:
    """Fold y = z * std + mean into the nn.Linear ``layer_name`` (from `foldable_last_layer`), in place."""
    layer = model if layer_name == "(model)" else model.get_submodule(layer_name)
    weight, bias = _target_folded(layer, mean, std)
    _set_weight(layer, "weight", weight.detach().clone())
    if layer.bias is None:
        layer.bias = nn.Parameter(bias.clone())
    else:
        layer.bias.copy_(bias)
