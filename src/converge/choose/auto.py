"""Choose the optimizer, learning rate, weight decay and batch size before training ("auto").

The steps, each recorded as an event with its evidence:

1. **Batch size**: about 50 steps per epoch, as a power of two in [16, 256], capped by the training
   set; on CUDA a forward/backward at that size is tried first and halved on out-of-memory.
2. **Learning rate**: a range test per candidate optimizer, read by `converge.decide.suggest_lr`.
   A curve with no evidence falls back to the optimizer's standard LR, and says so.
   A curve whose loss never fell below a constant prediction's (`converge.decide.collapse`) is no
   evidence either: the standard LR is used. A recurrent model on token ids takes the curve's valley
   instead (`recurrent_on_token_ids`, `_valley_lr`): the largest rule's LR wins a short race on such a
   model and then overfits within a few epochs.
3. **Optimizer and LR, checked on validation**: every (optimizer, LR) arm -- the suggestion and a
   third of it, or three LRs around it when the optimizer is fixed, or the valley alone -- trains 40
   optimizer steps (a partial epoch when epochs are longer) with the real engine; successive halving
   keeps the better half on the monitored value and trains it again from the start with twice the
   steps, until one is left, or until the leader is ahead of every other arm by a wide margin
   (`converge.decide.race`).
   The race costs the same number of steps whatever the size of the data, one arm at a time -- except on
   tiny data (fewer than ``TINY_STEPS_PER_EPOCH`` steps an epoch), where those steps are many epochs:
   there "auto" tries AdamW alone (one range test, not two) and the first rung is at most
   ``RUNG_MAX_EPOCHS`` epochs, so that choosing costs about what the run it serves does. An arm
   whose validation loss is no better than a constant prediction's (it collapsed: one class for every
   row; or it is worse still) ranks after every arm that learned, and such arms within noise of each
   other rank in the order proposed (`converge.decide.race.race_order`); when none learned, the race
   says so (a ``race_all_collapsed`` event and a console warning).
4. **Weight decay**: the budget of a short race cannot tell weight decays apart (their effect shows
   over a whole run), so an explicit value is kept and "auto" takes the standard decoupled value
   for the optimizer (AdamW 1e-2, SGD 5e-4), recorded as such.
5. **Warmup**: when the chosen LR is within 5x of where the range test's loss bottomed out (close to
   the unstable side), the first epoch (at most 200 steps) warms up linearly. Warmup is a function
   of the step count, so it needs no horizon and composes with plateau cuts.

Finished stages are saved in the run folder's `tuning.json`; a run killed while tuning picks up
from the last finished stage.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from converge.config import TrainConfig
from converge.data import STREAM_BATCH, epoch_samples, tensors_of
from converge.console import Console
from converge.decide.collapse import never_learned, no_better_than_constant
from converge.decide.lr_suggest import LrSuggestion, smooth
from converge.decide.race import race_decided, race_order
from converge.engine import device as dev
from converge.engine.objective import Objective, in_memory_constant_loss, sampled_constant_loss
from converge.engine.optim import OPTIMIZERS
from converge.status import Status
from converge.choose.lr_find import RangeTest, lr_range_test

TARGET_STEPS_PER_EPOCH = 50
BATCH_RANGE = (16, 256)
RUNG_STEPS = 40            # optimizer steps per arm in the race's first rung (doubled each rung)
# Tiny data: 80 digits on a 68k-parameter MLP (batch 16, 5 steps per epoch) spent 95.6 epochs choosing (two
# 71-87-step range tests, a 40/80-step race of 4 arms) for a 22-epoch run. A range test cannot be shorter: it
# needs its ~100 steps to sweep 8 decades of LR (capped at 30 steps it found no evidence there, and 2-epoch
# rungs at the standard LRs left every arm at a constant prediction's loss). AdamW alone with 3-epoch rungs:
# 20-22 epochs choosing over 3 seeds, test accuracy 0.857 on average against 0.868 (within the seeds' spread).
TINY_STEPS_PER_EPOCH = 10  # fewer steps an epoch (under 160 rows at batch 16): tiny data
RUNG_MAX_EPOCHS = 3        # on tiny data the first rung trains at most this many epochs per arm (doubled per rung)
WARMUP_MARGIN = 5.0        # warm up when the LR is within this factor of the range test's loss minimum


@dataclass
class Tuning:
    config: TrainConfig
    epochs: float = 0.0
    events: list[dict] = field(default_factory=list)
    range_tests: dict[str, RangeTest] = field(default_factory=dict)
    # The best LR each optimizer reached in the race, with its warmup ({} when there was no race): where
    # `converge tune` starts its search besides the choice itself.
    best_arms: dict[str, dict] = field(default_factory=dict)


class StageLog:
    """What tuning has finished so far, so a killed run need not redo it. ``save`` persists it."""

    def __init__(self, stages: dict | None = None, save=None) -> None:
        self.stages = dict(stages or {})
        self._save = save

    def get(self, name: str):
        return self.stages.get(name)

    def put(self, name: str, value) -> None:
        self.stages[name] = value
        if self._save is not None:
            self._save(self.stages)


def choose_batch_size(n_train: int, model: nn.Module, split, objective: Objective, device: torch.device,
                      amp: str) -> tuple[int, str]:
    target = n_train / TARGET_STEPS_PER_EPOCH
    size = 2 ** round(math.log2(max(target, 1)))
    size = int(min(max(size, BATCH_RANGE[0]), BATCH_RANGE[1], n_train))
    reason = (f"{n_train} training samples: about {TARGET_STEPS_PER_EPOCH} steps per epoch, as a power of two "
              f"in [{BATCH_RANGE[0]}, {BATCH_RANGE[1]}], capped by the training set")
    while device.type == "cuda" and size > 1 and not _fits_in_memory(model, split, objective, size, device, amp):
        size //= 2
        reason += f"; halved to {size} after running out of GPU memory"
    return size, reason


def _fits_in_memory(model, split, objective, size, device, amp) -> bool:
    probe = copy.deepcopy(model).to(device)
    try:
        inputs, targets = next(iter(split.batches(size)))
        with dev.autocast(amp, device):
            objective.forward(probe, inputs, targets)[1].backward()
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        del probe
        torch.cuda.empty_cache()


def choose_hyperparameters(model: nn.Module, splits: dict, config: TrainConfig, objective: Objective, *,
                           device: torch.device, console: Console | None = None,
                           log: StageLog | None = None) -> Tuning:
    console = console or Console()
    log = log or StageLog()
    train = splits["train"].to(device)
    stream = getattr(train, "stream", False)
    events: list[dict] = []
    samples = 0

    batch_size = config.batch_size
    if batch_size == "auto":
        if stream:
            chosen = [STREAM_BATCH, f"a stream has no size to divide into steps: {STREAM_BATCH}, the usual default"]
        elif getattr(train, "own_batch_size", None) is not None:
            chosen = [train.own_batch_size, "the DataLoader's own: converge uses a DataLoader's batches as they "
                                            "come (give a Dataset for converge to choose)"]
        else:
            chosen = log.get("batch_size") or choose_batch_size(len(train), model, train, objective, device,
                                                                config.amp)
        batch_size, reason = chosen
        log.put("batch_size", [batch_size, reason])
        events.append(_event("chose_batch_size", value=batch_size, reason=reason,
                             train_samples=None if stream else len(train)))
        console.message(f"tuning: batch size {batch_size} ({reason})")
    n_train = epoch_samples(train, batch_size)

    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    optimizers = candidate_optimizers(config.optimizer, steps_per_epoch)
    decay = {opt: OPTIMIZERS[opt].default_weight_decay if config.weight_decay == "auto" else config.weight_decay
             for opt in optimizers}
    tests: dict[str, RangeTest] = {}
    arms: list[tuple[str, float]] = []
    # A Dataset's is estimated on a sample of it (a whole pass would cost an epoch of reading). A DataLoader
    # that resamples (a WeightedRandomSampler balancing the classes) trains on another mix of targets than
    # the dataset's: its constant is unknown.
    baseline = None
    if not getattr(train, "resampled", False):
        baseline = in_memory_constant_loss(train, objective)
        baseline = baseline if baseline is not None else sampled_constant_loss(train, objective)
    token_recurrent = recurrent_on_token_ids(model, train)
    for opt in optimizers:
        if config.lr != "auto":
            arms.append((opt, float(config.lr)))
            continue
        test = _range_test(log, model, train, objective, opt, decay[opt], batch_size, device, config)
        tests[opt] = test
        samples += test.samples
        test.suggestion = _no_evidence_at_level(test, baseline)
        lr, note, candidates = _race_lrs(test.suggestion, opt, fixed=len(optimizers) == 1, valley=token_recurrent)
        events.append(_event("lr_range_test", optimizer=opt, batch_size=batch_size, steps=len(test.lrs),
                             suggested_lr=lr, min_loss_lr=test.suggestion.min_loss_lr, ok=test.suggestion.ok,
                             candidates=dict(test.suggestion.candidates), reason=note))
        console.message(f"tuning: {opt} range test over {len(test.lrs)} steps -> LR {lr:.3g} ({note})")
        arms += [(opt, candidate) for candidate in candidates]

    if len(arms) > 1:
        (opt, lr), race_samples, race_events = _race(log, model, splits, config, objective, arms, decay,
                                                     batch_size, steps_per_epoch, tests, console, baseline)
        samples += race_samples
        events += race_events
    else:
        opt, lr = arms[0]
    raced = "won the race on the monitored validation value" if len(arms) > 1 else "the only candidate"
    if config.optimizer == "auto":
        alone = (f"tiny data ({steps_per_epoch} steps an epoch): {opt} alone was tried, since comparing "
                 f"optimizers would cost more epochs than the run") if len(optimizers) == 1 else raced
        events.append(_event("chose_optimizer", value=opt, lr=lr, reason=alone))
    if config.lr == "auto":
        events.append(_event("chose_lr", value=lr, optimizer=opt, reason=raced if len(arms) > 1 else
                             "the range test's suggestion (nothing else to race)"))
    if config.weight_decay == "auto":
        events.append(_event("chose_weight_decay", value=decay[opt], reason=(
            f"the standard decoupled weight decay for {opt}: a short race cannot tell weight decays apart, "
            f"their effect shows over a whole run")))
    warmup, warmup_reason = _warmup_steps(lr, tests.get(opt), steps_per_epoch)
    if warmup:
        events.append(_event("warmup", steps=warmup, lr=lr, reason=warmup_reason))
    chosen = config.with_values(optimizer=opt, lr=lr, weight_decay=decay[opt], batch_size=batch_size,
                                warmup_steps=warmup or config.warmup_steps, min_lr=config.min_lr)
    epochs = samples / n_train
    console.message(f"tuning: {opt} lr {lr:.3g} weight decay {decay[opt]:g} batch {batch_size}"
                    f"{f' warmup {warmup} steps' if warmup else ''} ({epochs:.1f} epochs spent choosing)")
    best = {o: {"lr": a_lr, "warmup_steps": _warmup_steps(a_lr, tests.get(o), steps_per_epoch)[0]}
            for o, a_lr in best_arm_per_optimizer(events).items()}
    return Tuning(chosen, epochs, events, tests, best)


def best_arm_per_optimizer(events: list[dict]) -> dict[str, float]:
    """From the race's rungs: each optimizer's best-ranked LR in the last rung it ran in, the chosen optimizer
    first. An optimizer whose arms there all collapsed or blew up has none."""
    best: dict[str, float] = {}
    for event in (e for e in events if e.get("event") == "race_rung"):
        ranked = {}  # arms are listed best first
        for arm in event["arms"]:
            ranked.setdefault(arm["optimizer"], arm)
        for optimizer, arm in ranked.items():
            learned = arm["best"] is not None and not arm["collapsed"]
            if learned:
                best[optimizer] = arm["lr"]
            else:
                best.pop(optimizer, None)
    winner = next((e["value"] for e in events if e.get("event") == "chose_optimizer"), None)
    return dict(sorted(best.items(), key=lambda item: item[0] != winner))


def _event(kind: str, **values) -> dict:
    return {"event": kind, "epoch": 0, "step": 0, **values}


def _range_test(log, model, train, objective, opt, decay, batch_size, device, config) -> RangeTest:
    saved = log.get(f"range_test_{opt}")
    if saved is not None:
        return RangeTest.from_dict({**saved, "optimizer": opt, "batch_size": batch_size})
    test = lr_range_test(model, train, objective, optimizer=opt, weight_decay=decay, batch_size=batch_size,
                         device=device, amp=config.amp, seed=config.seed)
    log.put(f"range_test_{opt}", test.to_dict())
    return test


def tiny(steps_per_epoch: int) -> bool:
    """Whether an epoch is so short that the standard choice would cost many epochs (see the constants)."""
    return steps_per_epoch < TINY_STEPS_PER_EPOCH


def candidate_optimizers(requested: str, steps_per_epoch: int) -> list[str]:
    """The optimizers to try: the one asked for; with "auto" every one, or AdamW (the first) alone on tiny data."""
    if requested != "auto":
        return [requested]
    return list(OPTIMIZERS)[:1] if tiny(steps_per_epoch) else list(OPTIMIZERS)


def rung_steps(rung: int, steps_per_epoch: int) -> int:
    """Each arm's steps in race rung ``rung`` (1, 2, ...): ``RUNG_STEPS`` doubled per rung; on tiny data at most
    ``RUNG_MAX_EPOCHS`` epochs in the first rung."""
    first = min(RUNG_STEPS, RUNG_MAX_EPOCHS * steps_per_epoch) if tiny(steps_per_epoch) else RUNG_STEPS
    return max(1, first) * 2 ** (rung - 1)


def _no_evidence_at_level(test: RangeTest, baseline: float | None) -> LrSuggestion:
    """The range test's suggestion, unless its loss never fell below a constant prediction's."""
    if not test.suggestion.ok or not never_learned(smooth(test.losses), baseline):
        return test.suggestion
    return dataclasses.replace(test.suggestion, ok=False, reason=(
        f"the loss never fell below a constant prediction's ({baseline:.4g}) over the sweep"))


def recurrent_on_token_ids(model: nn.Module, split) -> bool:
    """Whether ``model`` has a recurrent layer (`nn.RNN`, `nn.LSTM`, `nn.GRU`) and the inputs of ``split``
    hold token ids: an integer tensor, alone or among others (a probe batch is read only for such a model)."""
    if not any(isinstance(module, nn.RNNBase) for module in model.modules()):
        return False
    inputs, _ = split.probe(2)
    return any(not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool) for t in tensors_of(inputs))


def _race_lrs(suggestion: LrSuggestion, opt: str, *, fixed: bool, valley: bool) -> tuple[float, str, list[float]]:
    """The range test's LR for ``opt``, why, and the LRs to race for it. ``valley``: a recurrent model on token
    ids, whose valley LR races alone (`_valley_lr`); ``fixed``: the optimizer was given (`_lr_arms`)."""
    chosen = _valley_lr(suggestion) if valley and suggestion.ok else None
    if chosen is not None:
        return chosen, (f"a recurrent model on token ids: the valley rule's {chosen:.2g}, not the largest rule's "
                        f"{suggestion.lr:.2g}, which such models overfit at within a few epochs"), [chosen]
    lr, note = _lr_from(suggestion, opt)
    return lr, note, _lr_arms(lr, suggestion, fixed)


def _lr_from(suggestion: LrSuggestion, opt: str) -> tuple[float, str]:
    if suggestion.ok:
        return suggestion.lr, suggestion.reason
    default = OPTIMIZERS[opt].default_lr
    return default, f"no usable evidence ({suggestion.reason}); the standard {default:g} for {opt}"


def _valley_lr(suggestion: LrSuggestion) -> float | None:
    """The valley rule's LR (two thirds along the longest fall of the range test's loss), kept within the
    suggestion's lower bound (min-loss LR / 100); None when the curve has no valley.

    For a recurrent model on token ids the largest rule overshoots: the race's 40-80 steps favour the larger
    LR, which then reaches its best validation loss within a few epochs and overfits (the embedding and the
    recurrent weights memorize sequences); a larger arm beside it would win the short race and lose the run.
    Measured over 3 seeds against the classic loop (AdamW 1e-3): a GRU next-character model 2.2377 -> 2.2165
    (classic 2.2225), a bidirectional GRU tagger 0.5638 -> 0.5588 (0.5580), a character LSTM language model
    2.7008 -> 2.7202 (2.7132, seeds 0.03 apart); a held-out LSTM name tagger 0.1891 -> 0.1894; models whose
    range test gave no evidence keep the standard LR."""
    valley = suggestion.candidates.get("valley")
    if not valley or not suggestion.min_loss_lr:
        return None
    return max(valley, suggestion.min_loss_lr / 100)


def _lr_arms(lr: float, suggestion: LrSuggestion, fixed: bool) -> list[float]:
    """LRs to check on validation: the suggestion and a third of it; with one optimizer, also 3x (never
    past half the loss minimum's LR). Chosen by bench/auto.py over 10 seeds and 4 tasks: racing a third
    and a tenth of the suggestion instead (with 100-step rungs) did worse on all four."""
    if not suggestion.ok:
        return [lr]
    arms = [lr, lr / 3]
    if fixed and suggestion.min_loss_lr and 3 * lr <= suggestion.min_loss_lr / 2:
        arms.insert(0, 3 * lr)
    return arms


def _warmup_steps(lr: float, test: RangeTest | None, steps_per_epoch: int) -> tuple[int, str]:
    if test is None or not test.suggestion.ok or not test.suggestion.min_loss_lr:
        return 0, ""
    margin = test.suggestion.min_loss_lr / lr
    if margin >= WARMUP_MARGIN:
        return 0, ""
    steps = max(10, min(steps_per_epoch, 200))
    return steps, (f"the LR {lr:.3g} is within {margin:.1f}x of the range test's loss minimum "
                   f"({test.suggestion.min_loss_lr:.3g}); a linear warmup over {steps} steps keeps the first "
                   f"updates stable")


def _race(log, model, splits, config, objective, arms, decay, batch_size, steps_per_epoch, tests, console,
          baseline=None):
    """Successive halving in optimizer steps: every arm trains ``RUNG_STEPS`` steps (a partial epoch when
    epochs are longer) and is scored on validation; the better half trains again from the start with twice
    the budget (the same trajectory as going on: the data order and the seeds depend on the step only), and
    so on until one is left. Arms train one after another from the same initial weights and only their
    scores are kept, so at most one arm's model and optimizer are alive at a time, and the race costs a
    number of steps that does not depend on the size of the data. An arm whose last validation loss sits at
    the constant prediction's (``baseline``) ranks after those that learned."""
    saved = log.get("race")
    if saved is not None:
        return (saved["winner"][0], saved["winner"][1]), saved["samples"], saved["events"]
    alive, rung, events, samples = list(arms), 0, [], 0
    sign = 1 if config.mode == "min" else -1
    monitor = None
    while len(alive) > 1:
        rung += 1
        budget = rung_steps(rung, steps_per_epoch)
        scores, collapsed, last_losses = {}, set(), {}
        for arm in alive:
            score, steps, monitor, last_losses[arm], arm_collapsed = _race_arm(
                model, splits, config, objective, arm, decay, batch_size, steps_per_epoch, tests, budget, baseline)
            samples += steps * batch_size
            scores[arm] = sign * score if math.isfinite(score) else math.inf
            if arm_collapsed:
                collapsed.add(arm)
        # An arm that blew up (no finite score) learned nothing either: it must not outrank one that sits
        # at, or above, the constant prediction's loss (raw diabetes, seed 2: SGD diverged, AdamW collapsed).
        learned_nothing = {arm for arm in alive if arm in collapsed or not math.isfinite(scores[arm])}
        proposed = sorted(alive, key=arms.index)  # a later rung's arms come ranked: the tie-break is the proposal
        ranked = [proposed[i] for i in race_order([scores[arm] for arm in proposed],
                                                  [arm in learned_nothing for arm in proposed],
                                                  [last_losses[arm] for arm in proposed], baseline)]
        if collapsed and len(learned_nothing) == len(alive):
            events.append(_event("race_all_collapsed", rung=rung, constant_prediction_loss=baseline, reason=(
                "every arm's validation loss sits at a constant prediction's: none learned yet; arms within "
                "noise of each other go on in the order proposed. A model that learns only "
                "after more steps than a rung is fine (the run's diagnosis says); otherwise check the inputs' "
                "scale with `converge doctor TASK`, or set --lr")))
            console.warning(f"tuning: every arm of race rung {rung} predicts no better than a constant "
                            f"(loss {baseline:.4g}); if the run learns nothing either, check the inputs "
                            f"(converge doctor) or set --lr")
        decided = race_decided([scores[arm] for arm in ranked], [arm in collapsed for arm in ranked])
        keep = ranked[:1] if decided else ranked[: max(1, len(alive) // 2)]
        events.append(_event("race_rung", rung=rung, steps=budget, epochs=round(budget / steps_per_epoch, 3),
                             monitor=monitor, decided=decided and len(alive) > 2,
                             arms=[{"optimizer": o, "lr": lr, "best": sign * scores[(o, lr)]
                                    if math.isfinite(scores[(o, lr)]) else None, "collapsed": (o, lr) in collapsed}
                                   for o, lr in ranked],
                             kept=[{"optimizer": o, "lr": lr} for o, lr in keep]))
        console.message("tuning: race rung {} ({} steps each): ".format(rung, budget) + ", ".join(
            f"{o} {lr:.3g} -> {sign * scores[(o, lr)]:.4g}{' (collapsed)' if (o, lr) in collapsed else ''}"
            for o, lr in ranked) + (" (decided: the leader is far ahead)" if decided and len(alive) > 2 else ""))
        alive = keep
    winner = alive[0]
    log.put("race", {"winner": list(winner), "samples": samples, "events": events})
    return winner, samples, events


def _race_arm(model, splits, config, objective, arm, decay, batch_size, steps_per_epoch, tests, budget,
              baseline=None):
    """One arm trained ``budget`` steps from ``model``'s weights: (its best monitored value, or inf when its
    training loss blew up; the steps it trained; the monitored key; its last validation loss; whether that
    loss is no better than the constant prediction's ``baseline``). Nothing of it is kept."""
    from converge.engine.loop import Trainer
    from converge.engine.loss_parameters import left_as_they_are, loss_parameters

    opt, lr = arm
    warmup, _ = _warmup_steps(lr, tests.get(opt), steps_per_epoch)
    arm_config = config.with_values(optimizer=opt, lr=lr, weight_decay=decay[opt], batch_size=batch_size,
                                    warmup_steps=warmup, max_epochs=math.ceil(budget / steps_per_epoch) + 1,
                                    min_lr=None, patience=max(config.patience, 10**6), checkpoint_seconds=1e9,
                                    guard=False)  # a diverging arm must lose, not be rescued
    race_splits = {name: split for name, split in splits.items() if name != "test"}
    # An arm's own end-of-run diagnosis is never read: no constant-prediction baseline for it, and no judgement
    # at its end (``judged``).
    arm_objective = dataclasses.replace(objective, known_loss=False)
    arm_model = copy.deepcopy(model)
    with left_as_they_are(loss_parameters(objective.loss_fn, arm_model)):  # a loss's own: trained, then put back
        trainer = Trainer(arm_model, race_splits, arm_config, arm_objective, restore_best=False, max_steps=budget,
                          alone=True, judged=False)   # under torchrun rank 0 races alone (`assembly._choose`)
        trainer.run()
    if trainer.status is Status.INTERRUPTED:  # Ctrl-C: stop tuning; finished stages are saved
        raise KeyboardInterrupt
    finite = math.isfinite(trainer.tracker.best) and trainer.status is not Status.DIVERGED
    last = trainer.history[-1].get("val_loss") if trainer.history else None
    collapsed = trainer.status is not Status.DIVERGED and no_better_than_constant(last, baseline)
    return (trainer.tracker.best if finite else math.inf), trainer.step, trainer.monitor_key, last, collapsed
