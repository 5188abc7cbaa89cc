"""`converge` on the command line: parse arguments, call the library, print one-line errors.

Exit status: a finished run's comes from its status (`converge.status`: 0 converged, max_epochs or pruned,
3 diverged, 130 interrupted and resumable); 1 unexpected error, 2 bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import traceback
from pathlib import Path

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2, as for every other bad input
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be an integer between 0 and 2**63 - 1, got {text!r}")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def _or_auto(parse):
    def parse_or_auto(text: str):
        return "auto" if text == "auto" else parse(text)
    return parse_or_auto


def build_parser() -> argparse.ArgumentParser:
    from converge._version import __version__
    from converge.config import AMP_MODES, OPTIMIZER_NAMES

    parser = _Parser(prog="converge", description="Train a PyTorch task to convergence and explain the run.")
    parser.add_argument("--version", action="version", version=f"converge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    train = commands.add_parser("train", help="train a task file to convergence")
    train.add_argument("task", help="Python file with model() and data()")
    knobs = train.add_argument_group("hyperparameters")
    knobs.add_argument("--optimizer", choices=(*OPTIMIZER_NAMES, "auto"),
                       help="adamw, sgd (Nesterov momentum 0.9) or auto (default: a short race picks one)")
    knobs.add_argument("--lr", type=_or_auto(_float), help="starting learning rate, or auto (default: range test)")
    knobs.add_argument("--weight-decay", type=_or_auto(_float),
                       help="decoupled weight decay on weights only, or auto (default)")
    knobs.add_argument("--batch-size", type=_or_auto(_positive_int), help="samples per batch, or auto (default)")
    stop = train.add_argument_group("convergence")
    knobs.add_argument("--warmup-steps", type=int, help="linear LR warmup over this many steps (auto: when needed)")
    stop.add_argument("--max-epochs", type=_positive_int, help="hard cap on epochs (default 1000)")
    stop.add_argument("--patience", type=_positive_int, help="epochs without progress before the LR is cut (5)")
    stop.add_argument("--lr-factor", type=_float, help="LR multiplier at each cut (default 0.3)")
    stop.add_argument("--min-lr", type=_float, help="the LR is never cut below this (default 1e-3 x LR)")
    stop.add_argument("--cooldown", type=int, help="epochs after a cut that do not count against patience (0)")
    stop.add_argument("--threshold", type=_float, help="relative improvement that counts as progress (1e-3)")
    stop.add_argument("--unproductive-cuts", type=int,
                      help="LR cuts without progress before the run is declared converged (default 1)")
    stop.add_argument("--monitor", help="val_loss (default) or a metric name, with --mode")
    stop.add_argument("--mode", choices=("min", "max"), help="direction of --monitor")
    engine = train.add_argument_group("engine")
    engine.add_argument("--seed", type=_seed, help="random seed (default 0)")
    engine.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    engine.add_argument("--amp", choices=AMP_MODES, help="mixed precision: off (default), bf16, fp16 (CUDA)")
    engine.add_argument("--clip-grad", type=_float, help="clip the gradient norm to this value")
    engine.add_argument("--accumulate", type=_positive_int, help="micro-batches per optimizer step (default 1)")
    engine.add_argument("--checkpoint-seconds", type=_float,
                        help="also checkpoint inside an epoch this often (default 300)")
    engine.add_argument("--num-workers", type=int, help="DataLoader workers for Dataset splits (default 0)")
    engine.add_argument("--steps-per-epoch", type=_positive_int,
                        help="a streamed training split (IterableDataset): batches per epoch (default 200)")
    engine.add_argument("--no-guard", dest="guard", action="store_false", default=None,
                        help="do not roll back on a NaN or a loss spike (the run then stops as diverged)")
    engine.add_argument("--max-rollbacks", type=int,
                        help="rollbacks in a row without a new best before the run stops as diverged (default 5)")
    engine.add_argument("--tensorboard", action="store_true", default=None,
                        help="also write TensorBoard event files to RUN_DIR/tensorboard")
    engine.add_argument("--mlflow", action="store_true", default=None,
                        help="also log to MLflow: $MLFLOW_TRACKING_URI, else a local store in ./mlruns")
    engine.add_argument("--no-standardize", dest="standardize", action="store_false", default=None,
                        help="leave unscaled feature matrices as they are (by default they are standardized with "
                             "training statistics, folded into the exported model)")
    _add_output_flags(train)
    train.add_argument("--out", help="run folder (default runs/<task>-<time>)")
    train.add_argument("--force", action="store_true", help="overwrite the run folder's files if it exists")
    train.add_argument("--task-args", type=_json_object, metavar="JSON",
                       help='keyword arguments for the task\'s model() and data(): {"model": {...}, "data": {...}}')
    train.add_argument("--nproc", type=_positive_int,
                       help="data-parallel training in N processes on this machine (started with torchrun; "
                            "gloo on CPU, NCCL on GPUs)")
    remedies = train.add_argument_group("doctor")
    remedies.add_argument("--fix", action="store_true",
                          help="apply remedies for what the checks find: standardize unscaled features (training "
                               "statistics, folded into the exported model), class-balanced loss weights")
    remedies.add_argument("--drop-label-issues", action="store_true",
                          help="leave out the training samples whose labels confident learning flags (recorded)")
    remedies.add_argument("--no-doctor", action="store_true", help="skip the quick checks before training")

    _add_tune_parser(commands)
    _add_doctor_parser(commands)
    report = commands.add_parser("report", help="write RUN_DIR/report.html: curves, decisions, diagnosis")
    report.add_argument("run_dir", help="the run folder")
    report.add_argument("--debug", action="store_true", help="show tracebacks")

    finder = commands.add_parser("lr-find", help="run a learning-rate range test and print the suggestion")
    finder.add_argument("task", help="Python file with model() and data()")
    finder.add_argument("--optimizer", choices=(*OPTIMIZER_NAMES, "auto"), default="auto",
                        help="adamw, sgd, or auto (default: both)")
    finder.add_argument("--batch-size", type=_or_auto(_positive_int), default="auto")
    finder.add_argument("--weight-decay", type=_or_auto(_float), default="auto")
    finder.add_argument("--seed", type=_seed, default=0)
    finder.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    finder.add_argument("--amp", choices=AMP_MODES, default="off")
    finder.add_argument("--out", help="folder for lr_find.png and lr_find.json (default runs/<task>-lr-find-<time>)")
    finder.add_argument("--force", action="store_true", help="overwrite converge's files in --out")
    finder.add_argument("--no-standardize", dest="standardize", action="store_false",
                        help="test on unscaled feature matrices as they are (by default standardized, as "
                             "converge train does)")
    finder.add_argument("--debug", action="store_true", help="show tracebacks")

    resume = commands.add_parser("resume", help="continue an interrupted run from its checkpoint")
    resume.add_argument("run_dir", help="the run folder")
    resume.add_argument("--max-epochs", type=_positive_int, help="raise the epoch cap of a finished run")
    resume.add_argument("--nproc", type=_positive_int,
                        help="processes for a data-parallel run (default: as many as the run started with)")
    _add_output_flags(resume)
    return parser


def _json_object(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}")
    return value


def _add_tune_parser(commands) -> None:
    tune = commands.add_parser("tune", help="search hyperparameters with Optuna, every trial trained to convergence")
    tune.add_argument("task", help="Python file with model() and data(), optionally search_space(trial)")
    tune.add_argument("--trials", type=_positive_int, required=True,
                      help="finished (complete or pruned) trials the study should hold; a re-run runs the missing ones")
    tune.add_argument("--out", help="tune folder (default runs/<task>-tune-<time>)")
    tune.add_argument("--storage", metavar="URL",
                      help="SQLAlchemy URL shared by workers on several machines (default: a journal file in --out); "
                           "prefer $CONVERGE_STORAGE or --storage-file for URLs with passwords")
    tune.add_argument("--storage-file", metavar="PATH", help="a file holding the storage URL")
    tune.add_argument("--study", help="study name (default: the task file's name)")
    tune.add_argument("--timeout", type=_float, metavar="S", help="start no new trial after S seconds")
    tune.add_argument("--seed", type=_seed, default=0, help="seeds the sampler and every trial (default 0)")
    tune.add_argument("--max-epochs", type=_positive_int, help="epoch cap of each trial (default 1000)")
    tune.add_argument("--patience", type=_positive_int, help="patience of each trial (default 5)")
    tune.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    tune.add_argument("--pruner", choices=("hyperband", "asha", "none"), default="hyperband",
                      help="hyperband (default), asha (successive halving alone), or none")
    tune.add_argument("--heartbeat", type=_positive_int, default=20, metavar="S",
                      help="database storages: heartbeat interval; a trial silent for 3x this is failed and retried")
    tune.add_argument("--no-standardize", dest="standardize", action="store_false",
                      help="leave unscaled feature matrices as they are in every trial (see converge train)")
    tune.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                      help="do not start a new study from converge's automatic choice (trial 0)")
    _add_output_flags(tune)


def _add_doctor_parser(commands) -> None:
    doctor = commands.add_parser("doctor", help="check a task's data and model for reasons it will not converge")
    doctor.add_argument("task", help="Python file with model() and data()")
    doctor.add_argument("--json", action="store_true",
                        help="print only a JSON list of {code, severity, message, evidence, fix} on stdout")
    doctor.add_argument("--cheap", action="store_true", help="skip the slower checks (label_noise, cannot_overfit_batch)")
    doctor.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    doctor.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    doctor.add_argument("--task-args", type=_json_object, metavar="JSON",
                        help='keyword arguments for the task\'s model() and data(): {"model": {...}, "data": {...}}')
    _add_output_flags(doctor)


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


TRAIN_OPTIONS = ("optimizer", "lr", "weight_decay", "batch_size", "max_epochs", "patience", "lr_factor",
                 "min_lr", "cooldown", "threshold", "unproductive_cuts", "monitor", "mode", "seed", "device",
                 "amp", "clip_grad", "accumulate", "checkpoint_seconds", "num_workers", "steps_per_epoch",
                 "warmup_steps",
                 "guard", "max_rollbacks", "tensorboard", "mlflow", "standardize")


def entry() -> int:
    """The `converge` command in a process of its own (the console script, ``python -m converge``)."""
    code = main()
    # At exit the interpreter's last collections walk every object torch, scikit-learn and matplotlib made
    # (0.8-1 s measured on 2 CPUs); frozen, they are skipped. Files, threads and atexit handlers end as usual.
    # Only after a command that succeeded, where the exit's time counts. (The full-disk aborts once blamed on
    # freezing after a failure were the reference model's thread, now joined by Trainer.run: with it joined,
    # the battery's disk and tune cases hold with or without this condition.)
    if code == 0:
        gc.freeze()
    return code


def main(argv: list[str] | None = None) -> int:
    from converge.engine.distributed import shutdown, tell_launcher

    try:
        return tell_launcher(_main(sys.argv[1:] if argv is None else argv))
    finally:
        shutdown()  # a process group left up makes the process abort at exit


def _main(argv: list[str]) -> int:
    debug = "--debug" in argv
    args = None
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:  # the commands on stdout, the one error line on stderr
            build_parser().print_help()
            return _fail("no command given; choose one of train, resume, lr-find, tune, doctor, report "
                         "(converge --help lists them)", debug)
        if args.command in ("train", "resume"):
            launched = _launch_data_parallel(args, argv)
            if launched is not None:
                return launched
        return _run(args)
    except _UsageError as exc:
        return _fail(str(exc), debug)
    except KeyboardInterrupt:  # before training started, or a second Ctrl-C: the last checkpoint stands
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from converge.errors import ConvergeError

        storage = _storage_error(exc)
        if storage is not None:
            return _fail(str(storage), debug)
        if isinstance(exc, ConvergeError):
            return _fail(str(exc), debug)
        if debug:
            raise
        from converge.engine.distributed import launched_rank, lost_peer

        lost = lost_peer(exc)
        if lost is not None:
            return _peer_lost(lost, args)
        rank = launched_rank()
        where = f"process {rank}: " if rank is not None else ""
        print(f"error: {where}{type(exc).__name__}: {_one_line(str(exc))} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


def _storage_error(exc: Exception):
    """A failed write as a StorageError that says what to do (exit 2, one line): one the run folder has
    advised already, else with the generic advice; an OSError of a full or read-only disk that met no run
    folder on its way too. None for anything else."""
    import errno

    from converge.errors import StorageError, storage_remedy

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        exc = StorageError.from_os_error(exc)
    if not isinstance(exc, StorageError):
        return None
    if exc.advised:
        return exc
    return exc.with_advice(remedy=storage_remedy(exc.error_number), then="run the same command again")


def _peer_lost(reason: str, args: argparse.Namespace) -> int:
    """A data-parallel run lost one of its processes (a node down, a process killed): this one cannot go on
    alone. One line; the run folder keeps its last checkpoint, from which `converge resume` continues."""
    from converge.engine.distributed import current_world, first_process_ended

    world = current_world()
    if first_process_ended():  # it stopped the run and said why (a full disk, say): one line is enough
        return 1
    folder = getattr(args, "run_dir", None) or getattr(args, "out", None)
    print(f"error: process {world.rank} of {world.size} lost contact with the other processes of the run "
          f"({reason}): a node or a process was lost. The last checkpoint stands: continue with "
          f"`converge resume {folder or 'RUN_DIR'}`", file=sys.stderr)
    return 1


def _launch_data_parallel(args: argparse.Namespace, argv: list[str]) -> int | None:
    """`--nproc N`, or resuming a run that N processes trained: start this same command in N processes
    with torchrun and return its exit status. None when this process should just train."""
    import json

    from converge.engine.distributed import launched_by_torchrun, run_torchrun
    from converge.io.runfolder import RUN_INFO

    if launched_by_torchrun():
        return None
    nproc = args.nproc
    rest = _without_flag(argv, "--nproc")
    if args.command == "resume" and nproc is None:
        try:
            nproc = json.loads(Path(args.run_dir, RUN_INFO).read_text()).get("world_size")
        except (OSError, ValueError, AttributeError):
            return None  # not a readable run folder: resuming in this process says so properly
    if not nproc or nproc < 2:
        return None
    out = Path(args.run_dir) if args.command == "resume" else args.out
    if args.command == "train" and out is None:
        from converge.assembly import default_out
        from converge.task import load_task

        out = default_out(load_task(args.task).name)
        rest += ["--out", str(out)]  # every process must use the same
    with _folder_held(Path(out)) as env:  # the processes work under the launcher's lock
        return run_torchrun(["-m", "converge", *rest], nproc, debug=args.debug, env=env)


@contextlib.contextmanager
def _folder_held(folder: Path):
    """Lock the run folder for the processes about to start (they inherit the lock); a folder made only for
    the lock is removed again when nothing was written into it."""
    from converge.io.lock import LOCK_FILE, FolderLock

    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        yield {}  # the processes report why the folder cannot be written
        return
    lock = FolderLock(folder).acquire()
    try:
        yield lock.child_env()
    finally:
        try:
            alone = [p.name for p in folder.iterdir()] == [LOCK_FILE]
        except FileNotFoundError:  # deleted under the run: the first process has said so
            alone = False
        lock.release(remove=lock.created and alone)
        if made and alone:
            folder.rmdir()


def _without_flag(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag VALUE`` / ``flag=VALUE``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            kept.append(arg)
    return kept


def _fail(message: str, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    from converge.engine.distributed import launched_rank

    if launched_rank() in (None, 0):  # every process meets the same bad input: say it once
        print(f"error: {_one_line(message)}", file=sys.stderr)
    return 2


def _one_line(message: str) -> str:
    """Errors are one line on stderr, even when the message quotes a multi-line exception."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def _run(args: argparse.Namespace) -> int:
    from converge.api import resume_run, train_task

    if args.command == "lr-find":
        return _lr_find(args)
    if args.command == "tune":
        return _tune(args)
    if args.command == "doctor":
        return _doctor(args)
    if args.command == "report":
        from converge.report.html import read_run, write_report

        run = read_run(args.run_dir)
        for problem in run.problems:
            print(f"warning: {problem}", file=sys.stderr)
        path = write_report(args.run_dir)
        print(path if run.live is None else f"{path} (the run is live: {run.live})")
        return 0
    if args.command == "train":
        # Flags left out are not passed, so the task file's own `monitor` and `mode` still apply.
        options = {name: getattr(args, name) for name in TRAIN_OPTIONS if getattr(args, name) is not None}
        result = train_task(args.task, out=args.out, force=args.force, verbose=not args.quiet,
                            task_args=args.task_args, doctor=not args.no_doctor, fix=args.fix,
                            drop_label_issues=args.drop_label_issues, **options)
    else:
        result = resume_run(args.run_dir, max_epochs=args.max_epochs, verbose=not args.quiet)
    if result.run_dir is not None:  # data-parallel: only the first process has the run folder and prints
        print_summary(result.summary, result.run_dir)
    from converge.engine.distributed import current_world

    if current_world() is not None:
        current_world().barrier()  # no process leaves while another still needs the group
    from converge.status import Status

    return Status(result.summary["status"]).exit_code


def _tune(args: argparse.Namespace) -> int:
    from converge.tune.search import tune_task

    result = tune_task(args.task, trials=args.trials, out=args.out, storage=args.storage,
                       storage_file=args.storage_file, study=args.study, timeout=args.timeout, seed=args.seed,
                       max_epochs=args.max_epochs, patience=args.patience, device=args.device, pruner=args.pruner,
                       heartbeat=args.heartbeat, warm_start=args.warm_start, standardize=args.standardize,
                       verbose=not args.quiet)
    if args.quiet:
        print(f"tune: {result.status}; best trial {result.summary['best_trial']}")
        if result.summary["reproduce"]:
            print(f"reproduce: {result.summary['reproduce']}")
    from converge.status import Status

    return Status.INTERRUPTED.exit_code if result.status == "interrupted" else 0


def _doctor(args: argparse.Namespace) -> int:
    """Exit 0 whenever the checks ran, whatever they found; bad input is status 2 like everywhere else."""
    import json

    from converge.doctor import run_doctor
    from converge.doctor.report import print_findings
    from converge.io.runfolder import to_json

    quiet = args.quiet or args.json
    progress = (lambda text: None) if quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    findings = run_doctor(args.task, cheap=args.cheap, seed=args.seed, device=args.device,
                          task_args=args.task_args, progress=progress)
    if args.json:
        print(json.dumps([to_json(f.to_dict()) for f in findings], indent=2))
    else:
        print_findings(findings, title=f"converge doctor: {args.task}")
    return 0


def _lr_find(args: argparse.Namespace) -> int:
    from converge.api import find_lr

    found = find_lr(args.task, optimizer=args.optimizer, batch_size=args.batch_size, weight_decay=args.weight_decay,
                    seed=args.seed, device=args.device, amp=args.amp, out=args.out, force=args.force,
                    standardize=args.standardize)
    for opt, result in found["results"].items():
        lr = result["suggested_lr"]
        shown = f"{lr:.3g}" if lr else "none"
        print(f"{opt}: suggested lr {shown} (batch {result['batch_size']}, {len(result['lrs'])} steps, "
              f"loss minimum at {result['min_loss_lr'] or float('nan'):.3g}): {result['reason']}")
    print(f"plot: {found['run_dir'] / 'lr_find.png'}")
    return 0


def print_summary(summary: dict, run_dir) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    table = Table(title=f"converge: {summary['status']}", show_header=False, title_justify="left")
    table.add_row("stop reason", summary["stop_reason"])
    table.add_row("epochs", f"{summary['epochs']} (best {summary['best_epoch']})")
    for key, value in summary["best"].items():
        table.add_row(f"best {key}", _fmt(value))
    for key, value in (summary.get("test") or {}).items():
        table.add_row(f"test {key}", _fmt(value))
    hp = summary["hyperparameters"]
    table.add_row("hyperparameters", f"{hp['optimizer']} lr {hp['lr']:.3g} weight decay {hp['weight_decay']:.3g} "
                                     f"batch {hp['batch_size']}")
    if summary.get("tuning_epochs"):
        table.add_row("tuning", f"{summary['tuning_epochs']:.1f} epochs spent choosing them")
    if summary.get("rollbacks"):
        table.add_row("rollbacks", f"{summary['rollbacks']} (the divergence guard undid blow-ups; see events.jsonl)")
    table.add_row("wall time", f"{summary['wall_seconds']:.1f}s on {summary['device']}")
    for found in summary.get("diagnosis", []):
        fix = f"\nfix: {found['fix']}" if found["code"] != "converged" else ""
        table.add_row(f"diagnosis: {found['code']}", f"{found['message']}{fix}")
    console.print(table)
    if run_dir is not None:
        print(f"run folder: {run_dir}")
        from converge.io.runfolder import REPORT

        if Path(run_dir, REPORT).exists():
            print(f"report: {Path(run_dir, REPORT)}")


def _fmt(value) -> str:
    return "nan" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
