"""`converge` on the command line: parse arguments, call the library, print one-line errors.

Exit status: 0 finished (converged or max_epochs), 1 unexpected error, 2 bad input, 3 diverged,
130 interrupted (resumable).
"""

from __future__ import annotations

import argparse
import sys
import traceback

EXIT_STATUS = {"converged": 0, "max_epochs": 0, "pruned": 0, "diverged": 3, "interrupted": 130}


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
    from converge import __version__
    from converge.config import AMP_MODES, OPTIMIZERS

    parser = _Parser(prog="converge", description="Train a PyTorch task to convergence and explain the run.")
    parser.add_argument("--version", action="version", version=f"converge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    train = commands.add_parser("train", help="train a task file to convergence")
    train.add_argument("task", help="Python file with model() and data()")
    knobs = train.add_argument_group("hyperparameters")
    knobs.add_argument("--optimizer", choices=(*OPTIMIZERS, "auto"),
                       help="adamw, sgd (Nesterov momentum 0.9) or auto (default: a short race picks one)")
    knobs.add_argument("--lr", type=_or_auto(_float), help="starting learning rate, or auto (default: range test)")
    knobs.add_argument("--weight-decay", type=_or_auto(_float),
                       help="decoupled weight decay on weights only, or auto (default)")
    knobs.add_argument("--batch-size", type=_or_auto(_positive_int), help="samples per batch, or auto (default)")
    stop = train.add_argument_group("convergence")
    knobs.add_argument("--warmup-steps", type=int, help="linear LR warmup over this many steps (auto: when needed)")
    stop.add_argument("--max-epochs", type=_positive_int, help="hard cap on epochs (default 1000)")
    stop.add_argument("--patience", type=_positive_int, help="epochs without progress before the LR is cut (5)")
    stop.add_argument("--lr-factor", type=_float, help="LR multiplier at each cut (default 0.1)")
    stop.add_argument("--min-lr", type=_float, help="the LR is never cut below this (default 1e-3 x LR)")
    stop.add_argument("--cooldown", type=int, help="epochs after a cut that do not count against patience (0)")
    stop.add_argument("--threshold", type=_float, help="relative improvement that counts as progress (1e-3)")
    stop.add_argument("--unproductive-cuts", type=int,
                      help="LR cuts without progress before the run is declared converged (default 1)")
    stop.add_argument("--monitor", help="val_loss (default) or a metric name, with --mode")
    stop.add_argument("--mode", choices=("min", "max"), help="direction of --monitor")
    engine = train.add_argument_group("engine")
    engine.add_argument("--seed", type=int, help="random seed (default 0)")
    engine.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    engine.add_argument("--amp", choices=AMP_MODES, help="mixed precision: off (default), bf16, fp16 (CUDA)")
    engine.add_argument("--clip-grad", type=_float, help="clip the gradient norm to this value")
    engine.add_argument("--accumulate", type=_positive_int, help="micro-batches per optimizer step (default 1)")
    engine.add_argument("--checkpoint-seconds", type=_float,
                        help="also checkpoint inside an epoch this often (default 300)")
    engine.add_argument("--num-workers", type=int, help="DataLoader workers for Dataset splits (default 0)")
    _add_output_flags(train)
    train.add_argument("--out", help="run folder (default runs/<task>-<time>)")
    train.add_argument("--force", action="store_true", help="overwrite the run folder's files if it exists")

    finder = commands.add_parser("lr-find", help="run a learning-rate range test and print the suggestion")
    finder.add_argument("task", help="Python file with model() and data()")
    finder.add_argument("--optimizer", choices=(*OPTIMIZERS, "auto"), default="auto",
                        help="adamw, sgd, or auto (default: both)")
    finder.add_argument("--batch-size", type=_or_auto(_positive_int), default="auto")
    finder.add_argument("--weight-decay", type=_or_auto(_float), default="auto")
    finder.add_argument("--seed", type=int, default=0)
    finder.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    finder.add_argument("--amp", choices=AMP_MODES, default="off")
    finder.add_argument("--out", help="folder for lr_find.png and lr_find.json (default runs/<task>-lr-find-<time>)")
    finder.add_argument("--force", action="store_true", help="overwrite converge's files in --out")
    finder.add_argument("--debug", action="store_true", help="show tracebacks")

    resume = commands.add_parser("resume", help="continue an interrupted run from its checkpoint")
    resume.add_argument("run_dir", help="the run folder")
    resume.add_argument("--max-epochs", type=_positive_int, help="raise the epoch cap of a finished run")
    _add_output_flags(resume)
    return parser


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


TRAIN_OPTIONS = ("optimizer", "lr", "weight_decay", "batch_size", "max_epochs", "patience", "lr_factor",
                 "min_lr", "cooldown", "threshold", "unproductive_cuts", "monitor", "mode", "seed", "device",
                 "amp", "clip_grad", "accumulate", "checkpoint_seconds", "num_workers", "warmup_steps")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return 2
        return _run(args)
    except _UsageError as exc:
        return _fail(str(exc), debug)
    except KeyboardInterrupt:  # before training started, or a second Ctrl-C: the last checkpoint stands
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from converge.errors import ConvergeError

        if isinstance(exc, ConvergeError):
            return _fail(str(exc), debug)
        if debug:
            raise
        print(f"error: {type(exc).__name__}: {_one_line(str(exc))} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


def _fail(message: str, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"error: {_one_line(message)}", file=sys.stderr)
    return 2


def _one_line(message: str) -> str:
    """Errors are one line on stderr, even when the message quotes a multi-line exception."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def _run(args: argparse.Namespace) -> int:
    from converge.api import resume_run, train_task

    if args.command == "lr-find":
        return _lr_find(args)
    if args.command == "train":
        # Flags left out are not passed, so the task file's own `monitor` and `mode` still apply.
        options = {name: getattr(args, name) for name in TRAIN_OPTIONS if getattr(args, name) is not None}
        result = train_task(args.task, out=args.out, force=args.force, verbose=not args.quiet, **options)
    else:
        result = resume_run(args.run_dir, max_epochs=args.max_epochs, verbose=not args.quiet)
    print_summary(result.summary, result.run_dir)
    return EXIT_STATUS[result.summary["status"]]


def _lr_find(args: argparse.Namespace) -> int:
    from converge.api import find_lr

    found = find_lr(args.task, optimizer=args.optimizer, batch_size=args.batch_size, weight_decay=args.weight_decay,
                    seed=args.seed, device=args.device, amp=args.amp, out=args.out, force=args.force)
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
    table.add_row("wall time", f"{summary['wall_seconds']:.1f}s on {summary['device']}")
    console.print(table)
    if run_dir is not None:
        print(f"run folder: {run_dir}")


def _fmt(value) -> str:
    return "nan" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
