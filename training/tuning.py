"""The one Optuna + LightGBM tuner of fitml.

:func:`tune_lightgbm` searches LightGBM's learning rate, tree shape, sampling, regularisation
and (for classifiers) class weighting with a seeded TPE sampler. Every trial trains with early
stopping on the validation set and reports its validation curve to Optuna, so a median pruner
stops unpromising trials early. The study can live in memory, in SQLite, in a journal file or
in PostgreSQL, so several ``fitml tune`` workers can share one study. When an MLflow run is
active, each trial becomes a nested run holding its parameters and validation curve, and the
parent run receives the best parameters and value.

Determinism: with the same data, seed and trial count (and no ``timeout_s``), the best
parameters and value are the same from run to run: the sampler is seeded, LightGBM runs with
``deterministic=True``, a fixed thread count and fixed seeds. A ``timeout_s`` cuts the study
after a wall-clock budget, so how many trials run (and hence the result) can then vary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

import lightgbm as lgb
import numpy as np
import optuna
import pandas as pd
from optuna_integration.lightgbm import LightGBMPruningCallback

from ml_pipeline.console import emit
from ml_pipeline.errors import InvalidValueError

Objective = Literal["multiclass", "regression", "binary"]

DEFAULT_METRICS: dict[str, str] = {
    "multiclass": "multi_logloss",
    "binary": "binary_logloss",
    "regression": "l2",
}
"""The validation metric each objective is tuned on (all lower-is-better)."""

HIGHER_IS_BETTER_METRICS: frozenset[str] = frozenset(
    {"auc", "auc_mu", "ndcg", "map", "average_precision"}
)

VALID_NAME = "valid"
DEFAULT_MAX_ROUNDS = 2000
DEFAULT_EARLY_STOPPING_ROUNDS = 50
MAX_THREADS = 2
DEFAULT_THREADS = 1
"""LightGBM threads per trial unless ``base_params['num_threads']`` says otherwise (<= 2).

One thread by default: on a 2-core machine shared with other jobs, LightGBM's OpenMP threads
spin-wait for each other and two threads ran 4-8x *slower* than one (measured on this box
under load 6); on an idle machine two threads are faster, pass ``num_threads=2`` then."""
CLASS_WEIGHT_PARAM = "class_weight_power"
"""Name of the tuned (non-LightGBM) exponent on inverse class frequency, see
:func:`class_sample_weights`."""

_RDB_PREFIXES = ("sqlite:", "postgresql:", "postgresql+", "mysql:", "mysql+")
_DATASET_KEYS = ("max_bin", "min_data_in_bin", "max_cat_to_onehot", "max_cat_threshold")
_OUTER_KEYS = ("num_iterations", "num_boost_round", "n_estimators", "early_stopping_round")


@dataclass(frozen=True)
class TuningResult:
    """What :func:`tune_lightgbm` found.

    Attributes:
        best_params: LightGBM parameters of the best trial, ready for ``lgb.train`` (fixed
            settings such as objective, metric, seeds and threads included). They do not hold
            the number of rounds: train with ``num_boost_round=best_iteration``.
        best_iteration: The early-stopped number of boosting rounds of the best trial.
        best_value: The validation metric of the best trial at ``best_iteration`` (lower is
            better).
        n_trials: Finished (complete or pruned) trials in the study, including trials other
            workers added to a shared study.
        study: The Optuna study, for inspection and plots.
        class_weight_power: The tuned exponent on inverse class frequency for the best trial
            (0.0 means unweighted; always 0.0 for regression). Build the training weights of
            the final model with :func:`class_sample_weights`.
        metric: The LightGBM metric name that ``best_value`` measures.
    """

    best_params: dict[str, Any]
    best_iteration: int
    best_value: float
    n_trials: int
    study: optuna.Study
    class_weight_power: float = 0.0
    metric: str = ""


def class_sample_weights(y: np.ndarray, power: float, num_class: int) -> np.ndarray:
    """Per-row weights ``(n / (num_class * count[y])) ** power``, normalised to mean 1.

    ``power=0`` gives equal weights, ``power=1`` fully balanced classes; values in between
    temper the rebalancing. A class absent from ``y`` does not matter (no row carries it).

    Args:
        y: Integer class labels in ``[0, num_class)``.
        power: The exponent on inverse class frequency, >= 0.
        num_class: The number of classes.

    Returns:
        A float array of the same length as ``y``.

    Raises:
        InvalidValueError: If ``power`` is negative or a label lies outside ``[0, num_class)``.
    """
    if power < 0 or not math.isfinite(power):
        raise InvalidValueError("power", power, "must be a finite number >= 0", "use e.g. 0.5")
    labels = np.asarray(y).astype(np.int64, copy=False)
    if labels.size == 0:
        return np.ones(0, dtype=np.float64)
    if labels.min() < 0 or labels.max() >= num_class:
        raise InvalidValueError(
            "y",
            sorted(set(labels.tolist()))[:10],
            f"holds labels outside [0, {num_class})",
            "encode classes as 0..num_class-1",
        )
    counts = np.bincount(labels, minlength=num_class).astype(np.float64)
    inverse = labels.size / (num_class * np.maximum(counts, 1.0))
    weights = inverse[labels] ** power
    return np.asarray(weights / weights.mean(), dtype=np.float64)


def _make_storage(
    storage: str | optuna.storages.BaseStorage | None,
) -> str | optuna.storages.BaseStorage | None:
    """Turn fitml's storage setting into what ``optuna.create_study`` accepts.

    Args:
        storage: ``None`` (in memory), a database URL (``sqlite:///...``, ``postgresql://...``),
            the path of a journal file (anything else, e.g. ``var/optuna.journal``), or a
            storage object (e.g. the shared storage of :mod:`training.distributed`).

    Returns:
        ``None``, the URL or storage unchanged, or a :class:`optuna.storages.JournalStorage`.
    """
    if storage is None or isinstance(storage, optuna.storages.BaseStorage):
        return storage
    if not storage.strip():
        raise InvalidValueError(
            "storage",
            storage,
            "is empty",
            "pass None for in-memory, a sqlite:/// or postgresql:// URL, or a journal file path",
        )
    if storage.startswith(_RDB_PREFIXES):
        return storage
    if "://" in storage:
        raise InvalidValueError(
            "storage",
            storage,
            "is not a supported Optuna storage",
            "use sqlite:///path.db, postgresql://user@host/db, or a journal file path",
        )
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(storage))


def _validate(
    X_train: pd.DataFrame,
    y_train: np.ndarray,
    X_valid: pd.DataFrame,
    y_valid: np.ndarray,
    objective: str,
    num_class: int | None,
    n_trials: int,
    timeout_s: float | None,
    categorical: Sequence[str],
) -> None:
    if objective not in DEFAULT_METRICS:
        raise InvalidValueError(
            "objective", objective, "is not supported", f"use one of {sorted(DEFAULT_METRICS)}"
        )
    for name, X, y in (("train", X_train, y_train), ("valid", X_valid, y_valid)):
        if not isinstance(X, pd.DataFrame):
            raise InvalidValueError(
                f"X_{name}", type(X).__name__, "is not a pandas DataFrame", "pass a DataFrame"
            )
        if len(X) != len(y):
            raise InvalidValueError(
                f"y_{name}", f"{len(y)} rows", f"does not match X_{name} ({len(X)} rows)"
            )
        if len(X) == 0:
            raise InvalidValueError(f"X_{name}", "0 rows", "is empty", "pass some rows")
    if list(X_train.columns) != list(X_valid.columns):
        raise InvalidValueError(
            "X_valid.columns",
            list(X_valid.columns),
            "differ from X_train's",
            "build both frames with the same feature list, in the same order",
        )
    missing = [c for c in categorical if c not in X_train.columns]
    if missing:
        raise InvalidValueError(
            "categorical", missing, "are not columns of X_train", "name existing columns"
        )
    if objective == "multiclass" and (num_class is None or num_class < 2):
        raise InvalidValueError(
            "num_class", num_class, "must be an int >= 2 for objective='multiclass'"
        )
    if objective in ("multiclass", "binary"):
        k = num_class if objective == "multiclass" else 2
        assert k is not None
        for name, y in (("y_train", y_train), ("y_valid", y_valid)):
            labels = np.unique(np.asarray(y))
            bad = [v for v in labels.tolist() if v != int(v) or not 0 <= v < k]
            if bad:
                raise InvalidValueError(
                    name,
                    bad[:10],
                    f"holds labels outside 0..{k - 1}",
                    "encode classes as consecutive integers from 0",
                )
    if n_trials < 1:
        raise InvalidValueError("n_trials", n_trials, "must be >= 1")
    if timeout_s is not None and not timeout_s > 0:
        raise InvalidValueError("timeout_s", timeout_s, "must be > 0 seconds or None")


def _fixed_params(
    objective: str, num_class: int | None, seed: int, base_params: Mapping[str, Any]
) -> tuple[dict[str, Any], int, int]:
    """The parameters every trial shares, plus the round cap and early-stopping patience."""
    base = dict(base_params)
    max_rounds = DEFAULT_MAX_ROUNDS
    patience = DEFAULT_EARLY_STOPPING_ROUNDS
    for key in _OUTER_KEYS:
        if key in base:
            value = int(base.pop(key))
            if key == "early_stopping_round":
                patience = value
            else:
                max_rounds = value
    metric = base.pop("metric", DEFAULT_METRICS[objective])
    if not isinstance(metric, str) or metric in HIGHER_IS_BETTER_METRICS:
        raise InvalidValueError(
            "base_params['metric']",
            metric,
            "is not one lower-is-better LightGBM metric",
            f"leave it out (default {DEFAULT_METRICS[objective]!r}) or name e.g. 'multi_error'",
        )
    threads = int(base.pop("num_threads", DEFAULT_THREADS))
    params: dict[str, Any] = {
        "objective": objective,
        "metric": metric,
        "verbosity": -1,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": max(1, min(threads, MAX_THREADS)),
        "feature_pre_filter": False,
    }
    if objective == "multiclass":
        params["num_class"] = num_class
    params.update(base)
    return params, max_rounds, patience


STARTING_POINT: Final[Mapping[str, float]] = MappingProxyType(
    {
        "learning_rate": 0.1,
        "num_leaves": 31,
        "min_data_in_leaf": 100,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "lambda_l1": 1e-8,
        "lambda_l2": 1.0,
        CLASS_WEIGHT_PARAM: 0.0,
    }
)
"""The first trial of a new study when the caller names none: LightGBM's usual shape with
some bagging and L2, so that a budget of one trial gives a sound model rather than whatever
the sampler drew first. ``min_data_in_leaf`` is lowered to fit a small training set."""


def starting_point(n_train: int) -> dict[str, float]:
    """:data:`STARTING_POINT` inside the search space of ``n_train`` training rows."""
    point = dict(STARTING_POINT)
    point["min_data_in_leaf"] = min(point["min_data_in_leaf"], _max_leaf_data(n_train))
    return point


def _max_leaf_data(n_train: int) -> int:
    return max(5, min(1000, n_train // 20))


def _suggest(trial: optuna.Trial, objective: str, n_train: int) -> tuple[dict[str, Any], float]:
    """Sample one point of the search space: LightGBM params and the class-weight exponent."""
    max_leaf_data = _max_leaf_data(n_train)
    params: dict[str, Any] = {
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 8, 256, log=True),
        "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 5, max_leaf_data, log=True)
        if max_leaf_data > 5
        else 5,
        "feature_fraction": trial.suggest_float("feature_fraction", 0.4, 1.0),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
        "bagging_freq": 1,
        "lambda_l1": trial.suggest_float("lambda_l1", 1e-8, 10.0, log=True),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-8, 10.0, log=True),
    }
    power = 0.0
    if objective in ("multiclass", "binary"):
        power = trial.suggest_float(CLASS_WEIGHT_PARAM, 0.0, 1.0)
    return params, power


class _Deadline:
    """LightGBM callback ending a trial at the study's deadline, keeping its best iteration.

    Optuna checks ``timeout`` only between trials, so one slow trial could overrun the budget
    by minutes; this stops boosting when the wall-clock deadline passes, as early stopping
    would, and the trial completes with the best iteration it reached.
    """

    order = 40  # after record_evaluation (20) and early_stopping (30)

    def __init__(self, deadline: float, evals: dict[str, dict[str, list[float]]], metric: str):
        self.deadline = deadline
        self.evals = evals
        self.metric = metric

    def __call__(self, env: lgb.callback.CallbackEnv) -> None:
        if time.monotonic() < self.deadline:
            return
        curve = self.evals.get(VALID_NAME, {}).get(self.metric, [])
        if not curve:
            return
        best = int(np.argmin(curve))
        raise lgb.callback.EarlyStopException(best, env.evaluation_result_list or [])


def _log_trial_to_mlflow(
    trial_number: int,
    params: Mapping[str, Any],
    power: float,
    curve: Sequence[float],
    metric: str,
    state: str,
    best_iteration: int | None,
) -> None:
    """Record one trial as a nested MLflow run: params, the validation curve, its outcome."""
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    parent = mlflow.active_run()
    assert parent is not None
    with mlflow.start_run(
        run_name=f"trial-{trial_number:03d}",
        nested=True,
        experiment_id=parent.info.experiment_id,
    ) as run:
        logged = dict(params)
        logged[CLASS_WEIGHT_PARAM] = power
        mlflow.log_params(logged)
        now_ms = int(time.time() * 1000)
        key = f"{VALID_NAME}_{metric}"
        metrics = [Metric(key, float(v), now_ms, step) for step, v in enumerate(curve)]
        if best_iteration is not None and curve:
            metrics.append(Metric(f"best_{key}", float(curve[best_iteration - 1]), now_ms, 0))
            metrics.append(Metric("best_iteration", float(best_iteration), now_ms, 0))
        if metrics:
            MlflowClient().log_batch(run.info.run_id, metrics=metrics)
        mlflow.set_tags({"optuna.trial_number": trial_number, "optuna.state": state})


def tune_lightgbm(
    X_train: pd.DataFrame,
    y_train: np.ndarray,
    X_valid: pd.DataFrame,
    y_valid: np.ndarray,
    *,
    objective: Objective,
    num_class: int | None = None,
    n_trials: int = 20,
    timeout_s: float | None = None,
    seed: int = 0,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    categorical: Sequence[str] = (),
    base_params: Mapping[str, Any] | None = None,
    log_to_mlflow: bool = True,
    initial_params: Sequence[Mapping[str, Any]] | None = None,
    label: str = "model",
) -> TuningResult:
    """Tune a LightGBM model with Optuna (seeded TPE, pruning, early stopping).

    Each trial trains on ``X_train`` with early stopping on ``X_valid``'s metric (the
    objective's log loss or L2 unless ``base_params['metric']`` names another lower-is-better
    LightGBM metric) and reports the validation curve to a median pruner. The search space:
    ``learning_rate``, ``num_leaves``, ``min_data_in_leaf``, ``feature_fraction``,
    ``bagging_fraction`` (``bagging_freq=1``), ``lambda_l1``, ``lambda_l2`` and, for
    classifiers, ``class_weight_power``: the exponent on inverse class frequency used as
    training sample weights (the validation metric stays unweighted).

    Args:
        X_train: Training features.
        y_train: Training target; integer class labels ``0..num_class-1`` for classifiers.
        X_valid: Validation features (same columns as ``X_train``), for early stopping,
            pruning and the trial's value.
        y_valid: Validation target.
        objective: ``"multiclass"``, ``"binary"`` or ``"regression"``.
        num_class: Number of classes; required for ``"multiclass"``.
        n_trials: Trials this call runs (in a shared study, per worker).
        timeout_s: Wall-clock budget in seconds for this call's trials: no trial starts after
            it, and a trial still boosting when it runs out stops there and keeps its best
            iteration so far. ``None``: no time limit.
        seed: Seeds the sampler and LightGBM (bagging, feature sampling).
        storage: ``None`` (in memory), an RDB URL (``sqlite:///var/optuna.db``,
            ``postgresql://user@host/db``) or a journal file path (``var/optuna.journal``).
            Workers that pass the same storage and ``study_name`` share one study.
        study_name: Name of the study; an existing study of that name is resumed. ``None``:
            a new study with a generated name.
        categorical: Columns LightGBM treats as categorical.
        base_params: Fixed LightGBM parameters overriding fitml's defaults; may also hold
            ``num_iterations`` (round cap, default 2000), ``early_stopping_round`` (default 50),
            ``metric``, ``num_threads`` (default 1, at most 2) and dataset settings such
            as ``max_bin``.
        log_to_mlflow: When an MLflow run is active, log each trial as a nested run and the
            best result on the active run. Ignored when no run is active.
        initial_params: Points of the search space to try first (e.g. the last champion's
            settings), each a mapping of some of the tuned names (``learning_rate``, ...,
            ``class_weight_power``) to values; unnamed ones are sampled. Only enqueued when the
            study has no trials yet, so resuming workers do not repeat them. ``None``: the
            :func:`starting_point`; ``()``: every trial sampled.
        label: What is tuned (``"fit model"``), for the progress line reported after each
            trial on the ``fitml`` logger (:mod:`ml_pipeline.console`).

    Returns:
        The best parameters, iteration and value, the number of finished trials, the study.

    Raises:
        InvalidValueError: On inconsistent inputs (shapes, labels, columns, budget, storage).
        RuntimeError: If no trial finished (e.g. the time budget ran out during the first).
    """
    _validate(
        X_train, y_train, X_valid, y_valid, objective, num_class, n_trials, timeout_s, categorical
    )
    fixed, max_rounds, patience = _fixed_params(objective, num_class, seed, base_params or {})
    metric: str = fixed["metric"]
    k_classes = num_class if objective == "multiclass" else 2
    y_tr = np.asarray(y_train)
    y_va = np.asarray(y_valid)

    import mlflow

    mlflow_on = log_to_mlflow and mlflow.active_run() is not None

    # Binned once, reused by every trial (feature_pre_filter=False lets min_data_in_leaf vary).
    dataset_params = {
        "feature_pre_filter": False,
        "verbosity": -1,
        "num_threads": fixed["num_threads"],
        "seed": seed,
        **{k: fixed[k] for k in _DATASET_KEYS if k in fixed},
    }
    train_set = lgb.Dataset(
        X_train,
        label=y_tr,
        categorical_feature=list(categorical) or "auto",
        params=dataset_params,
        free_raw_data=False,
    ).construct()
    valid_set = lgb.Dataset(
        X_valid, label=y_va, reference=train_set, params=dataset_params, free_raw_data=False
    ).construct()

    def run_trial(trial: optuna.Trial) -> float:
        tuned, power = _suggest(trial, objective, len(X_train))
        params = {**fixed, **tuned}
        weights = (
            class_sample_weights(y_tr, power, k_classes or 2) if objective != "regression" else None
        )
        train_set.set_weight(weights)
        evals: dict[str, dict[str, list[float]]] = {}
        state = "PRUNED"
        best_iteration: int | None = None
        try:
            booster = lgb.train(
                params,
                train_set,
                num_boost_round=max_rounds,
                valid_sets=[valid_set],
                valid_names=[VALID_NAME],
                callbacks=[
                    lgb.early_stopping(patience, first_metric_only=True, verbose=False),
                    lgb.record_evaluation(evals),
                    LightGBMPruningCallback(trial, metric, valid_name=VALID_NAME),
                    *([_Deadline(deadline, evals, metric)] if deadline is not None else []),
                ],
            )
            best_iteration = int(booster.best_iteration) or booster.current_iteration()
            curve = evals[VALID_NAME][metric]
            value = float(curve[best_iteration - 1])
            trial.set_user_attr("best_iteration", best_iteration)
            trial.set_user_attr("lgb_params", params)
            trial.set_user_attr(CLASS_WEIGHT_PARAM, power)
            state = "COMPLETE"
            return value
        finally:
            if mlflow_on:
                _log_trial_to_mlflow(
                    trial.number,
                    params,
                    power,
                    evals.get(VALID_NAME, {}).get(metric, []),
                    metric,
                    state,
                    best_iteration,
                )

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    n_startup = max(3, min(10, n_trials // 3))
    study = optuna.create_study(
        storage=_make_storage(storage),
        study_name=study_name,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=max(3, n_startup // 2), n_warmup_steps=30
        ),
        load_if_exists=True,
    )
    if initial_params is None:
        initial_params = (starting_point(len(X_train)),)
    if initial_params and not study.get_trials(deepcopy=False):
        for point in initial_params:
            study.enqueue_trial(dict(point), skip_if_exists=True)
    started = time.monotonic()
    done_here = [0]

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done_here[0] += 1
        try:
            best: float | None = float(study.best_value)
        except ValueError:  # no trial completed yet
            best = None
        emit(
            "trial",
            f"tuning {label}: trial {done_here[0]}/{n_trials}",
            model=label,
            trial=done_here[0],
            n_trials=n_trials,
            best=best,
            metric=metric,
            elapsed_s=time.monotonic() - started,
            budget_left_s=None if deadline is None else deadline - time.monotonic(),
        )

    study.optimize(run_trial, n_trials=n_trials, timeout=timeout_s, callbacks=[report])
    note = ""
    if done_here[0] < n_trials:
        note = (
            f"{label}: tuning stopped at its time budget ({timeout_s:g} s) after "
            f"{done_here[0]} of {n_trials} trials; results can differ from run to run "
            "(raise the budget or lower the trial count for reproducible figures)"
        )
    elif deadline is not None and time.monotonic() > deadline:
        note = (
            f"{label}: the last trial was cut at the time budget ({timeout_s:g} s); "
            "results can differ from run to run"
        )
    emit(
        "tuning_end",
        f"tuning {label}: {done_here[0]} trials in {time.monotonic() - started:.0f} s"
        + (f" ({note})" if note else ""),
        model=label,
        trials=done_here[0],
        n_trials=n_trials,
        note=note,
    )

    finished = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    completed = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise RuntimeError(
            f"no tuning trial completed in study {study.study_name!r} "
            f"(n_trials={n_trials}, timeout_s={timeout_s}); raise timeout_s or check the data"
        )
    best = study.best_trial
    best_params = dict(best.user_attrs["lgb_params"])
    result = TuningResult(
        best_params=best_params,
        best_iteration=int(best.user_attrs["best_iteration"]),
        best_value=float(best.value),  # type: ignore[arg-type]
        n_trials=len(finished),
        study=study,
        class_weight_power=float(best.user_attrs.get(CLASS_WEIGHT_PARAM, 0.0)),
        metric=metric,
    )
    if mlflow_on:
        mlflow.log_params(
            {
                **{f"tune.best.{k}": v for k, v in best_params.items()},
                f"tune.best.{CLASS_WEIGHT_PARAM}": result.class_weight_power,
                "tune.study_name": study.study_name,
            }
        )
        mlflow.log_metrics(
            {
                f"tune.best_{VALID_NAME}_{metric}": result.best_value,
                "tune.best_iteration": float(result.best_iteration),
                "tune.n_trials": float(result.n_trials),
            }
        )
    return result
