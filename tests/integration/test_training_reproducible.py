"""Same data + seed -> same models and metrics; the registry gets challengers, the gate decides."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest

from ml_pipeline.settings import load_settings
from training.train import train

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_training_twice_on_the_same_data_gives_the_same_metrics(
    trained_workdir: Path, tmp_path: Path
) -> None:
    frame = pd.read_parquet(trained_workdir / "training_set.parquet")
    frame = frame.sort_values("event_timestamp").head(8000).reset_index(drop=True)
    results = []
    for name in ("a", "b"):
        settings = load_settings("local", tmp_path / name, env={})
        results.append(train(settings, frame, n_trials=2, timeout_s=None))
    first, second = (r.metrics for r in results)
    for key in ("fit_mean_auc", "fit_log_loss", "feedback_agreement", "logreg_mean_auc"):
        assert first[key] == pytest.approx(second[key], abs=1e-12), key
    settings = load_settings("local", tmp_path / "a", env={})
    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(settings.mlflow.fit_model_name, "challenger")
    assert str(version.version) == results[0].fit_model.version
    run = client.get_run(results[0].run_id)
    assert run.data.params["n_trials"] == "2"
    artifacts = {a.path for a in client.list_artifacts(results[0].run_id)}
    assert "evaluation" in artifacts
