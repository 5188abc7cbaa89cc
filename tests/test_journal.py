"""The embedded journal survives a torn last record: the torn bytes are set aside in a side file, one line
says so, and the study goes on. Checked on a real `converge tune` journal cut at every byte of its last
record, then read back with Optuna's own unforgiving reader after a further append."""

from __future__ import annotations

import errno
import json
import shutil

import pytest

optuna = pytest.importorskip("optuna")

from converge.cli import main  # noqa: E402
from converge.errors import ConvergeError  # noqa: E402
from converge.tune import storage as st  # noqa: E402

STUDY = "task"


@pytest.fixture(scope="module")
def journal(tmp_path_factory, default_task_source):
    """A real finished study (2 trials of at most 2 epochs): the tune folder and the journal's bytes."""
    root = tmp_path_factory.mktemp("journal")
    task = root / "task.py"
    task.write_text(default_task_source)
    out = root / "out"
    code = main(["tune", str(task), "--trials", "2", "--out", str(out), "--max-epochs", "2", "--no-warm-start",
                 "--quiet"])
    assert code == 0
    return task, out, (out / st.JOURNAL).read_bytes()


def _last_record_start(data: bytes) -> int:
    return data.rstrip(b"\n").rfind(b"\n") + 1


def _plain_storage(path):
    """Optuna's own journal reader, without converge's repair: what any Optuna makes of the file."""
    backend, lock = st._journal_classes()
    return optuna.storages.JournalStorage(backend(str(path), lock_obj=lock(str(path))))


def _trials(storage) -> list[tuple]:
    study = optuna.load_study(study_name=STUDY, storage=storage)
    return [(t.number, t.state.name, t.values, t.params) for t in study.get_trials(deepcopy=False)]


def _open(folder, data: bytes):
    folder.mkdir()
    path = folder / st.JOURNAL
    path.write_bytes(data)
    said: list[str] = []
    storage = st.open_storage(st.StorageSpec(None, journal=path), say=said.append)
    return path, storage, said


def _side_files(folder):
    return sorted(folder.glob(f"{st.JOURNAL}{st.TORN}*"))


def test_a_torn_last_record_at_every_byte_offset_is_set_aside_and_the_study_goes_on(journal, tmp_path):
    _, _, data = journal
    start = _last_record_start(data)
    last = data[start:]
    assert last.endswith(b"\n") and len(last) > 50
    before = _trials(_plain_storage(_write(tmp_path / "before", data[:start])))
    whole = _trials(_plain_storage(_write(tmp_path / "whole", data)))
    assert before != whole  # the last record matters: it finishes the last trial

    for cut in range(len(last) + 1):
        folder = tmp_path / f"cut{cut}"
        path, storage, said = _open(folder, data[:start + cut])
        torn = 0 < cut < len(last)
        assert _trials(storage) == (whole if cut == len(last) else before), cut
        if torn:
            assert len(said) == 1 and "torn record" in said[0] and f"{cut} byte(s)" in said[0], (cut, said)
            (side,) = _side_files(folder)
            assert side.read_bytes() == last[:cut], cut  # the torn bytes are kept, exactly
            assert side.name in said[0]
            assert path.read_bytes() == data[:start]
        else:
            assert said == [] and _side_files(folder) == [] and path.read_bytes() == data[:start + cut]
        # The next record lands on a line of its own: Optuna's plain reader takes the whole file afterwards.
        optuna.load_study(study_name=STUDY, storage=storage).set_user_attr("after", cut)
        reread = optuna.load_study(study_name=STUDY, storage=_plain_storage(path))
        assert reread.user_attrs["after"] == cut
        assert _trials(_plain_storage(path)) == _trials(storage)
        shutil.rmtree(folder)


def _write(folder, data: bytes):
    folder.mkdir()
    (folder / st.JOURNAL).write_bytes(data)
    return folder / st.JOURNAL


def test_rerunning_converge_tune_on_a_torn_journal_finishes_the_study(journal, tmp_path, capsys):
    task, out, data = journal
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    info = json.loads((copy / "tune.json").read_text())  # tune.json names its journal by absolute path
    (copy / "tune.json").write_text(json.dumps({**info, "storage": f"journal:{copy / st.JOURNAL}"}))
    start = _last_record_start(data)
    cut = (len(data) - start) // 2
    (copy / st.JOURNAL).write_bytes(data[:start + cut])
    capsys.readouterr()
    code = main(["tune", str(task), "--trials", "2", "--out", str(copy), "--max-epochs", "2", "--no-warm-start",
                 "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    warnings = [line for line in captured.err.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: study.journal ended in a torn record")
    (side,) = _side_files(copy)
    assert side.read_bytes() == data[start:start + cut]
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == 2 and summary["trials"]["running"] == 0
    # and again: nothing left to mend, nothing said
    code = main(["tune", str(task), "--trials", "2", "--out", str(copy), "--max-epochs", "2", "--no-warm-start",
                 "--quiet"])
    assert code == 0 and capsys.readouterr().err == ""
    assert len(_side_files(copy)) == 1


def test_a_journal_broken_by_an_append_onto_a_torn_record_is_mended(journal, tmp_path):
    """What converge did before: the next record appended onto the unterminated line, and every later read
    failed. The torn start is set aside and the appended record kept."""
    _, _, data = journal
    start = _last_record_start(data)
    torn = data[start:start + 40]
    # A whole record (the last one, as if written again), then one more written by a later run.
    path = _write(tmp_path / "later", data)
    optuna.load_study(study_name=STUDY, storage=_plain_storage(path)).set_user_attr("x", 1)
    later = path.read_bytes()[len(data):]
    broken = data[:start] + torn + data[start:] + later
    with pytest.raises(ValueError):  # Optuna alone cannot read it (a JSONDecodeError)
        _trials(_plain_storage(_write(tmp_path / "plain", broken)))
    path, storage, said = _open(tmp_path / "mended", broken)
    assert len(said) == 1 and "line" in said[0] and "appended" in said[0]
    (side,) = _side_files(tmp_path / "mended")
    assert side.read_bytes() == torn
    assert _trials(storage) == _trials(_plain_storage(_write(tmp_path / "whole", data)))
    assert optuna.load_study(study_name=STUDY, storage=_plain_storage(path)).user_attrs["x"] == 1


@pytest.mark.parametrize("tail", [b"\0" * 300, b"garbage\n", b"{not json}\n\x00\x00", b"\n\n"],
                         ids=["zeros", "garbage-line", "garbage-then-zeros", "blank-lines"])
def test_junk_at_the_end_is_set_aside(journal, tmp_path, tail):
    _, _, data = journal
    path, storage, said = _open(tmp_path / "j", data + tail)
    assert len(said) == 1
    (side,) = _side_files(tmp_path / "j")
    assert side.read_bytes() == tail and path.read_bytes() == data
    assert _trials(storage) == _trials(_plain_storage(_write(tmp_path / "whole", data)))


def test_a_bad_line_with_good_records_after_it_is_refused_not_guessed(journal, tmp_path):
    _, _, data = journal
    lines = data.splitlines(keepends=True)
    broken = b"".join(lines[:3]) + b"this is not a record\n" + b"".join(lines[3:])
    folder = tmp_path / "j"
    folder.mkdir()
    (folder / st.JOURNAL).write_bytes(broken)
    with pytest.raises(ConvergeError, match="corrupt at line 4"):
        st.open_storage(st.StorageSpec(None, journal=folder / st.JOURNAL), say=print)
    assert (folder / st.JOURNAL).read_bytes() == broken and _side_files(folder) == []


def test_a_live_worker_sets_aside_a_dead_writers_torn_record_before_appending(journal, tmp_path):
    _, _, data = journal
    path, storage, said = _open(tmp_path / "j", data)
    study = optuna.load_study(study_name=STUDY, storage=storage)
    with open(path, "ab") as handle:  # another worker died in mid-write
        handle.write(b'{"op_code":8,"worker_id":"dead","trial_id":0,"user_at')
    study.set_user_attr("alive", True)
    assert len(said) == 1 and "torn record" in said[0]
    assert _side_files(tmp_path / "j")[0].read_bytes() == b'{"op_code":8,"worker_id":"dead","trial_id":0,"user_at'
    assert optuna.load_study(study_name=STUDY, storage=_plain_storage(path)).user_attrs["alive"] is True


def test_a_failed_append_of_our_own_leaves_no_half_record(journal, tmp_path, monkeypatch):
    _, _, data = journal
    path, storage, _ = _open(tmp_path / "j", data)
    study = optuna.load_study(study_name=STUDY, storage=storage)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st.os, "fsync", disk_full)
    with pytest.raises(OSError):
        study.set_user_attr("lost", True)
    monkeypatch.undo()
    assert path.read_bytes() == data
    study.set_user_attr("kept", True)
    assert optuna.load_study(study_name=STUDY, storage=_plain_storage(path)).user_attrs == {"kept": True}


def test_a_read_only_tune_folder_is_one_line(journal, tmp_path, monkeypatch):
    _, _, data = journal
    path = _write(tmp_path / "j", data + b'{"op_code":')
    import os

    real_open = os.open

    def refuse_lock(name, flags, *args):
        if str(name).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(name, flags, *args)

    monkeypatch.setattr("os.open", refuse_lock)
    with pytest.raises(ConvergeError, match="cannot use storage journal:"):
        st.repair_journal(path, say=print)


@pytest.mark.parametrize("data, kept, aside", [
    (b"", b"", b""),
    (b'{"a":1}\n', b'{"a":1}\n', b""),
    (b'{"a":1}\n{"b":', b'{"a":1}\n', b'{"b":'),
    (b'{"a":1}\n{"b":2}', b'{"a":1}\n', b'{"b":2}'),     # whole but unterminated: no reader ever counted it
    (b'{"a":1}\n{"op_code":1,"x":{"op_code":2}\n', b'{"a":1}\n{"op_code":2}\n', b'{"op_code":1,"x":'),
    (b'\xff\xfe\n', b"", b"\xff\xfe\n"),
])
def test_split_journal(data, kept, aside):
    good, set_aside, _ = st.split_journal(data)
    assert (good, set_aside) == (kept, aside)


def test_a_dying_heartbeat_thread_prints_nothing_other_threads_still_do(monkeypatch):
    import threading

    from converge.tune.storage import quiet_heartbeat_failures

    reported = []
    monkeypatch.setattr(threading, "excepthook", lambda args: reported.append(str(args.exc_value)))
    quiet_heartbeat_failures()
    quiet_heartbeat_failures()  # twice: one hook

    def _record_heartbeat():  # the name of Optuna's heartbeat loop
        raise RuntimeError("terminating connection due to administrator command")

    def other():
        raise RuntimeError("a real bug")

    for target in (_record_heartbeat, other):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
    assert reported == ["a real bug"]
