"""Before/after numbers of issue 20 items 1-2: reported values vs the kept weights' whole-split values.

    python scripts/issue20/measure.py OUT_DIR SEED...   (PYTHONPATH picks the converge under test)
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from sklearn.metrics import f1_score

import converge

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import diabetes_raw  # noqa: E402
import imbalanced_f1  # noqa: E402


def kept(task, run_dir):
    model = task.model()
    model.load_state_dict(load_file(str(run_dir / "best.safetensors")))
    return model.eval()


def main(out, seeds):
    torch.set_num_threads(1)
    rows = []
    for seed in seeds:
        run = out / f"imb-{seed}"
        result = converge.train_task(HERE / "imbalanced_f1.py", out=run, force=True, verbose=False, seed=seed)
        model = kept(imbalanced_f1, run)
        (_, _), (xv, yv), (xt, yt) = imbalanced_f1.data()
        with torch.no_grad():
            whole_val = f1_score(yv, model(torch.tensor(xv)).argmax(1).numpy(), average="macro")
            whole_test = f1_score(yt, model(torch.tensor(xt)).argmax(1).numpy(), average="macro")
        s = result.summary
        rows.append({"task": "imbalanced", "seed": seed, "epochs": s["epochs"], "best_epoch": s["best_epoch"],
                     "batch": s["hyperparameters"]["batch_size"], "reported_val_f1": s["best"]["val_f1"],
                     "whole_val_f1": whole_val, "reported_test_f1": s["test"]["f1"], "whole_test_f1": whole_test,
                     "test_macro_f1_default": s["test"].get("macro_f1"),
                     "test_balanced_accuracy": s["test"].get("balanced_accuracy")})
        print(json.dumps(rows[-1]), flush=True)
        run = out / f"dia-{seed}"
        result = converge.train_task(HERE / "diabetes_raw.py", out=run, force=True, verbose=False, seed=seed)
        model = kept(diabetes_raw, run)
        (_, _), _, (xt, yt) = diabetes_raw.data()
        with torch.no_grad():
            mse = float(((model(torch.tensor(xt)) - torch.tensor(yt)) ** 2).mean())
        doctor = json.loads((run / "doctor.json").read_text()) if (run / "doctor.json").exists() else []
        tuning = [e for e in result.events if "evidence" in json.dumps(e) or e["event"].startswith("tuning")]
        s = result.summary
        rows.append({"task": "diabetes", "seed": seed, "epochs": s["epochs"], "best_epoch": s["best_epoch"],
                     "hyperparameters": s["hyperparameters"], "test_mse_user_units": mse,
                     "reported_test_loss": s["test"]["loss"],
                     "no_usable_evidence": any("no usable evidence" in json.dumps(e) for e in tuning),
                     "gradient_warnings": [f["message"][:90] for f in doctor
                                           if "gradient" in f["code"] and f["severity"] != "info"]})
        print(json.dumps(rows[-1]), flush=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), [int(s) for s in sys.argv[2:]])
