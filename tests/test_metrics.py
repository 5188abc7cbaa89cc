"""Metrics over the whole split: the value reported and monitored is the metric of the whole split (as
torchmetrics, Keras and the HF Trainer compute it), for stateful metrics (torchmetrics, converge's own), for
converge's accuracies (exact weighted means) and for plain fn(outputs, targets) functions (called once on the
split's outputs, within a memory budget; past it, the weighted batch mean and a note)."""

import math
import subprocess
import sys

import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, r2_score
from torch import nn

import converge
from converge.data import TensorSplit
from converge.engine.evaluation import evaluate, metric_ways
from converge.engine.metrics import (IMBALANCED_RATIO, SAMPLE_MEAN, STATEFUL, WHOLE_SPLIT, BalancedAccuracy,
                                     MacroF1, R2Score, SplitScores, regression_metrics)
from converge.engine.objective import Objective, ThresholdAccuracy, accuracy, cross_entropy


def sk_macro_f1(outputs, targets):
    """A user's plain metric function: scikit-learn's macro-F1 of the argmax."""
    return float(f1_score(targets.cpu().numpy(), outputs.argmax(1).cpu().numpy(), average="macro"))


def imbalanced(n=600, seed=0, weights=(0.8, 0.15, 0.05)):
    """Three classes in the given shares, separable up to noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.multinomial(torch.tensor(weights), n, replacement=True, generator=g)
    x = torch.randn(n, 5, generator=g) * 1.5 + nn.functional.one_hot(y, 5).float() * 2.0
    return (x[:360], y[:360]), (x[360:480], y[360:480]), (x[480:], y[480:])


# --- converge's own stateful metrics agree with scikit-learn -----------------------------------------------
@pytest.mark.parametrize("seed, classes, batches", [(0, 3, 1), (1, 3, 7), (2, 5, 4), (3, 2, 3)])
def test_confusion_metrics_over_batches_equal_scikit_learn_on_the_whole(seed, classes, batches):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, classes, (200,), generator=g)
    outputs = torch.randn(200, classes, generator=g) + nn.functional.one_hot(targets, classes) * 0.5
    f1, balanced = MacroF1(classes), BalancedAccuracy(classes)
    for metric in (f1, balanced):
        metric.reset()
        for out, tgt in zip(outputs.chunk(batches), targets.chunk(batches)):
            metric.update(out, tgt)
    predicted = outputs.argmax(1).numpy()
    assert float(f1.compute()) == pytest.approx(f1_score(targets.numpy(), predicted, average="macro"))
    assert float(balanced.compute()) == pytest.approx(balanced_accuracy_score(targets.numpy(), predicted))


@pytest.mark.parametrize("shape, batches", [((300,), 1), ((300, 1), 5), ((300, 3), 7)], ids=["flat", "column", "three"])
def test_r2_over_batches_equals_scikit_learn_on_the_whole(shape, batches):
    g = torch.Generator().manual_seed(0)
    # columns in very different units: a price in dollars, a count of days, a share
    scale = torch.tensor([2e5, 23.0, 0.1])[: (shape[1] if len(shape) > 1 else 1)]
    targets = (torch.randn(300, len(scale), generator=g) * scale + scale * 3).reshape(shape)
    outputs = targets + torch.randn(shape, generator=g) * scale.reshape(-1 if len(shape) > 1 else 1) * 0.6
    whole, per_column = R2Score(), [R2Score(c) for c in range(len(scale))]
    for metric in (whole, *per_column):
        metric.reset()
        for out, tgt in zip(outputs.chunk(batches), targets.chunk(batches)):
            metric.update(out, tgt)
    y, p = targets.reshape(300, -1).numpy(), outputs.reshape(300, -1).numpy()
    y, p = y.astype("float64"), p.astype("float64")
    assert float(whole.compute()) == pytest.approx(r2_score(y, p), abs=1e-9)
    for column, metric in enumerate(per_column):
        assert float(metric.compute()) == pytest.approx(r2_score(y[:, column], p[:, column]), abs=1e-9)


def test_r2_leaves_out_a_constant_column_and_is_nan_with_none_left():
    targets = torch.stack([torch.arange(10.0), torch.full((10,), 5.0)], 1)
    outputs = targets + 0.5
    r2 = R2Score()
    r2.update(outputs, targets)
    assert float(r2.compute()) == pytest.approx(r2_score(targets[:, 0].numpy(), outputs[:, 0].numpy()))
    assert torch.isnan(R2Score(1)(outputs, targets)) and torch.isnan(R2Score()(outputs[:, 1:], targets[:, 1:]))


def test_regression_reports_r2_per_column_only_for_a_few_columns():
    assert set(regression_metrics(1)) == {"r2"}
    assert set(regression_metrics(2)) == {"r2", "r2_0", "r2_1"}
    assert set(regression_metrics(64)) == {"r2"}   # an autoencoder's pixels: the mean alone


def test_binary_confusion_metrics_use_the_threshold_and_leave_out_padding():
    outputs = torch.tensor([2.0, -1.0, 0.5, -3.0, 1.0, 4.0])
    targets = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    metric = BalancedAccuracy(2, threshold=0.0)
    metric.update(outputs, targets)
    assert float(metric.compute()) == pytest.approx(balanced_accuracy_score(targets.numpy(), (outputs > 0).numpy()))
    padded = MacroF1(3, ignore_index=-100)
    padded.update(torch.eye(3)[[0, 1, 2, 0]], torch.tensor([0, 1, -100, 0]))
    assert float(padded.compute()) == pytest.approx(f1_score([0, 1, 0], [0, 1, 0], average="macro"))


# --- scoring a split ------------------------------------------------------------------------------------
def _objective(**metrics):
    return Objective(cross_entropy, "classification", metrics, classes=3, class_dim=1)


def _split_and_model(seed=0):
    (x, y), _, _ = imbalanced(seed=seed)
    torch.manual_seed(seed)
    return TensorSplit(x, y, "val"), nn.Sequential(nn.Linear(5, 3))


def test_each_metric_is_scored_its_way():
    ways = metric_ways(_objective(accuracy=accuracy, binary=ThresholdAccuracy(0.0), f1=MacroF1(3),
                                  plain=sk_macro_f1))
    assert ways == {"accuracy": SAMPLE_MEAN, "binary": SAMPLE_MEAN, "f1": STATEFUL, "plain": WHOLE_SPLIT}


def test_a_split_is_scored_whole_not_as_a_mean_of_batches():
    split, model = _split_and_model()
    objective = _objective(accuracy=accuracy, plain=sk_macro_f1, own=MacroF1(3))
    values = evaluate(model, split, objective, batch_size=16, amp="off", device=torch.device("cpu"))
    with torch.no_grad():
        outputs = model(split.inputs)
    whole = sk_macro_f1(outputs, split.targets)
    assert values["plain"] == pytest.approx(whole) and values["own"] == pytest.approx(whole)
    assert values["accuracy"] == pytest.approx(float((outputs.argmax(1) == split.targets).float().mean()))
    batch_means = [sk_macro_f1(o, t) for o, t in zip(outputs.split(16), split.targets.split(16))]
    assert abs(sum(batch_means) / len(batch_means) - whole) > 1e-3   # the bias this fixes is real here


def test_past_the_memory_budget_a_plain_metric_is_the_weighted_batch_mean_and_said():
    split, model = _split_and_model()
    objective = _objective(plain=sk_macro_f1)
    with torch.no_grad():
        outputs = model(split.inputs)
    batches = list(zip(outputs.split(16), split.targets.split(16)))
    one_batch = outputs[:16].numel() * 4 + split.targets[:16].numel() * 8
    scores = SplitScores(objective.metric_fns, metric_ways(objective), torch.device("cpu"), budget=3 * one_batch)
    for out, tgt in batches:
        scores.add(out, tgt, torch.tensor(0.0), tgt.shape[0])
    expected = sum(sk_macro_f1(o, t) * t.shape[0] for o, t in batches) / len(split)
    assert scores.values()[1] == pytest.approx(expected)
    (note,) = scores.notes
    assert note.startswith("plain: the mean of the per-batch values") and "METRIC_MEMORY_BYTES" in note


def test_outputs_whose_shape_changes_fall_back_to_batch_means():
    def mean_score(outputs, targets):
        return outputs.mean()

    scores = SplitScores({"m": mean_score}, {"m": WHOLE_SPLIT}, torch.device("cpu"))
    scores.add(torch.ones(2, 3), torch.zeros(2, 3), torch.tensor(0.0), 2)
    scores.add(torch.zeros(2, 5), torch.zeros(2, 5), torch.tensor(0.0), 2)
    assert scores.values()[1] == pytest.approx(0.5) and "shape changes" in scores.notes[0]


def _worst_head_error(outputs, targets):
    """Not a mean over samples: the largest error of either head over the whole split."""
    scores, amount = outputs
    labels, true_amount = targets
    wrong = (scores.argmax(1) != labels).float()
    return torch.maximum(wrong.max(), (amount - true_amount).abs().max())


def test_heads_and_targets_per_head_are_kept_and_scored_on_the_whole_split():
    generator = torch.Generator().manual_seed(0)
    outputs = (torch.randn(40, 3, generator=generator), torch.randn(40, generator=generator))
    targets = (torch.randint(0, 3, (40,), generator=generator), torch.randn(40, generator=generator))
    scores = SplitScores({"worst": _worst_head_error}, {"worst": WHOLE_SPLIT}, torch.device("cpu"),
                         on_outputs=frozenset({"worst"}))
    for rows in torch.arange(40).split(16):
        scores.add(tuple(o[rows] for o in outputs), tuple(t[rows] for t in targets), torch.tensor(0.0), len(rows))
    assert scores.values()[1] == pytest.approx(float(_worst_head_error(outputs, targets)))
    assert scores.notes == []


def test_a_dict_of_targets_is_kept_whole_and_a_metric_on_scores_gets_the_first_head():
    def first_head_mean(scores, targets):
        return scores.mean() + 0 * targets["a"].sum()

    generator = torch.Generator().manual_seed(1)
    outputs = (torch.randn(30, 2, generator=generator), torch.randn(30, 4, generator=generator))
    targets = {"a": torch.randn(30, generator=generator), "b": torch.randn(30, generator=generator)}
    scores = SplitScores({"m": first_head_mean}, {"m": WHOLE_SPLIT}, torch.device("cpu"))
    for rows in torch.arange(30).split(8):
        scores.add(tuple(o[rows] for o in outputs), {k: t[rows] for k, t in targets.items()}, torch.tensor(0.0),
                   len(rows))
    assert scores.values()[1] == pytest.approx(float(outputs[0].mean()))
    assert scores.notes == []


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(5, 16)
        self.scores, self.amount = nn.Linear(16, 3), nn.Linear(16, 1)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return self.scores(h), self.amount(h).squeeze(1)


def _two_head_loss(outputs, targets):
    return nn.functional.cross_entropy(outputs[0], targets[0]) + nn.functional.mse_loss(outputs[1], targets[1])


def test_a_metric_written_like_the_loss_gets_everything_the_model_returns():
    """The loss takes the model's tuple of heads; a metric of the task written the same way was given the
    first head alone, and failed before training ("Dimension out of range")."""
    def head_accuracy(outputs, targets):
        return (outputs[0].argmax(1) == targets[0]).float().mean()

    def amount_error(outputs, targets):
        return (outputs[1] - targets[1]).abs().mean()

    def first_head_confidence(scores, targets):   # written for the score tensor: still given it
        return scores.softmax(1).max(1).values.mean()

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=generator)
    data = x, (x[:, :3].argmax(1), x[:, 3] * 2)
    torch.manual_seed(0)
    model = _TwoHeads()
    result = converge.fit(model, data, data, loss=_two_head_loss, metrics={
        "head_accuracy": head_accuracy, "amount_error": amount_error, "confidence": first_head_confidence},
        **{**FIXED, "max_epochs": 5})
    best = result.summary["best"]
    with torch.no_grad():
        result.model.eval()
        outputs = result.model(x)
    assert best["val_head_accuracy"] == pytest.approx(float(head_accuracy(outputs, data[1])), abs=1e-6)
    assert best["val_amount_error"] == pytest.approx(float(amount_error(outputs, data[1])), rel=1e-5)
    assert best["val_confidence"] == pytest.approx(float(first_head_confidence(outputs[0], data[1])), rel=1e-5)
    assert not any(event.get("event") == "metric_note" for event in result.events)


# --- defaults and torchmetrics in a run ---------------------------------------------------------------------
FIXED = {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 0.0, "batch_size": 32, "seed": 0, "verbose": False,
         "max_epochs": 3}


@pytest.mark.parametrize("weights, reported", [
    ((0.8, 0.15, 0.05), True),    # 16:1
    ((0.34, 0.33, 0.33), False),  # balanced
])
def test_imbalanced_labels_report_balanced_accuracy_and_macro_f1_by_default(weights, reported):
    splits = imbalanced(weights=weights)
    counts = torch.bincount(splits[0][1])
    assert (float(counts.max() / counts.min()) >= IMBALANCED_RATIO) == reported
    torch.manual_seed(0)
    result = converge.fit(nn.Sequential(nn.Linear(5, 3)), *splits, **FIXED)
    assert ({"val_balanced_accuracy", "val_macro_f1"} <= set(result.history[0])) == reported
    if reported:
        (x, y) = splits[2]
        with torch.no_grad():
            predicted = result.model(x).argmax(1).numpy()
        assert result.summary["test"]["macro_f1"] == pytest.approx(f1_score(y.numpy(), predicted, average="macro"))
        assert result.summary["test"]["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y.numpy(),
                                                                                                   predicted))


def test_a_torchmetrics_metric_is_the_whole_splits_value_and_can_be_monitored():
    torchmetrics = pytest.importorskip("torchmetrics")
    splits = imbalanced()
    metric = torchmetrics.classification.MulticlassF1Score(num_classes=3, average="macro")
    torch.manual_seed(0)
    result = converge.fit(nn.Sequential(nn.Linear(5, 3)), *splits, metrics={"tm_f1": metric},
                          monitor="val_tm_f1", mode="max", **FIXED)
    (x, y) = splits[2]
    with torch.no_grad():
        predicted = result.model(x).argmax(1).numpy()
    assert result.summary["test"]["tm_f1"] == pytest.approx(f1_score(y.numpy(), predicted, average="macro"), abs=1e-6)
    best = result.summary["best_epoch"]
    assert result.summary["best"]["val_tm_f1"] == max(r["val_tm_f1"] for r in result.history)
    assert result.history[best - 1]["val_tm_f1"] == result.summary["best"]["val_tm_f1"]


def test_import_converge_does_not_import_torchmetrics():
    code = "import sys, converge; print('torchmetrics' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_imbalanced_example_trains_and_reports_its_metrics(tmp_path):
    pytest.importorskip("torchmetrics")
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "imbalanced.py"
    result = converge.train_task(example, out=tmp_path / "run", verbose=False, max_epochs=2, optimizer="adamw",
                                 lr=3e-3, batch_size=64)
    assert set(result.summary["best"]) == {"val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1",
                                           "val_f1"}
    # two computations of the same whole-split macro-F1 agree: the task's torchmetrics one and converge's own
    assert result.summary["test"]["f1"] == pytest.approx(result.summary["test"]["macro_f1"], abs=1e-6)


def test_a_metric_that_returns_a_python_float_is_kept_exact():
    value = 0.7967333608643271   # not a float32 number

    def plain(outputs, targets):
        return value

    scores = SplitScores({"plain": plain}, {"plain": WHOLE_SPLIT}, torch.device("cpu"))
    scores.add(torch.ones(2, 3), torch.zeros(2), torch.tensor(0.0), 2)
    assert scores.values()[1] == value


TORCHMETRICS_TASK = '''
import torchmetrics

class Count(torchmetrics.Metric):
    """The samples scored: one sample counted once per split, on every rank, if nothing is synced."""

    def __init__(self):
        super().__init__()
        self.add_state("n", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, outputs, targets):
        self.n += targets.shape[0]

    def compute(self):
        return self.n

metrics = {"count": Count(), "f1": torchmetrics.classification.MulticlassF1Score(num_classes=3, average="macro")}
'''


@pytest.mark.slow   # 15-30 s (processes started and killed): the slow CI step
def test_torchmetrics_are_the_whole_splits_under_torchrun(tmp_path):
    """Every rank scores the whole split, so a torchmetrics Metric is computed without a sync (which would
    count each sample once per rank: 400 for 200) and rank 0's value is the one decided on."""
    pytest.importorskip("torchmetrics")
    from test_distributed import TASK, TOLERANCE, logged, run_ok, train_command

    task = tmp_path / "task.py"
    task.write_text(TASK + TORCHMETRICS_TASK)
    run_ok(train_command(task, tmp_path / "one", epochs=2))
    run_ok(train_command(task, tmp_path / "two", "--nproc", "2", epochs=2))
    ones, twos = logged(tmp_path / "one"), logged(tmp_path / "two")
    assert [r["val_count"] for r in twos] == [200.0, 200.0]
    for a, b in zip(ones, twos):
        assert b["val_f1"] == pytest.approx(a["val_f1"], rel=TOLERANCE)


# --- the batch a split is scored in ---------------------------------------------------------------------
def test_a_mean_loss_is_scored_in_larger_batches_on_the_cpu_and_a_loss_of_ones_own_in_the_training_batch():
    from converge.engine.evaluation import evaluation_batch_size

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    ours = Objective(cross_entropy, "multiclass", {})
    recognized_own = Objective(nn.CrossEntropyLoss(), "multiclass", {}, inferred=False, known_loss=True)
    summed_own = Objective(nn.MSELoss(reduction="sum"), "custom", {}, inferred=False, known_loss=False)
    assert evaluation_batch_size(32, cpu, ours) == 128 and evaluation_batch_size(32, cpu, recognized_own) == 128
    assert evaluation_batch_size(32, cpu, summed_own) == 32
    assert evaluation_batch_size(32, cuda, ours) == 32  # an accelerator's batch may be sized to its memory


def test_a_run_with_a_summed_loss_of_its_own_scores_validation_at_the_training_batch(tmp_path):
    """A sum over the batch (a VAE's loss, often) grows with the batch: validation must be batched as training
    is, or its loss would not be comparable with the training loss."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]])
    summed = nn.MSELoss(reduction="sum")
    torch.manual_seed(0)
    result = converge.fit(nn.Linear(4, 1), (x[:136], y[:136]), (x[136:], y[136:]), loss=summed, optimizer="adamw",
                          lr=1e-2, batch_size=16, max_epochs=2, seed=0, out=None, verbose=False)
    model = result.model.eval()
    with torch.no_grad():  # the val split's 64 rows in batches of 16, each batch's sum weighted by its rows
        expected = sum(float(summed(model(xb), yb)) * len(xb)
                       for xb, yb in zip(x[136:].split(16), y[136:].split(16))) / 64
    assert result.summary["best"]["val_loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("rows, batch, count, forwards", [
    (200, 64, 16, 16),      # parts of 13 rows: batches no larger than a part (the last part is 5 rows)
    (4000, 64, 16, 63),     # parts of 250 rows: the evaluation's own batches, grouped into 16 runs
    (20, 64, 10, 10),       # two rows a part: fewer parts
    (1, 64, 1, 1),
])
def test_a_split_scored_with_its_parts_gives_them_for_free(rows, batch, count, forwards):
    """evaluate(parts=...) gives the loss on fixed parts of the split from the same pass: batches no larger
    than a part, the part a weighted mean of its batches, the whole split's loss unchanged."""
    torch.manual_seed(0)
    x, y = torch.randn(rows, 5), torch.randint(0, 3, (rows,))
    split, model = TensorSplit(x, y, "val"), nn.Sequential(nn.Linear(5, 3))
    seen = []
    model.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    objective = Objective(cross_entropy, "classification", {}, classes=3, class_dim=1)
    cpu = torch.device("cpu")
    plain = evaluate(model, split, objective, batch_size=batch, amp="off", device=cpu)["loss"]
    seen.clear()
    parts: list[float] = []
    whole = evaluate(model, split, objective, batch_size=batch, amp="off", device=cpu, parts=parts)["loss"]
    assert whole == pytest.approx(plain, rel=1e-6) and len(parts) == count and len(seen) == forwards
    cuts = [round(i * rows / count) for i in range(count + 1)] if rows <= count * batch else None
    if cuts is not None and rows % count == 0:   # equal parts: each is the loss of its rows
        for part, (a, b) in zip(parts, zip(cuts, cuts[1:])):
            alone = evaluate(model, TensorSplit(x[a:b], y[a:b], "val"), objective, batch_size=rows, amp="off",
                             device=cpu)["loss"]
            assert part == pytest.approx(alone, rel=1e-5)


def test_a_loss_summed_over_the_batch_keeps_its_batch_when_parts_are_asked():
    """A loss that is not a mean over the samples depends on the batch it is scored at: asking for parts must
    not change the split's value."""
    torch.manual_seed(0)
    x, y = torch.randn(200, 5), torch.randint(0, 3, (200,))
    split, model = TensorSplit(x, y, "val"), nn.Sequential(nn.Linear(5, 3))
    summed = Objective(lambda out, t: nn.functional.cross_entropy(out, t, reduction="sum"), "custom", {},
                       inferred=False, known_loss=False)
    cpu = torch.device("cpu")
    plain = evaluate(model, split, summed, batch_size=64, amp="off", device=cpu)["loss"]
    parts: list[float] = []
    assert evaluate(model, split, summed, batch_size=64, amp="off", device=cpu, parts=parts)["loss"] == plain
    assert len(parts) == 4
