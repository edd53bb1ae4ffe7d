"""`--tracking` (the MONAI bundle convention) to a local MLflow store: every loss term and validation metric."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import in_ci
from test_bad_input import Demo, tiny_overlay

REPO = Path(__file__).resolve().parents[1]
SYNAPSE = REPO / "bundles" / "synapse"


def test_mlflow_tracking_logs_every_loss_term_offline(tiny_demo, tmp_path):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        if in_ci():
            pytest.fail("mlflow not installed: the CI install is .[test,mlflow]", pytrace=False)
        pytest.skip("mlflow not installed (pip install -e '.[mlflow]')")
    out = tmp_path / "run"
    overlay = tiny_overlay(tmp_path / "tiny.json", Demo(tiny_demo), out, tmp_path / "stack")
    configs = str([str(SYNAPSE / "train.json"), str(overlay)])
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", configs]
    cmd += ["--tracking", str(SYNAPSE / "mlflow.json")]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("s2s2").experiment_id])
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    for term in ("loss", "loss_seg", "loss_seg_stack", "loss_enc", "loss_dec", "val_mean_dice"):
        assert term in metrics, sorted(metrics)
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss_enc")]
    assert steps == sorted(steps) and len(steps) == 2 * 2  # every iteration: 2 epochs x 2 batches
    assert len(client.get_metric_history(runs[0].info.run_id, "val_mean_dice")) == 2  # every epoch
