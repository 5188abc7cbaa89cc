"""Cut a study journal's last record at every byte offset and check what converge's storage makes of it.

    python tests/faults/journal_offsets.py JOURNAL STUDY WORKDIR

For each cut: the journal is opened the way `converge tune` opens it (converge.tune.storage.open_storage);
the study must load with the trials it had before that record (all of them when nothing was cut); the
torn bytes must be kept in a file beside the journal; at most one line may be printed about it; and after
one more append, Optuna's own journal reader (no converge code) must read the whole file. Prints one JSON
line: {"cuts": N, "record_bytes": B, "failed": [{"cut": k, "problem": "..."}]}. One process for all the
cuts: each takes milliseconds, where a `converge tune` per cut would take seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path


def main(journal: str, study_name: str, workdir: str) -> dict:
    import optuna

    from converge.tune import storage as st

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    data = Path(journal).read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    last = data[start:]
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    before = _trials(_plain(_write(root / "before", data[:start])), study_name)
    whole = _trials(_plain(_write(root / "whole", data)), study_name)
    failed = []
    for cut in range(len(last) + 1):
        folder = root / f"cut{cut}"
        path = _write(folder, data[:start + cut])
        problem = _check_cut(st, optuna, path, study_name, last[:cut], whole if cut == len(last) else before,
                             torn=0 < cut < len(last))
        if problem:
            failed.append({"cut": cut, "problem": problem})
        shutil.rmtree(folder, ignore_errors=True)
    return {"cuts": len(last) + 1, "record_bytes": len(last), "failed": failed}


def _check_cut(st, optuna, path: Path, study_name: str, torn_bytes: bytes, expected: list, torn: bool) -> str | None:
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
            storage = st.open_storage(st.StorageSpec(None, journal=path))
            got = _trials(storage, study_name)
    except Exception as exc:  # noqa: BLE001 - what breaks is the finding
        return f"open: {type(exc).__name__}: {str(exc)[:160]}"
    if got != expected:
        return f"trials: {got} instead of {expected}"
    problems = []
    lines = [line for line in said.getvalue().splitlines() if line.strip()]
    if torn:
        kept = [p for p in path.parent.iterdir() if p.is_file() and p != path and p.read_bytes() == torn_bytes]
        if not kept:
            problems.append(f"kept: the {len(torn_bytes)} torn bytes are in no file beside the journal")
        if len(lines) > 1:
            problems.append(f"said: {len(lines)} lines about it")
    elif lines:
        problems.append(f"said: {lines[0][:120]!r} about a whole journal")
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            optuna.load_study(study_name=study_name, storage=storage).set_user_attr("after", 1)
        reread = optuna.load_study(study_name=study_name, storage=_plain(path))
        if reread.user_attrs.get("after") != 1:
            problems.append("append: the next record was lost")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"append: then Optuna's reader fails: {type(exc).__name__}: {str(exc)[:100]}")
    return "; ".join(problems) or None


def _write(folder: Path, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.journal"
    path.write_bytes(data)
    return path


def _plain(path: Path):
    """Optuna's own journal storage, without converge."""
    from optuna.storages import JournalStorage

    try:
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
    except ImportError:  # optuna 3.x
        from optuna.storages import JournalFileOpenLock
        from optuna.storages import JournalFileStorage as JournalFileBackend
    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def _trials(storage, study_name: str) -> list:
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    return [[t.number, t.state.name, t.values] for t in study.get_trials(deepcopy=False)]


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
