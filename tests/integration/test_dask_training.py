"""`fitml train --engine dask`: lightgbm.dask on a real LocalCluster gives the same model.

The models come back as the same classes, registered in MLflow and loaded by alias like the
single-process ones; with the same data, parameters and seed the Dask-fitted fit model's
mean one-vs-rest AUC on the test window is within 0.005 of the single-process fit's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation.evaluate import fit_metrics, time_split
from ml_pipeline.settings import load_settings
from training import registry
from training.distributed import dask_client, fit_on_dask, write_partitions
from training.models import FitModel, SizeModel
from training.train import TRAINING_SET_FILE, train

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARAMS = {"learning_rate": 0.08, "num_leaves": 31, "min_data_in_leaf": 40, "seed": 3}


def test_dask_trained_models_match_single_process_and_register_like_them(
    trained_workdir: Path, tmp_path: Path
) -> None:
    frame = pd.read_parquet(trained_workdir / TRAINING_SET_FILE)
    frame = frame.sort_values("event_timestamp").reset_index(drop=True)
    split = time_split(frame)
    train_rows, valid_rows, test_rows = split.windows(frame)
    fit_rows = pd.concat([train_rows, valid_rows])
    y_test = FitModel.labels(test_rows["outcome"])

    local = FitModel(PARAMS, num_boost_round=200, sample_weight_power=0.5).fit(fit_rows)
    parts = write_partitions(frame, tmp_path / "parts", rows_per_part=5000)
    assert len(parts) >= 3
    with dask_client(n_workers=2) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        dask_model = FitModel(PARAMS, num_boost_round=200, sample_weight_power=0.5)
        fit_on_dask(dask_model, parts, client, before=split.test_start)
        size_model = fit_on_dask(SizeModel(PARAMS, num_boost_round=100), parts, client)
    assert isinstance(dask_model, FitModel) and isinstance(size_model, SizeModel)
    assert dask_model.encoder_.to_dict() == local.encoder_.to_dict()
    assert dask_model.booster_.current_iteration() == 200

    auc_local = fit_metrics(y_test, local.predict_proba(test_rows))["mean_auc"]
    auc_dask = fit_metrics(y_test, dask_model.predict_proba(test_rows))["mean_auc"]
    assert auc_local > 0.8
    assert abs(auc_dask - auc_local) <= 0.005, (auc_dask, auc_local)

    # Saved and loaded as one artifact, like a local fit.
    reloaded = FitModel.load(dask_model.save(tmp_path / "model"))
    np.testing.assert_allclose(
        reloaded.predict_proba(test_rows.head(50)), dask_model.predict_proba(test_rows.head(50))
    )


def test_train_with_the_dask_engine_registers_a_challenger(
    trained_workdir: Path, tmp_path: Path
) -> None:
    frame = pd.read_parquet(trained_workdir / TRAINING_SET_FILE)
    frame = frame.sort_values("event_timestamp").head(8000).reset_index(drop=True)
    settings = load_settings("local", tmp_path / "var", env={})
    settings.workdir.mkdir(parents=True)
    frame.to_parquet(settings.workdir / TRAINING_SET_FILE, index=False)

    result = train(settings, n_trials=1, timeout_s=None, engine="dask")
    assert result.metrics["fit_mean_auc"] > 0.75
    model, version = registry.load_model(settings.mlflow.fit_model_name, "challenger")
    assert isinstance(model, FitModel) and version == result.fit_model.version
    import mlflow

    assert mlflow.MlflowClient().get_run(result.run_id).data.tags["fitml.engine"] == "dask"
    test_rows = result.split.windows(frame)[2]
    y = FitModel.labels(test_rows["outcome"])
    assert fit_metrics(y, model.predict_proba(test_rows))["mean_auc"] == pytest.approx(
        result.metrics["fit_mean_auc"], abs=1e-9
    )
