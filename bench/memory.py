"""Peak memory and wall time of converge against a hand-written loop, on a model whose weights dominate.

Workload: a 25.2M-parameter MLP (1024-4096-4096-1024, about 96 MiB of float32 weights) regressing a fixed
random teacher on a small in-memory data set (so that weights, gradients and optimizer state, not data,
fill the memory), CPU, AdamW, the same number of epochs for every contender.

Contenders, each in a fresh Python process (peak RSS is the child's ``ru_maxrss``):

* ``hand``: the tightest hand loop (slices of in-memory tensors, loss summed on the device);
* ``hand + best``: the same loop keeping a copy of its best weights (what converge does too);
* ``converge``: ``converge.fit(..., out=<temp dir>)`` with the divergence guard on and the run folder
  written (checkpoints, best weights, logs, curves, report);
* ``converge guard=False``: the same without the guard.

The figures are wall time (from the call that trains to its return; for converge, ``import converge``
included, the removal of its temporary run folder not) and peak RSS; the ratios are against
``hand + best``, measured in the same invocation. Contenders run interleaved over ``--rounds`` rounds and
each figure is the median over rounds.

    .venv/bin/python bench/memory.py [--epochs 5] [--rounds 1] [--json results.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

FEATURES, HIDDEN, OUTPUTS = 1024, 4096, 1024
N_TRAIN, N_VAL, BATCH_SIZE, LR = 512, 128, 64, 1e-4
CONTENDERS = ("hand", "hand + best", "converge", "converge guard=False")
BASELINE = "hand + best"


def _workload():
    import torch
    from torch import nn

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(N_TRAIN + N_VAL, FEATURES, generator=g)
    teacher = torch.randn(FEATURES, OUTPUTS, generator=g) / FEATURES ** 0.5
    y = x @ teacher + 0.1 * torch.randn(N_TRAIN + N_VAL, OUTPUTS, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                          nn.Linear(HIDDEN, OUTPUTS))
    train = (x[:N_TRAIN].contiguous(), y[:N_TRAIN].contiguous())
    val = (x[N_TRAIN:].contiguous(), y[N_TRAIN:].contiguous())
    return model, train, val


def _hand(model, train, val, epochs: int, keep_best: bool) -> dict:
    import torch
    from torch import nn

    criterion = nn.MSELoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)
    (x, y), (xv, yv) = train, val
    best_loss, best_state = float("inf"), copy.deepcopy(model.state_dict()) if keep_best else None
    for _ in range(epochs):
        model.train()
        order = torch.randperm(x.shape[0])
        xs, ys = x.index_select(0, order), y.index_select(0, order)
        loss_sum = torch.zeros((), dtype=torch.float64)
        for lo in range(0, x.shape[0], BATCH_SIZE):
            loss = criterion(model(xs[lo:lo + BATCH_SIZE]), ys[lo:lo + BATCH_SIZE])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum.add_(loss.detach(), alpha=BATCH_SIZE)
        model.eval()
        with torch.no_grad():
            val_loss = float(criterion(model(xv), yv))
        if val_loss < best_loss:
            best_loss = val_loss
            if keep_best:
                best_state = copy.deepcopy(model.state_dict())
    if keep_best:
        model.load_state_dict(best_state)
    return {"epochs": epochs, "best_val_loss": best_loss}


def _converge(model, train, val, epochs: int, guard: bool) -> dict:
    import converge

    with tempfile.TemporaryDirectory(prefix="converge-mem-") as tmp:
        result = converge.fit(model, train, val, out=os.path.join(tmp, "run"), verbose=False, optimizer="adamw",
                              lr=LR, weight_decay=0.0, batch_size=BATCH_SIZE, max_epochs=epochs, patience=10**6,
                              unproductive_cuts=10**6, seed=0, device="cpu", guard=guard)
        returned = time.perf_counter()  # the run folder's removal (a user keeps it) is not converge's time
        summary = result.summary
        files = {name: os.path.getsize(os.path.join(tmp, "run", name))
                 for name in os.listdir(os.path.join(tmp, "run")) if name.startswith("checkpoint")}
    if summary["epochs"] != epochs:
        raise RuntimeError(f"converge stopped after {summary['epochs']} of {epochs} epochs ({summary['status']})")
    return {"epochs": summary["epochs"], "best_val_loss": summary["best"].get("val_loss"),
            "checkpoint_mib": round(sum(files.values()) / 2**20, 1), "returned": returned}


def child(name: str, epochs: int) -> None:
    model, train, val = _workload()
    started = time.perf_counter()
    if name.startswith("hand"):
        info = _hand(model, train, val, epochs, keep_best=name == "hand + best")
    else:
        info = _converge(model, train, val, epochs, guard=name == "converge")
    info["wall"] = info.pop("returned", time.perf_counter()) - started
    info["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    info["parameters"] = sum(p.numel() for p in model.parameters())
    print(json.dumps(info))


def run_child(name: str, epochs: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("BENCH_THREADS", "1")}
    out = subprocess.run([sys.executable, __file__, "--child", name, "--epochs", str(epochs)], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", nargs="*", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.epochs)
        return
    runs: dict[str, list[dict]] = {name: [] for name in args.only}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name in args.only:
            runs[name].append(run_child(name, args.epochs))
    rows = {name: {"wall": statistics.median(r["wall"] for r in results),
                   "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in results),
                   "checkpoint_mib": results[-1].get("checkpoint_mib"),
                   "parameters": results[-1]["parameters"]} for name, results in runs.items()}
    base = rows.get(BASELINE)
    params = next(iter(rows.values()))["parameters"]
    print(f"memory: {params / 1e6:.1f}M-parameter MLP ({params * 4 / 2**20:.0f} MiB of weights), {args.epochs} "
          f"epochs, CPU, {os.environ.get('BENCH_THREADS', '1')} thread(s), median of {args.rounds} round(s), "
          f"each contender in a fresh process; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} "
          f"after")
    print(f"{'contender':<24}{'wall s':>9}{'x wall':>8}{'peak RSS MiB':>14}{'x RSS':>8}{'ckpt MiB':>10}")
    for name, row in rows.items():
        wall_ratio = f"{row['wall'] / base['wall']:.2f}" if base else "-"
        rss_ratio = f"{row['peak_rss_mib'] / base['peak_rss_mib']:.2f}" if base else "-"
        ckpt = f"{row['checkpoint_mib']:.0f}" if row["checkpoint_mib"] is not None else "-"
        print(f"{name:<24}{row['wall']:>9.2f}{wall_ratio:>8}{row['peak_rss_mib']:>14.0f}{rss_ratio:>8}{ckpt:>10}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"epochs": args.epochs, "rounds": args.rounds, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
