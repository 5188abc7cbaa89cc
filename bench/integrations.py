"""The frameworks' own recipes against the same scripts with converge's callbacks, on digits (scikit-learn's
bundled 8x8 images, 10 classes), over seeds.

    python bench/integrations.py [--seeds 0 1 2] [--frameworks lightning hf] [--json OUT]

The scripts are examples/lightning_digits.py and examples/hf_digits.py (the code docs/integrations.md shows):
one model, data split, optimizer (AdamW, LR 1e-3) and batch size (64) per framework, at most 100 epochs.

* Lightning's recipe: EarlyStopping(patience 5) and ReduceLROnPlateau(factor 0.1, patience 2) on val_loss,
  ModelCheckpoint(val_loss) so the test runs on the best weights (``ckpt_path="best"``).
* The Trainer's recipe: EarlyStoppingCallback(patience 5), load_best_model_at_end on eval_loss, a checkpoint
  each epoch, and its default linear LR decay over the 100 epochs.
* With converge: ConvergeCallback(patience 5) instead (the Trainer's linear decay stays, times converge's cuts).

Printed: test accuracy (mean ± standard deviation over the seeds), test loss, epochs trained (mean, min-max)
and wall seconds per run. Each run trains in this process with one thread.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def arms(framework: str) -> list[tuple[str, callable]]:
    if framework == "lightning":
        example = load("lightning_digits")
        return [("Lightning recipe", lambda seed, root: example.with_lightning_recipe(seed, root=root)),
                ("with ConvergeCallback", lambda seed, root: example.with_converge(seed, root=root))]
    example = load("hf_digits")
    return [("Trainer recipe", lambda seed, out: example.with_trainer_recipe(seed, out=out)),
            ("with ConvergeCallback", lambda seed, out: example.with_converge(seed, out=out))]


def quietly(run, *args) -> dict:
    """The frameworks print progress, tables and tips: measured runs keep them off the table."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run(*args)


def mean_sd(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--frameworks", nargs="+", default=["lightning", "hf"], choices=["lightning", "hf"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    rows, raw = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for framework in args.frameworks:
            for name, run in arms(framework):
                results = []
                for seed in args.seeds:
                    started = time.monotonic()
                    values = quietly(run, seed, os.path.join(scratch, f"{framework}-{name}-{seed}".replace(" ", "_")))
                    results.append({**values, "seconds": time.monotonic() - started, "seed": seed})
                    print(f"  {framework:9} {name:22} seed {seed}: test accuracy {values['test_accuracy']:.4f}, "
                          f"{values['epochs']} epochs", file=sys.stderr, flush=True)
                raw[f"{framework}: {name}"] = results
                epochs = [r["epochs"] for r in results]
                rows.append([framework, name, mean_sd([r["test_accuracy"] for r in results]),
                             mean_sd([r["test_loss"] for r in results]),
                             f"{statistics.mean(epochs):.1f} ({min(epochs)}-{max(epochs)})",
                             f"{statistics.mean(r['seconds'] for r in results):.1f}"])
    header = ["framework", "arm", "test accuracy", "test loss", "epochs", "s/run"]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print(f"digits, seeds {args.seeds}")
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    if args.json is not None:
        args.json.write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
