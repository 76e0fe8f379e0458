"""Unit tests of training.tuning: determinism, storages, MLflow logging, class weights."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ml_pipeline.console import LOGGER
from ml_pipeline.errors import InvalidValueError
from training.tuning import (
    STARTING_POINT,
    TuningResult,
    class_sample_weights,
    starting_point,
    tune_lightgbm,
)


def _data(seed: int, n: int = 1500) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 4)), columns=["a", "b", "c", "d"])
    X["cat"] = pd.Categorical(rng.integers(0, 4, n))
    score = X["a"] + 0.5 * X["b"] + 0.3 * X["cat"].cat.codes + rng.normal(scale=0.7, size=n)
    y = np.digitize(score, [-0.5, 1.5]).astype(int)  # 3 ordered classes, unbalanced
    cut = int(n * 0.7)
    return X.iloc[:cut], y[:cut], X.iloc[cut:], y[cut:]


FAST = {"num_iterations": 200, "early_stopping_round": 10}


def _tune(seed: int, **kwargs: object) -> TuningResult:
    X_tr, y_tr, X_va, y_va = _data(seed)
    args: dict = {
        "objective": "multiclass",
        "num_class": 3,
        "n_trials": 4,
        "seed": seed,
        "categorical": ["cat"],
        "base_params": FAST,
    }
    args.update(kwargs)
    return tune_lightgbm(X_tr, y_tr, X_va, y_va, **args)


def test_same_data_and_seed_give_same_result(seed: int) -> None:
    first = _tune(seed, log_to_mlflow=False)
    second = _tune(seed, log_to_mlflow=False)
    assert first.best_params == second.best_params
    assert first.best_value == second.best_value
    assert first.best_iteration == second.best_iteration


def test_best_params_train_a_model_reaching_best_value(seed: int) -> None:
    result = _tune(seed, log_to_mlflow=False)
    X_tr, y_tr, X_va, y_va = _data(seed)
    weights = class_sample_weights(y_tr, result.class_weight_power, 3)
    booster = lgb.train(
        result.best_params,
        lgb.Dataset(X_tr, label=y_tr, weight=weights, categorical_feature=["cat"]),
        num_boost_round=result.best_iteration,
    )
    proba = np.asarray(booster.predict(X_va))
    logloss = -np.mean(np.log(np.clip(proba[np.arange(len(y_va)), y_va], 1e-15, 1)))
    assert logloss == pytest.approx(result.best_value, rel=1e-6)
    assert 1 <= result.n_trials <= 4
    assert result.metric == "multi_logloss"
    assert 0.0 <= result.class_weight_power <= 1.0
    for key in ("learning_rate", "num_leaves", "min_data_in_leaf", "lambda_l1", "lambda_l2"):
        assert key in result.best_params


def test_regression_and_binary_objectives() -> None:
    X_tr, y_tr, X_va, y_va = _data(0)
    reg = tune_lightgbm(
        X_tr,
        y_tr.astype(float),
        X_va,
        y_va.astype(float),
        objective="regression",
        n_trials=2,
        base_params=FAST,
        log_to_mlflow=False,
    )
    assert reg.metric == "l2" and reg.class_weight_power == 0.0
    binary = tune_lightgbm(
        X_tr,
        (y_tr > 0).astype(int),
        X_va,
        (y_va > 0).astype(int),
        objective="binary",
        n_trials=2,
        base_params=FAST,
        log_to_mlflow=False,
    )
    assert binary.metric == "binary_logloss" and binary.best_value < np.log(2)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_persistent_storage_is_shared_and_resumed(tmp_path: Path, kind: str) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db" if kind == "sqlite" else str(tmp_path / "j.log")
    first = _tune(0, storage=storage, study_name="shared", n_trials=2, log_to_mlflow=False)
    second = _tune(0, storage=storage, study_name="shared", n_trials=2, log_to_mlflow=False)
    assert first.n_trials == 2
    assert second.n_trials == 4  # the second worker joined the same study
    loaded = optuna.load_study(
        study_name="shared",
        storage=storage
        if kind == "sqlite"
        else optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage)),
    )
    assert len(loaded.trials) == 4
    assert second.best_value <= first.best_value


def test_timeout_stops_the_study() -> None:
    result = _tune(0, n_trials=1000, timeout_s=1.0, log_to_mlflow=False)
    assert 1 <= result.n_trials < 1000


def test_mlflow_nested_runs_hold_params_and_curve(tmp_path: Path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        exp_id = mlflow.create_experiment("tune", artifact_location=(tmp_path / "art").as_uri())
        with mlflow.start_run(experiment_id=exp_id) as parent:
            result = _tune(0, n_trials=3)
        client = MlflowClient()
        children = client.search_runs(
            [exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
        assert len(children) == 3
        for child in children:
            assert "learning_rate" in child.data.params
            assert "class_weight_power" in child.data.params
            history = client.get_metric_history(child.info.run_id, "valid_multi_logloss")
            assert len(history) >= 2  # one point per boosting round
            assert [m.step for m in history] == list(range(len(history)))
        parent_data = client.get_run(parent.info.run_id).data
        assert parent_data.metrics["tune.best_valid_multi_logloss"] == pytest.approx(
            result.best_value
        )
        assert float(parent_data.params["tune.best.learning_rate"]) == pytest.approx(
            result.best_params["learning_rate"]
        )
    finally:
        mlflow.set_tracking_uri("")


def test_no_active_run_logs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert mlflow.active_run() is None
    _tune(0, n_trials=1)
    assert not (tmp_path / "mlruns").exists()


def test_class_sample_weights() -> None:
    y = np.array([0, 0, 0, 1])
    assert np.allclose(class_sample_weights(y, 0.0, 2), 1.0)
    balanced = class_sample_weights(y, 1.0, 2)
    assert balanced.mean() == pytest.approx(1.0)
    # each class carries the same total weight when fully balanced
    assert balanced[:3].sum() == pytest.approx(balanced[3:].sum())
    with pytest.raises(InvalidValueError, match="power"):
        class_sample_weights(y, -1.0, 2)
    with pytest.raises(InvalidValueError, match="outside"):
        class_sample_weights(np.array([0, 5]), 1.0, 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_class": None}, "num_class"),
        ({"n_trials": 0}, "n_trials"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"categorical": ["nope"]}, "categorical"),
        ({"storage": "redis://localhost"}, "storage"),
        ({"base_params": {"metric": "auc"}}, "metric"),
    ],
)
def test_bad_arguments_name_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidValueError, match=match):
        _tune(0, log_to_mlflow=False, **kwargs)


def test_labels_out_of_range_are_rejected() -> None:
    X_tr, y_tr, X_va, y_va = _data(0)
    with pytest.raises(InvalidValueError, match="y_train"):
        tune_lightgbm(X_tr, y_tr + 1, X_va, y_va, objective="multiclass", num_class=3)


def test_initial_params_are_tried_first() -> None:
    start = {"learning_rate": 0.123, "num_leaves": 17, "class_weight_power": 0.0}
    result = _tune(0, n_trials=2, log_to_mlflow=False, initial_params=[start])
    first = result.study.trials[0].params
    assert first["learning_rate"] == 0.123 and first["num_leaves"] == 17


def test_a_new_study_starts_at_the_starting_point_inside_the_space() -> None:
    result = _tune(0, n_trials=2, log_to_mlflow=False)
    first = result.study.trials[0].params
    # 1,050 training rows: the space's min_data_in_leaf ends at 52, so the point is lowered
    assert first == {**STARTING_POINT, "min_data_in_leaf": 52}
    assert starting_point(1_000_000)["min_data_in_leaf"] == STARTING_POINT["min_data_in_leaf"]
    sampled = _tune(0, n_trials=1, log_to_mlflow=False, initial_params=())
    assert sampled.study.trials[0].params["learning_rate"] != STARTING_POINT["learning_rate"]


def test_timeout_also_stops_a_long_trial() -> None:
    X_tr, y_tr, X_va, y_va = _data(0, n=4000)
    import time

    start = time.monotonic()
    result = tune_lightgbm(
        X_tr,
        y_tr,
        X_va,
        y_va,
        objective="multiclass",
        num_class=3,
        n_trials=1,
        timeout_s=0.5,
        log_to_mlflow=False,
        base_params={"num_iterations": 100_000, "early_stopping_round": 100_000},
        initial_params=[{"learning_rate": 0.01}],
    )
    assert time.monotonic() - start < 10
    assert result.best_iteration >= 1


def _progress(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [r.fitml for r in caplog.records if r.name == LOGGER and hasattr(r, "fitml")]


def test_each_trial_reports_progress_and_a_cut_budget_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("INFO", logger=LOGGER):
        _tune(0, n_trials=3, log_to_mlflow=False, label="fit model")
    events = _progress(caplog)
    trials = [e for e in events if e["event"] == "trial"]
    assert [e["trial"] for e in trials] == [1, 2, 3]
    assert all(e["n_trials"] == 3 and e["model"] == "fit model" for e in trials)
    bests = [e["best"] for e in trials if e["best"] is not None]
    assert bests == sorted(bests, reverse=True)  # best so far never gets worse
    assert events[-1]["event"] == "tuning_end" and events[-1]["note"] == ""

    caplog.clear()
    with caplog.at_level("INFO", logger=LOGGER):
        _tune(0, n_trials=1000, timeout_s=1.0, log_to_mlflow=False, label="size model")
    end = _progress(caplog)[-1]
    assert end["event"] == "tuning_end"
    assert "stopped at its time budget" in end["note"] and "of 1000 trials" in end["note"]
