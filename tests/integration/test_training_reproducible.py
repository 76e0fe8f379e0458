"""Same data + seed -> same metrics; new versions are challengers; the gate decides."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest

from ml_pipeline.settings import load_settings
from training.promote import promote
from training.train import TRAINING_SET_FILE, train

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_retraining_reproduces_metrics_and_the_gate_keeps_an_equal_champion(
    trained_workdir: Path, tmp_path: Path
) -> None:
    frame = pd.read_parquet(trained_workdir / "training_set.parquet")
    frame = frame.sort_values("event_timestamp").head(8000).reset_index(drop=True)
    settings = load_settings("local", tmp_path / "var", env={})
    settings.workdir.mkdir(parents=True)
    frame.to_parquet(settings.workdir / TRAINING_SET_FILE, index=False)

    first = train(settings, frame, n_trials=2, timeout_s=None)
    assert promote(settings).promoted  # no champion yet
    second = train(settings, frame, n_trials=2, timeout_s=None)
    for key in ("fit_mean_auc", "fit_log_loss", "feedback_agreement", "logreg_mean_auc"):
        assert first.metrics[key] == pytest.approx(second.metrics[key], abs=1e-12), key

    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    mlflow.set_registry_uri(settings.mlflow.tracking_uri)  # not an earlier test's
    client = mlflow.MlflowClient()
    name = settings.mlflow.fit_model_name
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"

    # An identical challenger does not beat the champion beyond bootstrap noise.
    decision = promote(settings)
    assert not decision.promoted
    assert decision.gain_low is not None and decision.gain_low <= 0
    assert decision.challenger_auc == pytest.approx(decision.champion_auc)
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert promote(settings, force=True).promoted
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"

    artifacts = {a.path for a in client.list_artifacts(first.run_id)}
    assert "evaluation" in artifacts
