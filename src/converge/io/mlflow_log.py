"""MLflow, for users who already track their runs there (`--mlflow`). The tracking server is MLflow's own
setting, ``MLFLOW_TRACKING_URI`` (credentials as MLflow reads them: ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``, or the URI); without it, a local store in ``./mlruns`` (runs in
``mlruns/mlflow.db``, artifacts beside it). The URI is never written to the run folder and is printed only
with its credentials removed.

Logged: the options and the run's facts as parameters, every epoch's values as metrics (once per epoch,
never per step), the final status, stop reason and diagnosis codes as tags, and summary.json,
events.jsonl, report.html, curves.png and best.safetensors as artifacts. A resumed run continues the same
MLflow run (its id is kept in the run's event log)."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from converge.errors import ConvergeError

URI_VARIABLE = "MLFLOW_TRACKING_URI"
LOCAL_STORE = "mlruns"


def redact(uri: str) -> str:
    """The URI with any user:password@ and password-like query values removed."""
    uri = re.sub(r"//[^/@]*@", "//***@", uri)
    return re.sub(r"(?i)((?:password|token|secret|key)=)[^&]*", r"\1***", uri)


def tracking_uri() -> str:
    configured = os.environ.get(URI_VARIABLE)
    if configured:
        return configured
    store = Path.cwd() / LOCAL_STORE
    store.mkdir(exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


class MlflowLog:
    def __init__(self, *, experiment: str, run_name: str, params: dict, run_id: str | None = None) -> None:
        try:
            import mlflow
        except ImportError:
            raise ConvergeError("--mlflow needs MLflow: pip install 'torch-converge[mlflow]'") from None
        import logging

        logging.getLogger("mlflow").setLevel(logging.WARNING)   # no info lines about database migrations
        self.mlflow = mlflow
        uri = tracking_uri()
        self.shown_uri = redact(uri)
        try:
            self.client = mlflow.MlflowClient(tracking_uri=uri)
            if run_id is None:
                experiment_id = self._experiment(experiment, uri)
                run = self.client.create_run(experiment_id, run_name=run_name)
                self.run_id = run.info.run_id
                self.client.log_batch(self.run_id, params=[mlflow.entities.Param(k, _text(v)[:500])
                                                           for k, v in _flat(params).items()])
            else:
                self.run_id = run_id
                self.client.update_run(run_id, status="RUNNING")
        except ConvergeError:
            raise
        except Exception as exc:  # a server that cannot be reached, bad credentials: one line, redacted
            message = redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise ConvergeError(f"cannot log to MLflow at {self.shown_uri}: {message}") from None

    def _experiment(self, name: str, uri: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if uri.startswith("sqlite:///") and URI_VARIABLE not in os.environ:
            location = (Path.cwd() / LOCAL_STORE).as_uri()   # artifacts in ./mlruns too
        return self.client.create_experiment(name, artifact_location=location)

    def log_epoch(self, record: dict) -> None:
        metrics = [self.mlflow.entities.Metric(name, float(value) if math.isfinite(value) else float("nan"),
                                               0, record["epoch"])
                   for name, value in record.items()
                   if name not in ("epoch", "step") and isinstance(value, (int, float)) and not isinstance(value, bool)]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, summary: dict, folder: Path | None, files: list[str]) -> None:
        tags = {"status": summary.get("status"), "stop_reason": summary.get("stop_reason"),
                "task_kind": summary.get("task_kind"),
                "diagnosis": ", ".join(f.get("code", "") for f in summary.get("diagnosis") or [])}
        metrics = {f"best_{k}": v for k, v in (summary.get("best") or {}).items()}
        metrics.update({f"test_{k}": v for k, v in (summary.get("test") or {}).items()})
        self.client.log_batch(self.run_id, tags=[self.mlflow.entities.RunTag(k, str(v)[:5000])
                                                 for k, v in tags.items() if v is not None],
                              metrics=[self.mlflow.entities.Metric(k, float(v), 0, 0) for k, v in metrics.items()
                                       if isinstance(v, (int, float)) and math.isfinite(v)])
        if folder is not None:
            for name in files:
                if (folder / name).is_file():
                    self.client.log_artifact(self.run_id, str(folder / name))
        status = "KILLED" if summary.get("status") == "interrupted" else \
            "FAILED" if summary.get("status") == "diverged" else "FINISHED"
        self.client.set_terminated(self.run_id, status=status)


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _text(value) -> str:
    return "None" if value is None else str(value)
