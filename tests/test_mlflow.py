"""--mlflow: parameters, per-epoch metrics, tags and artifacts reach MLflow; a resumed run continues the same
MLflow run; a tracking URI's credentials are never printed nor written to the run folder."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import converge

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(240, 6, generator=g)
    y = (x[:, 0] > 0).long()
    return (x[:160], y[:160]), (x[160:], y[160:])


def test_a_run_is_logged_to_the_local_store_and_resumed_into_the_same_mlflow_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    options = dict(optimizer="adamw", lr=1e-2, weight_decay=0.0, batch_size=32, mlflow=True, verbose=False,
                   out=tmp_path / "run")
    first = converge.fit(nn.Linear(6, 2), *data(), max_epochs=3, **options)
    run_id = next(e["run_id"] for e in first.events if e["event"] == "mlflow_run")
    converge.fit(nn.Linear(6, 2), *data(), max_epochs=5, resume=True, **options)   # the cap raised: 2 more
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.data.params["lr"] == "0.01" and run.data.params["batch_size"] == "32"
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [1, 2, 3, 4, 5]
    assert run.data.tags["status"] == "max_epochs" and run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"summary.json", "events.jsonl", "report.html", "best.safetensors"} <= artifacts
    assert (tmp_path / "mlruns").is_dir()


def test_credentials_are_never_printed_and_an_unreachable_server_is_one_line(cli_subprocess, make_task, tmp_path):
    task = make_task()
    env = {"MLFLOW_TRACKING_URI": "http://alice:hunter2@127.0.0.1:9/", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
    result = cli_subprocess("train", task, "--out", tmp_path / "run", "--mlflow", "--max-epochs", "1", env=env)
    line = result.single_error("cannot log to MLflow at http://***@127.0.0.1:9/")
    assert "hunter2" not in result.out + result.err and "hunter2" not in line
    for path in (tmp_path / "run").rglob("*"):
        assert not path.is_file() or b"hunter2" not in path.read_bytes(), path
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["mlflow"] is True
