"""``fitml train``: tune, fit, evaluate and register the fit model and the size model.

One MLflow parent run per training: Optuna's trials are nested runs under it (see
:mod:`training.tuning`); the final models are fitted on the train + validation windows,
scored on the test window by :func:`evaluation.evaluate.evaluate_frame`, logged with signature
and input example, registered and given the alias ``challenger``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from evaluation.evaluate import Split, evaluate_frame, time_split
from features.definitions import CATEGORICAL_FEATURES, FEATURE_SERVICE
from ml_pipeline.settings import Settings
from training import registry
from training.models import FitModel, SizeModel, TabularEncoder
from training.tuning import tune_lightgbm

TRAINING_SET_FILE = "training_set.parquet"


@dataclass(frozen=True)
class TrainResult:
    """What one training produced."""

    run_id: str
    fit_model: registry.LoggedModel
    size_model: registry.LoggedModel
    metrics: dict[str, Any]
    split: Split
    seconds: float


def load_training_set(settings: Settings, rebuild: bool = False) -> pd.DataFrame:
    """The work directory's training set, built through the feature store when missing."""
    path = settings.workdir / TRAINING_SET_FILE
    if rebuild or not path.is_file():
        from features.store import training_set

        frame = training_set(settings)
        frame.to_parquet(path, index=False)
        return frame
    return pd.read_parquet(path)


def load_truth(settings: Settings) -> pd.DataFrame | None:
    """The generator's ground truth, when the ingested data is synthetic."""
    path = settings.offline_dir / "truth.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def _tune(
    model: FitModel | SizeModel,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    settings: Settings,
    n_trials: int,
    timeout_s: float | None,
) -> FitModel | SizeModel:
    encoder = TabularEncoder(model.features, CATEGORICAL_FEATURES).fit(train)
    if isinstance(model, FitModel):
        targets = (FitModel.labels(train["outcome"]), FitModel.labels(valid["outcome"]))
        objective: dict[str, Any] = {"objective": "multiclass", "num_class": 3}
    else:
        targets = (SizeModel.target(train), SizeModel.target(valid))
        objective = {"objective": "regression"}
    with mlflow.start_run(run_name=f"tune_{model.kind}_model", nested=True):
        result = tune_lightgbm(
            encoder.transform(train),
            targets[0],
            encoder.transform(valid),
            targets[1],
            n_trials=n_trials,
            timeout_s=timeout_s,
            seed=settings.seed,
            storage=settings.optuna.storage,
            study_name=f"fitml-{model.kind}-{int(time.time())}",
            categorical=[c for c in CATEGORICAL_FEATURES if c in model.features],
            base_params={
                "num_threads": settings.training.num_threads,
                "num_boost_round": settings.training.max_rounds,
            },
            **objective,
        )
    tuned = type(model)(
        params=result.best_params,
        num_boost_round=max(1, result.best_iteration),
        sample_weight_power=result.class_weight_power,
    )
    return tuned


def train(
    settings: Settings,
    frame: pd.DataFrame | None = None,
    *,
    n_trials: int | None = None,
    timeout_s: float | None = None,
) -> TrainResult:
    """Tune and fit both models on the work directory's training set, then register them.

    Args:
        settings: the run's settings (MLflow, Optuna storage, seed).
        frame: training rows (default: the work directory's training set).
        n_trials: Optuna trials per model (default: the profile's).
        timeout_s: tuning time budget per model in seconds (default: the profile's).
    """
    started = time.perf_counter()
    frame = load_training_set(settings) if frame is None else frame
    split = time_split(frame)
    train_rows, valid_rows, test_rows = split.windows(frame)
    n_trials = n_trials or settings.optuna.n_trials
    timeout_s = timeout_s if timeout_s is not None else settings.optuna.timeout_s
    registry.configure(settings)
    with mlflow.start_run(run_name="train") as run:
        mlflow.log_params(
            {
                "feature_service": FEATURE_SERVICE,
                "n_train": len(train_rows),
                "n_valid": len(valid_rows),
                "n_test": len(test_rows),
                "valid_start": split.valid_start.isoformat(),
                "test_start": split.test_start.isoformat(),
                "seed": settings.seed,
                "n_trials": n_trials,
            }
        )
        fit_model = _tune(FitModel(), train_rows, valid_rows, settings, n_trials, timeout_s)
        size_model = _tune(SizeModel(), train_rows, valid_rows, settings, n_trials, timeout_s)
        fit_rows = pd.concat([train_rows, valid_rows])
        fit_model.fit(fit_rows)
        size_model.fit(fit_rows)
        metrics = evaluate_frame(test_rows, fit_model, size_model, load_truth(settings))
        mlflow.log_metrics(
            {k: float(v) for k, v in metrics.items() if isinstance(v, int | float | np.floating)}
        )
        mlflow.log_dict(metrics, "evaluation/test_window.json")
        fit_logged = registry.log_and_register(
            fit_model, settings.mlflow.fit_model_name, test_rows
        )
        size_logged = registry.log_and_register(
            size_model, settings.mlflow.size_model_name, test_rows
        )
        mlflow.set_tags(
            {"fit_model_version": fit_logged.version, "size_model_version": size_logged.version}
        )
    return TrainResult(
        run_id=run.info.run_id,
        fit_model=fit_logged,
        size_model=size_logged,
        metrics=metrics,
        split=split,
        seconds=time.perf_counter() - started,
    )


def write_result(result: TrainResult, path: Path) -> None:
    """Write a training's summary as JSON."""
    path.write_text(
        json.dumps(
            {
                "run_id": result.run_id,
                "fit_model": result.fit_model.__dict__,
                "size_model": result.size_model.__dict__,
                "metrics": result.metrics,
                "seconds": result.seconds,
            },
            indent=2,
            default=str,
        )
    )
