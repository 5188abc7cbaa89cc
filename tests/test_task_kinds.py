"""Every common task shape trains first time: the kind rule as a table, then each kind through `fit` (its loss,
metrics and padding), a task's own loss, the doctor per kind, and bad combinations as one error line."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import converge
from converge.decide.task_kind import TargetFacts, decide_kind
from converge.engine.objective import TargetStats, constant_prediction_loss, resolve_objective
from converge.data import make_splits
from converge.errors import ConvergeError

QUICK = dict(optimizer="adamw", lr=1e-2, weight_decay=0.0, batch_size=32, verbose=False)


# --- the rule ------------------------------------------------------------------------------------------
def facts(shape, integer, zero_one=False, low=0, high=1):
    return TargetFacts(tuple(shape), integer, zero_one, low, high)


@pytest.mark.parametrize("targets, outputs, kind, classes", [
    (facts([8], True, False, 0, 9), [8, 10], "classification", 10),
    (facts([8, 1], True, False, 0, 2), [8, 3], "classification", 3),
    (facts([8], True, True), [8, 2], "classification", 2),            # two outputs: two classes
    (facts([8], False, True), [8, 1], "binary", 2),                   # float 0/1, one output
    (facts([8], False, True), [8], "binary", 2),
    (facts([8, 1], False, True), [8], "binary", 2),                   # (N, 1) and (N,) either way
    (facts([8], True, True), [8, 1], "binary", 2),                    # integer 0/1, one output
    (facts([8, 5], False, True), [8, 5], "multilabel", 5),
    (facts([8, 5], True, True), [8, 5], "multilabel", 5),             # integer multi-hot
    (facts([8, 16], True, False, 0, 30), [8, 16, 40], "sequence", 40),   # (N, T, V)
    (facts([8, 16], True, False, 0, 30), [8, 40, 16], "sequence", 40),   # (N, V, T)
    (facts([8, 4, 4], True, False, 0, 2), [8, 4, 4, 3], "sequence", 3),  # (N, H, W) labels per pixel
    (facts([8], False, False, -3, 5), [8, 1], "regression", None),
    (facts([8, 3], False, False, -3, 5), [8, 3], "regression", None),
])
def test_the_kind_rule(targets, outputs, kind, classes):
    decided = decide_kind(targets, tuple(outputs))
    assert (decided.kind, decided.classes) == (kind, classes)
    assert decided.description


@pytest.mark.parametrize("targets, outputs, needles", [
    (facts([8], True, False, 0, 157), [8, 64], ["[0, 157]", "64 outputs"]),
    (facts([8, 64], True, False, 0, 157), [8, 64, 100], ["[0, 157]", "100 classes per position"]),
    (facts([8, 16], True, False, 0, 3), [8, 5, 7], ["(8, 16, V)", "(8, V, 16)", "(8, 5, 7)"]),
    (facts([8], False, True), [8, 2], ["integer labels", "one output"]),
    (facts([8], True, False, 0, 4), [8, 1], ["one output per class"]),
    (facts([8, 3], False, False, -1, 1), [8, 2], ["(8, 3)", "(8, 2)"]),
    (facts([8], True, False, 0, 1), [4, 2], ["batch of 8"]),
    (facts([8], True, False, 1, 3), [8, 3], ["[1, 3]", "numbered from 1"]),   # a CSV's classes 1, 2, 3
    # float labels 0..9 (a habit of casting everything to float32) against ten scores: named, and the fix
    (TargetFacts((8,), False, False, 0.0, 9.0, whole=True), [8, 10], ["whole numbers 0 to 9", "targets.long()"]),
])
def test_bad_combinations_name_the_shapes(targets, outputs, needles):
    with pytest.raises(ConvergeError) as error:
        decide_kind(targets, tuple(outputs))
    for needle in needles:
        assert needle in str(error.value)


def test_padding_is_left_out_of_the_label_range():
    assert decide_kind(facts([8, 4], True, False, 0, 9), (8, 4, 10)).kind == "sequence"


# --- each kind through fit -------------------------------------------------------------------------------
def blobs(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, g


def test_binary_with_one_output_trains_and_reports_accuracy():
    x, _ = blobs()
    y = (x[:, 0] + x[:, 1] > 0).float()                        # float 0/1 targets of shape (N,)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    result = converge.fit(model, (x[:300], y[:300]), (x[300:], y[300:]), max_epochs=15, **QUICK)
    assert result.summary["task_kind"] == "binary"
    assert result.summary["best"]["val_accuracy"] > 0.9
    logits = result.model(x[300:]).reshape(-1)
    expected = F.binary_cross_entropy_with_logits(logits, y[300:]).item()
    assert result.summary["best"]["val_loss"] == pytest.approx(expected, rel=1e-4)


class _SigmoidOut(nn.Module):
    """Ends in torch.sigmoid inside forward, then a squeeze: the outputs are probabilities all the same."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 1)

    def forward(self, x):
        return torch.sigmoid(self.body(x)).squeeze(1)


@pytest.mark.parametrize("make_model, on_probabilities", [
    (lambda: nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1), nn.Sigmoid()), True),
    (_SigmoidOut, True),
    (lambda: nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1)), False),   # logits
])
def test_a_model_ending_in_a_sigmoid_with_no_loss_gets_the_bce_on_probabilities(make_model, on_probabilities):
    """A BCE-with-logits took its probabilities for logits: every output above logit 0, so the accuracy was the
    share of positives (breast cancer: 0.614, "underfitting"); now 0.965."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0.8).float()   # about 28 % positives
    torch.manual_seed(0)
    splits = make_splits((x[:200], y[:200]), (x[200:], y[200:]))
    objective = resolve_objective(make_model(), splits, None, {}, amp="off", device=torch.device("cpu"),
                                  probe_size=64)
    assert objective.kind == "binary"
    assert ("BCE on probabilities" in objective.description) is on_probabilities
    torch.manual_seed(0)
    result = converge.fit(make_model(), (x[:200], y[:200]), (x[200:], y[200:]), max_epochs=30, **QUICK)
    assert result.summary["best"]["val_accuracy"] > 0.85   # the positives' share is about 0.28


def test_multilabel_reports_label_accuracy_and_exact_match():
    x, g = blobs()
    y = torch.stack([x[:, 0] > 0, x[:, 1] > 0, x[:, 0] + x[:, 2] > 0], dim=1).float()
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    result = converge.fit(model, (x[:300], y[:300]), (x[300:], y[300:]), max_epochs=15, **QUICK)
    best = result.summary["best"]
    assert result.summary["task_kind"] == "multilabel"
    assert best["val_label_accuracy"] > 0.85 and 0 < best["val_exact_match"] <= best["val_label_accuracy"]
    with torch.no_grad():
        hits = (result.model(x[300:]) > 0) == (y[300:] > 0.5)
    assert best["val_exact_match"] == pytest.approx(hits.all(dim=1).float().mean().item(), abs=1e-6)


class Tagger(nn.Module):
    """Tags each token; ``layout`` "ntv" returns (N, T, V) logits, "nvt" returns (N, V, T)."""

    def __init__(self, vocab=12, tags=4, layout="ntv"):
        super().__init__()
        self.embed, self.head, self.layout = nn.Embedding(vocab, 16), nn.Linear(16, tags), layout

    def forward(self, tokens):
        logits = self.head(torch.relu(self.embed(tokens)))
        return logits if self.layout == "ntv" else logits.transpose(1, 2)


def tagging(n=300, length=10, seed=0, pad=True):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 12, (n, length), generator=g)
    tags = tokens % 4
    if pad:  # the last positions of some sequences are padding
        lengths = torch.randint(4, length + 1, (n,), generator=g)
        tags[torch.arange(length)[None, :] >= lengths[:, None]] = -100
    return tokens, tags


@pytest.mark.parametrize("layout", ["ntv", "nvt"])
def test_sequences_in_either_layout_leave_padding_out(layout):
    tokens, tags = tagging()
    result = converge.fit(Tagger(layout=layout), (tokens[:200], tags[:200]), (tokens[200:], tags[200:]),
                          max_epochs=12, **QUICK)
    best = result.summary["best"]
    assert result.summary["task_kind"] == "sequence"
    assert best["val_token_accuracy"] > 0.95
    assert best["val_perplexity"] == pytest.approx(math.exp(best["val_loss"]), rel=1e-6)
    with torch.no_grad():
        logits = result.model(tokens[200:])
    scores = logits.movedim(-1, 1) if layout == "ntv" else logits
    expected = F.cross_entropy(scores, tags[200:], ignore_index=-100).item()   # one mean over counted tokens
    assert best["val_loss"] == pytest.approx(expected, rel=1e-4)


def test_the_tasks_own_loss_is_trusted_and_keeps_what_does_not_depend_on_it():
    tokens, tags = tagging(pad=False)

    def flat_cross_entropy(outputs, targets):   # the user's own: flattens (N, T, V)
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))

    result = converge.fit(Tagger(), (tokens[:200], tags[:200]), (tokens[200:], tags[200:]),
                          loss=flat_cross_entropy, max_epochs=5, **QUICK)
    assert result.summary["task_kind"] == "sequence" and "val_token_accuracy" in result.summary["best"]
    assert "val_perplexity" not in result.summary["best"]     # its meaning depends on the loss


def test_torch_cross_entropy_on_ntv_logits_says_how_to_fix_it():
    tokens, tags = tagging(pad=False)
    with pytest.raises(ConvergeError, match="class dimension second"):
        converge.fit(Tagger(), (tokens, tags), (tokens, tags), loss=nn.CrossEntropyLoss(), **QUICK)


def test_a_recognized_loss_keeps_the_baseline_and_the_kind():
    x, _ = blobs()
    y = (x[:, 0] > 0).long()
    splits = make_splits((x, y), (x, y))
    model = nn.Sequential(nn.Linear(6, 2))
    objective = resolve_objective(model, splits, nn.CrossEntropyLoss(), {}, amp="off", device=torch.device("cpu"),
                                  probe_size=64)
    assert objective.kind == "classification" and objective.known_loss and not objective.inferred
    assert constant_prediction_loss(y, objective) == pytest.approx(math.log(2), abs=0.01)
    summed = resolve_objective(model, splits, nn.CrossEntropyLoss(reduction="sum"), {}, amp="off",
                               device=torch.device("cpu"), probe_size=64)
    assert not summed.known_loss   # a summed loss has no comparable constant-prediction value
    for weighted in (nn.CrossEntropyLoss(label_smoothing=0.1), nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0]))):
        # their constant prediction does not score the label entropy
        assert not resolve_objective(model, splits, weighted, {}, amp="off", device=torch.device("cpu"),
                                     probe_size=64).known_loss


def test_a_positive_weight_is_not_the_plain_bce_whose_baseline_is_the_label_entropy():
    """Rare tags weighted 8x: a constant prediction scores far above the label entropy, so the baseline, the
    verdicts that read it ("collapsed") and the initial-loss check would be wrong."""
    x, _ = blobs()
    y = torch.stack([(x[:, 0] > 1.2), (x[:, 1] > 1.5)], 1).float()
    splits = make_splits((x, y), (x, y))
    model = nn.Sequential(nn.Linear(6, 2))
    cpu = torch.device("cpu")
    plain = resolve_objective(model, splits, nn.BCEWithLogitsLoss(), {}, amp="off", device=cpu, probe_size=64)
    weighted = resolve_objective(model, splits, nn.BCEWithLogitsLoss(pos_weight=torch.full((2,), 8.0)), {},
                                 amp="off", device=cpu, probe_size=64)
    assert plain.known_loss and not weighted.known_loss
    assert "label_accuracy" in weighted.metric_fns   # its logits still mean what BCE-with-logits says


def test_regression_matches_n_and_n1_both_ways():
    x, _ = blobs()
    y = x[:, :1] * 2                                       # targets (N, 1), one output per sample
    flat = nn.Sequential(nn.Linear(6, 1), nn.Flatten(0))     # outputs (N,)
    result = converge.fit(flat, (x[:300], y[:300]), (x[300:], y[300:]), max_epochs=30, **{**QUICK, "lr": 0.1})
    assert result.summary["task_kind"] == "regression" and result.summary["best"]["val_loss"] < 0.05


# --- the doctor per kind -------------------------------------------------------------------------------
def test_doctor_on_a_language_model_gives_no_class_advice():
    tokens = torch.randint(0, 30, (400, 16), generator=torch.Generator().manual_seed(0))
    tokens[:, ::2] = 0                                     # token 0 far more frequent: skewed, as text is
    targets = tokens.roll(1, dims=1)                       # the previous token: learnable

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.rnn, self.head = nn.Embedding(30, 16), nn.GRU(16, 32, batch_first=True), nn.Linear(32, 30)

        def forward(self, x):
            return self.head(self.rnn(self.embed(x))[0])

    findings = converge.diagnose(LM(), (tokens[:300], targets[:300]), (tokens[300:], targets[300:]))
    by_code = {f.code: f for f in findings}
    assert by_code["class_imbalance"].severity == "info" and by_code["class_imbalance"].evidence["skipped"]
    assert by_code["label_noise"].severity == "info"
    assert "too_few_samples" not in by_code   # 300 x 16 labelled positions, not 300 samples
    assert not [f for f in findings if f.severity != "info"]


def test_doctor_init_loss_check_applies_to_a_named_standard_loss():
    x, _ = blobs()
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    with torch.no_grad():
        model[2].weight.mul_(60)                           # a last layer initialised 60x too large
    findings = converge.diagnose(model, (x, y), (x, y), loss=nn.CrossEntropyLoss(), cheap=True)
    assert "init_loss_off" in {f.code for f in findings if f.severity == "warning"}


def test_fix_weights_the_positive_class_of_a_binary_task(tmp_path, make_task):
    task = make_task('''
def model():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


def data():
    x, _ = _xy(600)
    y = (x[:, 0] > 1.2).float()        # about 12 % positives
    return (x[:400], y[:400]), (x[400:500], y[400:500]), (x[500:], y[500:])
''')
    result = converge.train_task(task, out=tmp_path / "run", fix=True, verbose=False, max_epochs=3,
                                 optimizer="adamw", lr=1e-2, batch_size=32)
    remedy = next(e for e in result.events if e["event"] == "remedy" and e["remedy"] == "class_balanced_loss")
    assert remedy["detail"]["applied"] and remedy["detail"]["pos_weight"] > 4


# --- the command line ----------------------------------------------------------------------------------
def test_a_targets_outputs_mismatch_is_one_error_line(cli, make_task, tmp_path):
    task = make_task('''
def model():
    return nn.Sequential(nn.Embedding(200, 8), nn.Linear(8, 64))     # (N, T, 64): 64 classes


def data():
    x = torch.randint(0, 200, (100, 12))
    return (x, x), (x, x)                                            # labels up to 199
''')
    line = cli("train", task, "--out", tmp_path / "run").single_error("[0, 199]", "64 classes per position")
    assert not (tmp_path / "run").exists(), line


def test_summary_records_the_kind_and_the_commands_wall_time(tmp_path):
    x, _ = blobs()
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    result = converge.fit(model, (x[:300], y[:300]), (x[300:], y[300:]), max_epochs=3, verbose=False)
    summary = result.summary
    assert summary["task_kind"] == "classification" and "2 classes" in summary["task_description"]
    assert summary["tuning_epochs"] > 0 and summary["wall_seconds"] > summary["train_seconds"] > 0


# --- a recognized loss gets the shapes an inferred one accepts (issue 20, item 9) --------------------------
class _Head(nn.Module):
    """A linear head whose outputs are reshaped to ``shape`` per sample ((): one value per sample, [N])."""

    def __init__(self, outputs, shape, squash=False):
        super().__init__()
        self.linear, self.shape, self.squash = nn.Linear(6, outputs), shape, squash

    def forward(self, x):
        out = self.linear(x).reshape(len(x), *self.shape)
        return out.sigmoid() if self.squash else out


@pytest.mark.parametrize("loss, head, targets_of, reference, said", [
    # BCE with logits: a one-output head [N, 1] against [N] float targets, and the reverse
    (nn.BCEWithLogitsLoss(), _Head(1, (1,)), lambda y: y.float(), F.binary_cross_entropy_with_logits,
     "targets [N] reshaped to [N, 1] for the outputs [N, 1] (your BCEWithLogitsLoss alone would refuse them)"),
    (nn.BCEWithLogitsLoss(), _Head(1, ()), lambda y: y.float()[:, None], F.binary_cross_entropy_with_logits,
     "targets [N, 1] reshaped to [N] for the outputs [N] (your BCEWithLogitsLoss alone would refuse them)"),
    (F.binary_cross_entropy_with_logits, _Head(1, (1,)), lambda y: y.float(), F.binary_cross_entropy_with_logits,
     "your binary_cross_entropy_with_logits alone would refuse them"),
    (nn.BCELoss(), _Head(1, (1,), squash=True), lambda y: y.float(), F.binary_cross_entropy, "would refuse them"),
    # MSE: [N, 1] against [N] would broadcast to [N, N] in torch (a warning and a wrong loss)
    (nn.MSELoss(), _Head(1, (1,)), lambda y: y.float() * 3, F.mse_loss,
     "your MSELoss alone would broadcast them against each other, with only a warning"),
    # class labels as a column [N, 1] against [N, C] scores
    (nn.CrossEntropyLoss(), _Head(2, (2,)), lambda y: y[:, None], F.cross_entropy,
     "targets [N, 1] reshaped to [N] for the outputs [N, 2] (your CrossEntropyLoss alone would refuse them)"),
    # nothing to align: nothing said
    (nn.MSELoss(), _Head(1, ()), lambda y: y.float() * 3, F.mse_loss, None),
])
def test_a_recognized_loss_aligns_n_and_n1_as_an_inferred_one_does(loss, head, targets_of, reference, said):
    """...and the task's description says so: in a loop of the user's own, the same loss would not."""
    x, _ = blobs()
    y = targets_of((x[:, 0] > 0).long())
    objective = resolve_objective(head, make_splits((x, y), (x, y)), loss, {}, amp="off",
                                  device=torch.device("cpu"), probe_size=64)
    with torch.no_grad():
        out = head(x)
    expected = reference(out, y.reshape(out.shape) if y.numel() == out.numel() else y.reshape(-1))
    assert float(objective.loss_fn(out, y)) == pytest.approx(float(expected), rel=1e-6)
    assert objective.known_loss and not objective.inferred
    if said is None:
        assert "reshaped" not in objective.description
    else:
        assert said in objective.description, objective.description


def test_a_recognized_loss_still_refuses_shapes_that_do_not_match():
    x, _ = blobs()
    y = (x[:, :3] > 0).float()                         # three labels against one output
    with pytest.raises(ConvergeError, match="the loss cannot compare|model scores|outputs"):
        converge.fit(_Head(1, (1,)), (x, y), (x, y), loss=nn.BCEWithLogitsLoss(), **QUICK)


# --- a loss of the task's own on everything the model returns ---------------------------------------------
class _Autoencoder(nn.Module):
    """Returns (reconstruction, code), as an autoencoder with a penalty on its code does."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Linear(6, 2), nn.Linear(2, 6)

    def forward(self, x):
        code = self.enc(x)
        return self.dec(code), code


def _reconstruction_and_penalty(out, x):
    recon, code = out
    return F.mse_loss(recon, x, reduction="sum") + 0.01 * code.pow(2).sum()


def test_a_loss_written_for_the_models_tuple_gets_the_tuple():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(240, 2, generator=g) @ torch.randn(2, 6, generator=g)
    torch.manual_seed(0)
    result = converge.fit(_Autoencoder(), (x[:160], x[:160]), (x[160:], x[160:]), loss=_reconstruction_and_penalty,
                          optimizer="adamw", lr=1e-2, batch_size=16, max_epochs=30, seed=0, out=None, verbose=False)
    assert "on all the model returns" in result.summary["task_description"]
    model = result.model.eval()
    with torch.no_grad():  # the summed loss, in the training batch of 16, weighted by rows
        expected = sum(float(_reconstruction_and_penalty(model(b), b)) * len(b) for b in x[160:].split(16)) / 80
        start = float(_reconstruction_and_penalty(_Autoencoder()(x[160:176]), x[160:176]))
    assert result.summary["best"]["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert expected < 0.1 * start  # it learned the two-dimensional structure


def test_a_standard_loss_on_a_model_returning_a_tuple_still_gets_its_first_item():
    """A recurrent model's (outputs, hidden state): torch's cross-entropy wants the scores alone."""

    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.out = nn.GRU(3, 8, batch_first=True), nn.Linear(8, 2)

        def forward(self, x):
            seq, hidden = self.rnn(x)
            return self.out(seq[:, -1]), hidden

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, 3, generator=g)
    y = (x[:, :, 0].sum(1) > 0).long()
    splits = make_splits((x[:48], y[:48]), (x[48:], y[48:]))
    objective = resolve_objective(Recurrent(), splits, nn.CrossEntropyLoss(), {}, amp="off",
                                  device=torch.device("cpu"), probe_size=16)
    assert not objective.loss_on_outputs and objective.known_loss and "accuracy" in objective.metric_fns


@pytest.mark.parametrize("loss, task_ignore, expected", [
    # the task's own loss says nothing of padding: the task's ignore_index does (it was dropped for -100)
    (lambda s, t: F.cross_entropy(s.reshape(-1, 5), t.reshape(-1), ignore_index=0), 0, 0),
    # a standard loss module carries its own
    (nn.CrossEntropyLoss(ignore_index=4), 0, 4),
    # a torch function is at its defaults
    (F.cross_entropy, 0, -100),
], ids=["own-function", "module", "torch-function"])
def test_the_padding_label_of_a_tasks_own_loss_comes_from_the_task(loss, task_ignore, expected):
    from converge.data import TensorSplit

    own = not isinstance(loss, nn.Module) and loss is not F.cross_entropy
    model = nn.Sequential(nn.Embedding(6, 8), nn.Linear(8, 5))           # [N, T, V] scores
    if not own:
        model.append(Transpose())                                          # [N, V, T], as torch's losses want
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(1, 6, (40, 7), generator=g), torch.randint(1, 4, (40, 7), generator=g)
    y[:, 5:] = 0                                                           # padded with 0
    splits = {"train": TensorSplit(x[:30], y[:30], "train"), "val": TensorSplit(x[30:], y[30:], "val")}
    objective = resolve_objective(model, splits, loss, {}, amp="off", device=torch.device("cpu"), probe_size=16,
                                  ignore_index=task_ignore)
    assert objective.ignore_index == expected
    # scores right on every real label and wrong on every padding position: the accuracy counts what is counted
    scores = F.one_hot(torch.where(y == 0, 4, y), 5).float()
    scores = scores if own else scores.transpose(1, 2)
    accuracy = objective.metric_fns["token_accuracy"](scores, y).item()
    assert accuracy == pytest.approx(1.0 if expected == 0 else 5 / 7)


class Transpose(nn.Module):
    def forward(self, scores):
        return scores.transpose(1, 2)


def soft_rows(n=300, classes=10, top=0.8, seed=0):
    """A teacher's probabilities: ``top`` on the true class, the rest spread evenly."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    labels = (x[:, :classes] if classes <= 12 else x).argmax(dim=1) % classes
    soft = torch.full((n, classes), (1 - top) / (classes - 1))
    soft[torch.arange(n), labels] = top
    return x, soft


def test_soft_label_rows_under_a_cross_entropy_are_their_own_kind():
    from converge.decide.task_kind import soft_labels

    assert soft_labels((8, 10), (8, 10), True).kind == "soft_labels"
    assert soft_labels((8, 10), (8, 10), True).classes == 10
    assert soft_labels((8, 10), (8, 10), False) is None        # rows that are not probabilities
    assert soft_labels((8, 10), (8, 5), True) is None          # scores of another width
    assert soft_labels((8, 1), (8, 1), True) is None           # one column is no distribution over classes


@pytest.mark.parametrize("loss, kind", [
    (nn.CrossEntropyLoss(), "soft_labels"),
    (F.cross_entropy, "soft_labels"),
    (None, "regression"),                                      # no loss named: the inferred MSE, as before
    (lambda o, t: -(t * F.log_softmax(o, 1)).sum(1).mean(), "regression"),   # a loss of the task's own
], ids=["module", "function", "no-loss", "own-loss"])
def test_soft_labels_need_the_tasks_cross_entropy(loss, kind):
    from converge.data import TensorSplit

    x, soft = soft_rows()
    splits = {"train": TensorSplit(x[:200], soft[:200], "train"), "val": TensorSplit(x[200:], soft[200:], "val")}
    objective = resolve_objective(nn.Linear(12, 10), splits, loss, {}, amp="off", device=torch.device("cpu"),
                                  probe_size=32)
    assert objective.kind == kind
    if kind == "soft_labels":
        assert objective.known_loss and "soft labels" in objective.description
        right = soft[:5].log()                                  # scores ranking each row's classes as it does
        assert objective.metric_fns["accuracy"](right, soft[:5]).item() == 1.0
        mean_row = soft[:200].double().mean(0)
        entropy = float(-(mean_row * mean_row.log()).sum())
        assert constant_prediction_loss(soft[:200], objective) == pytest.approx(entropy)
        stats = TargetStats(objective)
        for rows in soft[:200].split(64):
            stats.update(rows)
        assert stats.loss() == pytest.approx(entropy)


@pytest.mark.parametrize("loss", [nn.KLDivLoss(reduction="batchmean"), F.kl_div], ids=["module", "function"])
def test_a_kl_divergence_on_log_probabilities_against_soft_labels_is_distillation(loss):
    """A student's log-probabilities against a teacher's probabilities under a KL divergence: the soft-label
    kind, so its accuracy is reported (it was a regression of ten values with no metric). Its constant is
    not the label entropy's (KL subtracts the rows' own entropy): not a known loss."""
    from converge.data import TensorSplit

    x, soft = soft_rows()
    splits = {"train": TensorSplit(x[:200], soft[:200], "train"), "val": TensorSplit(x[200:], soft[200:], "val")}
    model = nn.Sequential(nn.Linear(12, 10), nn.LogSoftmax(dim=1))
    objective = resolve_objective(model, splits, loss, {}, amp="off", device=torch.device("cpu"), probe_size=32)
    assert objective.kind == "soft_labels" and not objective.known_loss and not objective.constant_by_search
    assert objective.metric_fns["accuracy"](soft[:5].log(), soft[:5]).item() == 1.0


def test_the_doctor_judges_a_soft_label_batch_against_its_entropy():
    """A teacher's 0.8 cannot be fitted below the rows' entropy (0.95 for ten classes): the overfit-one-batch
    check called a working model a bug."""
    from converge.doctor.model_checks import soft_label_floor
    from converge.doctor.run import check_all, samples_from_splits
    from converge.data import TensorSplit

    x, soft = soft_rows(n=400)
    splits = {"train": TensorSplit(x[:300], soft[:300], "train"), "val": TensorSplit(x[300:], soft[300:], "val")}
    objective = resolve_objective(nn.Linear(12, 10), splits, nn.CrossEntropyLoss(), {}, amp="off",
                                  device=torch.device("cpu"), probe_size=32)
    row_entropy = float(-(soft[0] * soft[0].log()).sum())
    assert soft_label_floor(soft[:32], objective) == pytest.approx(row_entropy, rel=1e-5)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 10))
    findings, _ = check_all(model, samples_from_splits(splits, seed=0), loss=nn.CrossEntropyLoss(), cheap=False,
                            seed=0)
    assert "cannot_overfit_batch" not in [f.code for f in findings]
    assert "init_loss_off" not in [f.code for f in findings]   # ln 10 at the start, as for hard labels


def _objective_for(loss, x, y, model):
    from converge.data import TensorSplit

    splits = {"train": TensorSplit(x[:300], y[:300], "train"), "val": TensorSplit(x[300:], y[300:], "val")}
    return resolve_objective(model, splits, loss, {}, amp="off", device=torch.device("cpu"), probe_size=32)


def test_a_weighted_cross_entropy_gets_the_best_constant_predictions_loss():
    """No closed form with class weights: the best constant puts p_c in proportion to w_c n_c."""
    from converge.engine.objective import in_memory_constant_loss, searched_constant_loss

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 6, generator=g), torch.randint(0, 3, (400,), generator=g)
    weights = torch.tensor([1.0, 3.0, 8.0])
    objective = _objective_for(nn.CrossEntropyLoss(weight=weights), x, y, nn.Linear(6, 3))
    assert not objective.known_loss and objective.constant_by_search
    mass = weights * torch.bincount(y[:300], minlength=3).float()
    best = float(-(mass * (mass / mass.sum()).log()).sum() / mass.sum())
    assert searched_constant_loss(y[:300], objective) == pytest.approx(best, rel=1e-4)
    from converge.data import TensorSplit
    assert in_memory_constant_loss(TensorSplit(x[:300], y[:300], "train"), objective) == pytest.approx(best, rel=1e-4)


def test_a_positive_weight_bce_gets_the_best_constant_predictions_loss():
    from converge.engine.objective import searched_constant_loss

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g)
    y = (torch.rand(400, generator=g) < 0.1).float()
    objective = _objective_for(nn.BCEWithLogitsLoss(pos_weight=torch.tensor(5.0)), x, y, nn.Linear(6, 1))
    share = float(y[:300].mean())
    p = 5 * share / (5 * share + 1 - share)
    best = -(5 * share * math.log(p) + (1 - share) * math.log(1 - p))
    assert searched_constant_loss(y[:300], objective) == pytest.approx(best, rel=1e-4)


def test_a_summed_loss_has_no_constant_baseline():
    from converge.engine.objective import in_memory_constant_loss
    from converge.data import TensorSplit

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 6, generator=g), torch.randint(0, 3, (400,), generator=g)
    objective = _objective_for(nn.CrossEntropyLoss(reduction="sum"), x, y, nn.Linear(6, 3))
    assert not objective.constant_by_search
    assert in_memory_constant_loss(TensorSplit(x[:300], y[:300], "train"), objective) is None


def test_a_run_that_learned_nothing_under_a_weighted_loss_is_called_collapsed(tmp_path):
    """Inputs that say nothing of the labels and a class-weighted loss: the run was "converged", with no
    yardstick to tell it learned nothing."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(600, 8, generator=g), torch.randint(0, 3, (600,), generator=g)
    torch.manual_seed(0)
    result = converge.fit(nn.Linear(8, 3), (x[:400], y[:400]), (x[400:], y[400:]),
                          loss=nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 4.0])), max_epochs=15,
                          lr=0.01, optimizer="adamw", batch_size=32, seed=0, verbose=False, out=tmp_path / "run")
    assert result.summary["yardsticks"]["constant_prediction_loss"] is not None
    assert "collapsed" in [d["code"] for d in result.summary["diagnosis"]]


@pytest.mark.parametrize("loss, head", [
    (nn.NLLLoss(weight=torch.tensor([1.0, 3.0, 8.0])), nn.LogSoftmax(dim=1)),   # log-probabilities: bounded below
    (nn.CrossEntropyLoss(label_smoothing=0.1), nn.Identity()),
], ids=["weighted-nll", "label-smoothing"])
def test_the_searched_constant_is_the_losss_own_floor_for_a_constant(loss, head):
    """The searched constant's loss is what a constant output can reach: positive, and no constant the loss
    reads (log-probabilities for an NLL loss) does better."""
    from converge.engine.objective import searched_constant_loss

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 6, generator=g), torch.randint(0, 3, (400,), generator=g)
    objective = _objective_for(loss, x, y, nn.Sequential(nn.Linear(6, 3), head))
    assert objective.constant_by_search
    found = searched_constant_loss(y[:300], objective)
    assert found is not None and found > 0
    for _ in range(20):
        scores = torch.randn(3, generator=g).log_softmax(0)
        assert float(loss(scores.expand(300, 3), y[:300])) >= found - 1e-5


def test_float_values_that_are_not_labels_get_no_label_hint():
    for targets in (TargetFacts((8,), False, False, 0.0, 9.0, whole=False),    # fractions: a regression
                    TargetFacts((8,), False, False, 0.0, 12.0, whole=True)):   # 12 is past ten scores
        with pytest.raises(ConvergeError) as error:
            decide_kind(targets, (8, 10))
        assert "targets.long()" not in str(error.value)
