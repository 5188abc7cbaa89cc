"""Atomic writes keep the previous checkpoint without the current one ever going missing."""

import os

from converge.io.atomic import atomic_write_bytes


def test_keep_previous_keeps_both_and_leaves_no_temporary_files(tmp_path):
    path, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    for data in (b"one", b"two", b"three"):
        atomic_write_bytes(path, data, keep_previous=previous)
    assert path.read_bytes() == b"three" and previous.read_bytes() == b"two"
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.prev.pt", "checkpoint.pt"]
    # the previous file is a separate file, not the same inode as the current one
    assert os.stat(path).st_ino != os.stat(previous).st_ino


def test_work_prepared_later_runs_on_the_writer_and_its_failure_is_left_to_the_need(tmp_path):
    import threading

    from converge.io.runfolder import RunFolder

    folder = RunFolder.create(tmp_path / "run")
    ran_on = []
    folder.prepare_later(lambda: 1 / 0)  # fails: nothing raises, later writes still happen
    folder.prepare_later(lambda: ran_on.append(threading.current_thread().name))
    folder.write_bytes_later("x.bin", b"x")
    folder.flush()
    folder.close()
    assert ran_on and ran_on[0].startswith("converge-writer")
    assert (tmp_path / "run" / "x.bin").read_bytes() == b"x"
