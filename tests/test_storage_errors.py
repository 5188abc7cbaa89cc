"""Storage errors (docs/storage-errors.md): a write that fails -- a full disk, a folder deleted or replaced
under the run -- ends in one StorageError naming the file, the cause, what is left and how to continue;
the last checkpoint is never touched, and a folder that is gone is never made again.

The real full disk is the fault battery's (`tests/faults/cases_disk.py`, a loop-mounted ext4); here a
write into /dev/full gives the kernel's own ENOSPC."""

from __future__ import annotations

import builtins
import errno
import os
import shutil

import pytest
import torch
from torch import nn

import converge
from converge.errors import StorageError
from converge.io import checkpoint as ckpt
from converge.io.lock import LOCK_FILE
from converge.io.runfolder import METRICS, RUN_INFO, RunFolder

needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")


def _state(value: float) -> dict:
    return {"format": ckpt.FORMAT_VERSION, "model": {"w": torch.full((4,), value)}, "optimizer": {},
            "tracker": {}, "progress": {"epoch": int(value), "step": 10 * int(value), "batch": 0}, "rng": {},
            "logs": {}, "config": {}}


def _run_folder(tmp_path, *, fit_run: bool = False) -> RunFolder:
    folder = RunFolder.create(tmp_path / "run")
    folder.write_json(RUN_INFO, {"config": {}} if fit_run else {"config": {}, "task": "task.py"})
    return folder


def _full_disk(monkeypatch, module) -> None:
    """``open(..., "wb")`` in ``module`` writes to /dev/full: every write fails with ENOSPC."""
    monkeypatch.setattr(module, "open", lambda path, mode="r", *a, **k: builtins.open("/dev/full", mode, *a, **k)
                        if "w" in mode or "a" in mode else builtins.open(path, mode, *a, **k), raising=False)


# --- a full disk -----------------------------------------------------------------------------------------
@needs_dev_full
def test_a_checkpoint_on_a_full_disk_says_why_in_the_os_words_and_keeps_the_last_one(tmp_path, monkeypatch):
    folder = _run_folder(tmp_path)
    assert folder.write_checkpoint_later(_state(1.0), wait=True)
    folder.flush()
    before = (folder.path / ckpt.CHECKPOINT).read_bytes()
    _full_disk(monkeypatch, ckpt)
    with pytest.raises(StorageError) as caught:
        folder.write_checkpoint_later(_state(2.0), wait=True)
    message = str(caught.value)
    # torch's serializer says "unexpected pos"; the errno of the failed write is what reaches the user
    assert caught.value.error_number == errno.ENOSPC
    for needle in (f"{folder.path / ckpt.CHECKPOINT}'", os.strerror(errno.ENOSPC), "the last checkpoint (end of "
                   "epoch 1, step 10) is intact", "free some space", f"`converge resume {folder.path}`"):
        assert needle in message
    assert (folder.path / ckpt.CHECKPOINT).read_bytes() == before
    assert not [p.name for p in folder.path.iterdir() if p.name.endswith(".tmp")]
    folder.close()  # the failure was raised once: closing does not raise it again


@needs_dev_full
def test_a_metrics_line_on_a_full_disk_names_the_file_and_the_command_of_a_fit_run(tmp_path, monkeypatch):
    folder = _run_folder(tmp_path, fit_run=True)
    import converge.io.atomic as atomic  # where a log line is appended

    _full_disk(monkeypatch, atomic)
    with pytest.raises(StorageError) as caught:
        folder.metrics.append({"epoch": 1, "loss": 0.5})
    message = str(caught.value)
    assert f"{folder.path / METRICS}'" in message and os.strerror(errno.ENOSPC) in message
    assert "no checkpoint had been written yet" in message
    assert f"fit(..., out={str(folder.path)!r}, resume=True)" in message
    folder.close()


def test_a_background_failure_surfaces_at_the_next_write_and_only_once(tmp_path):
    folder = _run_folder(tmp_path)

    def failing(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    folder.write_later("best.safetensors", failing)
    folder._pending[-1].exception()  # wait for the writer thread
    with pytest.raises(StorageError, match="best.safetensors.*Read-only file system.*remount"):
        folder.write_later("best.safetensors", lambda path: path.write_bytes(b"x"))
    folder.close()


def test_without_any_failure_nothing_changes(tmp_path):
    folder = _run_folder(tmp_path)
    folder.metrics.append({"epoch": 1})
    assert folder.write_checkpoint_later(_state(1.0), wait=True)
    folder.close()
    assert ckpt.load_checkpoint(folder.path)[0]["progress"]["epoch"] == 1


# --- the folder deleted or replaced ------------------------------------------------------------------------
def _delete(folder):
    shutil.rmtree(folder.path)


def _replace(folder):
    os.rename(folder.path, folder.path.with_name("moved"))
    folder.path.mkdir()


def _delete_lock(folder):
    (folder.path / LOCK_FILE).unlink()


def _delete_run_info(folder):  # `rm runs/x/*`: the shell's glob leaves the hidden lock file
    for path in folder.path.iterdir():
        if not path.name.startswith("."):
            path.unlink()


@pytest.mark.parametrize("change, needle", [
    (_delete, "the run folder was deleted"),
    (_replace, "another one made at its path"),
    (_delete_lock, f"its {LOCK_FILE} was deleted"),
    (_delete_run_info, f"its {RUN_INFO} was deleted"),
], ids=["deleted", "replaced", "lock-file-deleted", "files-deleted"])
@pytest.mark.parametrize("write", ["metrics", "checkpoint", "json", "background"])
def test_a_folder_that_is_no_longer_this_runs_stops_the_next_write(tmp_path, change, needle, write):
    folder = _run_folder(tmp_path)
    change(folder)
    before = sorted(p.name for p in folder.path.iterdir()) if folder.path.exists() else None
    with pytest.raises(StorageError, match=needle):
        if write == "metrics":
            folder.metrics.append({"epoch": 1})
        elif write == "checkpoint":
            folder.write_checkpoint_later(_state(1.0))
        elif write == "json":
            folder.write_json("summary.json", {})
        else:
            folder.write_later("best.safetensors", lambda path: path.write_bytes(b"x"))
    folder.close()
    after = sorted(p.name for p in folder.path.iterdir()) if folder.path.exists() else None
    assert after == before  # nothing written, and a deleted folder not made again


def test_a_fit_whose_folder_is_deleted_mid_run_raises_and_never_makes_it_again(tmp_path):
    out = tmp_path / "run"
    calls = []

    class Deleting(nn.Linear):
        def forward(self, x):
            calls.append(1)
            if len(calls) == 40:
                for _ in range(20):  # the background writer may be renaming a checkpoint meanwhile
                    shutil.rmtree(out, ignore_errors=True)
                    if not out.exists():
                        break
            return super().forward(x)

    torch.manual_seed(0)
    x, y = torch.randn(96, 4), torch.randn(96, 1)
    with pytest.raises(StorageError, match="the run folder was deleted"):
        converge.fit(Deleting(4, 1), (x[:64], y[:64]), (x[64:], y[64:]), out=out, optimizer="sgd", lr=0.01,
                     batch_size=16, weight_decay=0.0, max_epochs=30, verbose=False, seed=0)
    assert not out.exists()


def test_the_cli_prints_a_storage_error_in_one_line_with_exit_status_2(cli, make_task, tmp_path, monkeypatch):
    import converge.api as api

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # met no run folder on its way: the safety net

    monkeypatch.setattr(api, "train_task", full)
    result = cli("train", make_task(), "--out", tmp_path / "run", "--quiet")
    lines = result.err.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and "Traceback" not in result.err
    assert lines[0].startswith("error: cannot write") and os.strerror(errno.ENOSPC) in lines[0]
    assert "run the same command again" in lines[0]


def test_a_tune_trial_whose_folder_is_deleted_stops_the_worker_in_one_line(cli, make_task, tmp_path):
    pytest.importorskip("optuna")
    out = tmp_path / "tune"
    task = make_task(f'''
import shutil
from pathlib import Path

_CALLS = [0]
_TRIAL = Path({str(out)!r}) / "trials" / "0000"


class Deleting(nn.Sequential):
    def forward(self, x):
        _CALLS[0] += 1
        if _CALLS[0] >= 15 and _CALLS[0] < 1000 and (_TRIAL / "metrics.jsonl").exists():  # trial 0, epoch 2 on
            _CALLS[0] = 1000
            for _ in range(20):  # the background writer may be renaming a checkpoint meanwhile
                shutil.rmtree(_TRIAL, ignore_errors=True)
                if not _TRIAL.exists():
                    break
        return super().forward(x)


def model():
    return Deleting(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
''')
    result = cli("tune", task, "--trials", "2", "--out", out, "--max-epochs", "6", "--no-warm-start",
                 "--pruner", "none", "--quiet")
    lines = result.err.strip().splitlines()
    assert result.code == 2 and len(lines) == 1, result.err
    assert "the run folder was deleted" in lines[0] and "run the same `converge tune` command again" in lines[0]
    assert not (out / "trials" / "0000").exists()


def test_a_folder_replaced_while_a_checkpoint_is_serialized_gets_no_file_of_this_run(tmp_path, monkeypatch):
    """The race of the fault battery's disk/folder-replaced-mid-run: the folder passes the check, is
    replaced, the temporary checkpoint is made in the new one, and a background write fails meanwhile (it
    surfaces as the commit is handed to the writer thread). The temporary file must not stay behind."""
    folder = _run_folder(tmp_path)
    release = __import__("threading").Event()

    def blocked(path):
        release.wait(10)
        path.write_bytes(b"x")   # the folder is the new one by then: the write's own check stops it

    folder.write_later("best.safetensors", blocked)
    serialize = ckpt.write_temporary

    def replaced_then_serialized(path, state):
        _replace(folder)
        tmp = serialize(path, state)
        release.set()
        folder._pending[0].exception()  # the background write has failed by the time the commit is queued
        return tmp

    monkeypatch.setattr(ckpt, "write_temporary", replaced_then_serialized)
    with pytest.raises(StorageError, match="another one made at its path"):
        folder.write_checkpoint_later(_state(1.0))
    folder.close()
    assert sorted(p.name for p in folder.path.iterdir()) == []
