"""converge doctor: planted-fault tasks (one per code), clean tasks, the pure checks' thresholds, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import converge

from converge.doctor import CODES, Finding, at_least, ranked, run_doctor
from converge.doctor import data_checks as dc
from converge.doctor import model_checks as mc
from converge.doctor.label_noise import confident_joint, find_label_issues, noise_joint

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Three well-separated standardized Gaussian blobs, 8 features: the clean baseline every fault is planted in.
BLOBS = '''
def _blobs(n=300, seed=0, classes=3):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centers = torch.randn(classes, 8, generator=g) * 2
    x = centers[y] + torch.randn(n, 8, generator=g)
    x = (x - x.mean(0)) / x.std(0)
    return x, y

def _split(x, y):
    n = len(y)
    a, b = int(n * 0.6), int(n * 0.8)
    return (x[:a], y[:a]), (x[a:b], y[a:b]), (x[b:], y[b:])
'''

CLEAN_DATA = '''
def data():
    return _split(*_blobs())
'''

# Each planted fault: (code, task body). The body adds or replaces model() / data() of the clean task.
PLANTED = {
    "class_imbalance": '''
def data():
    x, y = _blobs(400)
    keep = (y == 0) | ((torch.arange(400) // 3) % 8 == 0)   # classes 1 and 2: 1 in 8
    return _split(x[keep], y[keep])
''',
    "unscaled_features": '''
def data():
    x, y = _blobs()
    return _split(x * torch.tensor([1.0, 1e3, 1.0, 50.0, 1.0, 1.0, 1.0, 1.0]) + 200.0, y)
''',
    "nonfinite_values": '''
def data():
    x, y = _blobs()
    x[3, 2] = float("nan")
    x[7, 0] = float("inf")
    return _split(x, y)
''',
    "train_val_overlap": '''
def data():
    (xt, yt), (xv, yv), test = _split(*_blobs())
    xv[:10], yv[:10] = xt[:10], yt[:10]
    return (xt, yt), (xv, yv), test
''',
    "label_noise": '''
def data():
    x, y = _blobs(600)
    g = torch.Generator().manual_seed(1)
    flip = torch.rand(600, generator=g) < 0.25
    y = torch.where(flip, (y + 1 + torch.randint(0, 2, (600,), generator=g)) % 3, y)
    return _split(x, y)
''',
    "too_few_samples": '''
def data():
    x, y = _blobs(60)
    return (x[:30], y[:30]), (x[30:45], y[30:45]), (x[45:], y[45:])
''',
    "constant_features": '''
def data():
    x, y = _blobs()
    x[:, 2:] = 1.0
    return _split(x, y)
''',
    "outliers": '''
def data():
    x, y = _blobs()
    x[::50, 1] = 500.0
    return _split(x, y)
''',
    "init_loss_off": '''
def model():
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    with torch.no_grad():
        net[2].weight.mul_(100.0)
    return net
''',
    "cannot_overfit_batch": '''
class Ignores(nn.Module):   # a bug: the inputs are multiplied away
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    def forward(self, x):
        return self.net(x * 0)

def model():
    return Ignores()
''',
    "vanishing_gradients": '''
def model():
    layers = [nn.Linear(8, 32), nn.Sigmoid()]
    for _ in range(15):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(32, 3))
''',
    "exploding_gradients": '''
def model():
    layers = [nn.Linear(8, 32)] + [nn.Linear(32, 32) for _ in range(8)] + [nn.Linear(32, 3)]
    for layer in layers:
        nn.init.normal_(layer.weight, std=3.0 / layer.in_features ** 0.5)
    return nn.Sequential(*layers)
''',
    "dead_units": '''
def model():
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    with torch.no_grad():
        net[0].bias.fill_(-100.0)
    return net
''',
    "output_mismatch": '''
def model():
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))   # 3 classes in the labels
''',
    "unscaled_targets": '''
def data():
    x, _ = _blobs()
    return _split(x, 300.0 + 120.0 * x[:, :1] + 10.0 * x[:, 1:2] ** 2)   # a period in milliseconds, say

def model():
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
''',
}

CLEAN_MODEL = '''
def model():
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
'''

EXPENSIVE = {"label_noise", "cannot_overfit_batch"}


def _write(tmp_path, body: str, name: str) -> Path:
    source = "import torch\nfrom torch import nn\n" + BLOBS + body
    if "def model(" not in body:
        source += CLEAN_MODEL
    if "def data(" not in body:
        source += CLEAN_DATA
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    return path


def _codes(findings, severity="info"):
    return {f.code for f in at_least(findings, severity)}


def test_every_code_has_a_planted_fault():
    assert set(PLANTED) == set(CODES)


@pytest.mark.parametrize("code", sorted(PLANTED))
def test_planted_fault_is_found(tmp_path, code):
    findings = run_doctor(_write(tmp_path, PLANTED[code], code), cheap=code not in EXPENSIVE)
    found = {f.code: f for f in findings}
    assert code in found, [f.to_dict() for f in findings]
    finding = found[code]
    assert finding.severity in ("warning", "error"), finding
    assert finding.message and finding.fix and finding.evidence
    json.dumps(finding.to_dict())  # JSON-ready


def test_only_targets_that_training_standardizes_are_called_unscaled(tmp_path):
    """Float targets under the mean-squared error, or under a loss of the task's own that reads the output as
    a prediction of them (`converge train` trains that output on standardized targets through a hook); not
    targets already on a unit scale, nor an own loss that scales them itself (its output is no prediction
    of the raw targets)."""
    scaled = '''
def data():
    x, _ = _blobs()
    return _split(x, x[:, :1] * 0.8 + 0.1)

def model():
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
'''
    own_loss = PLANTED["unscaled_targets"] + '''
def loss(outputs, targets):
    return torch.nn.functional.l1_loss(outputs, targets)
'''
    scaled_inside = PLANTED["unscaled_targets"] + '''
def loss(outputs, targets):
    return torch.nn.functional.l1_loss(outputs, (targets - 300.0) / 120.0)
'''
    for name, body, named in (("scaled", scaled, False), ("own_loss", own_loss, True),
                              ("scaled_inside", scaled_inside, False)):
        assert ("unscaled_targets" in _codes(run_doctor(_write(tmp_path, body, name), cheap=True))) is named, name


def test_clean_blobs_have_no_warnings(tmp_path):
    findings = run_doctor(_write(tmp_path, "", "clean"))
    assert not at_least(findings, "warning"), [f.to_dict() for f in findings]


def test_digits_example_has_no_warnings():
    findings = run_doctor(EXAMPLES / "digits.py")
    assert not at_least(findings, "warning"), [f.to_dict() for f in findings]
    assert "constant_features" in _codes(findings)  # the corner pixels: info only


def test_label_noise_evidence_points_at_flipped_rows(tmp_path):
    findings = run_doctor(_write(tmp_path, PLANTED["label_noise"], "noisy"))
    noise = next(f for f in findings if f.code == "label_noise")
    assert 0.15 <= noise.evidence["noise_rate"] <= 0.35
    # the worst indices are positions in the training split; most of them were flipped
    g = torch.Generator().manual_seed(1)
    flipped = torch.nonzero(torch.rand(600, generator=g) < 0.25).reshape(-1).tolist()
    hits = sum(i in flipped for i in noise.evidence["worst_indices"])
    assert hits >= 0.8 * len(noise.evidence["worst_indices"])


def test_label_noise_on_token_ids_says_it_was_not_checked():
    # the proxy reads numeric features; on token ids it used to say nothing, which read as "the labels are clean"
    from converge.doctor import diagnose

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 50, (300, 12), generator=g)
    labels = ((tokens <= 10).sum(1) > (tokens > 40).sum(1)).long()
    model = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(96, 2))
    findings = diagnose(model, (tokens[:200], labels[:200]), (tokens[200:], labels[200:]))
    noise = [f for f in findings if f.code == "label_noise"]
    assert len(noise) == 1 and noise[0].severity == "info" and noise[0].evidence.get("skipped"), \
        [f.to_dict() for f in noise]



def test_label_noise_reads_raw_image_bytes_as_pixels():
    """Digits as uint8 images, a CNN that converts them itself: the check said "not checked ... (token
    ids?)"; bytes are pixels, and 10 % flipped labels are found in them."""
    from converge.doctor._sample import Sample
    from converge.doctor.run import label_issues

    sample, truth = _digits_for_noise(flipped=0.10)
    images = Sample("train", (sample.inputs * 16).round().to(torch.uint8), sample.targets, len(sample.targets), None)
    (finding,), flagged = label_issues(images, 10, seed=0, progress=lambda text: None)
    assert finding.severity == "warning" and not finding.evidence.get("skipped")
    assert len(set(flagged.tolist()) & set(truth.tolist())) >= 0.8 * len(truth)

def test_diagnose_leaves_the_model_and_global_rng_alone():
    from converge.doctor import diagnose

    torch.manual_seed(123)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 3))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _standard(200, 8), torch.arange(200) % 3
    before = torch.get_rng_state()
    findings = diagnose(model, (x[:150], y[:150]), (x[150:], y[150:]))
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert "label_noise" in {f.code for f in findings}   # random labels: all noise


def test_dataset_splits_are_sampled(tmp_path):
    body = '''
from torch.utils.data import Dataset

class Rows(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y
    def __len__(self):
        return len(self.y)
    def __getitem__(self, i):
        return self.x[i] * 1000.0, self.y[i]

def data():
    (xt, yt), (xv, yv), _ = _split(*_blobs())
    return Rows(xt, yt), Rows(xv, yv)
'''
    findings = run_doctor(_write(tmp_path, body, "dataset"), cheap=True)
    assert "unscaled_features" in _codes(findings, "warning")


# --- findings --------------------------------------------------------------------------------------------

def test_findings_rank_error_warning_info():
    findings = [Finding("a", "info", "m"), Finding("b", "error", "m"), Finding("c", "warning", "m"),
                Finding("d", "error", "m")]
    assert [f.code for f in ranked(findings)] == ["b", "d", "c", "a"]
    with pytest.raises(ValueError, match="severity"):
        Finding("x", "fatal", "m")
    assert set(Finding("x", "info", "m", {"k": 1}, "f").to_dict()) == {"code", "severity", "message", "evidence", "fix"}


# --- thresholds of the pure checks, pinned by tables -----------------------------------------------------

def _labels(counts):
    return torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])


@pytest.mark.parametrize("counts, severity", [
    ((100, 100, 100), None),
    ((100, 70), None),          # ratio 1.43 < 1.5
    ((150, 100), "info"),       # ratio 1.5
    ((299, 100), "info"),       # 2.99 < 3
    ((300, 100), "warning"),    # 3.0
    ((1000, 10, 500), "warning"),
])
def test_class_imbalance_thresholds(counts, severity):
    findings = dc.class_imbalance(_labels(counts))
    assert (findings[0].severity if findings else None) == severity
    if findings:
        assert findings[0].evidence["ratio"] == pytest.approx(max(counts) / min(counts), rel=1e-3)


@pytest.mark.parametrize("own_loss, own_monitor, severity, said, not_said", [
    # converge's own loss and a monitored loss: re-weight with --fix, and watch a metric that weighs every class
    (None, None, "warning", ["converge train --fix", "monitor a metric that weighs every class"], ["your own loss"]),
    # the task's own loss: --fix leaves it alone, so it is not offered
    ("focal_loss", None, "warning", ["your own loss (focal_loss)", "monitor a metric"], ["sampling (converge"]),
    # a metric of the task's own is monitored: it chose what to watch
    (None, "val_f1", "warning", ["--fix", "monitors your own val_f1"], ["monitor a metric"]),
    # both (issue 20: a focal loss and a monitored macro-F1): the task answered the imbalance itself
    ("focal_loss", "val_f1", "info", ["your own loss (focal_loss)", "monitors your own val_f1"],
     ["monitor a metric", "sampling (converge"]),
])
def test_class_imbalance_advice_knows_the_tasks_loss_and_monitor(own_loss, own_monitor, severity, said, not_said):
    found = dc.class_imbalance(_labels((500, 100)), own_loss=own_loss, own_monitor=own_monitor)[0]
    assert found.severity == severity
    assert all(text in found.fix for text in said) and not any(text in found.fix for text in not_said)


def test_the_checks_learn_the_tasks_own_loss_and_monitored_metric():
    x = torch.randn(600, 8)
    y = (torch.arange(600) % 6 == 0).long()                        # 5:1
    model = nn.Sequential(nn.Linear(8, 2))

    def f1(outputs, targets):
        return (outputs.argmax(1) == targets).float().mean()

    def imbalance(**options):
        found = converge.diagnose(model, (x, y), (x, y), cheap=True, **options)
        return next(f for f in found if f.code == "class_imbalance")

    assert imbalance().severity == "warning" and "monitor a metric" in imbalance().fix
    own = imbalance(loss=nn.CrossEntropyLoss(), metrics={"f1": f1}, monitor="val_f1")
    assert own.severity == "info" and "CrossEntropyLoss" in own.fix and "val_f1" in own.fix
    assert "monitor a metric" in imbalance(metrics={"f1": f1}, monitor="val_loss").fix


def test_unscaled_features_advice_says_what_converge_does_by_default():
    found = dc.unscaled_features(torch.randn(100, 4) * 100)[0]
    assert "by default" in found.fix and "--no-standardize" in found.fix


def test_raw_features_a_batch_norm_reads_first_are_information_and_its_initial_loss_is_as_training_sees_it():
    """A BatchNorm1d first on raw features (scales 1e-3 to 1e3) standardizes them itself in training: the
    doctor warned "inputs are far from standardized" and "the loss at initialisation is 5.1, more than 2x the
    expected 0.69" (its running statistics, untrained, leave raw inputs raw in eval mode)."""
    generator = torch.Generator().manual_seed(0)
    scales = torch.logspace(-3, 3, 8)
    x = torch.randn(400, 8, generator=generator) * scales + 5 * scales
    y = (x[:, 7] / scales[7] + x[:, 0] / scales[0] > 10).long()
    torch.manual_seed(0)
    normed = nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    plain = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    found = {f.code: f for f in converge.diagnose(normed, (x, y), (x, y), cheap=True)}
    assert found["unscaled_features"].severity == "info"
    assert found["unscaled_features"].evidence["normalized_by"] == "0"
    assert "init_loss_off" not in found
    with torch.no_grad():
        raw = mc.init_loss_off(normed, x[:64], y[:64], lambda o, t: F.cross_entropy(o, t), "classification")
    assert raw == []
    found = {f.code: f for f in converge.diagnose(plain, (x, y), (x, y), cheap=True)}
    assert found["unscaled_features"].severity == "warning"


def _standard(n=500, d=6, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scale, shift, flagged", [
    (1.0, 0.0, False),
    (5.0, 5.0, False),        # within std 10 / mean 10
    (0.2, 0.0, False),        # [0,1]-ish scales are fine
    (15.0, 0.0, True),        # std above 10
    (1.0, 20.0, True),        # mean above 10 and above the std
    (1e-3, 0.0, True),        # everything squashed: median std below 1e-2
])
def test_unscaled_features_thresholds(scale, shift, flagged):
    assert bool(dc.unscaled_features(_standard() * scale + shift)) == flagged


def test_unscaled_features_one_dominating_feature():
    x = _standard() * 0.05
    x[:, 0] *= 150.0       # std 7.5: under 10, but 150x the median
    finding = dc.unscaled_features(x)[0]
    assert finding.evidence["worst_features"][0]["feature"] == 0


@pytest.mark.parametrize("constant, severity", [(0, None), (1, "info"), (2, "info"), (3, "warning"), (6, "warning")])
def test_constant_features_thresholds(constant, severity):
    x = _standard()
    x[:, :constant] = 2.0
    findings = dc.constant_features(x)
    assert (findings[0].severity if findings else None) == severity


@pytest.mark.parametrize("value, rows, severity", [
    (None, 0, None),
    (10.0, 5, None),           # about 10 robust sds: under the bound of 20
    (30.0, 1, "info"),         # 1 row of 2000 < 0.1%
    (30.0, 2, "info"),         # 2 of 2000 = 0.1%, but within a heavy tail's reach (< OUTLIER_WARN_Z = 50)
    (100.0, 1, "info"),        # gross, but 1 row of 2000 < 0.1%
    (100.0, 2, "warning"),     # 2 of 2000 = 0.1%, about 100 robust sds out
    (1e6, 50, "warning"),
])
def test_outlier_thresholds(value, rows, severity):
    x = _standard(n=2000, d=4)
    if value is not None:
        x[:rows, 1] = value
    findings = dc.outliers(x)
    assert (findings[0].severity if findings else None) == severity
    if findings:
        assert findings[0].evidence["rows"] == rows


def test_outliers_skip_sparse_features():
    x = torch.zeros(500, 3)
    x[::10, 0] = 5.0        # MAD 0: skipped, not 50 outliers
    x[:, 1:] = _standard(500, 2)
    assert dc.outliers(x) == []




class _WithEmbedding(nn.Module):
    """Numeric columns beside a categorical one through an embedding: the usual tabular network."""

    def __init__(self):
        super().__init__()
        self.district = nn.Embedding(25, 8)
        self.mlp = nn.Sequential(nn.Linear(4 + 8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, numeric, district):
        return self.mlp(torch.cat([numeric, self.district(district)], 1)).squeeze(1)


def test_gradient_flow_leaves_embedding_tables_out():
    """Raw numeric columns (sq ft, meters) beside a district embedding: the table's gradient, on the few rows
    a batch touches, was read as the first layer's, 47,000x below the last: "vanishing", whose advice (He
    initialisation, residual connections) does not apply. The first layer is the first nn.Linear, and the
    raw columns' gradients read as what they are."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    numeric = torch.rand(256, 4, generator=g) * torch.tensor([1800.0, 100.0, 30.0, 2500.0])
    district = torch.randint(0, 25, (256,), generator=g)
    rent = 1.6 * numeric[:, 0] - 0.25 * numeric[:, 3] + 800
    norms = mc.layer_gradient_norms(_WithEmbedding(), (numeric, district), rent, nn.functional.mse_loss)
    assert [name for name, _, _ in norms] == ["mlp.0.weight", "mlp.2.weight", "mlp.4.weight"]
    assert [f.code for f in mc.gradient_flow(norms)] == ["exploding_gradients"]

def test_outliers_in_padded_columns_are_judged_on_their_real_values():
    """Sensor traces padded with 0 after their end: at late steps 40-50 % of a column is padding, its MAD
    over the whole column a sliver, and the doctor warned of outliers on 40 % of the rows."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 6, generator=g) * 0.5
    for column, share in enumerate((0.0, 0.3, 0.4, 0.45, 0.48, 0.6)):
        x[:int(share * 2000), column] = 0.0
    assert dc.outliers(x) == []
    x[:600, 0] = 0.0        # a price column with missing values entered as 0 is still told
    x[:, 0] = torch.where(x[:, 0] == 0, x[:, 0], 1000 + 10 * x[:, 0])
    (found,) = dc.outliers(x)
    assert found.severity == "warning" and found.evidence["rows"] == 600

def test_nonfinite_values_counts_per_split():
    x = _standard(20, 3)
    x[0, 0], x[1, 1], x[1, 2] = float("nan"), float("inf"), float("-inf")
    y = torch.zeros(20)
    y[5] = float("nan")
    finding = dc.nonfinite_values({"train": (x, torch.zeros(20, dtype=torch.long)), "val": (_standard(5, 3), y)})[0]
    assert finding.severity == "error"
    assert finding.evidence == {"train_inputs": {"nan": 1, "inf": 2, "rows": 2},
                                "val_targets": {"nan": 1, "inf": 0, "rows": 1}}
    assert dc.nonfinite_values({"train": (_standard(5, 3), torch.zeros(5))}) == []


def test_train_val_overlap_hashes_rows():
    train = _standard(100, 4)
    val = _standard(30, 4, seed=1)
    val[3], val[7] = train[10], train[50]
    finding = dc.train_val_overlap(train, {"val": val, "test": _standard(10, 4, seed=2)})[0]
    assert finding.evidence == {"val": {"rows": 2, "fraction": pytest.approx(2 / 30, rel=1e-3), "examples": [3, 7]}}
    assert dc.train_val_overlap(train, {"val": val + 1e-3}) == []


@pytest.mark.parametrize("copied, severity", [(1, "info"), (2, "info"), (3, "warning"), (10, "warning")])
def test_train_val_overlap_severity(copied, severity):
    train, val = _standard(100, 4), _standard(30, 4, seed=1)
    val[:copied] = train[:copied]
    (finding,) = dc.train_val_overlap(train, {"val": val})
    assert finding.severity == severity and finding.evidence["val"]["rows"] == copied


@pytest.mark.parametrize("n, params, classes, flagged", [
    (600, 1000, 3, False),
    (60, 1000, 3, False),       # 20 per class
    (59, 1000, 3, True),        # 19.7 per class
    (50, 1000, None, False),
    (49, 1000, None, True),
    (1000, 1_000_000, 10, False),   # 1000 parameters per sample
    (1000, 1_000_001, 10, True),
])
def test_too_few_samples_thresholds(n, params, classes, flagged):
    assert bool(dc.too_few_samples(n, params, classes)) == flagged


@pytest.mark.parametrize("n, classes, features, flagged", [
    (80, 2, 64, True),          # 80 rows of a binary task on 64 columns: 40 per class, 875 params each, 1.25 per column
    (80, None, 64, True),       # the same, regression
    (320, None, 64, False),     # 5 per column (MIN_ROWS_PER_FEATURE)
    (319, None, 64, True),
    (80, 2, None, False),       # images or sequences: pixels and steps are not columns
    (106, 3, 13, False),        # wine's training split (60 %): 8 per column
])
def test_too_few_rows_for_the_columns(n, classes, features, flagged):
    from converge.doctor import thresholds as T

    assert T.MIN_ROWS_PER_FEATURE == 5
    found = dc.too_few_samples(n, 70_000, classes, features=features)
    assert bool(found) == flagged
    if flagged:
        assert found[0].severity == "warning" and found[0].evidence["input_features"] == features


@pytest.mark.parametrize("first, last, code", [
    (1.0, 1.0, None),
    (1e-3, 1.0, None),           # exactly the bound
    (0.9e-3, 1.0, "vanishing_gradients"),
    (1e3, 1.0, None),
    (1.1e3, 1.0, "exploding_gradients"),
    (float("nan"), 1.0, "exploding_gradients"),
])
def test_gradient_flow_thresholds(first, last, code):
    norms = [("0.weight", first, 10.0), ("1.weight", 0.5, 10.0), ("2.weight", last, 10.0)]
    findings = mc.gradient_flow(norms)
    assert (findings[0].code if findings else None) == code


@pytest.mark.parametrize("grad, weight, flagged", [(100.0, 1.0, False), (101.0, 1.0, True)])
def test_gradient_flow_relative_threshold(grad, weight, flagged):
    assert bool(mc.gradient_flow([("a", grad, weight), ("b", grad, weight)])) == flagged


def test_gradient_flow_without_the_relative_test_reads_only_the_scale_free_ratio():
    """A loss that may sum over the batch (relative=None) has gradients of any size; only the ratio between
    the first and the last layer says anything."""
    assert mc.gradient_flow([("a", 1e6, 1.0), ("b", 1e6, 1.0)], relative=None) == []
    assert mc.gradient_flow([("a", 1.1e6, 1.0), ("b", 1e3, 1.0)], relative=None)[0].code == "exploding_gradients"


VAE_TASK = """
import torch
import torch.nn.functional as F
from torch import nn

class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.mu, self.logvar = nn.Linear(8, 32), nn.Linear(32, 2), nn.Linear(32, 2)
        self.dec = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 8))

    def forward(self, x):
        h = F.relu(self.enc(x))
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return torch.sigmoid(self.dec(z)), mu, logvar

def model():
    return VAE()

def loss(out, x):  # summed over the batch, as the PyTorch example's VAE
    recon, mu, logvar = out
    return F.binary_cross_entropy(recon, x, reduction="sum") - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())

def data():
    g = torch.Generator().manual_seed(0)
    x = torch.sigmoid(torch.randn(600, 2, generator=g) @ torch.randn(2, 8, generator=g))
    return (x[:400], x[:400]), (x[400:500], x[400:500]), (x[500:], x[500:])
"""


def test_a_vae_with_its_own_summed_loss_is_not_called_exploding(tmp_path):
    path = tmp_path / "vae.py"
    path.write_text(VAE_TASK)
    findings = run_doctor(path, cheap=True)
    assert "exploding_gradients" not in _codes(findings), [f.to_dict() for f in findings]
    assert "output_mismatch" not in _codes(findings)


@pytest.mark.parametrize("activity, severity", [
    ({"1": (0, 32)}, None),
    ({"1": (3, 32)}, "info"),
    ({"1": (15, 32), "3": (0, 32)}, "info"),
    ({"1": (16, 32)}, "warning"),     # exactly half
    ({"1": (32, 32)}, "warning"),
])
def test_dead_units_thresholds(activity, severity):
    findings = mc.dead_units(activity)
    assert (findings[0].severity if findings else None) == severity


def test_relu_activity_counts_channels_of_conv_outputs():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    with torch.no_grad():
        model[0].bias[:2] = -1e3
    activity = mc.relu_activity(model, torch.randn(16, 1, 8, 8))
    assert activity == {"1": (2, 4)}


@pytest.mark.parametrize("scale, flagged", [(1.0, False), (100.0, True)])
def test_init_loss_off_bound(scale, flagged):
    from converge.engine.objective import cross_entropy

    torch.manual_seed(0)
    model = nn.Linear(8, 5)
    with torch.no_grad():
        model.weight.mul_(scale)
    x, y = _standard(64, 8), torch.arange(64) % 5
    assert bool(mc.init_loss_off(model, x, y, cross_entropy, "classification")) == flagged


def test_expected_init_loss():
    outputs = torch.zeros(4, 10)
    assert mc.expected_init_loss("classification", torch.zeros(4, dtype=torch.long), outputs)[0] == \
        pytest.approx(math.log(10))
    assert mc.expected_init_loss("regression", torch.tensor([1.0, -3.0]), torch.zeros(2, 1))[0] == pytest.approx(5.0)


# --- confident learning ----------------------------------------------------------------------------------

def test_confident_joint_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8], [0.1, 0.9]], dtype=torch.double)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    # thresholds: class 0 = mean(0.9, 0.8, 0.3) = 0.667; class 1 = mean(0.4, 0.8, 0.9) = 0.7
    joint = confident_joint(probs, labels)
    assert joint.tolist() == [[2, 1], [0, 2]]   # row 3 (label 1, p0=0.6) is above no threshold
    q = noise_joint(joint, labels)
    assert float(q.sum()) == pytest.approx(1.0)
    assert q[0, 1] == pytest.approx(1 / 6)


def test_find_label_issues_flags_the_flips():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 3
    truth = labels.clone()
    flipped = torch.arange(0, 300, 10)
    labels[flipped] = (labels[flipped] + 1) % 3
    probs = torch.full((300, 3), 0.05)
    probs[torch.arange(300), truth] = 0.9
    probs += 0.01 * torch.rand(300, 3, generator=g)
    probs /= probs.sum(1, keepdim=True)
    issues, rate, _ = find_label_issues(probs, labels)
    assert rate == pytest.approx(0.1, abs=0.02)
    assert set(torch.nonzero(issues).reshape(-1).tolist()) == set(flipped.tolist())


# --- the command line ------------------------------------------------------------------------------------

def test_cli_json_is_only_json(tmp_path, cli):
    result = cli("doctor", _write(tmp_path, PLANTED["unscaled_features"], "cli_json"), "--json", "--cheap")
    assert result.code == 0, result.err
    findings = json.loads(result.out)
    assert isinstance(findings, list) and findings
    for finding in findings:
        assert set(finding) == {"code", "severity", "message", "evidence", "fix"}
    assert "unscaled_features" in {f["code"] for f in findings}
    ranks = [("error", "warning", "info").index(f["severity"]) for f in findings]
    assert ranks == sorted(ranks)


def test_cli_table_and_exit_status_0_with_errors(tmp_path, cli):
    result = cli("doctor", _write(tmp_path, PLANTED["nonfinite_values"], "cli_text"), "--cheap")
    assert result.code == 0, result.err
    assert "nonfinite_values" in result.out and "error" in result.out


def test_cli_clean_json_is_empty_list(tmp_path, cli):
    result = cli("doctor", _write(tmp_path, "", "cli_clean"), "--json", "--cheap")
    assert result.code == 0 and json.loads(result.out) == []


@pytest.mark.parametrize("args, needle", [
    (("missing.py",), "does not exist"),
    (("--seed", "x"), "--seed: must be an integer"),
])
def test_cli_bad_input_exits_2(tmp_path, cli, args, needle):
    if args[0] == "missing.py":
        args = (str(tmp_path / "missing.py"),)
    else:
        args = (str(_write(tmp_path, "", "bad")), *args)
    cli("doctor", *args).single_error(needle)


def test_cli_broken_data_exits_2(tmp_path, cli):
    path = _write(tmp_path, "def data():\n    raise RuntimeError('no file')\n", "broken")
    cli("doctor", path, "--json").single_error("data()", "no file")


def test_cli_subprocess_stdout_is_json(tmp_path, cli_subprocess):
    result = cli_subprocess("doctor", _write(tmp_path, PLANTED["class_imbalance"], "sub"), "--json")
    assert result.code == 0, result.err
    assert "class_imbalance" in {f["code"] for f in json.loads(result.out)}


def test_the_suites_default_tasks_have_no_warnings(make_task):
    """`converge train` runs the cheap checks: the other tests' tiny tasks must not print warnings."""
    from test_cli import REGRESSION

    for body, name in (("", "default.py"), (REGRESSION, "regression.py")):
        findings = run_doctor(make_task(body, name=name), cheap=True)
        assert not at_least(findings, "warning"), [f.to_dict() for f in findings]


# --- remedies --------------------------------------------------------------------------------------------

from converge.doctor import remedies as rx  # noqa: E402


@pytest.mark.parametrize("codes, fix, drop, expected", [
    ((), False, False, []),
    (("unscaled_features", "class_imbalance"), False, False, []),
    (("unscaled_features",), True, False, ["standardize_features"]),
    (("class_imbalance",), True, False, ["class_balanced_loss"]),
    (("unscaled_features", "class_imbalance"), True, True,
     ["drop_label_issues", "standardize_features", "class_balanced_loss"]),
    ((), False, True, ["drop_label_issues"]),
])
def test_remedy_plan(codes, fix, drop, expected):
    findings = [Finding(code, "warning", "m") for code in codes] + [Finding("class_imbalance", "info", "m")]
    assert rx.plan(findings, fix=fix, drop_label_issues=drop) == expected


def test_plan_ignores_info_findings():
    assert rx.plan([Finding("class_imbalance", "info", "m")], fix=True, drop_label_issues=False) == []


def _weight_normed():
    from torch.nn.utils.parametrizations import weight_norm
    return nn.Sequential(weight_norm(nn.Linear(5, 7)), nn.ReLU(), nn.Linear(7, 2))


@pytest.mark.parametrize("make_model", [
    lambda: nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2)),
    lambda: nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(5, 7, bias=False), nn.Tanh()), nn.Linear(7, 2)),
    lambda: nn.Linear(5, 2),
    _weight_normed,   # a parametrized weight: folded through its right_inverse
])
def test_folded_standardization_takes_raw_inputs(make_model):
    torch.manual_seed(0)
    model = make_model()
    x = torch.randn(50, 5) * torch.tensor([1e-2, 1.0, 1e3, 5.0, 1.0]) + torch.tensor([0.0, 100.0, -5e3, 1.0, 0.0])
    x[:, 4] = 3.0   # a constant feature: std 1, not a division by zero
    mean, std = rx.standardization(x)
    assert std[4] == 1.0
    expected = model(rx.standardize(x, mean, std))
    assert rx.fold_standardization(model, mean, std) is not None
    assert torch.allclose(model(x), expected, rtol=1e-4, atol=1e-4)


def test_checking_a_fold_leaves_a_parametrized_layer_as_it_was():
    """The check folds the layer and puts it back: a weight_norm layer's weight lives in its parametrizations,
    which the put-back missed, so training began on standardized inputs through a layer folded for raw ones
    (the range test's first loss 36.7 against a constant's 0.66)."""
    from converge.standardize import foldable_layer

    torch.manual_seed(0)
    model = _weight_normed()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(50, 5) * torch.tensor([1e-2, 1.0, 1e3, 5.0, 1.0]) + 10
    mean, std = rx.standardization(x)
    assert foldable_layer(model, x[:8], mean, std) == "0"
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_unfoldable_model_gets_a_hook_once():
    model = nn.Sequential(nn.ReLU(), nn.Linear(3, 2))
    mean, std = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 2.0])
    assert rx.fold_standardization(model, mean, std) is None
    x = torch.randn(4, 3)
    expected = model(rx.standardize(x, mean, std))
    rx.add_standardize_hook(model, mean, std)
    rx.add_standardize_hook(model, mean, std)   # not twice
    assert torch.allclose(model(x), expected)


def test_balanced_class_weights():
    weights = rx.balanced_class_weights(_labels((80, 15, 5)), 4)
    assert weights.tolist() == pytest.approx([100 / 240, 100 / 45, 100 / 15, 1.0], rel=1e-5)
    counts = torch.tensor([80, 15, 5], dtype=torch.float)
    assert float((weights[:3] * counts).std()) < 1e-4   # each present class weighs the same in total


# --- inside `converge train` -----------------------------------------------------------------------------

FIX_DATA = '''
def data():
    x, y = _blobs(400)
    keep = (y == 0) | ((torch.arange(400) // 3) % 5 == 0)
    x, y = x[keep], y[keep]
    x = x * torch.tensor([1.0, 1e3, 1e-2, 50.0, 1.0, 1.0, 1.0, 1.0]) + 300.0
    return _split(x, y)
'''

UNFOLDABLE_MODEL = '''
class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    def forward(self, x):
        return self.net(x * 0.5)

def model():
    return Scaled()
'''

TRAIN_FLAGS = ("--quiet", "--max-epochs", "3", "--optimizer", "adamw", "--lr", "1e-2", "--weight-decay", "0",
               "--batch-size", "32")


def _load(path: Path):
    from converge.task import load_task

    return load_task(path).module


@pytest.mark.parametrize("model_body, export", [("", "folded"), (UNFOLDABLE_MODEL, "standardize.json")])
def test_train_fix_records_and_exports_for_raw_inputs(tmp_path, cli, model_body, export):
    import converge

    task = _write(tmp_path, FIX_DATA + model_body, "fix")
    out = tmp_path / "run"
    result = cli("train", task, "--out", out, "--fix", *TRAIN_FLAGS)
    assert result.code == 0, result.err
    # the unscaled inputs are said once, by the standardization's line (not shown under --quiet)
    assert "doctor: unscaled_features" not in result.err and "doctor: class_imbalance" in result.err
    doctor = json.loads((out / "doctor.json").read_text())
    assert {"unscaled_features", "class_imbalance"} <= {f["code"] for f in doctor}
    remedies = {r["remedy"]: r["detail"] for r in json.loads((out / "remedies.json").read_text())}
    assert set(remedies) == {"standardize_features", "class_balanced_loss"}
    assert remedies["standardize_features"]["applied"] and remedies["class_balanced_loss"]["applied"]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert "doctor_finding" in kinds and kinds.count("remedy") == 2
    assert (out / "standardize.json").exists() == (export == "standardize.json")
    # the exported weights take raw inputs: they reproduce the run's test accuracy
    module = _load(task)
    model = module.model()
    converge.load_weights(out / "best.safetensors", model)
    _, _, (x_test, y_test) = module.data()
    summary = json.loads((out / "summary.json").read_text())
    with torch.no_grad():
        accuracy = float((model.eval()(x_test).argmax(1) == y_test).float().mean())
    assert accuracy == pytest.approx(summary["test"]["accuracy"], abs=1e-6)


def test_train_without_fix_or_standardization_changes_nothing(tmp_path, cli):
    task = _write(tmp_path, FIX_DATA, "nofix")
    out = tmp_path / "run"
    result = cli("train", task, "--out", out, "--no-standardize", *TRAIN_FLAGS)
    assert result.code == 0, result.err
    assert "doctor: unscaled_features" in result.err
    assert (out / "doctor.json").exists() and not (out / "remedies.json").exists()
    quiet = cli("train", task, "--out", tmp_path / "run2", "--no-doctor", "--no-standardize", *TRAIN_FLAGS)
    assert quiet.code == 0 and "doctor" not in quiet.err
    assert not (tmp_path / "run2" / "doctor.json").exists()


def test_train_drop_label_issues_is_recorded(tmp_path, cli):
    task = _write(tmp_path, PLANTED["label_noise"], "drop")
    out = tmp_path / "run"
    result = cli("train", task, "--out", out, "--drop-label-issues", *TRAIN_FLAGS)
    assert result.code == 0, result.err
    (remedy,) = json.loads((out / "remedies.json").read_text())
    assert remedy["remedy"] == "drop_label_issues" and remedy["detail"]["dropped"] > 20
    assert remedy["detail"]["train_rows_left"] == 360 - remedy["detail"]["dropped"]


def test_deferred_reweighting_weights_training_only_after_the_first_lr_cut():
    from converge.doctor.remedies import WeightedCrossEntropy

    torch.manual_seed(0)
    weights = torch.tensor([0.2, 1.0, 5.0])
    outputs, targets = torch.randn(12, 3, requires_grad=True), torch.tensor([0] * 8 + [1] * 3 + [2])
    plain = torch.nn.functional.cross_entropy(outputs, targets)
    weighted = torch.nn.functional.cross_entropy(outputs, targets, weight=weights)
    loss = WeightedCrossEntropy(weights, deferred=True)
    loss.set_lr_cuts(0)
    assert torch.allclose(loss(outputs, targets), plain)                # training, before the cut
    assert torch.allclose(loss(outputs.detach(), targets), weighted)    # evaluation: always weighted
    loss.set_lr_cuts(1)
    assert torch.allclose(loss(outputs, targets), weighted)
    assert torch.allclose(WeightedCrossEntropy(weights)(outputs, targets), weighted)  # not deferred


def test_the_trainer_tells_a_scheduled_loss_the_lr_cuts():
    seen = []

    class Recording:
        def set_lr_cuts(self, cuts):
            seen.append(cuts)

        def __call__(self, outputs, targets):
            return torch.nn.functional.cross_entropy(outputs, targets)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randint(0, 2, (64,), generator=g)
    torch.manual_seed(0)
    result = converge.fit(torch.nn.Linear(4, 2), (x, y), (x, y), loss=Recording(), optimizer="sgd", lr=1e-6,
                          weight_decay=0.0, batch_size=16, max_epochs=6, patience=1, verbose=False)
    # once per epoch, with the cuts made so far: none at first, one after the plateau's cut
    assert seen == [0] * (len(seen) - 1) + [1] and len(seen) == result.summary["epochs"] == 3


# --- precision: no warnings on clean data -----------------------------------------------------------------

def _noise_probs(per_class: int, classes: int = 3, flipped: float = 0.2):
    """Out-of-sample probabilities of a confident proxy on labels with ``flipped`` of them wrong."""
    n = per_class * classes
    truth = torch.arange(n) % classes
    labels = truth.clone()
    wrong = torch.arange(n) < int(flipped * n)
    labels[wrong] = (truth[wrong] + 1) % classes
    probs = torch.full((n, classes), 0.05)
    probs[torch.arange(n), truth] = 1 - 0.05 * (classes - 1)
    return probs, labels


@pytest.mark.parametrize("per_class, flipped, severity", [
    (100, 0.2, "warning"),    # enough rows per class: the estimate is trusted
    (50, 0.2, "warning"),     # at NOISE_MIN_PER_CLASS
    (12, 0.2, "info"),        # tiny data: the proxy's own errors look like noise (tiny clean digits: 11-15 %)
    (100, 0.03, "info"),      # below NOISE_WARN
])
def test_label_noise_severity_needs_the_rate_and_enough_rows_per_class(per_class, flipped, severity):
    from converge.doctor import thresholds as T
    from converge.doctor.label_noise import label_noise_finding

    assert (T.NOISE_WARN, T.NOISE_MIN_PER_CLASS) == (0.05, 50)
    (finding,), issues = label_noise_finding(*_noise_probs(per_class, flipped=flipped))
    assert finding.severity == severity
    assert finding.evidence["noise_rate"] == pytest.approx(flipped, abs=0.02)
    assert finding.evidence["rows_per_class"] == per_class


@pytest.mark.parametrize("own_error, severity, flags", [
    (None, "warning", True),     # not measured: the rate and the rows per class decide
    (0.03, "warning", True),     # the proxy reads the rest well (digits with 10 % flipped labels: 3 %)
    (0.09, "warning", True),     # just under NOISE_PROXY_SHARE of the estimated 20 %
    (0.15, "info", False),       # it errs on the rest about as often as it flagged: its own errors
])
def test_label_noise_is_no_warning_when_the_proxy_errs_as_often(own_error, severity, flags):
    from converge.doctor import thresholds as T
    from converge.doctor.label_noise import label_noise_finding

    assert T.NOISE_PROXY_SHARE == 0.5
    (finding,), issues = label_noise_finding(*_noise_probs(100, flipped=0.2), own_error=own_error)
    assert finding.severity == severity and bool(issues.any()) == flags
    assert finding.evidence["noise_rate"] == pytest.approx(0.2, abs=0.02)
    assert ("cannot be told apart" in finding.message) != flags


def _digits_for_noise(shift=0, flipped=0.0):
    """1350 digits; each shifted by up to ``shift`` pixels (one random view, as an augmented Dataset gives) and
    a share ``flipped`` of the labels moved to another class. Returns (sample, flipped rows)."""
    from sklearn.datasets import load_digits
    from converge.doctor._sample import Sample

    d, g = load_digits(), torch.Generator().manual_seed(0)
    x, y = torch.tensor(d.data[:1350], dtype=torch.float32) / 16, torch.tensor(d.target[:1350])
    if shift:
        dx, dy = torch.randint(-shift, shift + 1, (2, len(x)), generator=g)
        images = x.reshape(-1, 8, 8)
        x = torch.stack([torch.roll(im, (int(a), int(b)), (0, 1)) for im, a, b in zip(images, dx, dy)]).reshape(-1, 64)
        x = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    rows = torch.randperm(len(y), generator=g)[:round(flipped * len(y))]
    y[rows] = (y[rows] + torch.randint(1, 10, (len(rows),), generator=g)) % 10
    return Sample("train", x, y, len(y), None), rows


@pytest.mark.parametrize("shift, flipped, severity", [
    (2, 0.0, "info"),      # clean digits the proxy reads poorly (shifted up to 2 px): was a warning, "31 %"
    (0, 0.10, "warning"),  # 10 % flipped labels: flagged within 2x of that
])
def test_label_noise_on_digits_tells_noise_from_a_proxy_that_cannot_read(shift, flipped, severity):
    from converge.doctor.run import label_issues

    sample, truth = _digits_for_noise(shift, flipped)
    (finding,), flagged = label_issues(sample, 10, seed=0, progress=lambda text: None)
    assert finding.severity == severity
    if flipped:
        assert flipped / 2 <= len(flagged) / len(sample.targets) <= 2 * flipped
        assert len(set(flagged.tolist()) & set(truth.tolist())) >= 0.8 * len(truth)
    else:
        assert len(flagged) == 0


@pytest.mark.parametrize("name", ["digits", "wine", "digits_tiny"])
def test_doctor_raises_no_warning_on_clean_bundled_data(name):
    """bench/doctor_precision.py's table, one random split: every check, zero warnings."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("doctor_precision", EXAMPLES.parent / "bench" / "doctor_precision.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.check(name, seed=0)
    assert result["messages"] == [], result["messages"]
    if name == "digits":
        assert result["noise_rate"] is not None   # the label-noise check did run (and found a little, as info)


@pytest.mark.parametrize("rows, named", [(80, True), (400, False)])
def test_fit_names_too_little_data_without_the_checks(rows, named, capsys):
    """Issue 20, item 7: converge.fit runs none of the doctor's checks, but a count is free."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(rows, 64, generator=g), torch.arange(rows) % 2
    result = converge.fit(nn.Linear(64, 2), (x, y), (x[:40], y[:40]), optimizer="adamw", lr=1e-3,
                          weight_decay=0.0, batch_size=16, max_epochs=1, verbose=True)
    found = [e for e in result.events if e["event"] == "doctor_finding"]
    assert [e["code"] for e in found] == (["too_few_samples"] if named else [])
    assert ("too_few_samples" in capsys.readouterr().err) == named


# Next-token prediction on names from a small grammar: a batch of 32 shares its prefixes, so no model that reads
# left to right can fit it below ~0.4 (from ln 13 = 2.6 at the start); 0.1x its start was out of reach.
NAMES_TASK = """
import torch
import torch.nn.functional as F
from torch import nn

HEADS, TAILS = ["br", "os", "ke", "as"], ["dale", "mere", "ford"]
LETTERS = sorted(set("".join(HEADS + TAILS)))
V = len(LETTERS) + 2   # 0 padding, 1 start


def _make(n, g):
    rows = []
    for _ in range(n):
        word = HEADS[int(torch.randint(4, (1,), generator=g))] + TAILS[int(torch.randint(3, (1,), generator=g))]
        ids = [1] + [LETTERS.index(c) + 2 for c in word]
        rows.append(ids + [0] * (8 - len(ids)))
    ids = torch.tensor(rows)
    return ids[:, :-1], ids[:, 1:]


class CharRNN(nn.Module):
    def __init__(self, ignore_inputs=False):
        super().__init__()
        self.ignore_inputs = ignore_inputs
        self.emb, self.rnn, self.head = nn.Embedding(V, 16), nn.GRU(16, 32, batch_first=True), nn.Linear(32, V)

    def forward(self, x):
        h, _ = self.rnn(self.emb(x * 0 if self.ignore_inputs else x))
        return self.head(h)


def model():
    return CharRNN(IGNORE)


def loss(logits, targets):
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=0)


def data():
    g = torch.Generator().manual_seed(0)
    return _make(400, g), _make(100, g)
"""


@pytest.mark.parametrize("ignore_inputs, flagged", [(False, False), (True, True)],
                         ids=["a-char-model", "one-that-ignores-its-inputs"])
def test_next_token_prediction_is_fitted_down_to_what_its_prefixes_allow(tmp_path, ignore_inputs, flagged):
    _, found = _overfit_verdict(tmp_path / "names.py", NAMES_TASK, ignore_inputs, flagged)
    if found:
        assert found[0].evidence["floor"] > 0.1 * found[0].evidence["tries"][0]["start_loss"]


def test_next_token_floor_is_the_entropy_of_what_follows_each_shared_prefix():
    from converge.engine.objective import Objective
    objective = Objective(lambda s, t: nn.functional.cross_entropy(s.reshape(-1, 4), t.reshape(-1)), "sequence", {},
                          inferred=False, known_loss=False, classes=4, class_dim=-1)
    # two sequences share the prefix [1] and then go to 2 or 3: ln 2 at that position, 0 at the other
    x, y = torch.tensor([[1, 2], [1, 3]]), torch.tensor([[2, 0], [3, 0]])
    assert mc.next_token_floor(x, y, objective) == pytest.approx(math.log(2) / 2, rel=1e-6)
    assert mc.next_token_floor(x, torch.tensor([[3, 0], [3, 0]]), objective) is None   # not the inputs shifted
    assert mc.next_token_floor(x.float(), y, objective) is None


def test_next_token_floor_when_the_loss_shifts_the_inputs_itself():
    """The GPT habit: targets are the inputs, the loss compares logits[:, :-1] with ids[:, 1:]. A tiny
    Transformer LM on a toy grammar (every sentence after one start token) reached 0.54 from 3.79 on one
    batch, and the check called that a bug."""
    from converge.engine.objective import Objective

    def shifting(scores, ids):
        return nn.functional.cross_entropy(scores[:, :-1].reshape(-1, 4), ids[:, 1:].reshape(-1))

    def copying(scores, ids):
        return nn.functional.cross_entropy(scores.reshape(-1, 4), ids.reshape(-1))

    def objective(loss):
        return Objective(loss, "sequence", {}, inferred=False, known_loss=False, classes=4, class_dim=-1)

    ids = torch.tensor([[1, 2, 0], [1, 3, 0]])   # after [1]: 2 or 3 (ln 2); after [1, 2] or [1, 3]: 0
    assert mc.next_token_floor(ids, ids, objective(shifting)) == pytest.approx(math.log(2) / 2, rel=1e-6)
    assert mc.next_token_floor(ids, ids, objective(copying)) is None    # copy each token: nothing bounds it


PRICE_TASK = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 2))

    def forward(self, x):
        return self.body(x * 0 if IGNORE else x)


def _make(n, g):
    x = torch.rand(n, 3, generator=g) * torch.tensor([3500.0, 5.0, 30.0]) + torch.tensor([500.0, 1.0, 0.0])
    price = 50_000 + 180 * x[:, 0] + 15_000 * x[:, 1] - 6_000 * x[:, 2]
    days = 20 + 0.004 * x[:, 0] + 1.5 * x[:, 2]
    return x, torch.stack([price, days], 1)


def model():
    return Net()


def data():
    g = torch.Generator().manual_seed(0)
    return _make(400, g), _make(100, g)
"""


@pytest.mark.parametrize("ignore_inputs, flagged", [(False, False), (True, True)],
                         ids=["a-price-model", "one-that-ignores-its-inputs"])
def test_regression_targets_in_dollars_are_fitted_standardized_by_the_overfit_check(tmp_path, ignore_inputs, flagged):
    # raw targets (a price with std ~2e5) kept the MSE at its start for 200 Adam steps: a capacity error that
    # training, which standardizes them, never meets; the scale is unscaled_targets' warning
    findings, _ = _overfit_verdict(tmp_path / "house.py", PRICE_TASK, ignore_inputs, flagged)
    assert "unscaled_targets" in [f.code for f in findings]



ENERGY_TASK = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x):
        return self.body(x * 0 if IGNORE else x)


def model():
    return Net()


loss = nn.HuberLoss(delta=100.0)   # in kWh: the task's own loss, so training keeps the targets raw


def _make(n, g):
    area, temp, grade = 500 + 9500 * torch.rand(n, generator=g), 35 * torch.rand(n, generator=g) - 5, \
        torch.randint(1, 5, (n,), generator=g).float()
    kwh = 0.08 * area + (temp - 18).abs() * area / 1000 * (5 - grade) * 6
    return torch.stack([area, temp, grade], 1), kwh.unsqueeze(1)


def data():
    g = torch.Generator().manual_seed(0)
    return _make(400, g), _make(100, g)
"""


@pytest.mark.parametrize("ignore_inputs, flagged", [(False, False), (True, True)],
                         ids=["an-energy-model", "one-that-ignores-its-inputs"])
def test_raw_targets_under_an_own_loss_are_fitted_from_their_scale(tmp_path, ignore_inputs, flagged):
    """Daily energy use in kWh under the user's Huber loss: from outputs near 0, 200 Adam steps at 1e-2 took
    the loss from 199,000 to 71,000 and the check said "cannot fit"; training (37,000 on the test split,
    against the classic loop's 66,000) never met that. Started at the targets' scale, the model fits the
    batch; one that ignores its inputs still cannot go below the targets' mean."""
    findings, found = _overfit_verdict(tmp_path / "energy.py", ENERGY_TASK, ignore_inputs, flagged)
    # the Huber loss reads the output as a prediction of the raw kWh: training trains it on standardized
    # targets through a hook (the loss keeps its delta in kWh), and the doctor says so
    (named,) = [f for f in findings if f.code == "unscaled_targets"]
    assert "standardize them by default" in named.fix
    if flagged:
        assert "first_from_outputs_near_0" in found[0].evidence


def _overfit_verdict(path, task: str, ignore_inputs: bool, flagged: bool):
    """The doctor on ``task`` with its model told to ignore its inputs or not: (all findings, the overfit check's),
    the check being an error exactly when ``flagged``."""
    path.write_text(f"IGNORE = {ignore_inputs}\n" + task)
    findings = run_doctor(path)
    found = [f for f in findings if f.code == "cannot_overfit_batch"]
    assert bool(found and found[0].severity == "error") == flagged, [f.to_dict() for f in found]
    return findings, found


class _SquaresFirst(nn.Module):
    """Transforms its input before the first nn.Linear: a standardization cannot be folded into it."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x):
        return self.net(x * x.abs().sqrt())


def _power_plant(n=600, seed=0):
    """Raw readings (a temperature in °C, a vacuum in cm Hg, a pressure in mbar, humidity in %) to a plant's
    output in MW: what converge train standardizes by default, inputs and targets."""
    g = torch.Generator().manual_seed(seed)
    temp = 5 + 30 * torch.rand(n, generator=g)
    x = torch.stack([temp, 25 + 0.9 * temp + 8 * torch.randn(n, generator=g), 1013 + 6 * torch.randn(n, generator=g),
                     (80 - 1.2 * temp).clamp(20, 100)], 1)
    y = (495 - 1.8 * temp + 4 * torch.randn(n, generator=g)).unsqueeze(1)
    return (x[:400], y[:400]), (x[400:], y[400:])


def test_the_model_checks_judge_what_converge_train_trains_on():
    """A model reading pressures in mbar has gradients ~1e5 times its input layer's at initialisation on the
    raw readings; converge train standardizes them (and the MW targets) by default and never sees that, so the
    doctor judges the gradients, dead units and initial loss on the standardized splits and says so. The
    scale itself stays unscaled_features' and unscaled_targets' finding."""
    torch.manual_seed(0)
    train, val = _power_plant()
    plain = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    found = converge.diagnose(plain, train, val, cheap=True)
    codes = _codes(found, "warning")
    assert {"unscaled_features", "unscaled_targets"} <= set(codes) and "exploding_gradients" not in codes, codes
    judged = [f for f in found if f.code in ("dead_units", "init_loss_off", "exploding_gradients")]
    assert judged and all("standardized" in f.evidence["judged_on"] for f in judged)
    # no fold, no default standardization: the raw inputs are what training sees, and what is judged
    raw = converge.diagnose(_SquaresFirst(), train, val, cheap=True)
    assert "exploding_gradients" in _codes(raw, "warning"), [f.to_dict() for f in raw]
    assert not any("judged_on" in f.evidence and "inputs" in f.evidence["judged_on"] for f in raw)


# --- label noise or overlapping classes: where the flagged rows sit -----------------------------------------

def _boundary_probs(n: int = 2000, seed: int = 0):
    """Out-of-sample probabilities of a calibrated two-class proxy and labels *drawn* from them: every label is
    right or wrong only by chance, more often near p = 0.5 (overlapping classes, no wrong label)."""
    g = torch.Generator().manual_seed(seed)
    p_one = torch.sigmoid(3 * torch.randn(n, generator=g))
    labels = (torch.rand(n, generator=g) < p_one).long()
    return torch.stack([1 - p_one, p_one], dim=1), labels


def _flipped_probs(n: int = 2000, seed: int = 0, flipped: float = 0.15):
    """The same proxy with deterministic labels (the likelier class), a share ``flipped`` of them flipped at
    random rows: wrong labels, spread evenly over the proxy's confidence."""
    probs, _ = _boundary_probs(n, seed)
    labels = probs.argmax(dim=1)
    g = torch.Generator().manual_seed(seed + 1)
    flip = torch.rand(n, generator=g) < flipped
    return probs, torch.where(flip, 1 - labels, labels)


def test_where_flagged_reads_an_even_spread_and_a_gathering_at_low_confidence():
    from converge.doctor.label_noise import where_flagged

    confidence = torch.linspace(0.55, 0.99, 400)
    probs = torch.stack([confidence, 1 - confidence], dim=1)
    evenly = torch.arange(400) % 4 == 0                # every fourth row, whatever its confidence
    least_sure = torch.arange(400) < 100               # the 100 least confident rows
    even, low = where_flagged(probs, evenly), where_flagged(probs, least_sure)
    assert even["confidence_rank"] == pytest.approx(0.5, abs=0.02)
    assert even["top_quarter_share"] == pytest.approx(1.0, abs=0.05)
    assert low["confidence_rank"] == 0.0 and low["top_quarter_share"] == 0.0
    assert where_flagged(probs, torch.arange(400) < 19) is None   # too few to say (NOISE_OVERLAP_MIN_FLAGGED)


@pytest.mark.parametrize("rank, top_share, overlap", [
    (0.31, 0.34, True),    # labels drawn from a logistic model of raw loan columns
    (0.44, 0.41, True),    # a weaker signal, still gathered at the boundary
    (0.47, 0.20, False),   # an even spread within classes: flipped labels (make_classification flip_y: 0.46-0.48)
    (0.35, 0.74, False),   # confident rows flagged as often as others: flipped labels
    (0.65, 0.00, False),   # labels flipped from one class only: confident rows of the other class stay clean
])
def test_classes_overlap_needs_both_readings(rank, top_share, overlap):
    from converge.doctor import thresholds as T
    from converge.doctor.label_noise import classes_overlap

    assert (T.NOISE_OVERLAP_RANK, T.NOISE_OVERLAP_TOP_SHARE) == (0.46, 0.5)
    assert classes_overlap({"confidence_rank": rank, "top_quarter_share": top_share}) is overlap
    assert classes_overlap(None) is False


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_drawn_near_a_boundary_are_no_warning_and_flag_nothing(seed):
    """Before: "about 19 % of training labels look wrong", a warning, and --drop-label-issues dropped them (a
    loan task: test loss 0.451 -> 0.670). The same proxy with flipped labels still warns and flags them."""
    from converge.doctor.label_noise import label_noise_finding

    (drawn,), issues = label_noise_finding(*_boundary_probs(seed=seed))
    assert drawn.severity == "info" and not issues.any()
    assert drawn.evidence["noise_rate"] >= 0.05                  # the rate alone would have warned
    assert "classes overlap" in drawn.message and "drops none" in drawn.fix
    (flipped,), issues = label_noise_finding(*_flipped_probs(seed=seed))
    assert flipped.severity == "warning" and issues.any()
    assert flipped.evidence["flagged_where"]["top_quarter_share"] > 0.5


def test_label_issues_on_raw_loan_columns_with_drawn_labels_is_information():
    """End to end through the k-fold proxy: raw columns, labels drawn from a logistic model."""
    from converge.doctor._sample import Sample
    from converge.doctor.run import label_issues

    g, n = torch.Generator().manual_seed(17), 1600
    income = 20000 + 80000 * torch.rand(n, generator=g) ** 2
    debt = 0.6 * torch.rand(n, generator=g)
    months = (120 * torch.rand(n, generator=g)).round()
    z = -1.0 - 3e-5 * (income - 50000) + 6.0 * (debt - 0.3) - 0.01 * months
    y = (torch.rand(n, generator=g) < torch.sigmoid(z)).long()
    sample = Sample("train", torch.stack([income, debt, months], 1), y, n, None)
    (finding,), flagged = label_issues(sample, 2, seed=0, progress=lambda text: None)
    assert finding.evidence["noise_rate"] >= 0.05
    assert finding.severity == "info" and len(flagged) == 0, finding.evidence["flagged_where"]


@pytest.mark.parametrize("head, loss, found", [
    (nn.Softmax(dim=1), None, True),                              # the inferred cross-entropy
    (nn.Softmax(dim=1), nn.CrossEntropyLoss(), True),             # the tutorials' loss
    (nn.Softmax(dim=1), nn.CrossEntropyLoss(label_smoothing=0.1), True),
    (nn.Identity(), None, False),                                 # logits: as it should be
    (nn.LogSoftmax(dim=1), nn.NLLLoss(), False),                  # log-probabilities into NLL: right too
], ids=["softmax-inferred", "softmax-ce", "softmax-smoothed", "logits", "log-softmax-nll"])
def test_a_softmax_before_a_cross_entropy_is_an_error(head, loss, found):
    """Digits through a network ending in nn.Softmax, trained with nn.CrossEntropyLoss: accuracy 0.885
    against 0.97, and the run's verdict was `underfitting` (a larger model)."""
    from converge.doctor import diagnose

    torch.manual_seed(0)
    x, y = _standard(300, 8), torch.arange(300) % 3
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3), head)
    findings = diagnose(model, (x[:200], y[:200]), (x[200:], y[200:]), loss=loss, cheap=True)
    codes = {f.code: f for f in findings}
    assert ("probabilities_into_cross_entropy" in codes) is found
    if found:
        assert codes["probabilities_into_cross_entropy"].severity == "error"
        assert "remove the final nn.Softmax" in codes["probabilities_into_cross_entropy"].fix


def test_a_model_that_draws_new_views_on_every_call_is_not_called_a_bug():
    """Random views inside forward, even in eval mode (a SimCLR-style model): one batch has no fixed answer, and
    the overfit check, which was an error for it, is information now. The same model without the noise, but
    ignoring its inputs, still fails."""
    torch.manual_seed(0)

    class Noisy(nn.Module):
        def __init__(self, ignore=False):
            super().__init__()
            self.net, self.ignore = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3)), ignore

        def forward(self, x):
            return self.net(x * 0) if self.ignore else self.net(x + 3.0 * torch.randn_like(x))

    x, y = torch.randn(32, 8), torch.arange(32) % 3
    found = mc.cannot_overfit_batch(Noisy(), x, y, F.cross_entropy, steps=60, lrs=(1e-3,))
    assert [f.severity for f in found] == ["info"] and "changes from one call to the next" in found[0].message
    found = mc.cannot_overfit_batch(Noisy(ignore=True), x, y, F.cross_entropy, steps=60, lrs=(1e-3,))
    assert [f.severity for f in found] == ["error"]


def test_the_floor_of_a_loss_is_what_the_outputs_themselves_reach():
    """`outputs_floor`: the batch's outputs, freed from the model, moved to the least loss they reach. A plain
    cross-entropy or MSE goes to about 0; label smoothing stops at the smoothing's entropy; a penalty that does
    not depend on the outputs stays."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 10))
    x, y = torch.randn(32, 8), torch.arange(32) % 10
    assert mc.outputs_floor(net, x, y, F.cross_entropy) < 0.02   # from ln 10 = 2.3
    smoothing = 0.2   # the optimum puts 1 - 0.2 + 0.02 on the label, 0.02 on each other class
    best = torch.full((10,), smoothing / 10)
    best[0] += 1 - smoothing
    entropy = float(-(best * best.log()).sum())
    assert mc.outputs_floor(net, x, y, lambda s, t: F.cross_entropy(s, t, label_smoothing=smoothing)) == \
        pytest.approx(entropy, abs=1e-3)
    regression = nn.Linear(8, 2)
    targets = torch.randn(32, 2)
    assert mc.outputs_floor(regression, x, targets, lambda s, t: F.mse_loss(s, t) + 0.5) == pytest.approx(0.5, abs=1e-3)


def test_a_model_at_its_losss_own_floor_is_not_called_a_bug():
    """A running sum of digits mod 10 by a GRU, under the user's cross-entropy with label smoothing 0.05: the
    batch's loss went 2.306 -> 0.288 in 200 steps, the smoothing's floor about 0.28, and the bound 0.1x the
    start (0.23) called it a bug. Judged above the floor its outputs reach, it passes; the same loss with a
    model that ignores its inputs still fails."""
    class Tagger(nn.Module):
        def __init__(self, ignore=False):
            super().__init__()
            self.emb, self.gru, self.out = nn.Embedding(10, 16), nn.GRU(16, 64, batch_first=True), nn.Linear(64, 10)
            self.ignore = ignore

        def forward(self, x):
            h, _ = self.gru(self.emb(x * 0 if self.ignore else x))
            return self.out(h)

    def loss(logits, target):
        return F.cross_entropy(logits.reshape(-1, 10), target.reshape(-1), label_smoothing=0.05)

    torch.manual_seed(0)
    x = torch.randint(0, 10, (32, 12))
    y = x.cumsum(1) % 10
    assert mc.cannot_overfit_batch(Tagger(), x, y, loss) == []
    found = mc.cannot_overfit_batch(Tagger(ignore=True), x, y, loss)
    assert [f.severity for f in found] == ["error"] and "the least its outputs themselves reach" in found[0].message
    assert found[0].evidence["outputs_floor"] == pytest.approx(0.28, abs=0.01)


VIBRATION_TASK = """
import math
import torch
from torch import nn


def _windows(n, g):
    state = torch.randint(0, 4, (n,), generator=g)
    t = torch.arange(128).float() / 128
    freq = torch.tensor([3.0, 7.0, 7.0, 13.0])[state][:, None]
    amp = torch.tensor([0.2, 0.2, 0.8, 0.5])[state][:, None]
    base = amp * torch.sin(2 * math.pi * freq * t + 2 * math.pi * torch.rand(n, 1, generator=g))
    x = torch.stack([base, 0.5 * base.roll(5, 1), 9.81 + 0.3 * base], 1)   # gravity on z
    return x + 0.3 * torch.randn(n, 3, 128, generator=g), state


def model():
    return nn.Sequential(nn.Conv1d(3, 16, 7, padding=3), nn.ReLU(), nn.MaxPool1d(4),
                         nn.Conv1d(16, 32, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                         nn.Linear(32, 4))


def data():
    g = torch.Generator().manual_seed(4)
    return _windows(400, g), _windows(100, g)
"""


def test_channels_first_windows_are_fitted_as_training_sees_them(tmp_path):
    """Raw accelerometer windows [N, 3, 128] into a Conv1d (training reaches accuracy 1.0 on them). The overfit
    check standardized every [N, T, F] tensor as sequences of feature vectors, here statistics per time index
    pooled over the three channels, which squashed the signals beside gravity's 9.81 on z: "the model cannot
    fit a single batch", an error, on every seed. It now standardizes only what the model's first layer reads
    as features, as training does."""
    findings = run_doctor(_write(tmp_path, VIBRATION_TASK, "vibration"))
    assert "cannot_overfit_batch" not in _codes(findings), [f.to_dict() for f in findings]


def test_a_head_the_tasks_own_loss_reads_as_raw_targets_is_named(tmp_path):
    """Two heads under the user's loss: a class and a price in dollars. The doctor names the price head's raw
    targets, as `converge train` then standardizes them; the class head (labels) is not named."""
    body = '''
def data():
    x, y = _blobs()
    price = 250_000 + 60_000 * x[:, 0]
    return tuple((a[0], (a[1], p)) for a, p in zip(_split(x, y), (price[:180], price[180:240], price[240:])))

class Heads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
        self.kind, self.price = nn.Linear(32, 3), nn.Linear(32, 1)

    def forward(self, x):
        h = self.body(x)
        return self.kind(h), self.price(h).squeeze(-1)

def model():
    return Heads()

def loss(outputs, targets):
    return torch.nn.functional.cross_entropy(outputs[0], targets[0]) + \\
        torch.nn.functional.mse_loss(outputs[1] / 1000, targets[1] / 1000)
'''
    found = [f for f in run_doctor(_write(tmp_path, body, "heads"), cheap=True) if f.code == "unscaled_targets"]
    assert [f.evidence["head"] for f in found] == ["head1"] and found[0].message.startswith("head1: targets")


def test_a_head_sharing_its_last_layer_is_said_to_stay_raw(tmp_path):
    """A price and a logit as two columns of one nn.Linear: training cannot map the price column alone (its
    remedy says `left`), so the doctor's fix does not promise it."""
    body = '''
def data():
    x, y = _blobs()
    price = 250_000 + 60_000 * x[:, 0]
    high = (y > 0).float()
    return tuple((a[0], (p, h)) for a, p, h in zip(_split(x, y), (price[:180], price[180:240], price[240:]),
                                                 (high[:180], high[180:240], high[240:])))

class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, x):
        out = self.net(x)
        return out[:, 0], out[:, 1]

def model():
    return Shared()

def loss(outputs, targets):
    return torch.nn.functional.mse_loss(outputs[0] / 1000, targets[0] / 1000) + \\
        torch.nn.functional.binary_cross_entropy_with_logits(outputs[1], targets[1])
'''
    found = [f for f in run_doctor(_write(tmp_path, body, "shared"), cheap=True) if f.code == "unscaled_targets"]
    assert [f.evidence["head"] for f in found] == ["head0"] and found[0].fix.startswith("converge train leaves")
