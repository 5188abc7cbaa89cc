"""`converge train` with and without `--fix` on an imbalanced, noisy-label, badly-scaled tabular task.

The task is generated in code: scikit-learn's make_classification (3 classes, 85/10/5 %), 10 % of the
training and validation labels flipped at random (the test labels stay clean), and features scaled by
factors from 1e-3 to 1e4 with offsets up to 1e3. Every contender is converge's default auto mode; the
test split is scored from `best.safetensors` loaded into a fresh model, on the raw test inputs, so the
folded standardization is part of what is measured. Balanced accuracy = mean recall over the classes.

    python bench/doctor_fix.py [--seeds 5] [--max-epochs 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import converge

TASK = '''
import numpy as np
from sklearn.datasets import make_classification
from torch import nn


def model():
    return nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))


def data(seed=0):
    x, y = make_classification(n_samples=4000, n_features=12, n_informative=6, n_redundant=2, n_classes=3,
                               n_clusters_per_class=2, weights=[0.85, 0.10, 0.05], flip_y=0.0,
                               class_sep=1.0, random_state=seed)
    rng = np.random.default_rng(seed)
    x = x * np.logspace(-3, 4, 12) + rng.uniform(-1e3, 1e3, 12)
    n_train, n_val = 2400, 800
    noisy = y.copy()
    flip = rng.random(n_train + n_val) < 0.10
    noisy[:n_train + n_val][flip] = (y[:n_train + n_val][flip] + rng.integers(1, 3, int(flip.sum()))) % 3
    x = x.astype(np.float32)
    return ((x[:n_train], noisy[:n_train]), (x[n_train:n_train + n_val], noisy[n_train:n_train + n_val]),
            (x[n_train + n_val:], y[n_train + n_val:]))
'''

# "defer": class weights in training from the first LR cut (the default) or from epoch 1.
CONTENDERS = {
    "converge train": {},
    "converge train --fix": {"fix": True},
    "--fix, weights from epoch 1": {"fix": True, "defer": False},
    "--fix --drop-label-issues": {"fix": True, "drop_label_issues": True},
}


def balanced_accuracy(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    recalls = [float((predicted[truth == c] == c).float().mean()) for c in truth.unique()]
    return sum(recalls) / len(recalls)


def score(task_module, run_dir: Path, seed: int) -> float:
    """Balanced accuracy on the clean test split, from best.safetensors on raw inputs."""
    model = task_module.model()
    converge.load_weights(run_dir / "best.safetensors", model)
    _, _, (x_test, y_test) = task_module.data(seed=seed)
    with torch.no_grad():
        predicted = model.eval()(torch.from_numpy(x_test)).argmax(dim=1)
    return balanced_accuracy(predicted, torch.from_numpy(y_test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-epochs", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from converge.doctor import remedies
    from converge.task import load_task

    deferred_loss = remedies.WeightedCrossEntropy

    def weights_from_epoch_1(weights, *, deferred=True):  # the comparison variant: no deferral
        return deferred_loss(weights, deferred=False)

    results = {name: [] for name in CONTENDERS}
    epochs = {name: [] for name in CONTENDERS}
    with tempfile.TemporaryDirectory() as root:
        task_path = Path(root) / "imbalanced_noisy_unscaled.py"
        task_path.write_text(TASK)
        module = load_task(task_path).module
        for seed in range(args.seeds):
            for name, flags in CONTENDERS.items():
                flags = dict(flags)
                remedies.WeightedCrossEntropy = deferred_loss if flags.pop("defer", True) else weights_from_epoch_1
                out = Path(root) / f"{seed}-{len(results[name])}-{abs(hash(name))}"
                started = time.perf_counter()
                result = converge.train_task(task_path, out=out, verbose=False, seed=seed, max_epochs=args.max_epochs,
                                             task_args={"data": {"seed": seed}}, **flags)
                results[name].append(score(module, out, seed))
                epochs[name].append(result.summary["epochs"])
                print(f"seed {seed}  {name:28s} balanced accuracy {100 * results[name][-1]:.2f} %  "
                      f"({result.summary['epochs']} epochs, {time.perf_counter() - started:.1f}s)",
                      file=sys.stderr, flush=True)
    print(f"\nbalanced accuracy on the clean test split, {args.seeds} seeds (mean ± sd, min..max):\n")
    print("| contender | balanced accuracy | min .. max | epochs (mean) |")
    print("| --- | --- | --- | --- |")
    for name, values in results.items():
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| `{name}` | {100 * statistics.mean(values):.2f} % ± {100 * sd:.2f} | "
              f"{100 * min(values):.2f} .. {100 * max(values):.2f} | {statistics.mean(epochs[name]):.1f} |")
    print("\nper seed:", {name: [round(100 * v, 2) for v in values] for name, values in results.items()})


if __name__ == "__main__":
    main()
