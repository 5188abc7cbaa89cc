"""The diagnosis on planted cases: per case, the code expected and the codes converge gives.

    PYTHONPATH=src python bench/judgement.py [--seeds 1] [--cases clean,dead,...]

Each case is a small task a new user might write, with one known problem (or none). The table printed is
measured, nothing is hard-coded but the expectation.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_digits, make_friedman1
from sklearn.model_selection import train_test_split
from torch import nn

import converge


def _digits(seed: int, train_rows: int | None = None):
    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    x_tr, x_va, y_tr, y_va = train_test_split(x_tr, y_tr, test_size=0.2, random_state=seed, stratify=y_tr)
    if train_rows:
        x_tr, y_tr = x_tr[:train_rows], y_tr[:train_rows]
    return (x_tr, y_tr), (x_va, y_va), (x_te, y_te)


def _mlp(inputs: int, width: int, outputs: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, outputs))


def _friedman(seed: int):
    x, y = make_friedman1(n_samples=2000, noise=1.0, random_state=seed)
    x, y = x.astype(np.float32), y.astype(np.float32)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed)
    x_tr, x_va, y_tr, y_va = train_test_split(x_tr, y_tr, test_size=0.2, random_state=seed)
    return (x_tr, y_tr), (x_va, y_va), (x_te, y_te)


def _cancer(seed: int):
    d = load_breast_cancer()
    x, y = d.data.astype(np.float32), d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    x_tr, x_va, y_tr, y_va = train_test_split(x_tr, y_tr, test_size=0.2, random_state=seed, stratify=y_tr)
    return (x_tr, y_tr), (x_va, y_va), (x_te, y_te)


# name -> (expected codes, builder(seed) -> (model, splits, options))
CASES = {
    "clean": ({"converged"}, lambda s: (_mlp(64, 128, 10), _digits(s), dict(optimizer="adamw", lr=1e-3))),
    "dead": ({"collapsed", "lr_too_high"}, lambda s: (_mlp(64, 128, 10), _digits(s), dict(optimizer="sgd", lr=8.0))),
    "memorize": ({"overfitting"}, lambda s: (_mlp(64, 1024, 10), _digits(s, train_rows=120),
                                             dict(optimizer="adamw", lr=1e-3))),
    "linear": ({"underfitting"}, lambda s: (nn.Linear(10, 1), _friedman(s), dict(optimizer="adamw", lr=3e-2))),
    # SGD at the LR auto mode once chose on raw features (issue 12); expected `collapsed` when the run ends
    # at the majority rate, else `lr_too_high` (its first epoch's loss blew up)
    # (the raw features as the model sees them: --no-standardize)
    "raw_collapse": ({"collapsed"}, lambda s: (_mlp(30, 32, 2), _cancer(s),
                                               dict(optimizer="sgd", lr=0.0138, standardize=False))),
    # the same run with converge's default standardization of unscaled features: a clean run
    "raw_standardized": ({"converged"}, lambda s: (_mlp(30, 32, 2), _cancer(s), dict(optimizer="sgd", lr=0.0138))),
}
ONLY_CONVERGED = ("clean", "raw_standardized")   # cases whose diagnosis must be `converged` alone


def _majority(split) -> float:
    counts = np.bincount(np.asarray(split[1]))
    return counts.max() / counts.sum()


def _accuracies(summary: dict) -> str:
    train, val = summary.get("train", {}).get("accuracy"), summary["best"].get("val_accuracy")
    return f"{train:.3f}/{val:.3f}" if train is not None and val is not None else "-"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--max-epochs", type=int, default=100)
    args = parser.parse_args()
    print(f"{'case':<13} {'seed':>4} {'expected':<26} {'given':<40} {'status':<11} {'val_loss':>9} "
          f"{'acc t/v':>11} {'train':>8} {'constant':>8} {'refer.':>8} {'seconds':>7}")
    for name in args.cases.split(","):
        planted, build = CASES[name]
        for seed in range(args.seeds):
            expected = planted
            torch.manual_seed(seed)
            model, (train, val, test), options = build(seed)
            started = time.monotonic()
            result = converge.fit(model, train, val, test, seed=seed, max_epochs=args.max_epochs, verbose=False,
                                  batch_size=32, **options)
            yard = result.summary.get("yardsticks", {})
            given = [f["code"] for f in result.summary["diagnosis"]]
            if name == "raw_collapse" and result.summary["best"].get("val_accuracy", 0) > _majority(val) + 0.01:
                expected = {"lr_too_high"}   # this seed's run did not collapse: the spike must still be named
            ok = "ok" if expected <= set(given) and (name not in ONLY_CONVERGED or given == ["converged"]) else "MISS"
            print(f"{name:<13} {seed:>4} {','.join(sorted(expected)):<26} {','.join(given):<40} "
                  f"{result.status:<11} {result.summary['best'].get('val_loss', float('nan')):>9.4g} "
                  f"{_accuracies(result.summary):>11} "
                  f"{result.summary.get('train', {}).get('loss', float('nan')):>8.4g} "
                  f"{yard.get('constant_prediction_loss') or float('nan'):>8.4g} "
                  f"{yard.get('reference_val_loss') or float('nan'):>8.4g} "
                  f"{time.monotonic() - started:>7.1f} {ok}", flush=True)


if __name__ == "__main__":
    main()
