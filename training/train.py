"""``fitml train``: tune, fit, evaluate and register the fit model and the size model.

One MLflow parent run per training: Optuna's trials are nested runs under it (see
:mod:`training.tuning`); the final models are fitted on the train + validation windows,
scored on the test window by :func:`evaluation.evaluate.evaluate` (beside the baselines and,
on synthetic data, the oracle), logged with signature and input example, registered and given
the alias ``challenger``.

Artifacts of the parent run, the things people look at when comparing runs:

- ``evaluation/test_window.json``: the flat metrics; ``evaluation/slices.csv`` / ``.html``:
  the same per category, size system, brand, fit preference, new/returning user, new product;
- ``evaluation/confusion_matrix.png`` / ``.csv``: the fit model's outcome confusion matrix;
- ``evaluation/calibration_curve.png``: one-vs-rest reliability curves of the fit model;
- ``importance/<kind>_model.csv`` / ``.png``: LightGBM gain importance of each model;
- ``tuning/<kind>_history.png`` / ``<kind>_param_importance.png`` / ``<kind>_trials.csv``:
  the Optuna optimisation history and hyperparameter importance of each study.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import mlflow
import numpy as np
import pandas as pd

from evaluation.evaluate import EVALUATION_INPUTS, Evaluation, Split, evaluate, time_split
from features.definitions import CATEGORICAL_FEATURES, FEATURE_SERVICE
from ml_pipeline.schema import OUTCOMES
from ml_pipeline.settings import Settings
from training import registry
from training.models import FitModel, SizeModel, TabularEncoder, model_columns
from training.tuning import TuningResult, tune_lightgbm

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TRAINING_SET_FILE = "training_set.parquet"
TIME_COLUMN = "event_timestamp"
_Model = TypeVar("_Model", FitModel, SizeModel)
CALIBRATION_BINS = 10
TOP_FEATURES = 25
"""Features shown in the importance plots (the CSV holds all)."""


@dataclass(frozen=True)
class TrainResult:
    """What one training produced."""

    run_id: str
    fit_model: registry.LoggedModel
    size_model: registry.LoggedModel
    metrics: dict[str, Any]
    split: Split
    seconds: float


def training_set_path(settings: Settings, rebuild: bool = False) -> Path:
    """The work directory's training-set file, built through the feature store when missing.

    It is built in event-time chunks straight into its file
    (:func:`features.store.write_training_set`), so the build never holds more than one
    chunk's rows.
    """
    path = settings.workdir / TRAINING_SET_FILE
    if rebuild or not path.is_file():
        from features.store import write_training_set

        write_training_set(settings, path)
    return path


def load_training_set(
    settings: Settings,
    rebuild: bool = False,
    *,
    columns: Sequence[str] | None = None,
    filters: Sequence[tuple[str, str, Any]] | None = None,
) -> pd.DataFrame:
    """The work directory's training set (see :func:`training_set_path`), or part of it.

    Args:
        settings: the run's settings (the work directory).
        rebuild: build the file anew even when it exists.
        columns: read only these columns (default: all).
        filters: read only the rows that pass these pyarrow filters, e.g.
            ``[("event_timestamp", "<", test_start)]``; row groups outside them are skipped.

    Raises:
        InvalidValueError: the file lacks one of ``columns`` (it was built by an older
            version of the features); the message names the columns.
    """
    import pyarrow.parquet as pq

    path = training_set_path(settings, rebuild)
    if columns is not None:
        _require_columns(path, columns)
    table = pq.read_table(
        path,
        columns=None if columns is None else list(columns),
        filters=None if filters is None else list(filters),
        use_pandas_metadata=True,
    )
    return table.to_pandas()


def _require_columns(path: Path, columns: Sequence[str]) -> None:
    """Raise :class:`~ml_pipeline.errors.InvalidValueError` naming what ``path`` lacks."""
    import pyarrow.parquet as pq

    present = set(pq.read_schema(path).names)
    missing = [c for c in columns if c not in present]
    if missing:
        from ml_pipeline.errors import InvalidValueError

        raise InvalidValueError(
            "training set",
            str(path),
            f"lacks the column(s) {', '.join(missing)}",
            "rebuild it with the current features (fitml pipeline run, or delete the file "
            "and train again)",
        )


def training_columns() -> list[str]:
    """The training-set columns tuning and fitting read: both models' inputs, label, time."""
    return list(
        dict.fromkeys([*model_columns(FitModel.features), *model_columns(SizeModel.features)])
    )


def evaluation_columns() -> list[str]:
    """The test window's columns: :func:`training_columns` plus what evaluation reads.

    :data:`evaluation.evaluate.EVALUATION_INPUTS` names the latter (the recommendation's
    inputs, the ground-truth key, the slicing columns).
    """
    return list(dict.fromkeys([*training_columns(), *EVALUATION_INPUTS]))


def read_windows(
    settings: Settings, split: Split | None = None
) -> tuple[Split, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The training set's train, validation and test windows, each read with only its columns.

    Three reads of the parquet file instead of one of everything: its ``event_timestamp``
    alone, for the split (:func:`~evaluation.evaluate.time_split`, unless ``split`` is
    given); the rows before ``split.test_start`` with :func:`training_columns`; the rows
    from it on with :func:`evaluation_columns`. Row groups outside a window are skipped.
    The windows equal ``split.windows`` of the whole file restricted to those columns, row
    order and index included.

    Returns:
        The split and the train, validation and test rows.

    Raises:
        InvalidValueError: the file lacks a column training or evaluation needs.
    """
    _require_columns(training_set_path(settings), evaluation_columns())  # all missing at once
    times = load_training_set(settings, columns=[TIME_COLUMN])[TIME_COLUMN]
    split = time_split(times.to_frame()) if split is None else split
    before = times < split.test_start
    fit_rows = _with_index(
        load_training_set(
            settings,
            columns=training_columns(),
            filters=[(TIME_COLUMN, "<", split.test_start)],
        ),
        times.index[before.to_numpy()],
    )
    test_rows = _with_index(
        load_training_set(
            settings,
            columns=evaluation_columns(),
            filters=[(TIME_COLUMN, ">=", split.test_start)],
        ),
        times.index[~before.to_numpy()],
    )
    release_arrow_memory()
    train_rows, valid_rows, _ = split.windows(fit_rows)
    return split, train_rows, valid_rows, test_rows


def _with_index(frame: pd.DataFrame, index: pd.Index) -> pd.DataFrame:
    """``frame`` (rows read with a filter) on the whole file's index of the same rows."""
    if len(frame) != len(index):  # the filter and pandas' comparison disagree: never expected
        raise RuntimeError(
            f"filtered read returned {len(frame)} rows where the timestamps select {len(index)}"
        )
    frame.index = index
    return frame


def release_arrow_memory() -> None:
    """Return the memory Arrow's pool holds but no longer uses to the operating system.

    jemalloc and mimalloc keep freed pages for reuse; after the large reads of training
    nothing reuses them, and the process's resident size would keep them.
    """
    import pyarrow

    pool = pyarrow.default_memory_pool()
    release = getattr(pool, "release_unused", None)  # pyarrow >= 9
    if release is not None:
        release()


def load_truth(settings: Settings) -> pd.DataFrame | None:
    """The generator's ground truth, when the ingested data is synthetic."""
    path = settings.offline_dir / "truth.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def _tune(
    model: _Model,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    settings: Settings,
    n_trials: int,
    timeout_s: float | None,
    workers: int = 1,
) -> tuple[_Model, TuningResult]:
    if workers > 1:  # trials in `fitml tune-worker` processes sharing one study
        from training.distributed import tune_model_in_workers

        return tune_model_in_workers(model, train, valid, settings, n_trials, timeout_s, workers)
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
            label=f"{model.kind} model",
            base_params={
                "num_threads": settings.training.num_threads,
                "num_boost_round": round_budget(
                    settings.training.max_rounds,
                    settings.training.max_trees,
                    int(objective.get("num_class", 1)),
                ),
            },
            **objective,
        )
    tuned = type(model)(
        params=result.best_params,
        num_boost_round=max(1, result.best_iteration),
        sample_weight_power=result.class_weight_power,
    )
    return tuned, result


def round_budget(max_rounds: int, max_trees: int | None, trees_per_round: int) -> int:
    """The most boosting rounds tuning may use: ``max_rounds``, lowered to fit ``max_trees``."""
    if max_trees is None:
        return max_rounds
    return max(1, min(max_rounds, max_trees // max(1, trees_per_round)))


def train(
    settings: Settings,
    frame: pd.DataFrame | None = None,
    *,
    n_trials: int | None = None,
    timeout_s: float | None = None,
    windows: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame] | None = None,
    workers: int = 1,
    engine: str = "local",
    scheduler: str | None = None,
) -> TrainResult:
    """Tune and fit both models on the work directory's training set, then register them.

    Args:
        settings: the run's settings (MLflow, Optuna storage, seed).
        frame: training rows (default: the work directory's training set, each window
            read with only the columns it needs, see :func:`read_windows`).
        n_trials: Optuna trials per model (default: the profile's).
        timeout_s: tuning time budget per model in seconds (default: the profile's).
        windows: train, validation and test rows of another protocol (a public benchmark's
            random split); default: the time windows of ``frame``.
        workers: tuning worker processes sharing one study in the profile's Optuna database
            (1: tune in this process); see :mod:`training.distributed`.
        engine: ``local`` fits the final models in this process, ``dask`` with
            ``lightgbm.dask`` on a Dask cluster.
        scheduler: the Dask scheduler address for ``engine="dask"`` (default: a local
            cluster of two worker processes).
    """
    if engine not in ("local", "dask"):
        from ml_pipeline.errors import InvalidValueError

        raise InvalidValueError("engine", engine, "is not known", "use local or dask")
    started = time.perf_counter()
    from_workdir = frame is None
    if frame is not None:
        split = time_split(frame)
        train_rows, valid_rows, test_rows = split.windows(frame) if windows is None else windows
    elif windows is None:
        split, train_rows, valid_rows, test_rows = read_windows(settings)
    else:
        times = load_training_set(settings, columns=[TIME_COLUMN])
        split = time_split(times)
        train_rows, valid_rows, test_rows = windows
    n_trials = n_trials or settings.optuna.n_trials
    timeout_s = timeout_s if timeout_s is not None else settings.optuna.timeout_s
    registry.configure(settings)
    with mlflow.start_run(run_name="train", tags={"fitml.kind": "train"}) as run:
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
        fit_model, fit_tuning = _tune(
            FitModel(), train_rows, valid_rows, settings, n_trials, timeout_s, workers
        )
        size_model, size_tuning = _tune(
            SizeModel(), train_rows, valid_rows, settings, n_trials, timeout_s, workers
        )
        fit_rows = pd.concat([train_rows, valid_rows])
        if engine == "dask":
            from training.distributed import fit_models_on_dask

            mlflow.set_tag("fitml.engine", "dask")
            source = settings.workdir / TRAINING_SET_FILE if from_workdir else fit_rows
            fit_models_on_dask([fit_model, size_model], source, split, scheduler)
        else:
            fit_model.fit(fit_rows)
            size_model.fit(fit_rows)
        evaluation = evaluate(
            test_rows, fit_model, size_model, load_truth(settings), fit_rows, seed=settings.seed
        )
        metrics = evaluation.metrics
        mlflow.log_metrics(
            {
                k: float(v)
                for k, v in metrics.items()
                if isinstance(v, int | float | np.floating) and np.isfinite(v)
            }
        )
        mlflow.log_dict(metrics, "evaluation/test_window.json")
        log_artifacts(
            evaluation,
            fit_model.predict_proba(test_rows),
            FitModel.labels(test_rows["outcome"]),
            {"fit": fit_model, "size": size_model},
            {"fit": fit_tuning, "size": size_tuning},
        )
        fit_logged = registry.log_and_register(fit_model, settings.mlflow.fit_model_name, test_rows)
        size_logged = registry.log_and_register(
            size_model, settings.mlflow.size_model_name, test_rows
        )
        mlflow.set_tags(
            {"fit_model_version": fit_logged.version, "size_model_version": size_logged.version}
        )
        registry.describe_training(
            run.info.run_id,
            fit_logged,
            size_logged,
            metrics,
            n_train=len(fit_rows),
            test_start=split.test_start,
            trials={"fit": fit_tuning.n_trials, "size": size_tuning.n_trials},
        )
    return TrainResult(
        run_id=run.info.run_id,
        fit_model=fit_logged,
        size_model=size_logged,
        metrics=metrics,
        split=split,
        seconds=time.perf_counter() - started,
    )


def log_artifacts(
    evaluation: Evaluation,
    proba: np.ndarray,
    y: np.ndarray,
    models: dict[str, FitModel | SizeModel],
    tunings: dict[str, TuningResult],
) -> None:
    """Log the evaluation and tuning plots and tables into the active MLflow run.

    Args:
        evaluation: the test window's metrics and slice table.
        proba: the fit model's ``(n, 3)`` probabilities on the test window.
        y: the test window's outcome codes (``OUTCOMES`` order).
        models: fitted models by kind, for their gain importance.
        tunings: each model's tuning result, for the Optuna plots.
    """
    mlflow.log_table(evaluation.slices, "evaluation/slices.json")
    mlflow.log_text(evaluation.slices.to_csv(index=False), "evaluation/slices.csv")
    mlflow.log_text(
        evaluation.slices.to_html(index=False, float_format="%.3f"), "evaluation/slices.html"
    )
    matrix = confusion_matrix(y, proba)
    mlflow.log_text(matrix.to_csv(), "evaluation/confusion_matrix.csv")
    mlflow.log_figure(plot_confusion_matrix(matrix), "evaluation/confusion_matrix.png")
    mlflow.log_figure(plot_calibration(y, proba), "evaluation/calibration_curve.png")
    for kind, model in models.items():
        importance = feature_importance(model)
        mlflow.log_text(importance.to_csv(index=False), f"importance/{kind}_model.csv")
        mlflow.log_figure(plot_importance(importance, kind), f"importance/{kind}_model.png")
    for kind, tuning in tunings.items():
        trials = tuning.study.trials_dataframe()
        mlflow.log_text(trials.to_csv(index=False), f"tuning/{kind}_trials.csv")
        mlflow.log_figure(plot_history(tuning, kind), f"tuning/{kind}_history.png")
        figure = plot_param_importance(tuning, kind)
        if figure is not None:
            mlflow.log_figure(figure, f"tuning/{kind}_param_importance.png")
    _close_figures()


def confusion_matrix(y: np.ndarray, proba: np.ndarray) -> pd.DataFrame:
    """Counts of true outcome (rows) by most probable outcome (columns)."""
    k = len(OUTCOMES)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (np.asarray(y, dtype=np.int64), np.argmax(proba, axis=1)), 1)
    return pd.DataFrame(
        counts,
        index=pd.Index([f"true_{o}" for o in OUTCOMES], name="outcome"),
        columns=[f"pred_{o}" for o in OUTCOMES],
    )


def feature_importance(model: FitModel | SizeModel) -> pd.DataFrame:
    """The booster's total gain and split count per feature, largest gain first."""
    booster = model.booster_
    table = pd.DataFrame(
        {
            "feature": booster.feature_name(),
            "gain": booster.feature_importance("gain"),
            "splits": booster.feature_importance("split"),
        }
    )
    table["gain_share"] = table["gain"] / max(float(table["gain"].sum()), 1e-12)
    return table.sort_values("gain", ascending=False, ignore_index=True)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display; safe to call repeatedly
    import matplotlib.pyplot as plt

    return plt


def _close_figures() -> None:
    _pyplot().close("all")


def plot_confusion_matrix(matrix: pd.DataFrame) -> Figure:
    """The confusion matrix as a heat map, row-normalised, with the counts written in."""
    plt = _pyplot()
    counts = matrix.to_numpy()
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5, 4.2))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(OUTCOMES)), labels=list(OUTCOMES))
    ax.set_yticks(range(len(OUTCOMES)), labels=list(OUTCOMES))
    ax.set_xlabel("predicted (most probable)")
    ax.set_ylabel("shopper's feedback")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            color = "white" if shares[i, j] > 0.5 else "black"
            ax.text(
                j,
                i,
                f"{counts[i, j]}\n{shares[i, j]:.0%}",
                ha="center",
                va="center",
                color=color,
                fontsize=9,
            )
    fig.colorbar(image, ax=ax, label="share of row")
    ax.set_title("Fit model on the test window")
    fig.tight_layout()
    return fig


def calibration_table(
    y: np.ndarray, proba: np.ndarray, n_bins: int = CALIBRATION_BINS
) -> pd.DataFrame:
    """One-vs-rest reliability per outcome: mean predicted vs observed rate per bin."""
    rows = []
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    for k, outcome in enumerate(OUTCOMES):
        p = proba[:, k]
        bins = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
        for b in np.unique(bins):
            inside = bins == b
            rows.append(
                {
                    "outcome": outcome,
                    "bin": int(b),
                    "n": int(inside.sum()),
                    "predicted": float(p[inside].mean()),
                    "observed": float((y[inside] == k).mean()),
                }
            )
    return pd.DataFrame(rows)


def plot_calibration(y: np.ndarray, proba: np.ndarray) -> Figure:
    """Reliability curves of the fit model, one per outcome, beside the diagonal."""
    plt = _pyplot()
    table = calibration_table(np.asarray(y), np.asarray(proba))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    for outcome, part in table.groupby("outcome", sort=False):
        ax.plot(part["predicted"], part["observed"], marker="o", label=str(outcome))
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed share")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    ax.set_title("Calibration on the test window (one vs rest)")
    fig.tight_layout()
    return fig


def plot_importance(importance: pd.DataFrame, kind: str) -> Figure:
    """Horizontal bars of the top features' share of total gain."""
    plt = _pyplot()
    top = importance.head(TOP_FEATURES).iloc[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(top) + 1.2))
    ax.barh(top["feature"], top["gain_share"])
    ax.set_xlabel("share of total gain")
    ax.set_title(f"{kind} model: feature importance (gain)")
    fig.tight_layout()
    return fig


def plot_history(tuning: TuningResult, kind: str) -> Figure:
    """Each trial's validation value and the best so far, in trial order."""
    plt = _pyplot()
    trials = tuning.study.trials_dataframe()
    done = trials[trials["value"].notna()] if "value" in trials else trials.iloc[0:0]
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(done):
        ax.scatter(done["number"], done["value"], s=14, label="trial")
        ax.plot(done["number"], done["value"].cummin(), color="C1", label="best so far")
        ax.legend()
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {tuning.metric or 'objective'} (lower is better)")
    ax.set_title(f"{kind} model: Optuna optimisation history")
    fig.tight_layout()
    return fig


def plot_param_importance(tuning: TuningResult, kind: str) -> Figure | None:
    """Optuna's hyperparameter importance (fANOVA) as bars; None with too few trials."""
    import optuna

    try:
        importance = optuna.importance.get_param_importances(tuning.study)
    except (RuntimeError, ValueError):  # fewer than two finished trials, or no variation
        return None
    if not importance:
        return None
    plt = _pyplot()
    names = list(importance)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(names) + 1.2))
    ax.barh(names, [importance[n] for n in names])
    ax.set_xlabel("importance for the validation value")
    ax.set_title(f"{kind} model: hyperparameter importance")
    fig.tight_layout()
    return fig
