"""The end-of-run judgement: what a run is measured against, and what is said about it at the end.

Two yardsticks, measured here so that the rules of `converge.decide.diagnosis` stay pure:

* the constant prediction's loss on the training targets ("the model learned nothing"): read from the
  targets when they are in memory, else summed batch by batch over the first training epoch
  (`TargetStats`, on the device, no sync). It is learned once the first epoch ends, because the
  divergence guard's collapse test and the plateau's negligible gain use it too;
* the reference model's validation loss (`converge.engine.reference`), used at the end only when the
  underfitting rule could fire with it (`needs_reference`). While a run trains on the CPU with a core idle
  beside it, it is trained there, in a thread of its own (`start_reference`: the run's end then finds it
  ready, about a second sooner, and a run that does not want it stops it); otherwise it is trained at the
  end, when wanted.

At the end the kept weights are also scored on the training split, beside their validation values, for
the generalization gap. The Trainer asks once (`conclude`); while it trains it only feeds the first epoch's
targets and asks for the live findings (overfitting, an LR too high) of each epoch.
"""

from __future__ import annotations

import math

import os
import threading
from typing import Callable

import torch
from torch import nn

from converge.decide.diagnosis import diagnose_run, live_findings, needs_reference
from converge.decide.findings import Finding
from converge.decide.significance import PairedRise
from converge.engine.distributed import World
from converge.engine.objective import (Objective, TargetSample, TargetStats, in_memory_constant_loss,
                                      own_constant_loss, targets_in_memory)
from converge.engine.reference import applies as reference_applies, reference_loss, reference_width


class RunJudge:
    """Measures the yardsticks of one run and asks the diagnosis. ``splits``: the run's splits (on the
    device); ``seed``: the reference model's."""

    def __init__(self, splits: dict, objective: Objective, *, seed: int) -> None:
        self.splits, self.objective, self.seed = splits, objective, seed
        self.baseline_loss: float | None = None
        streamed = targets_in_memory(splits["train"]) is None
        # The first epoch's targets make the baseline when they are not in memory; for a loss of the task's own,
        # a sample of them gives the scale of a negligible gain (`gain_scale`). The loop feeds either.
        self.target_stats: TargetStats | TargetSample | None = None
        if streamed and objective.known_loss:
            self.target_stats = TargetStats(objective)
        elif streamed and objective.output_template is not None:
            self.target_stats = TargetSample()
        self._reference: _Background | None = None   # the reference, training beside the run
        self.reference_failure: str | None = None     # why the reference could not be trained, if it could not

    def start_reference(self, model: nn.Module, device: torch.device) -> None:
        """From the run's thread, before it trains: train the reference model in a thread of its own, when
        there can be one, the data is on the CPU (on an accelerator it would take the run's memory), the
        model is large (`heavy_enough`: a small one's steps would wait for the interpreter's lock) and a core
        is idle beside the run (`core_to_spare`: on a busy machine it would slow the run by what it saves).
        ``model``: the user's, whose bottleneck bounds the reference's width (run once here, between steps);
        ``device``: the run's. Once per run; `Trainer.run` stops it on every way out."""
        if self._reference is not None and not self._reference.stopped:
            return
        if device.type != "cpu" or not reference_applies(self.splits, self.objective) or not heavy_enough(model) \
                or not core_to_spare():
            return
        width = reference_width(self.splits, model)
        splits, objective, seed = self.splits, self.objective, self.seed
        self._reference = _Background(lambda stop: reference_loss(splits, objective, seed=seed, width=width,
                                                                  stop=stop))

    def stop_reference(self) -> None:
        """The run's end does not want the reference (or the run was interrupted): its thread stops."""
        if self._reference is not None:
            self._reference.stop()

    def learn_baseline(self, world: World | None = None) -> float | None:
        """After the first epoch (every rank: a collective under torchrun): the constant prediction's loss, or
        None for a loss without a known meaning."""
        if not self.objective.standard_loss:
            return None
        if not isinstance(self.target_stats, TargetStats):
            self.baseline_loss = in_memory_constant_loss(self.splits["train"], self.objective)
        else:
            self.baseline_loss = self.target_stats.loss(world)
            self.target_stats = None  # its job is done; the value is kept (and checkpointed)
        return self.baseline_loss

    def gain_scale(self, first_train_loss: float, first_val_loss: float = math.nan) -> float:
        """The scale of the plateau's negligible gain for a loss whose constant prediction is not known: the
        lowest of the first epoch's mean training loss, its validation loss, and the task's own loss at its
        best constant output (a model that starts far from its targets' scale). The first validation loss is
        the lowest where the loss adds parts on different scales: a head in raw units three orders above a
        cross-entropy beside it is learned within the first epoch, and what is left to gain lives on the
        cross-entropy's scale (digits and their ink, under learned uncertainty weights: the constant's loss
        about 1000, the first validation loss 17, later gains of 0.02 an epoch were "negligible" at
        1e-4 x 1000 and the run stopped at epoch 25 with the digit accuracy at 0.65). A constant that scores
        zero or below (a loss with a sign) says nothing of the scale and is not used."""
        first = min((abs(value) for value in (first_train_loss, first_val_loss) if math.isfinite(value)),
                    default=math.inf)
        sample = self.target_stats.targets() if isinstance(self.target_stats, TargetSample) else None
        if isinstance(self.target_stats, TargetSample):
            self.target_stats = None   # its job is done
        constant = own_constant_loss(self.splits["train"], self.objective, sample)
        return min(first, constant) if constant is not None and constant > 0 else first

    def conclude(self, *, evaluate: Callable[..., dict], model: nn.Module, history: list[dict], events: list[dict],
                 status, config, monitor: str, best_record: dict, epoch: int, world: World | None = None,
                 rise_test: PairedRise | None = None) -> dict:
        """The summary's judgement of a finished run, with the kept weights loaded: ``train`` (their values on
        the training split, when measured), ``yardsticks`` (what the findings were judged against, when the
        baseline is known) and ``diagnosis``. ``evaluate(split_name, prefix=...)`` scores ``model``, whose
        bottleneck (if any) also bounds the reference model's width. ``rise_test``: the last weights'
        validation loss against the kept ones', part by part, when it rose after its best epoch."""
        fit = self._fit_values(evaluate, best_record)
        judgement = {}
        if fit is not None:
            judgement["train"] = {k[len("train_"):]: v for k, v in fit.items() if k.startswith("train_")}
        if self.baseline_loss is None and self.target_stats is None and epoch >= 1:
            self.learn_baseline(world)  # targets in memory, a checkpoint from before the baseline was kept
        baseline = self.baseline_loss
        wanted = needs_reference(history, fit, baseline)
        if not wanted:
            self.stop_reference()
        reference = self._reference_loss(model) if wanted else None
        if baseline is not None:
            judgement["yardsticks"] = {"constant_prediction_loss": baseline, "reference_val_loss": reference}
        findings = diagnose_run(history, events, status=status, monitor=monitor, mode=config.mode,
                                patience=config.patience, max_epochs=config.max_epochs,
                                weight_decay=config.weight_decay, baseline_loss=baseline, fit=fit,
                                reference_loss=reference, rise_test=rise_test)
        judgement["diagnosis"] = [f.to_dict() for f in findings]
        return judgement

    def _reference_loss(self, model: nn.Module) -> float | None:
        """The reference's loss: from its thread when it trains beside the run (waiting for it), else now.
        None when it fails: it is a yardstick, and a finished run is never lost to it (what failed is kept
        in ``reference_failure`` for the run to say)."""
        try:
            if self._reference is not None and not self._reference.stopped:
                return self._reference.result()
            return reference_loss(self.splits, self.objective, seed=self.seed, model=model)
        except Exception as exc:
            self.reference_failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            return None

    def _fit_values(self, evaluate: Callable[..., dict], best_record: dict) -> dict | None:
        """The kept weights on the training split (eval mode: no dropout) beside their validation values, for
        the generalization gap. One pass over the training split; not for a stream, nor for a loss without
        a known meaning."""
        if not self.objective.standard_loss or getattr(self.splits["train"], "stream", False):
            return None
        return {**evaluate("train", prefix="train_"), **best_record}

    # --- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"loss": self.baseline_loss,
                "targets": self.target_stats.state_dict() if self.target_stats is not None else None}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        """``state`` may be empty (a checkpoint from before the baseline was kept: learned again in the next
        first epoch)."""
        self.baseline_loss = state.get("loss")
        if self.target_stats is not None and state.get("targets") is not None:
            self.target_stats.load_state_dict(state["targets"])
            if isinstance(self.target_stats, TargetStats):
                sums = self.target_stats.sums
                self.target_stats.sums = sums.to(device) if sums is not None else None
        elif self.target_stats is not None and (self.baseline_loss is not None or
                                                isinstance(self.target_stats, TargetSample)):
            self.target_stats = None   # a checkpoint from after the first epoch: its job was done


def new_live_findings(history: list[dict], events: list[dict], *, weight_decay: float | None, monitor: str,
                      mode: str | None, rise_test: PairedRise | None = None) -> list[Finding]:
    """The problems a run shows now (overfitting, an LR too high) that its events have not told yet: every
    front door (the Trainer, `Monitor`, the callbacks) tells each one once, the first epoch it shows.
    ``rise_test``: the current weights' validation loss against the kept ones', part by part (the Trainer's;
    a front door that cannot score weights tells the rise on its thresholds alone)."""
    told = {e.get("code") for e in events if e.get("event") == "diagnosis"}
    found = live_findings(history, events, weight_decay=weight_decay, monitor=monitor, mode=mode,
                          rise_test=rise_test)
    return [f for f in found if f.code not in told]


SPARE_CORE = 0.5   # idle cores (on average over the last minute) that make the reference train beside the run
# The reference trains beside a model at least this large. Two Python threads share one interpreter lock: a
# small model's steps hold it for most of their time, and the reference slowed them by more than it saved
# (a 4.4k-parameter LSTM forecaster, alternated side by side: 12.6-12.8 s beside, 11.6-11.8 s at the end),
# while a large model's steps are long operations that release it (a 25M-parameter MLP saved about 0.8 s).
BESIDE_MIN_PARAMETERS = 1_000_000


def core_to_spare() -> bool:
    """Whether a core is idle beside the run: the usable cores exceed both torch's intra-op threads (what the
    run's own operations use) and the machine's 1-minute load average by ``SPARE_CORE``. Unknown (no load
    average on this system): no."""
    try:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        load = os.getloadavg()[0]
    except OSError:
        return False
    return idle_beside(cores, load, torch.get_num_threads())


def heavy_enough(model: nn.Module) -> bool:
    """Whether ``model``'s steps leave the interpreter's lock free enough for the reference beside them
    (``BESIDE_MIN_PARAMETERS``)."""
    return sum(p.numel() for p in model.parameters()) >= BESIDE_MIN_PARAMETERS


def idle_beside(cores: int, load: float, threads: int) -> bool:
    """The rule of `core_to_spare`, on its numbers."""
    return cores - max(load, threads) >= SPARE_CORE


class _Background:
    """``work(stop)`` in a thread of its own, with torch's intra-op thread count of the thread that starts
    it; ``stop`` is a `threading.Event` it checks. Daemon, so that nothing waits for it unasked, but the run
    always stops it (`RunJudge.stop_reference`) before it returns or raises."""

    def __init__(self, work: Callable[[threading.Event], float | None]) -> None:
        self._stop = threading.Event()
        self._value: float | None = None
        self._failure: BaseException | None = None
        threads = torch.get_num_threads()

        def run() -> None:
            torch.set_num_threads(threads)
            try:
                self._value = work(self._stop)
            except BaseException as exc:  # raised again in the run's thread, by result()
                self._failure = exc

        self._thread = threading.Thread(target=run, name="converge-reference", daemon=True)
        self._thread.start()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Stop the work and wait for its thread (it checks between steps): a daemon thread still inside
        torch when the interpreter exits aborts the process ("terminate called without an active
        exception"), which a run failing early (a full disk at its first checkpoint) would otherwise do."""
        self._stop.set()
        self._thread.join()

    def result(self) -> float | None:
        self._thread.join()
        if self._failure is not None:
            raise self._failure
        return self._value
