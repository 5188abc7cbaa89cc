"""Bad input: every case ends with ONE stderr line `error: ...`, exit status 2, no traceback (unless
--debug), and nothing written or overwritten."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from converge.cli import main

# --- task files ----------------------------------------------------------------------------------------

# (case id, how to write the file, expected substrings of the error line)
# The writer gets make_task and tmp_path, and returns the path handed to `converge train`.
TASK_FILE_CASES = [
    ("missing", lambda make, tmp: tmp / "nope.py", ["nope.py", "does not exist"]),
    ("not-a-py-file", lambda make, tmp: make(name="task.txt"), ["task.txt", "not a Python file"]),
    ("a-folder", lambda make, tmp: _mkdir(tmp / "folder.py"), ["folder.py", "is not a file"]),
    ("not-utf8", lambda make, tmp: make(b"\xff\xfe\x00garbage\x81", raw=True), ["task.py", "not UTF-8"]),
    ("syntax-error", lambda make, tmp: make("def model(:\n    pass\n", raw=True),
     ["task.py", "does not parse", "line 1"]),
    ("null-bytes", lambda make, tmp: make(b"x = 1\x00\n", raw=True), ["task.py", "does not parse"]),
    ("binary-blob", lambda make, tmp: make(bytes(range(128)), raw=True), ["task.py", "does not parse"]),
    ("empty-file", lambda make, tmp: make("", raw=True), ["task.py", "no model() function"]),
    ("import-fails", lambda make, tmp: make("import no_such_module_xyz\n"),
     ["task.py", "ModuleNotFoundError", "no_such_module_xyz"]),
    ("raises-on-load", lambda make, tmp: make("raise RuntimeError('boom at load')\n"),
     ["task.py", "RuntimeError", "boom at load"]),
    ("no-model", lambda make, tmp: make(model=False), ["task.py", "no model() function"]),
    ("no-data", lambda make, tmp: make(data=False), ["task.py", "no data() function"]),
    ("no-model-no-data", lambda make, tmp: make(model=False, data=False), ["no model() function"]),
    ("model-not-callable", lambda make, tmp: make("model = 3\n", model=False), ["no model() function"]),
    ("data-not-callable", lambda make, tmp: make("data = [1, 2]\n", data=False), ["no data() function"]),
    ("model-returns-str", lambda make, tmp: make("def model():\n    return 'mlp'\n"),
     ["model() in task.py", "torch.nn.Module", "str"]),
    ("model-raises", lambda make, tmp: make("def model():\n    raise ValueError('no such layer')\n"),
     ["model() in task.py raised ValueError", "no such layer"]),
    ("multiline-exception", lambda make, tmp: make("def model():\n    raise ValueError('first line\\nsecond line')\n"),
     ["model() in task.py raised ValueError", "first line", "second line"]),
    ("metrics-not-dict", lambda make, tmp: make("metrics = 5\n"), ["metrics in task.py"]),
    ("metric-not-callable", lambda make, tmp: make("metrics = {'acc': 5}\n"), ["metrics in task.py"]),
    ("metric-named-loss", lambda make, tmp: make("metrics = {'loss': lambda o, t: o.sum()}\n"),
     ["metric name 'loss'"]),
    ("loss-not-callable", lambda make, tmp: make("loss = 'mse'\n"), ["loss in task.py", "callable"]),
    ("monitor-without-mode", lambda make, tmp: make("monitor = 'accuracy'\n"), ["--mode", "accuracy"]),
    ("monitor-unknown", lambda make, tmp: make("monitor = 'f1'\nmode = 'max'\n"), ["--monitor", "f1", "val_accuracy"]),
]


def _mkdir(path):
    path.mkdir()
    return path


@pytest.mark.parametrize("write, needles", [c[1:] for c in TASK_FILE_CASES], ids=[c[0] for c in TASK_FILE_CASES])
def test_bad_task_file(cli, make_task, tmp_path, write, needles):
    path = write(make_task, tmp_path)
    out = tmp_path / "run"
    cli("train", path, "--out", out, "--quiet").single_error(*needles)
    assert not out.exists()


# --- data ----------------------------------------------------------------------------------------------

# (case id, body of data() -- or a whole task snippet when it defines more, expected substrings)
DATA_CASES = [
    # splits whose input and target lengths disagree
    ("length-train", "x, y = _xy(); return (x[:120], y[:110]), (x[120:160], y[120:160])",
     ["train inputs and targets disagree in length", "120 inputs, 110 targets"]),
    ("length-val", "x, y = _xy(); return (x[:120], y[:120]), (x[120:160], y[120:150])",
     ["val inputs and targets disagree in length", "40 inputs, 30 targets"]),
    ("length-test", "x, y = _xy(); return (x[:120], y[:120]), (x[120:160], y[120:160]), (x[160:], y[165:])",
     ["test inputs and targets disagree in length", "40 inputs, 35 targets"]),
    ("length-numpy", "x, y = _xy(); return (x[:120].numpy(), y[:100].numpy()), (x[120:], y[120:])",
     ["train inputs and targets disagree in length", "120 inputs, 100 targets"]),
    # labels outside the model's output range (3 outputs: labels must lie in [0, 2])
    ("label-too-high", "x, y = _xy(); y[7] = 3; return (x[:120], y[:120]), (x[120:], y[120:])",
     ["train labels range over [0, 3]", "3 outputs", "[0, 2]"]),
    ("label-negative", "x, y = _xy(); y[7] = -1; return (x[:120], y[:120]), (x[120:], y[120:])",
     ["train labels range over [-1, 2]"]),
    ("label-in-val", "x, y = _xy(); y[130] = 9; return (x[:120], y[:120]), (x[120:], y[120:])",
     ["val labels range over [0, 9]"]),
    ("label-in-test", "x, y = _xy(); y[190] = 5; return (x[:120], y[:120]), (x[120:160], y[120:160]), "
                      "(x[160:], y[160:])", ["test labels range over [0, 5]"]),
    ("label-in-dataset", "x, y = _xy(); y[0] = 4; return TensorDataset(x[:120], y[:120]), (x[120:], y[120:])",
     ["train labels range over [0, 4]"]),
    # a TensorDataset is checked whole, not only on its first samples
    ("label-late-in-loader", "x, y = _xy(); y[119] = 6; "
                             "return DataLoader(TensorDataset(x[:120], y[:120]), batch_size=8), (x[120:], y[120:])",
     ["train labels range over [0, 6]"]),
    # NaN or Inf
    ("nan-train", "x, y = _xy(); x[3, 2] = float('nan'); return (x[:120], y[:120]), (x[120:], y[120:])",
     ["train inputs contain 1 NaN or Inf"]),
    ("inf-val", "x, y = _xy(); x[130, 0] = float('inf'); x[131, 1] = -float('inf'); "
                "return (x[:120], y[:120]), (x[120:], y[120:])", ["val inputs contain 2 NaN or Inf"]),
    ("nan-test", "x, y = _xy(); x[170, 0] = float('nan'); return (x[:120], y[:120]), (x[120:160], y[120:160]), "
                 "(x[160:], y[160:])", ["test inputs contain 1 NaN or Inf"]),
    ("nan-numpy-float64", "x, y = _xy(); x = x.numpy().astype(np.float64); x[0, 0] = np.nan; "
                          "return (x[:120], y[:120]), (x[120:], y[120:])", ["train inputs contain 1 NaN or Inf"]),
    ("nan-in-dataset", "x, y = _xy(); x[0, 0] = float('nan'); "
                       "return TensorDataset(x[:120], y[:120]), (x[120:], y[120:])", ["train inputs contain"]),
    ("nan-late-in-dataset", "x, y = _xy(); x[110, 3] = float('nan'); "
                            "return TensorDataset(x[:120], y[:120]), (x[120:], y[120:])",
     ["train inputs contain 1 NaN or Inf"]),
    ("nan-regression-targets", "x, _ = _xy(); y = x[:, :1].clone(); y[5, 0] = float('nan'); "
                               "return (x[:120], y[:120]), (x[120:], y[120:])", ["train targets contain 1 NaN"]),
    # empty splits
    ("empty-train", "x, y = _xy(); return (x[:0], y[:0]), (x[120:], y[120:])", ["the train split is empty"]),
    ("empty-val", "x, y = _xy(); return (x[:120], y[:120]), (x[:0], y[:0])", ["the val split is empty"]),
    ("empty-test", "x, y = _xy(); return (x[:120], y[:120]), (x[120:], y[120:]), (x[:0], y[:0])",
     ["the test split is empty"]),
    ("empty-lists", "x, y = _xy(); return ([], []), (x[120:], y[120:])", ["the train split is empty"]),
    ("empty-dataset", "x, y = _xy(); return TensorDataset(x[:0], y[:0]), (x[120:], y[120:])",
     ["the train split is empty"]),
    ("empty-dataloader", "x, y = _xy(); return (x[:120], y[:120]), DataLoader(TensorDataset(x[:0], y[:0]))",
     ["the val split is empty"]),
    ("empty-iterable-dataset", "x, y = _xy(); return _Nothing(), (x[120:], y[120:])", ["the train split is empty"]),
    # the wrong things
    ("val-missing", "x, y = _xy(); return (x, y), None", ["the val split is missing"]),
    ("split-not-a-pair", "x, y = _xy(); return (x, y), 'val.csv'", ["val split must be an (inputs, targets) pair",
                                                                     "str"]),
    ("split-of-three", "x, y = _xy(); return (x, y, y), (x, y)", ["train split must be an (inputs, targets) pair"]),
    ("data-returns-one-pair", "x, y = _xy(); return x, y", ["train split must be an (inputs, targets) pair",
                                                            "Tensor"]),
    ("data-returns-one-split", "x, y = _xy(); return [(x, y)]", ["data() in task.py must return (train, val)",
                                                                 "list of 1 item(s)"]),
    ("data-returns-four", "x, y = _xy(); return (x, y), (x, y), (x, y), (x, y)",
     ["data() in task.py must return (train, val)", "4 item(s)"]),
    ("data-returns-dict", "x, y = _xy(); return {'train': (x, y), 'val': (x, y)}",
     ["data() in task.py must return (train, val)", "dict"]),
    ("data-raises", "raise FileNotFoundError('train.csv not found')",
     ["data() in task.py raised FileNotFoundError", "train.csv not found"]),
    ("inputs-strings", "x, y = _xy(); return (['a', 'b'], [0, 1]), (x, y)",
     ["train inputs cannot be turned into a tensor"]),
    ("inputs-objects", "x, y = _xy(); return (np.array([object(), object()]), np.array([0, 1])), (x, y)",
     ["train inputs is a NumPy array of Python objects"]),
    ("no-sample-dim", "x, y = _xy(); return (torch.tensor(1.0), torch.tensor(1)), (x, y)",
     ["train inputs and targets must have a sample dimension"]),
    ("dataset-raises", "x, y = _xy(); return _Broken(), (x, y)", ["the train split cannot be read", "KeyError"]),
    ("dataset-not-pairs", "x, y = _xy(); return TensorDataset(x[:120]), (x[120:], y[120:])",
     ["train data must yield (inputs, targets) pairs"]),
    ("dataset-no-len", "x, y = _xy(); return _NoLen(), (x, y)", ["the train dataset has no len()"]),
    # data that does not fit the model
    ("too-few-features", "x, y = _xy(); return (x[:, :5], y), (x[:, :5], y)",
     ["the model fails on a batch of inputs of shape", "5)"]),
    # 8-bit values into a float layer: PyTorch says only that the types differ
    ("uint8-inputs", "x, y = _xy(); x = (x.abs() * 40).to(torch.uint8); return (x, y), (x, y)",
     ["the model fails on a batch", "the inputs are uint8", "x.float() / 255"]),
    # (N, 1) labels are read as (N,) (issue 11); two label columns fit no kind
    ("targets-wrong-shape", "x, y = _xy(); y = torch.stack([y, y], 1); return (x, y), (x, y)",
     ["integer targets of shape (64, 2)", "(64, 3)", "labels (N,)"]),
    ("regression-targets-wrong-width", "x, _ = _xy(); t = x[:, :2].contiguous(); return (x, t), (x, t)",
     ["float targets of shape (64, 2)", "need as many outputs per sample", "(64, 3)"]),
]

DATA_HELPERS = '''
class _Nothing(IterableDataset):
    def __iter__(self):
        return iter([])


class _Broken(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, index):
        raise KeyError(index)


class _NoLen(Dataset):
    def __getitem__(self, index):
        return torch.zeros(8), 0
'''


@pytest.mark.parametrize("body, needles", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data(cli, make_task, tmp_path, body, needles):
    source = DATA_HELPERS + "\ndef data():\n" + "".join(f"    {stmt.strip()}\n" for stmt in body.split(";"))
    path = make_task(source)
    out = tmp_path / "run"
    cli("train", path, "--out", out, "--quiet").single_error(*needles)
    assert not out.exists()


# --- flags ---------------------------------------------------------------------------------------------

FLAG_CASES = [
    (["--lr", "abc"], ["--lr", "abc"]),
    (["--lr", "-1"], ["--lr", "-1", "positive"]),
    (["--lr", "0"], ["--lr", "positive"]),
    (["--lr", "nan"], ["--lr", "nan"]),
    (["--lr", "inf"], ["--lr", "inf"]),
    (["--lr"], ["--lr", "expected one argument"]),
    (["--weight-decay", "-0.1"], ["--weight-decay", "-0.1"]),
    (["--weight-decay", "x"], ["--weight-decay", "'x'"]),
    (["--batch-size", "0"], ["--batch-size", "0"]),
    (["--batch-size", "-4"], ["--batch-size", "-4"]),
    (["--batch-size", "2.5"], ["--batch-size", "2.5"]),
    (["--batch-size", "abc"], ["--batch-size", "abc"]),
    (["--max-epochs", "0"], ["--max-epochs", "0"]),
    (["--patience", "0"], ["--patience", "0"]),
    (["--accumulate", "0"], ["--accumulate", "0"]),
    (["--optimizer", "foo"], ["--optimizer", "foo"]),
    (["--optimizer", "Adam"], ["--optimizer", "Adam"]),
    (["--device", "tpu"], ["--device", "tpu"]),
    (["--device", "cuda:99"], ["--device", "cuda:99"]),
    (["--amp", "fp32"], ["--amp", "fp32"]),
    (["--monitor", "accuracy"], ["--mode", "accuracy"]),
    (["--monitor", "val_f1"], ["--mode", "val_f1"]),     # a task's own metric: converge cannot know its direction
    (["--monitor", "f1", "--mode", "max"], ["--monitor", "f1"]),
    (["--mode", "up"], ["--mode", "up"]),
    (["--lr-factor", "1.5"], ["--lr-factor", "1.5"]),
    (["--lr-factor", "0"], ["--lr-factor", "0"]),
    (["--min-lr", "1", "--lr", "0.01"], ["--min-lr", "1"]),
    (["--threshold", "-1"], ["--threshold", "-1"]),
    (["--cooldown", "-1"], ["--cooldown", "-1"]),
    (["--cooldown", "two"], ["--cooldown", "two"]),
    (["--unproductive-cuts", "-1"], ["--unproductive-cuts", "-1"]),
    (["--clip-grad", "0"], ["--clip-grad", "0"]),
    (["--checkpoint-seconds", "0"], ["--checkpoint-seconds", "0"]),
    (["--num-workers", "-1"], ["--num-workers", "-1"]),
    (["--seed", "-1"], ["--seed", "-1"]),
    (["--seed", "1.5"], ["--seed", "1.5"]),
    (["--bogus"], ["unrecognized arguments", "--bogus"]),
]


@pytest.mark.parametrize("flags, needles", FLAG_CASES, ids=[" ".join(c[0]) for c in FLAG_CASES])
def test_bad_flag(cli, task_file, tmp_path, flags, needles):
    out = tmp_path / "run"
    cli("train", task_file, "--out", out, "--quiet", *flags).single_error(*needles)
    assert not out.exists()


def test_amp_fp16_needs_cuda(cli, task_file, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    cli("train", task_file, "--out", tmp_path / "run", "--amp", "fp16").single_error("--amp fp16", "CUDA")


def test_parse_error_has_no_placeholder_line_number(cli, make_task):
    path = make_task(b"x = 1\x00\n", raw=True)  # Python reports no line for a null byte
    line = cli("train", path).single_error("does not parse")
    assert "None" not in line


@pytest.mark.parametrize("flag, expected", [("--lr", "must be a number"), ("--weight-decay", "must be a number"),
                                            ("--batch-size", "must be an integer >= 1"),
                                            ("--max-epochs", "must be an integer >= 1")])
def test_unparsable_number_says_what_is_expected(cli, task_file, flag, expected):
    line = cli("train", task_file, flag, "abc").single_error(flag, "'abc'", expected)
    assert "invalid _" not in line  # not argparse's "invalid _float value"


@pytest.mark.parametrize("argv, needles", [
    (["train"], ["task"]),
    (["frobnicate"], ["frobnicate"]),
    (["resume"], ["run_dir"]),
    (["resume", "somewhere", "--max-epochs", "0"], ["--max-epochs", "0"]),
])
def test_bad_command_line(cli, argv, needles):
    cli(*argv).single_error(*needles)


# --- output folders ------------------------------------------------------------------------------------

def test_output_folder_beneath_a_file(cli, task_file, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("user data\n")
    cli("train", task_file, "--out", afile / "run", "--quiet").single_error(str(afile / "run"), "cannot be written")
    assert afile.read_text() == "user data\n"


def test_output_folder_is_a_file(cli, task_file, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("user data\n")
    cli("train", task_file, "--out", afile, "--quiet").single_error(str(afile), "is a file")
    assert afile.read_text() == "user data\n"


def test_default_output_folder_cannot_be_written(cli, task_file, tmp_path, monkeypatch):
    (tmp_path / "runs").write_text("not a folder\n")  # runs/<task>-<time> lies beneath a regular file
    monkeypatch.chdir(tmp_path)
    cli("train", task_file, "--quiet").single_error("runs", "cannot be written")
    assert (tmp_path / "runs").read_text() == "not a folder\n"


def test_folder_of_user_files_is_not_a_run_folder_and_is_kept(cli, task_file, tmp_path, folder_snapshot):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me\n")
    before = folder_snapshot(folder)
    cli("train", task_file, "--out", folder, "--quiet").single_error(str(folder), "--force")
    assert folder_snapshot(folder) == before


# --- an existing run is never lost or corrupted by a failed command -------------------------------------

@pytest.fixture(scope="module")
def pristine_run(tmp_path_factory, default_task_source, train_once):
    """A finished 3-epoch run (status max_epochs), made once per module; tests work on copies of it."""
    task, run, code = train_once(tmp_path_factory.mktemp("pristine"), default_task_source, "--max-epochs", "3")
    assert code == 0
    return task, run


@pytest.fixture
def existing_run(pristine_run, tmp_path):
    task, run = pristine_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return task, copy


REFUSED = [
    ("same-task-no-force", ["train", "{task}", "--out", "{run}"], ["already exists", "--force"]),
    ("same-task-no-force-other-flags", ["train", "{task}", "--out", "{run}", "--max-epochs", "5", "--lr", "0.1"],
     ["already exists"]),
    ("force-bad-data", ["train", "{bad_task}", "--out", "{run}", "--force"], ["train inputs contain"]),
    ("force-missing-task", ["train", "{missing}", "--out", "{run}", "--force"], ["does not exist"]),
    ("force-bad-lr", ["train", "{task}", "--out", "{run}", "--force", "--lr", "-1"], ["--lr"]),
    ("force-bad-device", ["train", "{task}", "--out", "{run}", "--force", "--device", "tpu"], ["--device"]),
    ("force-bad-monitor", ["train", "{task}", "--out", "{run}", "--force", "--monitor", "f1", "--mode", "max"],
     ["--monitor"]),
    ("resume-finished", ["resume", "{run}"], ["{run}", "--max-epochs"]),
    ("resume-bad-max-epochs", ["resume", "{run}", "--max-epochs", "-5"], ["--max-epochs"]),
]


@pytest.mark.parametrize("argv, needles", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_failed_command_leaves_existing_run_untouched(cli, make_task, existing_run, folder_snapshot, argv,
                                                      needles):
    task, run = existing_run
    bad_task = make_task("def data():\n    x, y = _xy()\n    x[0, 0] = float('nan')\n"
                         "    return (x[:120], y[:120]), (x[120:], y[120:])\n", name="bad.py")
    names = {"task": task, "run": run, "bad_task": bad_task, "missing": run.parent / "missing.py"}
    before = folder_snapshot(run)
    task_before = task.read_bytes()
    cli(*(arg.format(**names) for arg in argv)).single_error(*(needle.format(**names) for needle in needles))
    assert folder_snapshot(run) == before
    assert task.read_bytes() == task_before


def test_force_overwrites_the_run_but_keeps_user_files(cli, existing_run, folder_snapshot):
    task, run = existing_run
    (run / "notes.txt").write_text("my notes\n")
    (run / "extra").mkdir()
    (run / "extra" / "data.bin").write_bytes(bytes(range(256)))
    user_files = {k: v for k, v in folder_snapshot(run).items() if k in ("notes.txt", "extra/data.bin")}
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3

    result = cli("train", task, "--out", run, "--force", "--max-epochs", "2", "--quiet")
    assert result.code == 0, result.err
    after = folder_snapshot(run)
    assert {k: after[k] for k in user_files} == user_files
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # the new run's, not appended
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


def test_empty_existing_folder_is_used_without_force(cli, task_file, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    result = cli("train", task_file, "--out", folder, "--max-epochs", "1", "--quiet")
    assert result.code == 0, result.err
    assert (folder / "summary.json").exists()


# --- resume of something that is not a resumable run ----------------------------------------------------

def test_resume_nothing(cli, tmp_path):
    cli("resume", tmp_path / "nowhere").single_error("nowhere", "not a converge run folder")


def test_resume_corrupt_run_info(cli, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_text("{not json")
    cli("resume", folder).single_error("run.json", "cannot be read")
    assert (folder / "run.json").read_text() == "{not json"


# --- the real process: exit status, exactly one stderr line, no traceback; --debug shows it -------------

@pytest.mark.parametrize("case", ["missing-task", "bad-flag", "nan-data", "unwritable-out"])
def test_subprocess_one_line_and_status(cli_subprocess, make_task, tmp_path, case):
    good = make_task()
    if case == "missing-task":
        argv, needles = ["train", tmp_path / "nope.py"], ["nope.py", "does not exist"]
    elif case == "bad-flag":
        argv, needles = ["train", good, "--lr", "abc"], ["--lr", "abc"]
    elif case == "nan-data":
        bad = make_task("def data():\n    x, y = _xy()\n    x[1, 1] = float('inf')\n"
                        "    return (x[:120], y[:120]), (x[120:], y[120:])\n", name="bad.py")
        argv, needles = ["train", bad], ["train inputs contain 1 NaN or Inf"]
    else:
        (tmp_path / "afile").write_text("x")
        argv, needles = ["train", good, "--out", tmp_path / "afile" / "run"], ["cannot be written"]
    result = cli_subprocess(*argv, cwd=tmp_path)
    result.single_error(*needles)
    assert result.out == ""
    assert not (tmp_path / "runs").exists()


def test_subprocess_debug_shows_the_traceback(cli_subprocess, tmp_path):
    result = cli_subprocess("train", tmp_path / "nope.py", "--debug", cwd=tmp_path)
    assert result.code == 2
    assert "Traceback (most recent call last)" in result.err
    assert "ConvergeError" in result.err
    assert result.err.splitlines()[-1].startswith("error: ")
    assert "does not exist" in result.err.splitlines()[-1]


def test_debug_in_process_shows_the_traceback(cli, make_task, tmp_path):
    path = make_task("def data():\n    x, y = _xy()\n    return (x[:0], y[:0]), (x, y)\n")
    result = cli("train", path, "--out", tmp_path / "run", "--debug")
    assert result.code == 2
    assert "Traceback" in result.err and "make_split" in result.err
    assert result.err.splitlines()[-1] == "error: the train split is empty"
    assert not (tmp_path / "run").exists()


def test_no_debug_flag_hides_the_traceback(cli, make_task):
    path = make_task("def data():\n    x, y = _xy()\n    return (x[:0], y[:0]), (x, y)\n")
    cli("train", path).single_error("the train split is empty")


def test_main_reads_sys_argv(monkeypatch, capsys, tmp_path):
    """main() with no argument reads sys.argv, as the console script does."""
    monkeypatch.setattr(sys, "argv", ["converge", "train", str(tmp_path / "nope.py")])
    assert main() == 2
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.parametrize("monitor, mode", [
    ("val_loss", "min"), ("val_accuracy", "max"), ("val_balanced_accuracy", "max"), ("val_macro_f1", "max"),
    ("val_token_accuracy", "max"), ("val_label_accuracy", "max"), ("val_exact_match", "max"), ("val_r2", "max"),
    ("val_r2_1", "max"), ("val_r2_x", None), ("val_f1", None), ("accuracy", None), ("val_mae", None),
])
def test_the_direction_of_converges_own_metrics_is_known(monitor, mode):
    """converge computes these itself, all higher-is-better: monitoring one needs no --mode (as Keras infers
    it from the name); a task's own metric, or a name converge does not compute, still needs it."""
    from converge.config import TrainConfig, inferred_mode
    from converge.errors import ConvergeError
    assert inferred_mode(monitor) == mode
    if mode is None:
        with pytest.raises(ConvergeError, match="needs an explicit direction"):
            TrainConfig(monitor=monitor)
    else:
        assert TrainConfig(monitor=monitor).mode == mode
        assert TrainConfig(monitor=monitor, mode="min").mode == "min"   # an explicit one is kept
