"""Safe defaults on raw data: unscaled feature matrices, and sequences of feature vectors read by an nn.Linear
or a recurrent layer, are standardized by default (folded into the exported model), said in one console line
and in remedies.json, turned off by --no-standardize / fit(standardize=False), reapplied on resume; other
inputs are left alone."""

import json

import pytest
from _interrupt import InterruptAt
import torch
import torch.nn.functional as F
from torch import nn

import converge
from converge.decide.findings import Finding
from converge.doctor.in_train import (_remedies, feature_sequences, plain_features, recorded_standardization,
                                      scale_findings)
from converge.data import TensorSplit
from converge.standardize import foldable_layer, fold_standardization, standardization, standardize

SCALES = torch.tensor([1e-3, 1e4, 0.1, 100.0, 1.0, 1e3, 0.01, 10.0])
SHIFT = torch.tensor([0.0, 5e4, 1.0, -300.0, 0.0, 2e3, 0.0, 40.0])


def raw_blobs(n=300, seed=0):
    """Three Gaussian blobs, 8 features in wildly different units (x1e-3 ... x1e4, shifted)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 8, generator=g) + 2.5 * F.one_hot(y, 8).float()
    x = x * SCALES + SHIFT
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])


class Net(nn.Module):
    """Not an nn.Sequential: the first layer is found by a probe, as for a new user's own class."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x):
        return self.layers(x)


class Halved(Net):
    """The input is changed before the first layer: folding into it would be wrong."""

    def forward(self, x):
        return self.layers(x * 0.5 + 1.0)


FIXED = {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 0.0, "batch_size": 32, "seed": 0, "verbose": False}


def _fit(model_class, splits, **options):
    torch.manual_seed(0)
    return converge.fit(model_class(), *splits, **{**FIXED, "max_epochs": 4, **options})


def _strip(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


# --- the pieces ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_class, expected", [(Net, "layers.0"), (Halved, None)])
def test_foldable_layer_is_found_by_probe_and_checked_numerically(model_class, expected):
    torch.manual_seed(0)
    model = model_class()
    (x, _), _, _ = raw_blobs()
    mean, std = standardization(x)
    assert foldable_layer(model, x[:16], mean, std) == expected
    if expected:
        want = model(standardize(x, mean, std))
        fold_standardization(model, mean, std, expected)
        assert torch.allclose(model(x), want, rtol=1e-4, atol=1e-4)


def test_only_float_feature_matrices_and_sequences_count():
    x = torch.randn(20, 8) * 1e3
    assert plain_features(TensorSplit(x, torch.zeros(20), "train"))
    assert scale_findings(TensorSplit(x, torch.zeros(20), "train"), 0)[0].code == "unscaled_features"
    sequences = TensorSplit(x.reshape(20, 2, 4), torch.zeros(20), "train")
    assert feature_sequences(sequences) and scale_findings(sequences, 0)[0].code == "unscaled_features"
    for inputs in (x.reshape(20, 2, 2, 2), x.long(), (x, x)):   # images, ids, two matrices (which to fold?)
        split = TensorSplit(inputs, torch.zeros(20), "train")
        assert not plain_features(split) and not feature_sequences(split) and scale_findings(split, 0) == []
    for inputs in ((x, x.long()), {"x": x, "ids": x.long()}):   # one matrix among several inputs: it counts
        split = TensorSplit(inputs, torch.zeros(20), "train")
        assert scale_findings(split, 0)[0].code == "unscaled_features"
    assert scale_findings(TensorSplit(torch.randn(20, 8), torch.zeros(20), "train"), 0) == []   # already scaled


UNSCALED = [Finding("unscaled_features", "warning", "m")]


@pytest.mark.parametrize("findings, fix, drop, standardize, recorded, expected", [
    (UNSCALED, False, False, True, None, ["standardize_features"]),        # the default
    (UNSCALED, False, False, False, None, []),                              # --no-standardize
    ([], False, False, True, None, []),                                     # nothing to fix
    (UNSCALED, True, False, False, None, ["standardize_features"]),         # --fix asks for it anyway
    ([], False, False, True, True, ["standardize_features"]),               # resumed: as it started
    (UNSCALED, False, False, True, False, []),                              # resumed: as it started
    ([], False, True, True, True, ["drop_label_issues", "standardize_features"]),
    (UNSCALED + [Finding("class_imbalance", "warning", "m")], False, False, True, None,
     ["standardize_features"]),                                             # class weights stay opt-in
])
def test_remedy_plan_with_default_standardization(findings, fix, drop, standardize, recorded, expected):
    assert _remedies(findings, fix, drop, standardize, recorded) == expected


def test_recorded_decision_is_read_from_events():
    remedy = {"event": "remedy", "remedy": "standardize_features", "detail": {"applied": True}}
    assert recorded_standardization([{"event": "new_best"}, remedy])
    assert not recorded_standardization([{**remedy, "detail": {"applied": False}}])
    assert not recorded_standardization([{"event": "new_best"}])   # a run from before the default


# --- fit ---------------------------------------------------------------------------------------------
def test_fit_standardizes_raw_features_by_default_and_the_model_takes_raw_inputs(tmp_path, capsys):
    splits = raw_blobs()
    result = _fit(Net, splits, out=tmp_path / "run", verbose=True)
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if "standardiz" in line]
    assert len(lines) == 1 and lines[0].startswith("standardize: 8 input features standardized"), lines
    assert "--no-standardize" in lines[0]
    (remedy,) = json.loads((tmp_path / "run" / "remedies.json").read_text())
    assert remedy["remedy"] == "standardize_features"
    assert remedy["detail"]["applied"] and remedy["detail"]["by"] == "default"
    assert remedy["detail"]["layer"] == "layers.0" and "far from standardized" in remedy["detail"]["finding"]
    assert not (tmp_path / "run" / "doctor.json").exists()      # fit runs the scale check only
    assert not (tmp_path / "run" / "standardize.json").exists()
    assert [e["remedy"] for e in result.events if e["event"] == "remedy"] == ["standardize_features"]
    # the returned model and best.safetensors take raw inputs and give the run's test loss
    (_, _), _, (x_test, y_test) = splits
    with torch.no_grad():
        assert float(F.cross_entropy(result.model.eval()(x_test), y_test)) == \
            pytest.approx(result.summary["test"]["loss"], rel=1e-4)
        exported = Net()
        converge.load_weights(tmp_path / "run" / "best.safetensors", exported)
        assert float(F.cross_entropy(exported.eval()(x_test), y_test)) == \
            pytest.approx(result.summary["test"]["loss"], rel=1e-4)


def test_standardization_helps_and_can_be_turned_off():
    splits = raw_blobs()
    default = _fit(Net, splits, max_epochs=8)
    off = _fit(Net, splits, max_epochs=8, standardize=False)
    assert not [e for e in off.events if e["event"] == "remedy"]
    assert off.summary["config"]["standardize"] is False
    assert default.summary["test"]["accuracy"] > off.summary["test"]["accuracy"]


@pytest.mark.parametrize("model_class, make_inputs", [
    (Halved, lambda x: x),                                        # not foldable: left alone by default
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(8, 3)), lambda x: x.reshape(-1, 1, 2, 4)),   # images
])
def test_inputs_that_are_not_plain_foldable_features_are_left_alone(model_class, make_inputs):
    splits = tuple((make_inputs(x), y) for x, y in raw_blobs())
    default = _fit(model_class, splits)
    off = _fit(model_class, splits, standardize=False)
    assert _strip(default.history) == _strip(off.history)
    assert not [e for e in default.events if e["event"] == "remedy" and e["detail"].get("applied")]


def test_token_ids_are_left_alone():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 5000, (200, 6), generator=g)
    y = ids[:, 0] % 2
    splits = ((ids[:150], y[:150]), (ids[150:], y[150:]))

    def model():
        return nn.Sequential(nn.Embedding(5000, 4), nn.Flatten(), nn.Linear(24, 2))

    default, off = _fit(model, splits, max_epochs=2), _fit(model, splits, max_epochs=2, standardize=False)
    assert _strip(default.history) == _strip(off.history)
    assert not [e for e in default.events if e["event"] == "remedy"]


# --- converge train and resume -----------------------------------------------------------------------
RAW_TASK = '''
import torch
from torch import nn
import torch.nn.functional as F

def data():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    x = torch.randn(300, 8, generator=g) + 2.5 * F.one_hot(y, 8).float()
    x = x * torch.tensor({scales}) + torch.tensor({shift})
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    def forward(self, x):
        return self.layers(x)

def model():
    return Net()
'''.format(scales=SCALES.tolist(), shift=SHIFT.tolist())

CLI_FLAGS = ("--max-epochs", "3", "--optimizer", "adamw", "--lr", "1e-2", "--weight-decay", "0", "--batch-size", "32")


def test_train_says_it_once_records_it_and_no_standardize_turns_it_off(tmp_path, cli):
    task = tmp_path / "raw.py"
    task.write_text(RAW_TASK)
    result = cli("train", task, "--out", tmp_path / "on", *CLI_FLAGS)
    assert result.code == 0, result.err
    # One line says it; the doctor's unscaled-features warning is not repeated beside it (the run's
    # summary table below may mention standardized inputs in a diagnosis: it is not a console line of its own).
    lines = (result.out + result.err).splitlines()
    said = [line for line in lines if "standardiz" in line and not line.startswith("│")]
    assert len(said) == 1 and said[0].startswith("standardize: "), said
    assert not any("unscaled_features" in line for line in lines), lines
    remedies = json.loads((tmp_path / "on" / "remedies.json").read_text())
    assert [(r["remedy"], r["detail"]["applied"], r["detail"]["by"]) for r in remedies] == \
        [("standardize_features", True, "default")]
    doctor = {f["code"] for f in json.loads((tmp_path / "on" / "doctor.json").read_text())}
    assert "unscaled_features" in doctor                     # the finding stays on record
    assert not {"init_loss_off", "exploding_gradients"} & doctor   # model checks judged standardized inputs
    off = cli("train", task, "--out", tmp_path / "off", "--no-standardize", *CLI_FLAGS)
    assert off.code == 0 and "doctor: unscaled_features" in off.err and "standardize:" not in off.out + off.err
    assert not (tmp_path / "off" / "remedies.json").exists()
    assert json.loads((tmp_path / "off" / "run.json").read_text())["config"]["standardize"] is False


@pytest.mark.parametrize("model_class, make_splits, loss, steps_per_epoch", [
    ("Net", "raw_blobs", F.cross_entropy, 6), ("Recurrent", "raw_readings", F.mse_loss, 5),
    ("Tabular", "raw_with_categories", F.mse_loss, 6), ("HourlyForecaster", "raw_hourly", F.mse_loss, 6),
], ids=["feature-matrix", "sequences", "numeric-beside-categories", "per-step-targets"])
def test_resume_reapplies_the_standardization_exactly(tmp_path, model_class, make_splits, loss, steps_per_epoch):
    splits, model_class = globals()[make_splits](), globals()[model_class]

    def run(out, loss, resume=False):
        return _fit(model_class, splits, out=out, loss=loss, resume=resume, device="cpu")

    reference = run(tmp_path / "reference", InterruptAt(None, loss))
    stopped = run(tmp_path / "run", InterruptAt(steps_per_epoch + 3, loss))     # step 3 of epoch 2
    assert stopped.status == "interrupted"
    resumed = run(tmp_path / "run", InterruptAt(None, loss), resume=True)
    assert resumed.status == reference.status
    assert _strip(resumed.history) == _strip(reference.history)
    assert (tmp_path / "run" / "best.safetensors").read_bytes() == \
        (tmp_path / "reference" / "best.safetensors").read_bytes()
    assert any(e["event"] == "remedy" and e["detail"]["applied"] for e in resumed.events)


def test_lr_find_and_the_tune_warm_start_see_the_standardized_inputs(tmp_path):
    """The automatic choice runs after the inputs are fixed, wherever it runs (`converge tune`'s warm
    start and `converge lr-find` build their set-up with `standardized_setup`)."""
    from converge.assembly import build_task, make_config, standardized_setup
    from converge.task import load_task

    path = tmp_path / "raw.py"
    path.write_text(RAW_TASK)
    task = load_task(path)
    for wanted in (True, False):
        config = make_config(standardize=wanted)
        model, splits, _ = build_task(task, config)
        x = standardized_setup(task, model, splits, config).splits["train"].inputs
        raw = splits["train"].inputs
        if wanted:
            assert torch.allclose(x.mean(0), torch.zeros(8), atol=1e-4) and float(x.std(0).max()) < 1.01
        else:
            assert torch.equal(x, raw)


# --- sequences of feature vectors [N, T, F] --------------------------------------------------------------
def raw_readings(n=240, steps=24, seed=0):
    """Load-like readings around 450 with std ~90 (kW); the target, the next value, already scaled (so that only
    the inputs are standardized)."""
    g = torch.Generator().manual_seed(seed)
    phase = torch.rand(n, 1, generator=g) * 6.28
    t = torch.arange(steps + 1).float()
    series = 450 + 90 * torch.sin(phase + t / 3) + 5 * torch.randn(n, steps + 1, generator=g)
    x, y = series[:, :steps].unsqueeze(-1), (series[:, steps:] - 450) / 90
    return (x[:160], y[:160]), (x[160:200], y[160:200]), (x[200:], y[200:])


class Recurrent(nn.Module):
    def __init__(self, cell=nn.GRU, **options):
        super().__init__()
        self.rnn = cell(1, 16, batch_first=True, **options)
        self.head = nn.Linear(16 * (2 if options.get("bidirectional") else 1), 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class PerStep(nn.Module):
    """A per-step nn.Linear on [N, T, F], as a transformer's input projection."""

    def __init__(self):
        super().__init__()
        self.proj, self.head = nn.Linear(1, 8), nn.Linear(8, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.proj(x)).mean(1))


class RawSkip(Recurrent):
    """The raw readings also reach the output: no layer can absorb their standardization."""

    def forward(self, x):
        return super().forward(x) + x[:, -1]


@pytest.mark.parametrize("make, expected", [
    (lambda: Recurrent(nn.GRU), "rnn"), (lambda: Recurrent(nn.LSTM, bidirectional=True), "rnn"),
    (lambda: Recurrent(nn.RNN), "rnn"), (lambda: Recurrent(nn.GRU, bias=False), None),
    (PerStep, "proj"), (RawSkip, None),
], ids=["gru", "bidirectional-lstm", "rnn", "gru-without-bias", "per-step-linear", "raw-skip"])
def test_a_sequences_standardization_folds_into_the_layer_that_reads_each_step(make, expected):
    torch.manual_seed(0)
    model = make().eval()
    (x, _), _, _ = raw_readings()
    mean, std = standardization(x, per_position=False)
    assert mean.shape == (1,) and float(mean) == pytest.approx(float(x.mean()), rel=1e-4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert foldable_layer(model, x[:16], mean, std) == expected
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # the check changes nothing
    if expected:
        with torch.no_grad():
            want = model(standardize(x, mean, std))
            fold_standardization(model, mean, std, expected)
            assert torch.allclose(model(x), want, rtol=1e-4, atol=1e-3)


def test_per_feature_statistics_of_a_sequence_broadcast_over_its_steps_and_per_position_ones_still_apply():
    x = torch.randn(5, 3, 2) * torch.tensor([10.0, 0.1]) + torch.tensor([100.0, -1.0])
    mean, std = standardization(x, per_position=False)
    assert torch.allclose(standardize(x, mean, std), (x - mean) / std)
    z = standardize(x, *standardization(x))   # a standardize.json of per-position statistics, as --fix wrote
    assert torch.allclose(z.reshape(5, -1).mean(0), torch.zeros(6), atol=1e-5)


def test_fit_standardizes_raw_sequences_for_a_recurrent_model_and_the_model_takes_raw_readings(tmp_path):
    splits = raw_readings()
    options = {"loss": None, "max_epochs": 6, "lr": 3e-3}
    result = _fit(Recurrent, splits, out=tmp_path / "run", **options)
    remedy = next(e for e in result.events if e["event"] == "remedy" and e["remedy"] == "standardize_features")
    assert remedy["detail"]["applied"] and remedy["detail"]["layer"] == "rnn"
    assert remedy["detail"]["features"] == 1 and "[N, 24, 1]" in remedy["detail"]["over"]
    assert not (tmp_path / "run" / "standardize.json").exists()
    (_, _), _, (x_test, y_test) = splits
    exported = Recurrent()
    converge.load_weights(tmp_path / "run" / "best.safetensors", exported)
    with torch.no_grad():
        assert float(F.mse_loss(exported.eval()(x_test), y_test)) == pytest.approx(result.summary["test"]["loss"],
                                                                                   rel=1e-4)
    off = _fit(Recurrent, splits, standardize=False, **options)
    assert result.summary["best"]["val_loss"] < 0.5 * off.summary["best"]["val_loss"], \
        (result.summary["best"], off.summary["best"])


# --- a feature with rare large values is not blown up (raw digits: a pixel lit in 2 of 1078 images) ----------
def test_a_bell_shaped_feature_keeps_its_std_and_a_rare_spike_is_capped():
    g = torch.Generator().manual_seed(0)
    bell = torch.randn(1000, generator=g) * 3 + 7
    rare = torch.zeros(1000)
    rare[[4, 500]] = torch.tensor([1.0, 2.0])   # nearly constant: std 0.07
    flag = (torch.rand(1000, generator=g) < 0.2).float()
    x = torch.stack([bell, rare, flag], 1)
    mean, scale = standardization(x)
    assert torch.allclose(scale[[0, 2]], x[:, [0, 2]].std(0))             # untouched: their |z| stays below 10
    assert float(((x[:, 1] - mean[1]).abs().max() / scale[1])) == pytest.approx(10.0)
    assert scale[1] > 2 * x[:, 1].std()
    # a validation value of 16 (the pixel's full range) gets z 80, not the ~230 of dividing by the std
    assert float((16 - mean[1]) / scale[1]) < 81 < float((16 - mean[1]) / x[:, 1].std())
    from converge.standardize import capped_features
    assert capped_features(x, mean, scale) == 1
    # regression targets keep the plain std (their scale is the loss's, and y = z * std + mean is folded)
    assert torch.allclose(standardization(x, max_score=None)[1], x.std(0))


def test_the_capped_scale_folds_exactly_into_the_first_layer():
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(64, 3)
    x[:, 0] = torch.randn(64, generator=g) * 50 + 300
    x[7, 1] = 16.0
    x[:, 2] = torch.rand(64, generator=g)
    mean, scale = standardization(x)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    expected = model(standardize(x, mean, scale))
    fold_standardization(model, mean, scale, "0")
    assert torch.allclose(model(x), expected, atol=1e-4)


# --- the numeric columns beside category ids (several inputs) ---------------------------------------------
def raw_with_categories(n=300, seed=0):
    """(raw numeric columns in their units, category ids) -> a rent in dollars: the usual tabular network's
    inputs."""
    g = torch.Generator().manual_seed(seed)
    scale, shift = torch.tensor([1800.0, 100.0, 30.0, 2500.0]), torch.tensor([350.0, 0, 1, 0])
    numeric = torch.rand(n, 4, generator=g) * scale + shift
    district = torch.randint(0, 6, (n,), generator=g)
    rent = 800 + 1.6 * numeric[:, 0] - 6 * numeric[:, 1] - 0.25 * numeric[:, 3] + 150.0 * district
    parts = [((numeric[a:b], district[a:b]), rent[a:b]) for a, b in ((0, 180), (180, 240), (240, n))]
    return tuple(parts)


class Tabular(nn.Module):
    """Numeric columns concatenated with a category's embedding before the first nn.Linear (not first
    among its inputs: the embedding comes first)."""

    def __init__(self):
        super().__init__()
        self.district = nn.Embedding(6, 3)
        self.mlp = nn.Sequential(nn.Linear(3 + 4, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, numeric, district):
        return self.mlp(torch.cat([self.district(district), numeric], dim=1)).squeeze(1)


class TabularLogged(Tabular):
    """The numeric columns are transformed before the first layer: no fold reaches them."""

    def forward(self, numeric, district):
        return super().forward(numeric.log1p(), district)


@pytest.mark.parametrize("model_class, expected", [(Tabular, ("mlp.0", 3)), (TabularLogged, None)])
def test_the_numeric_part_is_folded_into_its_own_columns_of_the_first_linear(model_class, expected):
    from converge.standardize import foldable_part

    torch.manual_seed(0)
    model = model_class()
    ((numeric, district), _), _, _ = raw_with_categories()
    mean, std = standardization(numeric)
    assert foldable_part(model, (numeric[:16], district[:16]), 0, mean, std) == expected
    if expected:
        want = model(standardize(numeric, mean, std), district)
        fold_standardization(model, mean, std, *expected)
        assert torch.allclose(model(numeric, district), want, rtol=1e-4, atol=1e-2)


def test_a_rent_model_on_raw_columns_beside_categories_is_standardized_by_default(tmp_path):
    """A rent model on raw square feet and meters beside district embeddings got test MSE 489,864 (the race's
    SGD at LR 1e-7 on the raw columns; the classic loop's AdamW 16,712); standardized, 19,487. The exported
    weights take raw inputs."""
    splits = raw_with_categories(n=600)
    torch.manual_seed(0)
    result = converge.fit(Tabular(), *splits, out=tmp_path / "run", max_epochs=3, optimizer="adamw", lr=1e-2,
                          batch_size=32, verbose=False)
    (remedy,) = [e for e in result.events if e["event"] == "remedy" and e["remedy"] == "standardize_features"]
    assert remedy["detail"]["applied"] and remedy["detail"]["input"] == 0
    assert remedy["detail"]["layer"] == "mlp.0" and remedy["detail"]["columns"] == [3, 7]
    fresh = Tabular()
    converge.load_weights(tmp_path / "run" / "best.safetensors", fresh)
    (numeric, district), rent = splits[2]
    with torch.no_grad():
        raw_mse = float(((fresh.eval()(numeric, district) - rent) ** 2).mean())
        returned = float(((result.model.eval()(numeric, district) - rent) ** 2).mean())
    assert raw_mse == pytest.approx(result.summary["test"]["loss"], rel=1e-4)
    assert returned == pytest.approx(raw_mse, rel=1e-5)


def test_the_doctor_judges_the_model_on_the_numeric_part_as_training_standardizes_it():
    """`converge doctor` on the rent model warned of exploding gradients at initialisation (5.8e6x the
    weights' norm), the raw columns' doing, which training never sees."""
    from converge.doctor.run import diagnose

    torch.manual_seed(0)
    train, val, _ = raw_with_categories(n=600)
    codes = {f.code: f for f in diagnose(Tabular(), train, val, cheap=True)}
    assert "unscaled_features" in codes and codes["unscaled_features"].message.startswith("input 0: ")
    assert "exploding_gradients" not in codes and "vanishing_gradients" not in codes
    assert "standardize it by default" in codes["unscaled_features"].fix


# --- per-step regression targets [N, T, K] ------------------------------------------------------------------
class HourlyForecaster(nn.Module):
    """A GRU that predicts a value at every step with one per-step nn.Linear: outputs [N, T, 1]."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(2, 16, batch_first=True)
        self.out = nn.Linear(16, 1)

    def forward(self, x):
        return self.out(self.gru(x)[0])


def raw_hourly(n=300, steps=12, seed=0):
    """Indoor temperatures in kelvin (about 290) at every hour, from outdoor temperatures and heating power."""
    g = torch.Generator().manual_seed(seed)
    outdoor = 5 + 3 * torch.randn(n, steps, generator=g)
    power = 20 * torch.rand(n, steps, generator=g)
    temp, indoor = 291 + torch.randn(n, generator=g), []
    for k in range(steps):
        temp = temp + 0.1 * (outdoor[:, k] + 273.15 - temp) + 0.05 * power[:, k]
        indoor.append(temp)
    x, y = torch.stack([outdoor, power], 2), torch.stack(indoor, 1).unsqueeze(2)
    return (x[:180], y[:180]), (x[180:240], y[180:240]), (x[240:], y[240:])


def test_target_units_map_per_column_or_per_step_feature():
    from converge.standardize import target_units

    mean, std = torch.tensor([290.0]), torch.tensor([5.0])
    z = torch.randn(4, 12, 1)
    y = target_units(z, mean, std)
    assert torch.allclose(y, z * 5 + 290) and torch.allclose(target_units(y, mean, std, inverse=True), z, atol=1e-5)
    rows = torch.randn(4, 3)
    per_column = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(target_units(rows, per_column, per_column), rows * per_column + per_column)


def test_per_step_targets_in_kelvin_are_standardized_and_folded_into_the_per_step_linear(tmp_path):
    """A GRU forecasting the indoor temperature in kelvin at each of 24 hours, [N, 24, 1]: the statistics were
    taken per step (24 of them), which no nn.Linear with one output absorbs, so the targets stayed raw (test
    MSE 8.19, R² 0.11, 22x the reference model); one mean and std over every step fold into it (0.371)."""
    splits = raw_hourly()
    torch.manual_seed(0)
    result = converge.fit(HourlyForecaster(), *splits, out=tmp_path / "run", max_epochs=3, optimizer="adamw",
                          lr=1e-2, batch_size=32, verbose=False)
    (remedy,) = [e for e in result.events if e["event"] == "remedy" and e["remedy"] == "standardize_targets"]
    assert remedy["detail"]["applied"] and remedy["detail"]["columns"] == 1 and remedy["detail"]["layer"] == "out"
    assert remedy["detail"]["over"] == "every step of the [12, 1] targets"
    fresh = HourlyForecaster()
    converge.load_weights(tmp_path / "run" / "best.safetensors", fresh)
    x, y = splits[2]
    with torch.no_grad():
        raw_mse = float(((fresh.eval()(x) - y) ** 2).mean())
    assert raw_mse == pytest.approx(result.summary["test"]["loss"], rel=1e-4)
