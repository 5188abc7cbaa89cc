"""Reading a task's own loss from how it answers (converge.engine.loss_probe): its padding label, and whether
a one-output head's outputs are logits or probabilities to it. Each case is a loss a user writes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from converge.data import TensorSplit
from converge.engine.loss_probe import binary_link, class_dim_of, predicts_targets, skipped_label
from converge.engine.objective import ThresholdAccuracy, resolve_objective

V = 7


def padded(n=24, length=9, pad=0, seed=0):
    """[N, T, V] scores and [N, T] labels in 1..V-1, every row ending in a run of ``pad``."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, length, V, generator=g)
    labels = torch.randint(1, V, (n, length), generator=g)
    for row in range(n):
        labels[row, 3 + row % (length - 3):] = pad
    return scores, labels


def flat_ce(ignore):
    return lambda s, t: F.cross_entropy(s.reshape(-1, V), t.reshape(-1), ignore_index=ignore)


def masked_nll(scores, labels):   # the hand-written masked mean
    mask = labels != 0
    picked = -F.log_softmax(scores, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum() / mask.sum()


@pytest.mark.parametrize("loss, pad, layout, expected", [
    (flat_ce(0), 0, "ntv", 0),                                                 # flattens, skips 0
    (masked_nll, 0, "ntv", 0),                                                 # its own mask
    (lambda s, t: F.cross_entropy(s, t, ignore_index=0), 0, "nvt", 0),        # torch's layout, class dim 1
    (flat_ce(-1), -1, "ntv", -1),                                              # padded with -1
    (flat_ce(-100), 0, "ntv", None),                                           # reads its zeros: no padding
    (lambda s, t: (s * 0).sum(), 0, "ntv", None),                             # reads nothing: cannot say
], ids=["flatten-ignore-0", "hand-mask", "class-dim-1", "minus-one", "reads-its-zeros", "reads-nothing"])
def test_the_label_a_loss_never_reads_is_its_padding(loss, pad, layout, expected):
    scores, labels = padded(pad=pad)
    if layout == "nvt":
        scores = scores.transpose(1, 2)
    assert skipped_label(loss, scores, labels) == expected


def test_the_probe_leaves_the_random_stream_alone():
    scores, labels = padded()
    before = torch.random.get_rng_state()
    assert skipped_label(flat_ce(0), scores, labels) == 0
    assert torch.equal(before, torch.random.get_rng_state())


def test_where_the_class_scores_sit():
    assert class_dim_of(torch.zeros(4, 9, V), torch.zeros(4, 9)) == -1
    assert class_dim_of(torch.zeros(4, V, 9), torch.zeros(4, 9)) == 1
    assert class_dim_of(torch.zeros(4, 3), torch.zeros(4, 9)) is None


def focal(logits, y, gamma=2.0):
    p = torch.sigmoid(logits.squeeze(1))
    ce = F.binary_cross_entropy_with_logits(logits.squeeze(1), y, reduction="none")
    return ((1 - torch.where(y > 0.5, p, 1 - p)) ** gamma * ce).mean()


@pytest.mark.parametrize("loss, expected", [
    (lambda o, y: F.binary_cross_entropy_with_logits(o.squeeze(1), y), "logits"),
    (focal, "logits"),
    (lambda o, y: F.binary_cross_entropy(torch.sigmoid(o.squeeze(1)), y), "logits"),   # the sigmoid inside
    (lambda o, y: F.binary_cross_entropy(o.squeeze(1), y), "probabilities"),           # the model ends in one
    (lambda o, y: F.mse_loss(o.squeeze(1), y), "probabilities"),
    (lambda o, y: (o * 0).sum() + 1.0, None),
], ids=["bce-logits", "focal", "sigmoid-inside", "bce-probabilities", "mse", "constant"])
def test_a_one_output_heads_link_is_read_from_the_loss(loss, expected):
    y = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    assert binary_link(loss, torch.zeros(6, 1), y) == expected


def test_no_link_for_targets_that_are_not_zero_or_one():
    loss = lambda o, y: F.mse_loss(o.squeeze(1), y)   # noqa: E731
    assert binary_link(loss, torch.zeros(3, 1), torch.tensor([0.0, 0.5, 1.0])) is None


def test_a_sequence_task_with_its_own_padded_loss_counts_only_real_tokens():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 6, (40, 7), generator=g)
    y = torch.randint(1, V, (40, 7), generator=g)
    y[:, 5:] = 0
    splits = {"train": TensorSplit(x[:30], y[:30], "train"), "val": TensorSplit(x[30:], y[30:], "val")}
    model = nn.Sequential(nn.Embedding(6, 8), nn.Linear(8, V))
    objective = resolve_objective(model, splits, flat_ce(0), {}, amp="off", device=torch.device("cpu"),
                                  probe_size=16)
    assert objective.ignore_index == 0 and "targets 0 are padding" in objective.description
    right_on_real_tokens = F.one_hot(torch.where(y == 0, 3, y), V).float()
    assert objective.metric_fns["token_accuracy"](right_on_real_tokens, y).item() == pytest.approx(1.0)
    # the task's own ignore_index wins over the probe
    told = resolve_objective(model, splits, flat_ce(0), {}, amp="off", device=torch.device("cpu"), probe_size=16,
                             ignore_index=6)
    assert told.ignore_index == 6


@pytest.mark.parametrize("loss, threshold", [
    (lambda o, y: F.binary_cross_entropy_with_logits(o.squeeze(1), y), 0.0),
    (lambda o, y: F.binary_cross_entropy(torch.sigmoid(o).squeeze(1), y), 0.0),
], ids=["logits", "sigmoid-inside"])
def test_a_binary_head_with_its_own_loss_gets_accuracy_at_the_losss_boundary(loss, threshold):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g)
    y = (x[:, 0] > 0).float()
    splits = {"train": TensorSplit(x[:40], y[:40], "train"), "val": TensorSplit(x[40:], y[40:], "val")}
    objective = resolve_objective(nn.Linear(4, 1), splits, loss, {}, amp="off", device=torch.device("cpu"),
                                  probe_size=16)
    metric = objective.metric_fns["accuracy"]
    assert isinstance(metric, ThresholdAccuracy) and metric.threshold == threshold
    assert "it reads logits" in objective.description


def test_a_binary_head_ending_in_a_sigmoid_is_scored_at_one_half():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g)
    y = (x[:, 0] > 0).float()
    splits = {"train": TensorSplit(x[:40], y[:40], "train"), "val": TensorSplit(x[40:], y[40:], "val")}
    model = nn.Sequential(nn.Linear(4, 1), nn.Sigmoid())
    objective = resolve_objective(model, splits, lambda o, t: F.binary_cross_entropy(o.squeeze(1), t), {},
                                  amp="off", device=torch.device("cpu"), probe_size=16)
    assert objective.metric_fns["accuracy"].threshold == 0.5



def _pinball(pred, y, q=0.9):
    err = y - pred.reshape(y.shape)
    return torch.maximum(q * err, (q - 1) * err).mean()


@pytest.mark.parametrize("loss, expected", [
    (F.mse_loss, True),
    (lambda p, y: (p.view(-1) - y).abs().mean(), True),
    (nn.HuberLoss(delta=0.1), True),
    (_pinball, True),
    (nn.PoissonNLLLoss(), False),                                  # log-rates, not counts
    (lambda p, y: F.mse_loss(p.exp(), y), False),                  # log-predictions
], ids=["mse", "own-l1", "huber", "pinball", "poisson-log-rate", "mse-of-exp"])
def test_whether_a_regressions_outputs_predict_its_targets_is_read_from_the_loss(loss, expected):
    g = torch.Generator().manual_seed(0)
    y = torch.poisson(torch.rand(32, generator=g) * 8 + 1)
    assert predicts_targets(loss, torch.zeros(32), y) is expected
    if expected:   # a one-output head [N, 1] read by a loss that lines it up with the targets itself
        assert predicts_targets(lambda p, t: loss(p.squeeze(1), t), torch.zeros(32, 1), y)


def test_outputs_that_are_not_one_per_target_predict_nothing():
    y = torch.rand(32)
    assert predicts_targets(lambda p, t: (p - t[:, None]).abs().mean(), torch.zeros(32, 3), y) is False
    assert predicts_targets(F.mse_loss, torch.zeros(32), torch.ones(32, dtype=torch.long)) is False


@pytest.mark.parametrize("loss, reported", [
    (nn.L1Loss(), {"r2"}), (nn.PoissonNLLLoss(), set()), (None, {"r2", "r2_0", "r2_1"}),
], ids=["l1", "poisson", "inferred-two-columns"])
def test_a_regression_gets_r2_when_its_outputs_predict_its_targets(loss, reported):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g)
    columns = 2 if loss is None else 1
    y = (x[:, :columns] * 3 + 10).abs().round().squeeze(1)
    splits = {"train": TensorSplit(x[:40], y[:40], "train"), "val": TensorSplit(x[40:], y[40:], "val")}
    objective = resolve_objective(nn.Linear(4, columns), splits, loss, {}, amp="off", device=torch.device("cpu"),
                                  probe_size=16)
    assert set(objective.metric_fns) == reported


# --- a language model's loss that shifts its targets ---------------------------------------------------------

def shifted_ce(ignore):
    """The GPT habit: the targets are the inputs, the loss compares logits[:, :-1] with ids[:, 1:]."""
    return lambda s, t: F.cross_entropy(s[:, :-1].reshape(-1, V), t[:, 1:].reshape(-1), ignore_index=ignore)


@pytest.mark.parametrize("loss, layout, expected", [
    (shifted_ce(0), "ntv", 1),
    (lambda s, t: F.cross_entropy(s[:, :, :-1], t[:, 1:], ignore_index=0), "nvt", 1),   # torch's layout
    (flat_ce(0), "ntv", 0),                                                             # no shift
    (lambda s, t: (s * 0).sum(), "ntv", None),                                          # reads nothing
], ids=["shifted", "shifted-class-dim-1", "aligned", "reads-nothing"])
def test_whether_a_sequence_loss_shifts_its_targets_is_read_from_it(loss, layout, expected):
    from converge.engine.loss_probe import target_shift

    scores, labels = padded()
    if layout == "nvt":
        scores = scores.transpose(1, 2)
    assert target_shift(loss, scores, labels) == expected
    assert target_shift(loss, scores, torch.full_like(labels, 3)) is None   # one token repeated: cannot tell


def test_a_language_model_whose_loss_shifts_gets_token_accuracy_on_the_same_pairs():
    """A tiny Transformer LM (targets = inputs, loss on logits[:, :-1] against ids[:, 1:]) reported a token
    accuracy of 0.07 % next to a loss of 1.54: argmax at t was compared with token t, the one it reads. The
    padding (0) is found through the shift too."""
    _, ids = padded(n=40)
    ids[:, 0] = 1
    splits = {"train": TensorSplit(ids[:30], ids[:30], "train"), "val": TensorSplit(ids[30:], ids[30:], "val")}
    model = nn.Sequential(nn.Embedding(V, 8), nn.Linear(8, V))
    objective = resolve_objective(model, splits, shifted_ce(0), {}, amp="off", device=torch.device("cpu"),
                                  probe_size=16)
    assert objective.target_shift == 1 and objective.ignore_index == 0
    assert "target t + 1" in objective.description
    predicts_next = F.one_hot(torch.cat([ids[:, 1:], ids[:, :1]], dim=1), V).float()   # right on every next token
    predicts_same = F.one_hot(ids, V).float()
    accuracy = objective.metric_fns["token_accuracy"]
    assert accuracy(predicts_next, ids).item() == pytest.approx(1.0)
    assert accuracy(predicts_same, ids).item() < 0.5
    assert int(objective.weight(ids)) == int((ids[:, 1:] != 0).sum())    # the tokens the loss scores


# --- outputs that are not class scores to the loss -----------------------------------------------------------

def triplet(embedding, labels, margin=0.3):
    """Batch-hard triplet loss on normalized embeddings: it compares samples, not classes."""
    z = F.normalize(embedding, dim=1)
    dist = torch.cdist(z, z)
    same = labels[:, None] == labels[None, :]
    return F.relu((dist * same).max(dim=1).values - (dist + 4.0 * same).min(dim=1).values + margin).mean()


@pytest.mark.parametrize("loss, expected", [
    (lambda o, y: F.cross_entropy(o, y), True),
    (lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1), True),   # confident right answers cost a little
    (lambda o, y: F.multi_margin_loss(o, y), True),                     # a hinge on class scores
    (lambda o, y: F.nll_loss(o, y), True),                               # log-probabilities: right is -30
    (triplet, False),                                                    # any relabelling is as good
    (lambda o, y: (o * 0).sum(), False),                                 # reads nothing
], ids=["ce", "smoothed", "hinge", "nll", "triplet", "reads-nothing"])
def test_whether_outputs_are_class_scores_is_read_from_the_loss(loss, expected):
    from converge.engine.loss_probe import reads_class_scores

    g = torch.Generator().manual_seed(0)
    scores, labels = torch.randn(32, 16, generator=g), torch.arange(32) % 10
    assert reads_class_scores(loss, scores, labels) is expected
    assert reads_class_scores(loss, scores[:, :1], labels) is None   # one output: not this question


def test_an_embedding_trained_with_a_triplet_loss_reports_no_accuracy():
    """A 16-d embedding of digits under the user's triplet loss reported "accuracy 0.0115": the argmax of an
    embedding is no class. A cross-entropy on the same shapes keeps its accuracy."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 8, generator=g), torch.arange(60) % 10
    splits = {"train": TensorSplit(x[:40], y[:40], "train"), "val": TensorSplit(x[40:], y[40:], "val")}
    model = nn.Linear(8, 16)

    def resolve(loss):
        return resolve_objective(model, splits, loss, {}, amp="off", device=torch.device("cpu"), probe_size=32)

    embedding = resolve(triplet)
    assert embedding.metric_fns == {} and "no accuracy" in embedding.description
    # its width is no number of classes (the line said "16 classes")
    assert embedding.description.startswith("integer labels, outputs of 16 values per sample; loss: the task's own")
    assert "classes" not in embedding.description
    assert "accuracy" in resolve(lambda o, t: F.cross_entropy(o, t)).metric_fns
    imbalanced = torch.where(torch.arange(60) % 6 == 0, 1, 0)   # 5x more of class 0: no balanced accuracy either
    splits["train"] = TensorSplit(x[:40], imbalanced[:40], "train")
    splits["val"] = TensorSplit(x[40:], imbalanced[40:], "val")
    assert resolve(triplet).metric_fns == {}
    assert "balanced_accuracy" in resolve(lambda o, t: F.cross_entropy(o, t)).metric_fns


def test_a_margin_loss_on_minus_one_plus_one_labels_does_not_predict_its_targets():
    """A hinge loss on labels -1 / +1 (an SVM course's habit): its outputs are scores, and R² on them was
    reported as -102."""
    labels = torch.tensor([-1.0, 1.0] * 20)
    scores = torch.randn(40, 1)

    def hinge(score, y):
        return torch.clamp(1 - y * score.squeeze(1), min=0).mean()

    assert not predicts_targets(hinge, scores, labels)
    assert predicts_targets(lambda o, y: F.l1_loss(o.squeeze(1), y), scores, labels)
    assert predicts_targets(lambda o, y: F.huber_loss(o.squeeze(1), y), scores, labels)
