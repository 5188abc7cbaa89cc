"""Run `converge` with a SIGKILL planted at an exact point of a file write.

    python tests/faults/inject.py SPEC [SPEC ...] -- train task.py --out run ...

A SPEC is ``OP:NAME:N[:after]``: at the N-th call of OP on a file named NAME, the process SIGKILLs itself
(before the call, or just after it with ``:after``). OPs:

* ``replace`` -- ``os.replace(src, dst)`` with ``dst`` named NAME: the rename that publishes an atomic write
  (``checkpoint.pt``, ``checkpoint.prev.pt``, ``summary.json``, ``report.html``, ``best.safetensors``...);
* ``link`` -- ``os.link(src, dst)`` with ``dst`` named NAME: the hard link that keeps the previous checkpoint
  (``.checkpoint.prev.pt.link``);
* ``fsync`` -- ``os.fsync(fd)`` of a file named NAME (a temporary ``.checkpoint.pt.*.tmp`` is matched by
  its prefix ``.checkpoint.pt.``): the data is written, not yet renamed into place;
* ``append`` -- a JSON-lines append to NAME (``metrics.jsonl``, ``events.jsonl``): half the line is
  written, without its newline, and the process dies -- a torn last line.

One more fills the disk instead of killing, so that a write meets a really full disk (ENOSPC from the
kernel, nothing faked): the run folder is on a small file system, and ``$FAULT_BALLAST`` names a file
there that takes every free block:

* ``fill`` -- before the N-th write of NAME: for ``checkpoint.pt``, ``report.html`` (any atomic write),
  once its temporary file exists; for ``metrics.jsonl``, ``events.jsonl``, the N-th append or the first
  after it whose line needs a new block of the disk (one that fits the last block's slack would not fail).

Three more OPs time a race instead of killing (``$FAULT_SYNC`` is a folder the battery watches):

* ``hold:create:N`` -- the N-th ``RunFolder.create`` (the "is the folder empty?" check and the mkdir of
  `converge train`), once it returns, touches ``held`` and waits until ``go`` exists;
* ``release:create:N`` -- it touches ``go`` once it returns. Two trains, one holding and one releasing,
  both pass the check before either writes;
* ``wait:run:1`` -- the command, fully started (imports done, arguments parsed) but before it does
  anything, touches ``held`` and waits for ``go``: the battery lets it go at the moment it chooses, not
  whenever a loaded machine finishes starting a process.

The kill is a real SIGKILL of the whole process (the checkpoint writer thread included), from whichever
thread makes the call. Nothing else changes, so an uninterrupted run under this wrapper is the plain run.
"""

from __future__ import annotations

import os
import signal
import sys


class _Spec:
    def __init__(self, text: str) -> None:
        parts = text.split(":")
        if len(parts) not in (3, 4) or parts[0] not in ("replace", "link", "fsync", "append", "fill", "hold",
                                                         "release", "wait"):
            raise SystemExit(f"inject: bad spec {text!r} (OP:NAME:N[:after])")
        self.op, self.name, self.n = parts[0], parts[1], int(parts[2])
        self.after = len(parts) == 4 and parts[3] == "after"
        self.calls = 0
        self.done = False

    def matches(self, path: str) -> bool:
        base = os.path.basename(str(path))
        return base == self.name or (self.name.endswith(".") and base.startswith(self.name))

    def hit(self, path: str) -> bool:
        if not self.matches(path):
            return False
        self.calls += 1
        return self.calls == self.n


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _fill_disk() -> None:
    """Take every free block of the file system that holds ``$FAULT_BALLAST`` (a block at a time at the
    end: the ballast's own extent records take a few)."""
    ballast = os.environ["FAULT_BALLAST"]
    with open(ballast, "ab") as handle:
        while True:
            stat = os.statvfs(os.path.dirname(ballast))
            free, size = stat.f_bavail * stat.f_frsize, os.fstat(handle.fileno()).st_size
            if free <= 0:
                break
            try:
                os.posix_fallocate(handle.fileno(), size, free)
            except OSError:
                try:
                    os.posix_fallocate(handle.fileno(), size, stat.f_frsize)
                except OSError:
                    break


def _needs_new_block(path, size: int) -> bool:
    """Would appending ``size`` bytes to ``path`` take a new block of its file system?"""
    block = os.statvfs(os.path.dirname(path) or ".").f_frsize
    now = os.stat(path).st_size if os.path.exists(path) else 0
    return -(-(now + size) // block) > -(-now // block)


def install(specs: list[_Spec]) -> None:
    by_op: dict[str, list[_Spec]] = {}
    for spec in specs:
        by_op.setdefault(spec.op, []).append(spec)

    def wrap_path_op(name: str, position: int) -> None:
        real = getattr(os, name)

        def planted(*args, **kwargs):
            target = args[position] if len(args) > position else kwargs.get("dst")
            due = [s for s in by_op.get(name, []) if s.hit(target)]
            if any(not s.after for s in due):
                _die()
            result = real(*args, **kwargs)
            if due:
                _die()
            return result

        setattr(os, name, planted)

    if "replace" in by_op:
        wrap_path_op("replace", 1)
    if "link" in by_op:
        wrap_path_op("link", 1)
    if "fsync" in by_op:
        real_fsync = os.fsync

        def planted_fsync(fd):
            try:
                target = os.readlink(f"/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}")
            except OSError:
                target = ""
            due = [s for s in by_op["fsync"] if s.hit(target)]
            if any(not s.after for s in due):
                _die()
            real_fsync(fd)
            if due:
                _die()

        os.fsync = planted_fsync
    if "append" in by_op:
        import json

        from converge.io import runfolder

        real_append = runfolder.JsonlLog.append

        def planted_append(self, record):
            if any(s.hit(self.path) for s in by_op["append"]):
                line = json.dumps(runfolder.to_json(record), allow_nan=False) + "\n"
                with open(self.path, "a", encoding="utf-8") as handle:
                    handle.write(line[: len(line) // 2])
                _die()
            return real_append(self, record)

        runfolder.JsonlLog.append = planted_append


def _install_fill(specs: list[_Spec]) -> None:
    from converge.io import atomic, checkpoint, runfolder

    logs = [s for s in specs if s.name.endswith(".jsonl")]
    files = [s for s in specs if s not in logs]
    real_temporary = atomic.temporary_beside

    def planted_temporary(path):
        tmp = real_temporary(path)
        if any(s.hit(path) for s in files):
            _fill_disk()
        return tmp

    atomic.temporary_beside = planted_temporary
    checkpoint.temporary_beside = planted_temporary
    real_append = runfolder.append_whole   # the run folder's logs append through the name it imported

    def planted_append(path, data, **options):
        for spec in [s for s in logs if s.matches(path)]:
            spec.calls += 1
            if spec.calls >= spec.n and not spec.done and _needs_new_block(path, len(data)):
                spec.done = True  # fills once
                _fill_disk()
        return real_append(path, data, **options)

    runfolder.append_whole = planted_append


def _wait_for_go(sync) -> None:
    import time

    (sync / "held").touch()
    deadline = time.monotonic() + 120
    while not (sync / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.005)


def _install_sync(specs: list[_Spec]) -> None:
    from pathlib import Path

    from converge import cli
    from converge.io import runfolder

    sync = Path(os.environ["FAULT_SYNC"])
    if any(spec.op == "wait" for spec in specs):
        real_run = cli._run

        def planted_run(args):
            _wait_for_go(sync)
            return real_run(args)

        cli._run = planted_run
        specs = [spec for spec in specs if spec.op != "wait"]
    real_create = runfolder.RunFolder.create.__func__

    def planted_create(cls, path, *args, **kwargs):
        folder = real_create(cls, path, *args, **kwargs)
        for spec in specs:
            spec.calls += 1
            if spec.calls != spec.n:
                continue
            if spec.op == "release":
                (sync / "go").touch()
            else:
                _wait_for_go(sync)
        return folder

    runfolder.RunFolder.create = classmethod(planted_create)


def main(argv: list[str]) -> int:
    if "--" not in argv:
        raise SystemExit("usage: inject.py SPEC [SPEC ...] -- converge arguments")
    cut = argv.index("--")
    specs = [_Spec(text) for text in argv[:cut]]
    timing = ("hold", "release", "wait")
    install([s for s in specs if s.op not in timing + ("fill",)])
    if any(s.op == "fill" for s in specs):
        _install_fill([s for s in specs if s.op == "fill"])
    if any(s.op in timing for s in specs):
        _install_sync([s for s in specs if s.op in timing])
    from converge.cli import main as converge_main

    return converge_main(argv[cut + 1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
