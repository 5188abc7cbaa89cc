"""Doctor precision: how many warnings `converge doctor` raises on clean data, where it should raise none.

Five of scikit-learn's bundled data sets (nothing downloaded), each in the form a careful user would feed
it: digits (pixels / 16; and ``digits_tiny``, the same with only 120 training images), wine and breast
cancer (standardized with training statistics), iris (raw centimetres) and diabetes (scikit-learn's own
scaled features; a regression). Each is split 60/20/20 at
random (``--seeds`` splits) and checked by the full doctor (``cheap=False``: the label-noise proxy and
the overfit-one-batch check included) with a small MLP. Every warning (or error) on such data is a false
positive (except too_few_samples on digits_tiny, which is true); information-level findings are not
counted.

    python bench/doctor_precision.py                 # 5 data sets x seeds 0 1 2, about a minute
    python bench/doctor_precision.py --sets digits wine --seeds 1 --json out.json

Prints a table: data set x check -> warnings (summed over seeds), and the label-noise rate estimated on
each (the check that flagged 5.4 % "noise" on clean digits before its threshold accounted for the proxy's
own error). Exit status 1 when any warning was raised.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from torch import nn

from converge.doctor.run import CODES, diagnose

SETS = ("digits", "digits_tiny", "wine", "breast_cancer", "iris", "diabetes")
TINY_TRAIN = 120    # digits_tiny: 120 training images (12 per class), as bench/newuser/tiny_wide.py
EXPECTED = {"digits_tiny": {"too_few_samples"}}   # true findings on that data: not counted as false positives


def load(name: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """(features, targets, needs training-split standardization) of a bundled data set."""
    from sklearn import datasets

    if name in ("digits", "digits_tiny"):
        x, y = datasets.load_digits(return_X_y=True)
        return x / 16.0, y, False
    if name == "wine":
        return (*datasets.load_wine(return_X_y=True), True)
    if name == "breast_cancer":
        return (*datasets.load_breast_cancer(return_X_y=True), True)
    if name == "iris":
        return (*datasets.load_iris(return_X_y=True), False)
    if name == "diabetes":
        x, y = datasets.load_diabetes(return_X_y=True)
        return x, (y - y.mean()) / y.std(), False
    raise SystemExit(f"unknown data set {name!r}; known: {', '.join(SETS)}")


def splits(name: str, seed: int) -> tuple[list, bool]:
    x, y, scale = load(name)
    regression = name == "diabetes"
    order = np.random.RandomState(seed).permutation(len(y))
    cut1, cut2 = int(0.6 * len(y)), int(0.8 * len(y))
    parts = [order[:cut1], order[cut1:cut2], order[cut2:]]
    if name == "digits_tiny":   # stratified, as tiny_wide.py: the same number of images of every digit
        per_class = TINY_TRAIN // 10
        train = np.concatenate([order[y[order] == c][:per_class] for c in range(10)])
        rest = order[~np.isin(order, train)]
        parts = [train, rest[:len(rest) // 2], rest[len(rest) // 2:]]
    if scale:
        mean, std = x[parts[0]].mean(0), x[parts[0]].std(0)
        x = (x - mean) / np.where(std > 0, std, 1.0)
    tensors = []
    for rows in parts:
        inputs = torch.tensor(x[rows], dtype=torch.float32)
        targets = torch.tensor(y[rows], dtype=torch.float32 if regression else torch.long)
        tensors.append((inputs, targets.reshape(-1, 1) if regression else targets))
    return tensors, regression


def model_for(features: int, outputs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, outputs))


def check(name: str, seed: int) -> dict:
    parts, regression = splits(name, seed)
    (x, y) = parts[0]
    outputs = 1 if regression else int(y.max()) + 1
    started = time.monotonic()
    findings = diagnose(model_for(x.shape[1], outputs, seed), *parts, cheap=False, seed=seed, device="cpu")
    serious = [f for f in findings if f.severity in ("warning", "error") and f.code not in EXPECTED.get(name, ())]
    noise = next((f.evidence.get("noise_rate") for f in findings if f.code == "label_noise"), None)
    return {"set": name, "seed": seed, "rows": len(y), "warnings": {f.code: 1 for f in serious},
            "messages": [f"{f.code}: {f.message}" for f in serious], "noise_rate": noise,
            "seconds": round(time.monotonic() - started, 1)}


def table(results: list[dict], sets: list[str]) -> str:
    lines = [f"{'check':<22}" + "".join(f"{name:>15}" for name in sets)]
    for code in CODES:
        counts = [sum(r["warnings"].get(code, 0) for r in results if r["set"] == name) for name in sets]
        lines.append(f"{code:<22}" + "".join(f"{c:>15}" for c in counts))
    totals = [sum(sum(r["warnings"].values()) for r in results if r["set"] == name) for name in sets]
    lines.append(f"{'total warnings':<22}" + "".join(f"{c:>15}" for c in totals))
    rates = []
    for name in sets:
        values = [r["noise_rate"] for r in results if r["set"] == name and r["noise_rate"] is not None]
        rates.append(f"{100 * max(values):.1f}%" if values else "-")
    lines.append(f"{'label noise (max est.)':<22}" + "".join(f"{c:>15}" for c in rates))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--seeds", type=int, default=3, help="random splits per data set (default 3)")
    parser.add_argument("--json", help="also write the per-run results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for name in args.sets:
        for seed in range(args.seeds):
            result = check(name, seed)
            results.append(result)
            print(f"{name} seed {seed}: {len(result['messages'])} warning(s) in {result['seconds']}s"
                  + "".join(f"\n    {m}" for m in result["messages"]), flush=True)
    print(f"\nwarnings on clean data (data set x check, summed over {args.seeds} random split(s)):")
    print(table(results, args.sets))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return 1 if any(r["messages"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
