"""The fault battery: `converge` under kills, full and read-only disks, deleted folders, corrupt files,
concurrent commands, bad input, torn journals, Ctrl-C and storage outages -- each case with the outcome
it must have, judged on real processes and real files.

    python tests/faults/battery.py                 # every case, 2 at a time; `make test-faults`
    python tests/faults/battery.py --only kill/    # cases whose name contains any --only text
    python tests/faults/battery.py --list          # the case names

It prints one line per case (``held``, ``FAILED`` with what differed, or ``skipped`` with why), then a
table per group and ``cases N, held H, failed F, skipped S``; the exit status is 1 when any case failed.
Random fault points come from ``--seed`` (printed; the default changes every run) and each case's name,
so a failure is reproduced with ``--seed S --only NAME``. The cases' folders are under ``--workdir``
(default /tmp/converge-faults-<time>); those of failed cases are kept, the rest removed unless --keep.

Root-only cases (a loop-mounted file system for the full-disk and read-only cases, set up by
scripts/setup-loopfs.sh; a PostgreSQL server of scripts/setup-postgres.sh for the storage outage) are
skipped with the reason when they cannot run here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402
import cases_concurrency  # noqa: E402,F401 - the case modules register their cases
import cases_corrupt  # noqa: E402,F401
import cases_disk  # noqa: E402,F401
import cases_input  # noqa: E402,F401
import cases_kill  # noqa: E402,F401
import cases_tune  # noqa: E402,F401
import prepare  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    selected = [c for c in h.CASES if not args.only or any(text in c.name for text in args.only)]
    if args.list:
        for one in selected:
            print(one.name)
        return 0
    if not selected:
        print(f"no case matches {args.only}", file=sys.stderr)
        return 2
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix=f"converge-faults-{time.strftime('%Y%m%d-%H%M%S')}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)  # the PostgreSQL server runs as its own user and keeps its data in here
    print(f"fault battery: {len(selected)} case(s), seed {args.seed}, {args.jobs} at a time, in {workdir}",
          flush=True)
    started = time.monotonic()
    needs = sorted({need for one in selected for need in one.needs})
    refs = prepare.prepare(needs, workdir, jobs=args.jobs, seed=args.seed)
    print(f"references ready in {time.monotonic() - started:.0f} s", flush=True)
    try:
        results = _run_all(selected, refs, workdir, args)
    finally:
        prepare.teardown(refs, workdir)
    _table(results)
    failed = [r for r in results if r["status"] == "FAILED"]
    print(f"wall time {time.monotonic() - started:.0f} s; seed {args.seed}; folders of failed cases kept in "
          f"{workdir}" if failed or args.keep else f"wall time {time.monotonic() - started:.0f} s; seed {args.seed}")
    if not failed and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def _parse(argv):
    parser = argparse.ArgumentParser(prog="battery.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], help="run the cases whose name contains this")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000, help="seeds the fault points")
    parser.add_argument("--workdir", help="where the cases' folders go (default /tmp/converge-faults-<time>)")
    parser.add_argument("--keep", action="store_true", help="keep every case's folder")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    return parser.parse_args(argv)


def _run_all(selected, refs, workdir, args) -> list[dict]:
    """Cases in a pool of ``--jobs`` processes, longest first; cases sharing a ``serial`` key in one job."""
    jobs: dict[str, list[str]] = {}
    for one in sorted(selected, key=lambda c: -c.cost):
        jobs.setdefault(one.serial or one.name, []).append(one.name)
    results = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(_run_job, names, refs, str(workdir), args.seed, args.keep) for names in jobs.values()]
        for future in as_completed(futures):
            for result in future.result():
                results.append(result)
                _print_line(result)
    order = {one.name: i for i, one in enumerate(h.CASES)}
    return sorted(results, key=lambda r: order[r["name"]])


def _run_job(names: list[str], refs: dict, workdir: str, seed: int, keep: bool) -> list[dict]:
    by_name = {one.name: one for one in h.CASES}
    return [_run_case(by_name[name], refs, Path(workdir), seed, keep) for name in names]


def _run_case(one: h.Case, refs: dict, workdir: Path, seed: int, keep: bool) -> dict:
    root = workdir / "cases" / one.name.replace("/", "__")
    root.mkdir(parents=True, exist_ok=True)
    ctx = h.Ctx(one.name, root, refs, seed)
    started = time.monotonic()
    try:
        note = one.fn(ctx)
        status, detail = "held", note or ""
    except h.Failed as exc:
        status, detail = "FAILED", str(exc)
    except h.Skipped as exc:
        status, detail = "skipped", str(exc)
    except Exception as exc:  # noqa: BLE001 - a broken case is reported as a failure, with where it broke
        where = traceback.extract_tb(exc.__traceback__)[-1]
        status, detail = "FAILED", f"the case itself raised {type(exc).__name__}: {exc} ({Path(where.filename).name}:" \
                                   f"{where.lineno})"
    finally:
        ctx.cleanup()
    if status != "FAILED" and not keep:
        shutil.rmtree(root, ignore_errors=True)
    return {"name": one.name, "group": one.group, "status": status, "detail": " ".join(detail.split()),
            "seconds": time.monotonic() - started}


def _print_line(result: dict) -> None:
    shown = {"held": "held", "FAILED": "FAILED", "skipped": "skipped:"}[result["status"]]
    detail = f"  {result['detail']}" if result["detail"] else ""
    print(f"{shown:<9}{result['name']:<46}{result['seconds']:6.1f}s{detail}", flush=True)


def _table(results: list[dict]) -> None:
    groups: dict[str, dict[str, int]] = {}
    for result in results:
        counts = groups.setdefault(result["group"], {"cases": 0, "held": 0, "FAILED": 0, "skipped": 0})
        counts["cases"] += 1
        counts[result["status"]] += 1
    print()
    print(f"{'group':<14}{'cases':>6}{'held':>6}{'failed':>8}{'skipped':>9}")
    for group, counts in groups.items():
        print(f"{group:<14}{counts['cases']:>6}{counts['held']:>6}{counts['FAILED']:>8}{counts['skipped']:>9}")
    total = {key: sum(c[key] for c in groups.values()) for key in ("cases", "held", "FAILED", "skipped")}
    print(f"{'total':<14}{total['cases']:>6}{total['held']:>6}{total['FAILED']:>8}{total['skipped']:>9}")
    print()
    failed = [r for r in results if r["status"] == "FAILED"]
    if failed:
        print("failed:")
        for result in failed:
            print(f"  {result['name']}: {result['detail']}")
        print()
    print(f"cases {total['cases']}, held {total['held']}, failed {total['FAILED']}, skipped {total['skipped']}",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
