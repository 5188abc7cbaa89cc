"""`converge tune`: a hyperparameter search with Optuna, every trial a full converge run.

One worker (one `converge tune` process) runs trials until the study holds ``trials`` finished ones
(complete or pruned); several workers on the same storage and study share that budget. A new study's
trial 0 is converge's own automatic choice (warm start, see `_Worker._warm_start`). Each trial:

1. takes its values from Optuna's TPE sampler: optimizer {adamw, sgd}, an LR range per optimizer,
   weight decay (log scale, 1e-6 standing for "none"), a power-of-two batch size no larger than the
   training set, plus whatever the task's ``search_space(trial)`` asks for;
2. trains with the converge engine to convergence in its own run folder ``DIR/trials/NNNN``;
3. reports the best monitored value so far after every epoch; the pruner (Hyperband by default:
   several successive-halving brackets, rungs from 2 epochs, reduction factor 3) may stop it there
   (status "pruned" in its run folder). Measured in bench/tune.py: successive halving alone (asha)
   prunes too eagerly on these tasks, stopping slow starters that end up best. A second rule
   (`converge.decide.laggard`, with every pruner but "none") stops a trial that, after twice the epochs
   the median finished trial needed, is still behind it: Hyperband never compares the first trial of a
   bracket with anyone, and such a trial could crawl on for hundreds of epochs.

At the end the worker exports the best trial: ``best.safetensors``, ``summary.json`` with the
`converge train` command that reproduces it, and ``tune_report.html``.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from converge.decide.laggard import Finished, lags_behind
from converge.engine.evaluation import scored_in_parts
from converge.engine.optim import OPTIMIZERS
from converge.errors import ConvergeError, StorageError
from converge.io.lock import lock_folder
from converge.io.runfolder import JOURNAL, TRIALS, TUNE_INFO, WORKERS
from converge.status import Status
from converge.tune import storage as st
from converge.tune.export import export_study, trial_counts

WEIGHT_DECAY = (1e-6, 1e-1)    # log-uniform; the 1e-6 floor stands for "no decay to speak of"
BATCH_SIZES = (16, 32, 64, 128, 256, 512)
PRUNERS = ("hyperband", "asha", "none")
MIN_EPOCHS = 2                 # the pruner's first rung: a trial always trains this many epochs


@dataclass
class TuneResult:
    summary: dict
    out: Path

    @property
    def status(self) -> str:
        return self.summary["status"]


class _Interrupted(Exception):
    """Ctrl-C or SIGTERM during a trial: the trial stops at a checkpoint and the worker ends."""


class _Surplus(Exception):
    """Two workers started the last trial at the same moment: the later one is not run."""


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise ConvergeError("converge tune needs optuna: pip install 'torch-converge[tune]'") from None
    return optuna


# --- the search space ------------------------------------------------------------------------------
def batch_choices(n_train: int) -> list[int]:
    """Powers of two from 16 to 512 that fit in the training set (the largest power of two below a tiny
    training set otherwise)."""
    choices = [size for size in BATCH_SIZES if size <= n_train]
    return choices or [1 << max(0, int(n_train).bit_length() - 1)]


def suggest(trial, batch_sizes: list[int], search_space: Callable | None) -> tuple[dict, dict]:
    """The trial's four knobs and the task's own arguments ``{"model": {...}, "data": {...}}``."""
    from converge.task import check_task_args

    optimizer = trial.suggest_categorical("optimizer", list(OPTIMIZERS))
    knobs = {"optimizer": optimizer,
             "lr": trial.suggest_float(f"lr_{optimizer}", *OPTIMIZERS[optimizer].search_lr, log=True),
             "weight_decay": trial.suggest_float("weight_decay", *WEIGHT_DECAY, log=True),
             "batch_size": trial.suggest_categorical("batch_size", batch_sizes)}
    task_args = check_task_args(search_space(trial) if search_space else None, where="search_space(trial)")
    try:
        json.dumps(task_args)
    except (TypeError, ValueError):
        raise ConvergeError(f"search_space(trial) must return plain values (numbers, strings, lists), "
                            f"got {task_args!r}") from None
    return knobs, task_args


def warm_start_params(knobs: dict, batch_sizes: list[int]) -> dict:
    """The Optuna parameters of a queued trial's exact ``knobs`` (optimizer, lr, weight_decay, batch_size),
    clipped to the search space: LR and weight decay to their ranges, the batch size to the nearest choice on
    a log scale."""
    optimizer = knobs["optimizer"]
    low, high = OPTIMIZERS[optimizer].search_lr
    return {"optimizer": optimizer,
            f"lr_{optimizer}": min(max(float(knobs["lr"]), low), high),
            "weight_decay": min(max(float(knobs["weight_decay"]), WEIGHT_DECAY[0]), WEIGHT_DECAY[1]),
            "batch_size": min(batch_sizes, key=lambda size: abs(math.log2(size / knobs["batch_size"])))}


def strong_decay_starts(tuning) -> list[dict]:
    """The knobs of the trials queued after the automatic choice: each optimizer's best arm of the race (the
    chosen one first; its LR, warmup and the chosen batch size) with that optimizer's strong weight decay.
    Weight decay is the one knob a short race cannot choose (its effect shows over a whole run), and the one
    in which the best configurations of a noisy tabular task differed from the automatic choice
    (bench/README.md, "Why tabular_cls misses"). None when the choice did not choose the weight decay."""
    if not any(e.get("event") == "chose_weight_decay" for e in tuning.events):
        return []
    return [{"optimizer": optimizer, "lr": float(arm["lr"]), "batch_size": int(tuning.config.batch_size),
             "weight_decay": OPTIMIZERS[optimizer].strong_weight_decay, "warmup_steps": int(arm["warmup_steps"])}
            for optimizer, arm in tuning.best_arms.items()]


def automatic_knobs(chosen) -> dict:
    """The knobs the automatic choice ``chosen`` (a TrainConfig with every knob set) trains with, exactly."""
    return {"optimizer": chosen.optimizer, "lr": float(chosen.lr), "weight_decay": float(chosen.weight_decay),
            "batch_size": int(chosen.batch_size), "warmup_steps": int(chosen.warmup_steps)}


class EpochJudge:
    """The Trainer's epoch_judge for one trial: reports the best monitored value so far (the trial's
    objective if it stopped now) and asks the pruner whether the trial should stop, then (``laggards``)
    whether it lags the finished trials for good (`converge.decide.laggard`). A trial that is not
    ``prunable`` (the queued starting points, the yardsticks the others are reported against) only reports."""

    def __init__(self, trial, key: str, mode: str, *, laggards: bool = True, prunable: bool = True) -> None:
        self.trial, self.key, self.mode, self.laggards, self.prunable = trial, key, mode, laggards, prunable
        self.best: float | None = None

    def __call__(self, record: dict) -> str | None:
        value = record.get(self.key)
        if value is None or not math.isfinite(value):
            return None
        if self.best is None or (value < self.best if self.mode == "min" else value > self.best):
            self.best = value
        self.trial.report(self.best, step=record["epoch"])
        if not self.prunable:
            return None
        if self.trial.should_prune():
            return (f"pruned by the search at epoch {record['epoch']}: best {self.key} {self.best:.6g} is "
                    f"behind the trials that reached this epoch")
        lagging = lags_behind(self.best, record["epoch"], self._finished(), self.mode) if self.laggards else None
        if lagging is not None:
            return f"pruned by the search at epoch {record['epoch']}: best {self.key} {self.best:.6g} is {lagging}"
        return None

    def _finished(self) -> list[Finished]:
        """The study's complete trials (read once per epoch: every worker's, on a shared storage)."""
        from optuna.trial import TrialState

        trials = self.trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return [Finished(t.value, int(t.user_attrs["epochs"])) for t in trials
                if t.value is not None and math.isfinite(t.value) and "epochs" in t.user_attrs]


# --- the command ---------------------------------------------------------------------------------
def tune_task(task_path: str | Path, *, trials: int, out: str | Path | None = None, storage: str | None = None,
              storage_file: str | Path | None = None, study: str | None = None, timeout: float | None = None,
              seed: int = 0, max_epochs: int | None = None, patience: int | None = None,
              device: str | None = None, pruner: str = "hyperband", heartbeat: int = 20, warm_start: bool = True,
              standardize: bool = True, verbose: bool = True, print_fn: Callable[[str], None] = print,
              strong_decay: bool = True) -> TuneResult:
    """What `converge tune TASK --trials N` does. ``trials`` is the number of finished (complete or
    pruned) trials the study should hold: a second run with the same folder and study runs only the
    missing ones. Storage: ``storage`` (an SQLAlchemy URL), ``storage_file`` (a file holding one),
    $CONVERGE_STORAGE, else a journal file in ``out``. ``warm_start``: a new study's trial 0 is converge's
    automatic choice (its tuning epochs count in the summary's ``epochs_total``). ``standardize``: as
    `converge train`'s (False: --no-standardize in every trial)."""
    optuna = require_optuna()
    from converge.assembly import default_out, make_config
    from converge.task import load_task

    _check_options(trials=trials, timeout=timeout, pruner=pruner, heartbeat=heartbeat)
    task = load_task(task_path, seed=seed)
    options = {"max_epochs": max_epochs, "patience": patience, "device": device,
               "standardize": None if standardize else False}
    base = make_config(seed=seed, monitor=task.monitor, mode=task.mode, **options)
    out = Path(out) if out is not None else default_out(f"{task.name}-tune")
    spec = st.resolve_storage(out, storage=storage, storage_file=storage_file)
    study_name = study or task.name
    worker = _Worker(task, base, out, spec, study_name, options=options, pruner=pruner, heartbeat=heartbeat,
                     warm_start=warm_start, print_fn=print_fn if verbose else (lambda text: None),
                     strong_decay=strong_decay)
    with _storage_errors_reported(spec, optuna):
        try:
            worker.start()
            status = worker.run(trials, timeout)
        finally:
            worker.stop()
        summary = worker.export(trials, status)
    return TuneResult(summary, out)


@contextlib.contextmanager
def _storage_errors_reported(spec: st.StorageSpec, optuna):
    """A database dropping out at any moment of a study is the documented one-line error, credentials
    removed (the worker's trial is left running: its heartbeat stops, and a later worker retries it)."""
    try:
        yield
    except ConvergeError:
        raise
    except Exception as exc:
        cause = _storage_cause(exc, _storage_errors(optuna)) if spec.url is not None else None
        if cause is None:
            raise
        raise st.storage_error(cause, spec) from None


def _storage_cause(exc: BaseException, kinds: tuple) -> BaseException | None:
    """The storage error behind ``exc``: itself, or one in its chain of causes and contexts (Optuna can
    hide a lost database behind an error of its own, raised while it handled the first)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kinds):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _storage_errors(optuna) -> tuple:
    errors: list[type] = [optuna.exceptions.StorageInternalError]
    try:
        import sqlalchemy.exc

        errors.append(sqlalchemy.exc.SQLAlchemyError)
    except ImportError:
        pass
    return tuple(errors)


def _check_options(*, trials, timeout, pruner, heartbeat) -> None:
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ConvergeError(f"--trials must be an integer >= 1, got {trials!r}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ConvergeError(f"--timeout must be a positive number of seconds, got {timeout!r}")
    if pruner not in PRUNERS:
        raise ConvergeError(f"--pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    if not isinstance(heartbeat, int) or heartbeat < 1:
        raise ConvergeError(f"--heartbeat must be an integer number of seconds >= 1, got {heartbeat!r}")


class _Worker:
    """One `converge tune` process: opens the study, runs trials until the study is done, exports."""

    def __init__(self, task, base, out: Path, spec: st.StorageSpec, study_name: str, *, options: dict,
                 pruner: str, heartbeat: int, warm_start: bool, print_fn: Callable[[str], None],
                 strong_decay: bool = True) -> None:
        self.task, self.base, self.out, self.spec = task, base, out, spec
        self.study_name, self.options, self.pruner_name, self.heartbeat = study_name, options, pruner, heartbeat
        self.warm_start, self.strong_decay, self.print = warm_start, strong_decay, print_fn
        self.locks: st.WorkerLock | None = None
        self.folder_lock = None
        self.study = None
        self.current: int | None = None   # the storage id of the trial this worker runs
        self.started = time.monotonic()

    # 1. check the task and the folder, open the study
    def start(self) -> None:
        import optuna

        from converge.data import make_splits
        from converge.rng import seed_everything

        optuna.logging.set_verbosity(optuna.logging.ERROR)  # converge prints one line per trial itself
        seed_everything(self.base.seed)
        train = make_splits(*self.task.build_data(), target_key=self.task.target_key,
                            steps_per_epoch=self.base.steps_per_epoch,
                            missing_targets=self.task.loss is not None).get("train")
        # A stream has no size to cap the batch by: every size is a choice.
        self.batch_sizes = list(BATCH_SIZES) if getattr(train, "stream", False) else batch_choices(len(train))
        self._check_search_space()
        info = self._check_folder()
        if self.spec.url is None:  # the journal lives in the folder
            self._make_folder()
        storage = st.open_storage(self.spec, heartbeat=self.heartbeat)
        direction = "minimize" if self.base.mode == "min" else "maximize"
        try:
            self.study = optuna.create_study(storage=storage, study_name=self.study_name, direction=direction,
                                             pruner=self._pruner(), load_if_exists=True)
        except Exception as exc:  # noqa: BLE001 - a driver error, reported redacted
            raise st.storage_error(exc, self.spec) from None
        if self.study.direction.name.lower() != direction:
            raise ConvergeError(f"study {self.study_name!r} in {self.spec.shown} is {self.study.direction.name.lower()}"
                                f"d, but {self.task.name} monitors {self.base.monitor} with mode {self.base.mode}")
        self._make_folder(info)
        # Workers of one study share the folder (a shared lock); `converge train`/`resume` into it are refused.
        self.folder_lock = lock_folder(self.out, shared=True)
        self.locks = st.WorkerLock(self.out).acquire()
        self.print(f"tune: study {self.study_name!r} in {self.spec.shown}, {direction} {self.base.monitor}; "
                   f"worker {self.locks.id}")

    def _check_search_space(self) -> None:
        """The task's search_space(trial), tried once on a throwaway study: trial 0, the automatic choice,
        does not call it, so a bad one would otherwise surface only at trial 1."""
        import optuna

        if self.task.search_space is not None:
            scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
            suggest(scratch.ask(), self.batch_sizes, self.task.search_space)

    def _pruner(self):
        import optuna

        if self.pruner_name == "none":
            return optuna.pruners.NopPruner()
        if self.pruner_name == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=MIN_EPOCHS, max_resource=self.base.max_epochs,
                                                  reduction_factor=3)
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=MIN_EPOCHS, reduction_factor=3)

    def _check_folder(self) -> dict | None:
        """The tune folder belongs to one task, study and storage; a second run continues it. Returns what
        to write in tune.json (None when it is there already). Writes nothing."""
        info = {"task": str(self.task.path), "study": self.study_name, "storage": self.spec.shown,
                "monitor": self.base.monitor, "mode": self.base.mode, "seed": self.base.seed}
        path = self.out / TUNE_INFO
        if self.out.exists() and not self.out.is_dir():
            raise ConvergeError(f"output folder {str(self.out)!r} is a file")
        if path.exists():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConvergeError(f"{str(path)!r} cannot be read: {exc}") from None
            for key in ("study", "storage", "task"):
                if old.get(key) != info[key]:
                    raise ConvergeError(f"{str(self.out)!r} holds the tune of {key} {old.get(key)!r}, not "
                                        f"{info[key]!r}; use another --out")
            return None
        if self.out.is_dir() and any(p.name not in (JOURNAL, TRIALS, WORKERS) for p in self.out.iterdir()):
            raise ConvergeError(f"output folder {str(self.out)!r} already exists and is not a converge tune folder")
        return info

    def _make_folder(self, info: dict | None = None) -> None:
        from converge.io.atomic import atomic_write_text

        try:
            (self.out / TRIALS).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConvergeError(f"output folder {str(self.out)!r} cannot be written: {exc.strerror or exc}") from None
        if info is not None:
            atomic_write_text(self.out / TUNE_INFO, json.dumps(info, indent=2) + "\n")

    # 2. run trials until the study holds enough finished ones
    def run(self, wanted: int, timeout: float | None) -> str:

        deadline = None if timeout is None else self.started + timeout
        try:
            if self.warm_start:
                self._warm_start()
            while True:
                self._fail_dead_trials()
                counts = trial_counts(self.study.get_trials(deepcopy=False))
                done = counts["COMPLETE"] + counts["PRUNED"]
                if done >= wanted:
                    return "finished"
                if deadline is not None and time.monotonic() >= deadline:
                    return "timeout"
                if done + counts["RUNNING"] >= wanted:
                    # Everything left is running elsewhere: wait, and take over any trial whose worker died.
                    time.sleep(1.0 if self.spec.url is None else min(5.0, self.heartbeat / 2))
                    continue
                self.study.sampler = self._sampler()
                self.study.optimize(lambda trial: self._objective(trial, wanted), n_trials=1,
                                    catch=(_Surplus,), gc_after_trial=False)
        except (_Interrupted, KeyboardInterrupt):
            self._requeue_interrupted()
            return "interrupted"

    def _warm_start(self) -> None:
        """A new study starts from converge's own automatic choice (batch-size rule, LR range test, short
        race: converge.choose.auto), queued as trial 0 with the epochs spent choosing it; the search then
        samples around a configuration that already trains. Measured in bench/tune.py."""
        from converge.assembly import automatic_choice

        if self.study.get_trials(deepcopy=False):
            return  # a study that has begun has had its start
        tuning = automatic_choice(self.task, self.base)
        automatic = automatic_knobs(tuning.config)
        # The trial trains with the choice exactly (LR, batch size and warmup as chosen, the task's own
        # defaults for its arguments), so that it is the run `converge train` makes; TPE sees the values
        # clipped to its space. skip_if_exists: two workers starting together queue one trial.
        self.study.enqueue_trial(warm_start_params(automatic, self.batch_sizes),
                                 user_attrs={"warm_start": True, "tuning_epochs": tuning.epochs, "automatic": automatic},
                                 skip_if_exists=True)
        self.print(f"tune: trial 0 starts from converge's automatic choice: {tuning.config.optimizer} lr "
                   f"{tuning.config.lr:.3g} wd {tuning.config.weight_decay:g} batch {tuning.config.batch_size} "
                   f"({tuning.epochs:.1f} epochs spent choosing)")
        for knobs in strong_decay_starts(tuning) if self.strong_decay else []:
            self.study.enqueue_trial(warm_start_params(knobs, self.batch_sizes),
                                     user_attrs={"queued": "strong weight decay", "exact_knobs": knobs},
                                     skip_if_exists=True)
            self.print(f"tune: then {knobs['optimizer']} lr {knobs['lr']:.3g} (its best in the race) with a strong "
                       f"weight decay, {knobs['weight_decay']:g}")

    def _requeue_interrupted(self) -> None:
        """The trial stopped by Ctrl-C is failed by Optuna; queue it again so a re-run finishes it."""
        from optuna.trial import TrialState

        if self.current is None:
            return
        trial = self.study._storage.get_trial(self.current)
        if trial.state == TrialState.FAIL and not trial.user_attrs.get("surplus"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                st._retry_callback()(self.study, trial)

    def _sampler(self):
        """TPE, seeded from --seed and the number of trials so far: one worker gives the same study every
        time; parallel workers starting together do not propose the same values."""
        import optuna

        seed = self.base.seed * 100_003 + len(self.study.get_trials(deepcopy=False))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.samplers.TPESampler(seed=seed)

    def _fail_dead_trials(self) -> None:
        if self.spec.url is None:
            failed = st.fail_dead_trials(self.study, self.locks)
        else:
            import optuna

            before = {t.number for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optuna.storages.fail_stale_trials(self.study)
            failed = sorted({t.number for t in self.study.get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.FAIL,))} - before)
        for number in failed:
            self.print(f"trial {number}: its worker died; failed and queued again")

    def _objective(self, trial, wanted: int) -> float:
        import optuna

        from converge.assembly import Output, assemble_task
        from converge.engine.loss_parameters import left_as_they_are, loss_parameters

        self.current = trial._trial_id
        self._check_surplus(trial, wanted)
        trial.set_user_attr("worker", self.locks.id)
        trial.set_user_attr("host", socket.gethostname())
        exact = trial.user_attrs.get("automatic") or trial.user_attrs.get("exact_knobs")
        knobs, task_args = suggest(trial, self.batch_sizes, None if exact else self.task.search_space)
        knobs = exact or knobs
        run_dir = self.out / TRIALS / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial.set_user_attr("task_args", task_args)
        trial.set_user_attr("knobs", knobs)
        config = self.base.with_values(**knobs)
        # The queued starting points run to the end: a strong weight decay learns slower in its first epochs,
        # and a pruned automatic trial leaves the report nothing to compare the others with.
        judge = EpochJudge(trial, f"val_{config.monitor.removeprefix('val_')}", config.mode,
                           laggards=self.pruner_name != "none", prunable=not exact)
        try:
            # A loss with parameters of its own (the task file's one object) starts every trial as it was built.
            with left_as_they_are(loss_parameters(self.task.loss)):
                run = assemble_task(self.task, config, output=Output(run_dir, force=True), verbose=False,
                                    task_args=task_args, epoch_judge=judge)
                parts: list = []
                summary = run.run(on_trained=lambda trainer: parts.append(self._validation_parts(trainer))).summary
        except StorageError as exc:  # the trial failed; the study is whole, and a rerun goes on with it
            raise exc.with_advice(state=f"trial {trial.number} failed, the study's finished trials are kept",
                                  then="run the same `converge tune` command again") from None
        for key in ("status", "epochs", "best_epoch"):
            trial.set_user_attr(key, summary[key])
        best = summary["best"].get(run.trainer.monitor_key)
        self._say(trial, knobs, task_args, summary, best, run.trainer.monitor_key)
        status = Status(summary["status"])
        if status is Status.INTERRUPTED:
            raise _Interrupted(summary["stop_reason"])
        if status in (Status.PRUNED, Status.DIVERGED) or best is None or not math.isfinite(best):
            raise optuna.TrialPruned(summary["stop_reason"])
        trial.set_user_attr("val_parts", parts[0] if parts else None)
        return float(best)

    @staticmethod
    def _validation_parts(trainer) -> list[float] | None:
        """The kept weights scored on fixed parts of the validation split (how the report tells a trial that is
        better than the automatic choice from one that drew luckier validation samples); only for a trial
        that finished, and on the inputs it trained on (before a standardization is folded into the model)."""
        if trainer.status not in (Status.CONVERGED, Status.MAX_EPOCHS):
            return None
        return scored_in_parts(trainer.model, trainer.splits.get("val"), trainer.objective,
                               trainer.monitor_key.removeprefix("val_"), amp=trainer.config.amp, device=trainer.device)

    def _check_surplus(self, trial, wanted: int) -> None:
        """Only the first ``wanted`` trials that have not failed are run (by trial number)."""
        from optuna.trial import TrialState

        alive = sorted(t.number for t in self.study.get_trials(deepcopy=False) if t.state != TrialState.FAIL)
        if trial.number not in alive[:wanted]:
            trial.set_user_attr("surplus", True)
            raise _Surplus(f"trial {trial.number} is beyond the {wanted} wanted")

    def _say(self, trial, knobs: dict, task_args: dict, summary: dict, best, key: str) -> None:
        extra = " ".join(f"{part}.{k}={v}" for part, kw in task_args.items() for k, v in kw.items())
        shown = "nan" if best is None else f"{best:.6g}"
        self.print(f"trial {trial.number}: {knobs['optimizer']} lr {knobs['lr']:.3g} wd {knobs['weight_decay']:.2g} "
                   f"batch {knobs['batch_size']}{' ' + extra if extra else ''} -> {summary['status']} after "
                   f"{summary['epochs']} epoch(s), best {key} {shown}")

    def stop(self) -> None:
        if self.locks is not None:
            self.locks.release()
        if self.folder_lock is not None:
            self.folder_lock.release()

    # 3. export the best trial
    def export(self, wanted: int, status: str) -> dict:

        return export_study(self.study, self.out, task=self.task, base=self.base, wanted=wanted, status=status,
                            storage_shown=self.spec.shown, options=self.options,
                            wall_seconds=time.monotonic() - self.started, print_fn=self.print)
