"""`--tensorboard`: event files a TensorBoard user can open, with one point per epoch and the decisions."""

import pytest

pytest.importorskip("tensorboard", reason="the dev extra installs tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

FAST = ("--optimizer", "adamw", "--lr", "0.01", "--weight-decay", "0", "--batch-size", "32", "--quiet")


def read(folder):
    runs = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    runs.Reload()
    return runs


def test_tensorboard_logs_every_epoch_and_the_decisions(cli, task_file, tmp_path):
    result = cli("train", task_file, "--out", tmp_path / "run", "--max-epochs", "6", "--tensorboard", *FAST)
    assert result.code == 0, result.err
    events = read(tmp_path / "run" / "tensorboard")
    tags = events.Tags()["scalars"]
    assert {"train/train_loss", "val/val_loss", "val/val_accuracy", "run/lr"} <= set(tags)
    assert [e.step for e in events.Scalars("val/val_loss")] == [1, 2, 3, 4, 5, 6]
    assert "decisions/text_summary" in events.Tags()["tensors"]


def test_without_the_flag_no_event_files_are_written(cli, task_file, tmp_path):
    assert cli("train", task_file, "--out", tmp_path / "run", "--max-epochs", "2", *FAST).code == 0
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_resume_continues_the_same_curves_without_duplicates(cli, task_file, tmp_path):
    run = tmp_path / "run"
    assert cli("train", task_file, "--out", run, "--max-epochs", "3", "--tensorboard", *FAST).code == 0
    assert cli("resume", run, "--max-epochs", "5", "--quiet").code == 0
    steps = [e.step for e in read(run / "tensorboard").Scalars("val/val_loss")]
    assert sorted(set(steps)) == [1, 2, 3, 4, 5] and len(steps) == 5


def test_force_clears_old_event_files(cli, task_file, tmp_path):
    run = tmp_path / "run"
    assert cli("train", task_file, "--out", run, "--max-epochs", "4", "--tensorboard", *FAST).code == 0
    assert cli("train", task_file, "--out", run, "--max-epochs", "2", "--tensorboard", "--force", *FAST).code == 0
    assert [e.step for e in read(run / "tensorboard").Scalars("val/val_loss")] == [1, 2]
