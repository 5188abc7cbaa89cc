"""What keeping a split's outputs for whole-split metrics costs: the time to keep (detach, list), concatenate
and score (converge's MacroF1 and scikit-learn's f1_score) 10-class float32 scores with int64 labels, against
one forward pass of a small MLP over the same rows, for growing sizes. Chose METRIC_MEMORY_BYTES
(converge.engine.metrics).

    python scripts/issue20/measure_metric_memory.py
"""
import time

import torch
from sklearn.metrics import f1_score
from torch import nn

from converge.engine.metrics import MacroF1, SplitScores, WHOLE_SPLIT


def main():
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    for rows in (250_000, 1_000_000, 4_000_000):
        x = torch.randn(rows, 32)
        y = torch.randint(0, 10, (rows,))
        started = time.perf_counter()
        with torch.no_grad():
            outputs = torch.cat([model(part) for part in x.split(4096)])
        forward = time.perf_counter() - started

        def sk(o, t):
            return f1_score(t.numpy(), o.argmax(1).numpy(), average="macro")

        for name, fn in (("MacroF1 (stateful)", None), ("sklearn f1 (kept)", sk)):
            started = time.perf_counter()
            if fn is None:
                metric = MacroF1(10)
                for o, t in zip(outputs.split(4096), y.split(4096)):
                    metric.update(o, t)
                float(metric.compute())
            else:
                scores = SplitScores({"f1": fn}, {"f1": WHOLE_SPLIT}, torch.device("cpu"), budget=2**40)
                for o, t in zip(outputs.split(4096), y.split(4096)):
                    scores.add(o, t, torch.tensor(0.0), t.shape[0])
                scores.values()
            spent = time.perf_counter() - started
            mib = rows * (10 * 4 + 8) / 2**20
            print(f"{rows:>9} rows {mib:7.1f} MiB kept  forward {forward:6.2f} s  {name}: {spent:6.2f} s")


if __name__ == "__main__":
    main()
