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

