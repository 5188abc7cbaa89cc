"""The pipelines people already have: dict batches (with padding and a model that computes its own loss),
models returning dicts, tuples or objects with ``.logits``, several inputs, and streams; each trains, and a
killed run resumes bit for bit."""

from __future__ import annotations

import json
import signal
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import converge
from converge.errors import ConvergeError
from test_resume import assert_same_run, run_ok, start_and_stop

QUICK = dict(optimizer="adamw", lr=1e-2, weight_decay=0.0, batch_size=32, verbose=False)


def sentences(n=400, seed=0, length=12):
    """Token ids with a class: 1 when ids 1..5 outnumber ids 6..10. Padded to ``length`` with 0."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 30, (n, length), generator=g)
    lengths = torch.randint(4, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    labels = (((ids >= 1) & (ids <= 5)).sum(1) > ((ids >= 6) & (ids <= 10)).sum(1)).long()
    return ids, mask, labels


class Bag(nn.Module):
    """A bag-of-words classifier called as model(input_ids=..., attention_mask=...)."""

    def __init__(self, outputs: str = "tensor"):
        super().__init__()
        self.embed, self.head, self.outputs = nn.Embedding(30, 16), nn.Linear(16, 2), outputs

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).float()
        logits = self.head((self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1))
        if self.outputs == "dict":
            return {"logits": logits, "hidden": mask}
        if self.outputs == "tuple":
            return logits, mask
        if self.outputs == "object":
            return SimpleNamespace(logits=logits)
        return logits


class OwnLoss(Bag):
    """Computes its own loss when given labels, as Hugging Face models do (here with label smoothing, so it
    differs from plain cross-entropy)."""

    def __init__(self, smoothing: float = 0.1):
        super().__init__()
        self.smoothing = smoothing

    def forward(self, input_ids, attention_mask, labels=None):
        logits = super().forward(input_ids, attention_mask)
        loss = None if labels is None else F.cross_entropy(logits, labels, label_smoothing=self.smoothing)
        return SimpleNamespace(loss=loss, logits=logits)


class DictItems(Dataset):
    def __init__(self, ids, mask, labels):
        self.ids, self.mask, self.labels = ids, mask, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


@pytest.mark.parametrize("outputs", ["tensor", "dict", "tuple", "object"])
def test_dict_batches_and_any_output_container(outputs):
    ids, mask, labels = sentences()
    train, val = DictItems(ids[:300], mask[:300], labels[:300]), DictItems(ids[300:], mask[300:], labels[300:])
    result = converge.fit(Bag(outputs), train, val, max_epochs=12, **QUICK)
    assert result.summary["task_kind"] == "classification" and result.summary["best"]["val_accuracy"] > 0.8


def test_a_dict_of_tensors_is_a_split_and_target_key_names_the_targets():
    ids, mask, labels = sentences()
    train = {"input_ids": ids[:300], "attention_mask": mask[:300], "y": labels[:300]}
    val = {"input_ids": ids[300:], "attention_mask": mask[300:], "y": labels[300:]}
    result = converge.fit(Bag(), train, val, target_key="y", max_epochs=12, **QUICK)
    assert result.summary["best"]["val_accuracy"] > 0.8
    with pytest.raises(ConvergeError, match="without a 'labels' entry.*set `target_key = 'y'`"):
        converge.fit(Bag(), train, val, **QUICK)


@pytest.mark.parametrize("smoothing, known", [(0.0, True), (0.1, False)])
def test_a_model_that_computes_its_own_loss_trains_on_it(smoothing, known):
    ids, mask, labels = sentences()
    train, val = DictItems(ids[:300], mask[:300], labels[:300]), DictItems(ids[300:], mask[300:], labels[300:])
    model = OwnLoss(smoothing)
    result = converge.fit(model, train, val, max_epochs=8, **QUICK)
    summary = result.summary
    assert "model's own .loss" in summary["task_description"] and summary["best"]["val_accuracy"] > 0.8
    with torch.no_grad():
        own = model(ids[300:], mask[300:], labels[300:]).loss.item()
    assert summary["best"]["val_loss"] == pytest.approx(own, rel=1e-4)   # the model's loss is the one reported
    # Equal to cross-entropy on a probe batch: a known loss (baseline, init check); label smoothing: its own.
    assert ("equal to cross-entropy" in summary["task_description"]) == known


def test_padded_token_labels_count_in_neither_loss_nor_metrics():
    """Dict batches for tagging: labels -100 at the padding do not count."""
    ids, mask, _ = sentences()
    tags = torch.where(mask.bool(), ids % 3, torch.full_like(ids, -100))

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.head = nn.Embedding(30, 16), nn.Linear(16, 3)

        def forward(self, input_ids, attention_mask):
            return self.head(torch.relu(self.embed(input_ids)))

    train = {"input_ids": ids[:300], "attention_mask": mask[:300], "labels": tags[:300]}
    val = {"input_ids": ids[300:], "attention_mask": mask[300:], "labels": tags[300:]}
    result = converge.fit(Tagger(), train, val, max_epochs=10, **QUICK)
    assert result.summary["task_kind"] == "sequence" and result.summary["best"]["val_token_accuracy"] > 0.95


class ImageAndMeta(nn.Module):
    def __init__(self):
        super().__init__()
        self.image, self.meta, self.head = nn.Linear(16, 16), nn.Linear(3, 8), nn.Linear(24, 3)

    def forward(self, image, metadata):
        return self.head(torch.cat([torch.relu(self.image(image.flatten(1))), torch.relu(self.meta(metadata))], 1))


def two_inputs(n=400):
    g = torch.Generator().manual_seed(0)
    image, meta = torch.randn(n, 1, 4, 4, generator=g), torch.randn(n, 3, generator=g)
    return image, meta, (image.flatten(1)[:, 0] > 0).long() + (meta[:, 0] > 0).long()


def test_several_inputs_in_memory_and_from_a_dataset():
    image, meta, y = two_inputs()
    torch.manual_seed(0)
    in_memory = converge.fit(ImageAndMeta(), ((image[:300], meta[:300]), y[:300]), ((image[300:], meta[300:]), y[300:]),
                             max_epochs=30, **QUICK)
    torch.manual_seed(0)
    dataset = converge.fit(ImageAndMeta(), TensorDataset(image[:300], meta[:300], y[:300]),
                           TensorDataset(image[300:], meta[300:], y[300:]), max_epochs=30, **QUICK)
    assert in_memory.summary["best"]["val_accuracy"] > 0.7   # the majority class is 50 %
    # the same samples in the same order either way: the same run
    assert [r["val_loss"] for r in dataset.history] == pytest.approx([r["val_loss"] for r in in_memory.history])
    findings = converge.diagnose(ImageAndMeta(), ((image * 1000, meta), y), ((image, meta), y), cheap=True)
    scaled = next(f for f in findings if f.code == "unscaled_features")
    assert scaled.evidence["input"] == "input 0"   # the doctor checks each input on its own


class BatchDict(nn.Module):
    """A forward that takes the batch dict whole and reads its entries itself."""

    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(4, 3), nn.Linear(3 + 3, 3)

    def forward(self, batch):
        return self.head(torch.cat([batch["metadata"], self.emb(batch["kind"])], 1))


def test_a_forward_taking_the_batch_dict_whole_gets_it_whole_and_a_named_one_gets_its_entries():
    """`forward(self, batch)` on dict inputs was refused: "unexpected keyword argument 'metadata'"."""
    from converge.calling import takes_dict_whole

    _, meta, _ = two_inputs()
    kind = torch.arange(len(meta)) % 4
    y = (meta[:, 0] > 0).long() + (kind >= 2).long()
    inputs = {"metadata": meta, "kind": kind}
    split = ({k: v[:300] for k, v in inputs.items()}, y[:300]), ({k: v[300:] for k, v in inputs.items()}, y[300:])
    torch.manual_seed(0)
    result = converge.fit(BatchDict(), *split, max_epochs=20, **QUICK)
    assert result.summary["best"]["val_accuracy"] > 0.85
    keys = frozenset(inputs)
    assert takes_dict_whole(BatchDict(), keys)

    class Named(nn.Module):
        def forward(self, metadata, kind):
            return metadata

    class Keywords(nn.Module):
        def forward(self, input_ids=None, **kwargs):
            return input_ids

    class Optional(nn.Module):   # a Hugging Face style forward: the keys are among its parameters
        def forward(self, metadata, kind=None, labels=None):
            return metadata

    assert not takes_dict_whole(Named(), keys) and not takes_dict_whole(Keywords(), keys)
    assert not takes_dict_whole(Optional(), keys)
    class Compiled(nn.Module):   # as torch.compile's wrapper: forward(*args, **kwargs), the model in _orig_mod
        def __init__(self, model):
            super().__init__()
            self._orig_mod = model

        def forward(self, *args, **kwargs):
            return self._orig_mod(*args, **kwargs)

    assert takes_dict_whole(Compiled(BatchDict()), keys)   # the wrapped module's forward is read


class ClassAndAmount(nn.Module):
    """Two heads: three class scores and one amount."""

    def __init__(self):
        super().__init__()
        self.body, self.cls, self.amount = nn.Linear(3, 16), nn.Linear(16, 3), nn.Linear(16, 1)

    def forward(self, image, metadata):
        h = torch.relu(self.body(metadata))
        return self.cls(h), self.amount(h).squeeze(-1)


def two_heads_loss(outputs, targets):
    scores, amount = outputs
    if isinstance(targets, dict):
        targets = targets["label"], targets["amount"]
    return F.cross_entropy(scores, targets[0]) + F.mse_loss(amount, targets[1])


@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_targets_for_several_heads_in_memory_reach_the_loss_as_given(form):
    """(inputs, (labels, amounts)): one target per head, as in a Dataset yielding them. They used to be
    stacked into one [2, N] tensor and refused as "2 targets"."""
    image, meta, y = two_inputs()
    amount = meta[:, 1] * 2 + 1

    def split(rows):
        targets = (y[rows], amount[rows]) if form == "tuple" else {"label": y[rows], "amount": amount[rows]}
        return (image[rows], meta[rows]), targets

    train, val = split(slice(0, 300)), split(slice(300, None))
    torch.manual_seed(0)
    result = converge.fit(ClassAndAmount(), train, val, loss=two_heads_loss, max_epochs=30, **QUICK)
    assert result.summary["task_kind"] == "custom"
    model = result.model.eval()
    with torch.no_grad():
        best = two_heads_loss(model(image[300:], meta[300:]), split(slice(300, None))[1]).item()
    assert result.summary["best"]["val_loss"] == pytest.approx(best, rel=1e-4)
    assert best < 0.5 * two_heads_loss(ClassAndAmount()(image[300:], meta[300:]), split(slice(300, None))[1]).item()


def test_targets_for_several_heads_must_agree_in_length_and_pair_up_with_the_outputs():
    image, meta, y = two_inputs()
    amount = meta[:, 1]
    with pytest.raises(ConvergeError, match="targets disagree in length"):
        converge.fit(ClassAndAmount(), ((image, meta), (y, amount[:-1])), ((image, meta), (y, amount)),
                     loss=two_heads_loss, **QUICK)
    with pytest.raises(ConvergeError, match="cannot infer a loss for targets of type tuple and outputs"):
        converge.fit(ImageAndMeta(), ((image, meta), (y, amount)), ((image, meta), (y, amount)), **QUICK)
    with pytest.raises(ConvergeError, match="head0: .*labels must lie in"):   # the head is named
        converge.fit(ClassAndAmount(), ((image, meta), (y + 5, amount)), ((image, meta), (y, amount)), **QUICK)


class NamedHeads(ClassAndAmount):
    """The same two heads, returned in a dict."""

    def forward(self, image, metadata):
        scores, amount = super().forward(image, metadata)
        return {"kind": scores, "amount": amount}


@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_targets_per_head_without_a_loss_get_one_inferred_loss_per_head(form):
    """No loss, one target per output: each head's loss is inferred as for one head and the losses summed, a
    regression head's MSE divided by its training targets' variance (an amount in raw units, about 1000 here,
    would be all the sum sees); each head has its metrics, named after it, in the targets' units."""
    image, meta, _ = two_inputs()
    y = (meta[:, 0] > 0).long() + (meta[:, 2] > 0).long()   # what the heads read: the metadata
    amount = 1000 + 40 * meta[:, 1] + 10 * meta[:, 0]
    torch.manual_seed(0)
    model = ClassAndAmount() if form == "tuple" else NamedHeads()

    def split(rows):
        targets = (y[rows], amount[rows]) if form == "tuple" else {"kind": y[rows], "amount": amount[rows]}
        return (image[rows], meta[rows]), targets

    result = converge.fit(model, split(slice(0, 300)), split(slice(300, None)), max_epochs=100, verbose=False)
    summary = result.summary
    cls, amt = ("head0", "head1") if form == "tuple" else ("kind", "amount")
    assert summary["task_kind"] == "custom"
    assert f"{amt}: regression" in summary["task_description"] and "training targets' variance" in \
        summary["task_description"]
    best = summary["best"]
    assert set(best) == {"val_loss", f"val_{cls}_accuracy", f"val_{amt}_mse", f"val_{amt}_r2"}
    assert best[f"val_{cls}_accuracy"] > 0.9 and best[f"val_{amt}_r2"] > 0.9
    with torch.no_grad():
        out = result.model.eval()(image[300:], meta[300:])
    amount_out = out[1] if form == "tuple" else out["amount"]
    mse = float(F.mse_loss(amount_out, amount[300:]))
    assert best[f"val_{amt}_mse"] == pytest.approx(mse, rel=1e-4)           # raw units
    variance = float(amount[:300].var(unbiased=False))
    scores = out[0] if form == "tuple" else out["kind"]
    assert best["val_loss"] == pytest.approx(float(F.cross_entropy(scores, y[300:])) + mse / variance, rel=1e-4)


class Stream(IterableDataset):
    """An endless stream drawing from the global RNG (the hardest case for exact resume)."""

    def __iter__(self):
        while True:
            x = torch.randn(6)
            yield x, int(x[0] + x[1] > 0)


def test_a_stream_trains_in_fixed_epochs_and_must_keep_flowing():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 6, generator=g)
    val = (x, (x[:, 0] + x[:, 1] > 0).long())
    result = converge.fit(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2)), Stream(), val,
                          steps_per_epoch=30, max_epochs=5, **QUICK)
    assert result.summary["steps"] == 150 and result.summary["best"]["val_accuracy"] > 0.9
    with pytest.raises(ConvergeError, match="applies to a streamed training split"):
        converge.fit(nn.Linear(6, 2), val, val, steps_per_epoch=30, **QUICK)
    ended = DataLoader(TensorDataset(*val), batch_size=None)   # noqa: F841 - a finite loader is not a stream

    class Short(IterableDataset):
        def __iter__(self):
            yield from zip(val[0][:50], val[1][:50])

    with pytest.raises(ConvergeError, match="stream ended"):
        converge.fit(nn.Linear(6, 2), Short(), val, steps_per_epoch=30, **QUICK)


# --- killed and resumed -------------------------------------------------------------------------------
TASKS = {
    "stream": '''
import torch
from torch import nn
from torch.utils.data import IterableDataset


class Stream(IterableDataset):
    def __iter__(self):
        while True:
            x = torch.randn(8)
            yield x, int(x[0] + x[1] > 0)


def model():
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 2))


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 8, generator=g)
    return Stream(), (x, (x[:, 0] + x[:, 1] > 0).long())
''',
    "dicts": '''
import torch
from types import SimpleNamespace
from torch import nn
from torch.utils.data import Dataset
import torch.nn.functional as F


class Items(Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 30, (n, 10), generator=g)
        self.labels = ((self.ids <= 5).sum(1) > (self.ids > 25).sum(1)).long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(10, dtype=torch.long), "labels": self.labels[i]}


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.drop, self.head = nn.Embedding(30, 16), nn.Dropout(0.2), nn.Linear(16, 2)

    def forward(self, input_ids, attention_mask, labels=None):
        logits = self.head(self.drop(self.embed(input_ids).mean(1)))
        return SimpleNamespace(logits=logits, loss=None if labels is None else F.cross_entropy(logits, labels))


def model():
    return Model()


def data():
    return Items(2000, 0), Items(300, 1)
''',
    "two_heads_dataset": '''
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset


class Items(Dataset):
    """(features, (class, amount in raw units)): targets per head, not held in memory."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = 4 * torch.rand(n, 6, generator=g)
        self.label = (self.x[:, 0] > self.x[:, 1]).long()
        self.amount = 50 + 3 * self.x[:, 2] + 0.1 * torch.randn(n, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], (self.label[i], self.amount[i])


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.scores, self.amount = nn.Linear(6, 16), nn.Linear(16, 2), nn.Linear(16, 1)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return self.scores(h), self.amount(h).squeeze(-1)


def model():
    return Model()


def loss(outputs, targets):
    return F.cross_entropy(outputs[0], targets[0]) + F.mse_loss(outputs[1], targets[1])


def data():
    return Items(2000, 0), Items(300, 1)
''',
    "two_inputs": '''
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(6, 16), nn.Linear(3, 8), nn.Linear(24, 3)

    def forward(self, a, b):
        return self.head(torch.cat([torch.relu(self.a(a)), torch.relu(self.b(b))], 1))


def model():
    return Model()


def data():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2400, 6, generator=g), torch.randn(2400, 3, generator=g)
    y = (a[:, 0] > 0).long() + (b[:, 0] > 0).long()
    return ((a[:2000], b[:2000]), y[:2000]), ((a[2000:], b[2000:]), y[2000:])
''',
}


@pytest.mark.parametrize("name", list(TASKS))
def test_sigkill_then_resume_is_bit_exact(name, tmp_path):
    task = tmp_path / f"{name}.py"
    task.write_text(TASKS[name])
    args = lambda out: [sys.executable, "-m", "converge", "train", str(task), "--out", str(out),  # noqa: E731
                        "--max-epochs", "6", "--batch-size", "32", "--optimizer", "adamw", "--lr", "1e-3",
                        "--weight-decay", "1e-2", "--seed", "3", "--checkpoint-seconds", "0.05", "--quiet",
                        *(["--steps-per-epoch", "40"] if name == "stream" else [])]
    run_ok(args(tmp_path / "reference"))
    out = tmp_path / "run"
    code = start_and_stop(args(out), out, 2, 0.02, signal.SIGKILL)
    if code != 0:
        run_ok([sys.executable, "-m", "converge", "resume", str(out), "--quiet"])
    assert_same_run(tmp_path / "reference", out)
    events = [json.loads(line)["event"] for line in (out / "events.jsonl").read_text().splitlines()]
    assert "resumed" in events or code == 0


def test_a_model_made_double_trains_on_float64_numpy_data_and_is_diagnosed():
    """float64 NumPy splits become float32 tensors, which a model made .double() refused at its first layer
    ("mat1 and mat2 must have the same dtype"): for such a model they stay float64."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.1 * rng.normal(size=400)).reshape(-1, 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    result = converge.fit(model, (x[:300], y[:300]), (x[300:], y[300:]), max_epochs=20, **QUICK)
    assert result.summary["best"]["val_r2"] > 0.9
    assert next(result.model.parameters()).dtype == torch.float64
    findings = converge.diagnose(model, (x[:300], y[:300]), (x[300:], y[300:]), cheap=True)
    assert not [f for f in findings if f.severity == "error"], findings


def test_a_dataloader_keeps_its_batches_and_a_resampling_one_is_known():
    from torch.utils.data import WeightedRandomSampler

    from converge.data import make_split

    x, y = torch.randn(600, 4), (torch.rand(600) < 0.1).long()
    plain = make_split(DataLoader(TensorDataset(x, y), batch_size=48, shuffle=True), "train")
    assert plain.own_batch_size == 48 and not plain.resampled
    weights = torch.where(y == 1, 9.0, 1.0)
    balanced = make_split(DataLoader(TensorDataset(x, y), batch_size=50,
                                     sampler=WeightedRandomSampler(weights, 600)), "train")
    assert balanced.own_batch_size == 50 and balanced.resampled
    assert make_split(TensorDataset(x, y), "train").own_batch_size is None   # a Dataset: converge batches it


def test_auto_mode_reports_a_dataloaders_own_batch_size_and_no_constant_for_a_resampling_one():
    """The chosen batch size of a user's DataLoader was reported (and counted in steps per epoch) although the
    loader's own batches were used; and the constant of the dataset's label mix was held against batches a
    WeightedRandomSampler balanced, so both range tests found "no usable evidence"."""
    from torch.utils.data import WeightedRandomSampler

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] + 0.3 * torch.randn(3000, generator=g) > 1.6).long()   # about 7 % positives
    weights = (1.0 / torch.bincount(y[:2400]).float())[y[:2400]]
    train = DataLoader(TensorDataset(x[:2400], y[:2400]), batch_size=64,
                       sampler=WeightedRandomSampler(weights, 2400, generator=torch.Generator().manual_seed(1)))
    val = DataLoader(TensorDataset(x[2400:], y[2400:]), batch_size=256)
    torch.manual_seed(0)
    result = converge.fit(nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 2)), train, val, max_epochs=3,
                          verbose=False)
    events = {e["event"]: e for e in result.events}
    assert events["chose_batch_size"]["value"] == 64
    assert "DataLoader's own" in events["chose_batch_size"]["reason"]
    tests = [e for e in result.events if e["event"] == "lr_range_test"]
    assert tests and not any("constant prediction" in e["reason"] for e in tests), [e["reason"] for e in tests]


def test_a_dataloaders_one_sample_last_training_batch_is_dropped_as_converges_own_is():
    """385 rows in batches of 64 end each epoch with one sample, which BatchNorm refuses in training: the run
    stopped on "Expected more than 1 value per channel". Evaluation still sees every sample."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(477, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    train = DataLoader(TensorDataset(x[:385], y[:385]), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(x[385:], y[385:]), batch_size=64)   # 92 rows: a last batch of 28
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    result = converge.fit(model, train, val, max_epochs=4, **QUICK)
    assert result.summary["epochs"] == 4 and result.summary["steps"] == 4 * 6   # six full batches an epoch
    from converge.data import make_split
    assert make_split(train, "train").num_batches(64, train=True) == 6
    assert make_split(train, "train").num_batches(64, train=False) == 7


def test_a_batch_of_targets_per_head_counts_its_samples_in_the_training_loss():
    """The epoch's training loss weighs each batch by its samples; targets per head were counted as the number
    of heads (2), so a last batch of 4 rows weighed as much as one of 32, as the validation loss once did."""
    from converge.data import rows_in
    from converge.engine.loop import _rows

    labels, amounts = torch.zeros(4, dtype=torch.long), torch.zeros(4)
    assert _rows((labels, amounts)) == 4 and _rows({"label": labels, "amount": amounts}) == 4
    assert _rows(labels) == 4 and rows_in((labels, amounts)) == 4 and rows_in(("not", "tensors")) is None


def _price_and_class(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    price = 250_000 + 60_000 * x[:, 0] - 20_000 * x[:, 1] + 5_000 * torch.randn(n, generator=g)
    raw = x * torch.tensor([400.0, 1.0, 30.0, 0.01]) + torch.tensor([1800.0, 3.0, 40.0, 0.0])   # square feet, ...
    return raw, {"price": price, "kind": (x[:, 2] + x[:, 3] > 0).long()}


class PriceAndKind(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 32), nn.ReLU())
        self.price, self.kind = nn.Linear(32, 1), nn.Linear(32, 2)

    def forward(self, x):
        h = self.body(x)
        return {"price": self.price(h).squeeze(-1), "kind": self.kind(h)}


def test_a_head_in_raw_units_trains_on_standardized_targets_and_predicts_in_them(tmp_path):
    """A price head in dollars (mean 2.5e5, std 6e4) beside a class head, no loss, raw input columns: the
    price head's last nn.Linear trains on z (a hook maps it back while the model trains) and the inputs are
    standardized, both folded in at the end: the returned model and best.safetensors take the raw columns and
    predict dollars, as the summary scored them. Without it the head stayed at R2 -10. A resumed run
    standardizes as it did at its start and ends where the uninterrupted run ends."""
    from safetensors.torch import load_file

    train, val = _price_and_class(600, 0), _price_and_class(200, 1)

    def run(out, epochs, resume=False):
        torch.manual_seed(0)
        return converge.fit(PriceAndKind(), train, val, out=out, max_epochs=epochs, resume=resume, **QUICK)

    result = run(tmp_path / "run", 40)
    remedy = next(e for e in result.events if e["event"] == "remedy" and e["remedy"] == "standardize_targets")
    assert remedy["detail"]["applied"] and [h["head"] for h in remedy["detail"]["heads"]] == ["price"]
    assert remedy["detail"]["heads"][0]["layer"] == "price"
    inputs = next(e for e in result.events if e["event"] == "remedy" and e["remedy"] == "standardize_features")
    assert inputs["detail"]["applied"] and inputs["detail"]["layer"] == "body.0"
    best = result.summary["best"]
    assert best["val_price_r2"] > 0.9 and best["val_kind_accuracy"] > 0.9
    assert not any(module._forward_hooks for module in result.model.modules())   # folded instead
    fresh = PriceAndKind()
    fresh.load_state_dict(load_file(tmp_path / "run" / "best.safetensors"))
    for model in (result.model.eval(), fresh.eval()):
        with torch.no_grad():
            price = model(val[0])["price"]
        assert float(F.mse_loss(price, val[1]["price"])) == pytest.approx(best["val_price_mse"], rel=1e-4)

    short = run(tmp_path / "resumed", 6)
    assert short.summary["epochs"] == 6
    resumed = run(tmp_path / "resumed", 12, resume=True)
    straight = run(tmp_path / "straight", 12)
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in straight.history]


def _own_price_and_kind_loss(out, targets):
    """A user's loss on the two heads: a cross-entropy plus the MSE of the price in thousands of dollars."""
    return F.cross_entropy(out["kind"], targets["kind"]) + F.mse_loss(out["price"] / 1000, targets["price"] / 1000)


def test_a_loss_of_the_tasks_own_on_several_heads_gets_standardized_inputs_and_head_targets(tmp_path):
    """The same raw columns and dollar prices under the user's own loss: inputs standardized (the fold checked
    on both heads' outputs), the price head trained on z through a hook (the loss reads it as a prediction of
    the price: it is smallest where the head equals the targets), both folded in at the end, so the returned
    model and best.safetensors take raw columns and predict dollars. Before, the inputs stayed raw and the
    head grew toward the dollars by steps of about the LR. A resumed run re-applies the head's statistics."""
    from safetensors.torch import load_file

    train, val = _price_and_class(600, 0), _price_and_class(200, 1)

    def run(out, epochs, resume=False):
        torch.manual_seed(0)
        return converge.fit(PriceAndKind(), train, val, out=out, loss=_own_price_and_kind_loss, max_epochs=epochs,
                            resume=resume, **QUICK)

    result = run(tmp_path / "run", 40)
    remedies = {e["remedy"]: e["detail"] for e in result.events if e["event"] == "remedy"}
    assert remedies["standardize_features"]["applied"] and remedies["standardize_features"]["layer"] == "body.0"
    heads = remedies["standardize_targets"]["heads"]
    assert [(h["head"], h["layer"]) for h in heads] == [("price", "price")]
    assert not any(module._forward_hooks for module in result.model.modules())
    fresh = PriceAndKind()
    fresh.load_state_dict(load_file(tmp_path / "run" / "best.safetensors"))
    for model in (result.model.eval(), fresh.eval()):
        with torch.no_grad():
            loss = _own_price_and_kind_loss(model(val[0]), val[1])
        assert float(loss) == pytest.approx(result.summary["best"]["val_loss"], rel=1e-4)
    # R2 of the price above 0.9: the MSE in thousands of dollars well under the price's variance (3600)
    assert result.summary["best"]["val_loss"] < 0.1 * float((val[1]["price"] / 1000).var())

    short = run(tmp_path / "resumed", 6)
    assert short.summary["epochs"] == 6
    resumed = run(tmp_path / "resumed", 12, resume=True)
    straight = run(tmp_path / "straight", 12)
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in straight.history]


def test_a_head_the_loss_does_not_read_as_a_prediction_keeps_its_outputs():
    """A Poisson head on log-rates (counts about 40): its outputs are not predictions of the counts, so its
    layer is not mapped to the counts' units (that would start every log-rate near 40); a model with one
    output is left to the one-output rule."""
    from converge.doctor.in_train import Prepared, _own_loss_heads
    from converge.data import TensorSplit

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=g)
    counts = torch.poisson(40 * torch.exp(0.3 * x[:, 0]), generator=g)
    price = 250_000 + 60_000 * x[:, 1]

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.rate, self.price = nn.Linear(4, 1), nn.Linear(4, 1)

        def forward(self, x):
            return self.rate(x).squeeze(-1), self.price(x).squeeze(-1)

    def loss(out, targets):
        return F.poisson_nll_loss(out[0], targets[0]) + F.mse_loss(out[1], targets[1])

    splits = {name: TensorSplit(x, (counts, price), name) for name in ("train", "val")}
    found = _own_loss_heads(Prepared(dict(splits), loss), TwoHeads(), loss)
    assert list(found) == [1] and found[1].code == "unscaled_targets"
    one = {name: TensorSplit(x, price, name) for name in ("train", "val")}
    assert _own_loss_heads(Prepared(dict(one), F.mse_loss), nn.Linear(4, 1), F.mse_loss) is None


def test_one_target_tensor_meets_the_one_output_of_its_shape():
    """An autoencoder returns (reconstruction, code) against its raw inputs as targets: the reconstruction is the
    head that predicts them (its layer then trains on standardized targets); two outputs of the targets' shape
    leave it undecided, and nothing is hooked."""
    from converge.data import TensorSplit
    from converge.doctor.in_train import Prepared, _own_loss_heads
    from converge.doctor.run import _head_targets

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 3, generator=g) * torch.tensor([20.0, 200.0, 0.5]) + torch.tensor([60.0, 2000.0, 1.5])

    class AE(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec = nn.Linear(3, 2), nn.Linear(2, 3)

        def forward(self, x):
            code = self.enc(x)
            return self.dec(code), code

    def loss(out, target):
        return F.mse_loss(out[0], target) + 1e-3 * out[1].pow(2).mean()

    prepared = Prepared({name: TensorSplit(x, x.clone(), name) for name in ("train", "val")}, loss)
    found = _own_loss_heads(prepared, AE(), loss)
    assert list(found) == [0] and prepared.head_targets == {0: None}
    assert _head_targets({"a": x, "b": x[:, :2]}, x) == {"a": None}
    twice = Prepared(dict(prepared.splits), loss)

    class Twice(AE):
        def forward(self, x):
            return self.dec(self.enc(x)), self.dec(self.enc(x))

    def both(out, target):
        return F.mse_loss(out[0], target) + F.l1_loss(out[1], target)

    assert _own_loss_heads(twice, Twice(), both) == {} and twice.head_targets == {}


def test_of_a_mean_and_a_log_variance_the_mean_is_the_head_that_predicts():
    """A Gaussian likelihood on (mean, log-variance), both of the targets' shape: the loss is smallest where the
    mean equals the targets, not where the log-variance does, so the mean's layer alone is mapped."""
    from converge.data import TensorSplit
    from converge.doctor.in_train import Prepared, _own_loss_heads

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=g)
    minutes = 40 + 15 * x[:, 0] + torch.randn(300, generator=g)

    class MeanAndLogVar(nn.Module):
        def __init__(self):
            super().__init__()
            self.mean, self.log_var = nn.Linear(4, 1), nn.Linear(4, 1)

        def forward(self, x):
            return self.mean(x).squeeze(-1), self.log_var(x).squeeze(-1)

    def nll(out, target):
        return F.gaussian_nll_loss(out[0], target, out[1].exp())

    prepared = Prepared({name: TensorSplit(x, minutes, name) for name in ("train", "val")}, nll)
    assert list(_own_loss_heads(prepared, MeanAndLogVar(), nll)) == [0] and prepared.head_targets == {0: None}

    from collections import namedtuple
    Gaussian = namedtuple("Gaussian", "mean log_var")

    class Named(MeanAndLogVar):
        def forward(self, x):
            return Gaussian(*super().forward(x))

    def named_nll(out, target):
        return F.gaussian_nll_loss(out.mean, target, out.log_var.exp())

    named = Prepared(dict(prepared.splits), named_nll)
    assert list(_own_loss_heads(named, Named(), named_nll)) == [0]   # a namedtuple of outputs, read by name


def test_a_namedtuple_of_outputs_trains_as_a_tuple_does(tmp_path):
    """torchvision's Inception returns InceptionOutputs(logits, aux_logits), a namedtuple: it was rebuilt from one
    generator ("missing 1 required positional argument") wherever converge copies or moves outputs. With raw
    input columns and a price head read by name, it trains as the same model returning a plain tuple."""
    from collections import namedtuple

    Out = namedtuple("Out", "price kind")

    class Named(PriceAndKind):
        def forward(self, x):
            out = super().forward(x)
            return Out(out["price"], out["kind"])

    class Plain(PriceAndKind):
        def forward(self, x):
            out = super().forward(x)
            return out["price"], out["kind"]

    def by_name(out, targets):
        return F.mse_loss(out.price / 1000, targets[0] / 1000) + F.cross_entropy(out.kind, targets[1])

    def by_position(out, targets):
        return F.mse_loss(out[0] / 1000, targets[0] / 1000) + F.cross_entropy(out[1], targets[1])

    def as_tuple(split):
        return split[0], (split[1]["price"], split[1]["kind"])

    train, val = as_tuple(_price_and_class(600, 0)), as_tuple(_price_and_class(200, 1))
    results = []
    for build, loss in ((Named, by_name), (Plain, by_position)):
        torch.manual_seed(0)
        results.append(converge.fit(build(), train, val, loss=loss, max_epochs=8, **QUICK))
    named, plain = results
    heads = next(e for e in named.events if e["event"] == "remedy" and e["remedy"] == "standardize_targets")
    assert [h["key"] for h in heads["detail"]["heads"]] == [0]
    assert [r["val_loss"] for r in named.history] == pytest.approx([r["val_loss"] for r in plain.history], rel=1e-6)
