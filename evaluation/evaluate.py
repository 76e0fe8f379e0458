"""Scoring models on a held-out window, beside the baselines and (on synthetic data) the oracle.

:func:`evaluate_frame` is the one evaluation of fitml: ``fitml train`` calls it on the test
window to log metrics, ``fitml evaluate`` and the promotion gate call it on the same window.
:func:`evaluate` returns the same metrics plus a table of them per slice.

Baselines beside the models: the size-chart rule (``chart_*``: the size whose chart range
holds the shopper's girth), the shopper's usual size (``usual_*``: from their feedback
history as of the event) and a logistic regression on the fit model's features
(``logreg_*``: fitted on the training window, scored on the same rows; its recommendation is
the size with the highest P(fit)). On synthetic data, the generator's ground truth gives the
oracle (``oracle_*``) and every model and baseline as a fraction of it (``*_vs_oracle``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Self

import numpy as np
import pandas as pd

from evaluation import metrics
from features.definitions import CATEGORICAL_FEATURES, FEATURE_NAMES, FIT_MODEL_FEATURES
from features.transforms import UNKNOWN, request_features
from ml_pipeline.schema import OUTCOMES
from serving.recommend import (
    FitPredictor,
    Recommendation,
    SizePredictor,
    feedback_agrees,
    recommend_frame,
)
from training.models import FitModel, NotFittedError

ORACLE_COLUMNS = ["p_too_small", "p_fit", "p_too_large"]
LOGREG_MAX_ROWS: Final = 20_000
"""The logistic baseline trains on a seeded sample of at most this many rows (fast enough)."""
LOGREG_PREDICT_ROWS: Final = 20_000
"""The logistic baseline predicts this many rows at a time. Its design matrix (standardised
numbers, missing-value indicators, one-hot categories) is dense and over a hundred columns
wide; with the transforms' intermediate copies, the ~130,000 candidate rows of a 15,000-event
test window took ~350 MB at once."""
SLICE_COLUMNS: Final[dict[str, str]] = {
    "category": "product_category",
    "size_system": "product_size_system",
    "brand": "product_brand",
    "fit_preference": "user_fit_preference",
}
"""Slicings by a column of the training set; ``user`` (new / returning) and ``product``
(new / known) are derived from the history counts, see :func:`slice_keys`."""
MAX_SLICE_VALUES: Final = 30
"""The slice table keeps the most frequent values of each slicing (brands can be many)."""
RECOMMEND_CHUNK_ROWS: Final = 50_000
"""Test rows recommended for at a time: each row expands to one candidate row per size of its
chart, with every column, so the whole test window at once would multiply its memory."""
EVALUATION_INPUTS: Final[tuple[str, ...]] = tuple(
    dict.fromkeys(
        [
            "event_id",
            "product_id",
            "outcome",
            "size_index",
            "chart_pick",
            "usual_index",
            *FEATURE_NAMES,
            *SLICE_COLUMNS.values(),
        ]
    )
)
"""Training-set columns :func:`evaluate` reads from the test window besides the models'
features: the label and the size tried, the keys of the ground truth (``event_id``) and of
the charts (``product_id``), every feature-service value the recommendation's request-time
features are computed from (the ``chart_*`` arrays among them) and the slicing columns.
``training.train.evaluation_columns`` adds the models' features."""


@dataclass(frozen=True)
class Split:
    """Time boundaries of the train / validation / test windows (by event time)."""

    valid_start: pd.Timestamp
    test_start: pd.Timestamp

    def windows(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """Cut ``frame`` into train, validation and test windows by ``event_timestamp``."""
        ts = frame["event_timestamp"]
        return (
            frame[ts < self.valid_start],
            frame[(ts >= self.valid_start) & (ts < self.test_start)],
            frame[ts >= self.test_start],
        )


def time_split(frame: pd.DataFrame, valid_frac: float = 0.15, test_frac: float = 0.15) -> Split:
    """Split points such that the last ``test_frac`` of events (by time) are the test window."""
    ts = frame["event_timestamp"].sort_values()
    n = len(ts)
    if n < 20:
        raise ValueError(f"need at least 20 events to split into windows, got {n}")
    return Split(
        valid_start=ts.iloc[int(n * (1 - valid_frac - test_frac))],
        test_start=ts.iloc[int(n * (1 - test_frac))],
    )


def fit_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Mean and per-class one-vs-rest AUC, log loss, Brier score and calibration error."""
    auc = metrics.multiclass_auc(y, proba, class_names=OUTCOMES)
    out = dict(auc)  # mean_auc and auc_<class>
    out["log_loss"] = metrics.log_loss(y, proba)
    out["brier"] = metrics.brier_score(y, proba)
    out["ece"] = metrics.expected_calibration_error(y, proba)
    return out


class LogisticFitBaseline:
    """The logistic-regression baseline of the fit model, on the fit model's own features.

    Numeric features are median-imputed (with missing-value indicators) and standardised,
    categories one-hot encoded (unknown categories at predict time: all zeros); a multinomial
    logistic regression predicts P(too_small, fit, too_large). It follows the fit model's
    :class:`~serving.recommend.FitPredictor` protocol, so the recommendation function can run
    on it too.

    Args:
        features: Input columns (default: the fit model's).
        max_rows: Train on a seeded sample of at most this many rows (keeps it fast).
        c: Inverse L2 regularisation strength of the logistic regression.
        seed: Seeds the subsample.
    """

    def __init__(
        self,
        features: Sequence[str] = FIT_MODEL_FEATURES,
        *,
        max_rows: int = LOGREG_MAX_ROWS,
        c: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.features = tuple(features)
        self.max_rows = max_rows
        self.c = c
        self.seed = seed

    def fit(self, frame: pd.DataFrame) -> Self:
        """Learn from labelled rows (``outcome`` column plus the features).

        Raises:
            KeyError: ``frame`` lacks a feature or the ``outcome`` column.
            ValueError: ``frame`` holds fewer than two outcome classes.
        """
        missing = [c for c in (*self.features, "outcome") if c not in frame]
        if missing:
            raise KeyError(f"logistic baseline: training rows lack {', '.join(missing)}")
        if len(frame) > self.max_rows:
            frame = frame.sample(n=self.max_rows, random_state=self.seed)
        y = FitModel.labels(frame["outcome"])
        if len(np.unique(y)) < 2:
            raise ValueError(
                "logistic baseline: training rows hold a single outcome class; "
                "pass a training window with feedback of at least two kinds"
            )
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline, make_pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        categorical = [c for c in self.features if c in CATEGORICAL_FEATURES]
        numeric = [c for c in self.features if c not in CATEGORICAL_FEATURES]
        prep = ColumnTransformer(
            [
                (
                    "numeric",
                    make_pipeline(
                        SimpleImputer(
                            strategy="median", add_indicator=True, keep_empty_features=True
                        ),
                        StandardScaler(),
                    ),
                    numeric,
                ),
                (
                    "categorical",
                    OneHotEncoder(handle_unknown="ignore", min_frequency=5),
                    categorical,
                ),
            ]
        )
        self.pipeline_ = Pipeline(
            [("prep", prep), ("logreg", LogisticRegression(C=self.c, max_iter=500))]
        )
        self.pipeline_.fit(self._frame(frame), y)
        self.classes_ = self.pipeline_.classes_
        return self

    def _frame(self, rows: pd.DataFrame | Mapping[str, Any]) -> pd.DataFrame:
        data: dict[str, Any] = {}
        n = len(rows) if isinstance(rows, pd.DataFrame) else len(next(iter(rows.values())))
        for column in self.features:
            values = rows[column] if column in rows else np.full(n, np.nan)
            if column in CATEGORICAL_FEATURES:
                series = pd.Series(np.asarray(values, dtype=object))
                data[column] = series.where(series.notna(), UNKNOWN).astype(str).to_numpy()
            else:
                data[column] = pd.to_numeric(pd.Series(np.asarray(values)), errors="coerce")
        return pd.DataFrame(data)

    def predict_proba(self, frame: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """Return ``(n, 3)`` outcome probabilities (``OUTCOMES`` order; rows sum to 1)."""
        if not hasattr(self, "pipeline_"):
            raise NotFittedError("LogisticFitBaseline is not fitted; call fit() first")
        n = len(frame) if isinstance(frame, pd.DataFrame) else len(next(iter(frame.values())))
        raw = np.concatenate(
            [
                self.pipeline_.predict_proba(self._frame(_rows(frame, start, LOGREG_PREDICT_ROWS)))
                for start in range(0, n, LOGREG_PREDICT_ROWS)
            ]
            or [np.empty((0, len(self.classes_)))]
        )
        proba = np.zeros((raw.shape[0], len(OUTCOMES)))
        proba[:, self.classes_] = raw  # a class absent from training gets probability 0
        return proba


def _rows(
    frame: pd.DataFrame | Mapping[str, Any], start: int, n: int
) -> pd.DataFrame | dict[str, Any]:
    """Rows ``start`` to ``start + n`` of a frame or of a dict of equal-length arrays."""
    if isinstance(frame, pd.DataFrame):
        return frame.iloc[start : start + n]
    return {k: np.asarray(v)[start : start + n] for k, v in frame.items()}


def logistic_baseline(
    train: pd.DataFrame, *, max_rows: int = LOGREG_MAX_ROWS, seed: int = 0
) -> LogisticFitBaseline:
    """Fit the logistic-regression fit baseline on training-window rows.

    Args:
        train: Labelled rows of the training window (features as of each event).
        max_rows: Train on a seeded sample of at most this many rows.
        seed: Seeds the subsample.
    """
    return LogisticFitBaseline(max_rows=max_rows, seed=seed).fit(train)


class _NoSizeEstimate:
    """A size predictor without an opinion: every size of the chart is a candidate."""

    def predict(self, frame: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        n = len(frame) if isinstance(frame, pd.DataFrame) else len(next(iter(frame.values())))
        return np.full(n, np.nan)


def usual_size_pick(test: pd.DataFrame) -> np.ndarray:
    """The "user's usual size" baseline: per row, the product's size nearest the usual size.

    The usual size (``usual_index``) comes from the shopper's history features as of the
    event (point in time: only feedback before it), on the product's size system. Rows
    without one (new shoppers, other size systems) or without a chart get NaN.
    """
    usual = (
        test["usual_index"].to_numpy(dtype=float)
        if "usual_index" in test
        else np.asarray(request_features(test)["usual_index"], dtype=float)
    )
    charts = test["chart_index"].to_numpy(dtype=object)
    out = np.full(len(test), np.nan)
    for i, (u, chart) in enumerate(zip(usual, charts, strict=True)):
        if np.isnan(u) or chart is None or len(chart) == 0:
            continue
        sizes = np.asarray(chart, dtype=float)
        out[i] = sizes[int(np.argmin(np.abs(sizes - u)))]
    return out


def slice_keys(test: pd.DataFrame) -> pd.DataFrame:
    """The slice each test row belongs to, per slicing (one column per :data:`SLICES` name).

    Missing categories read ``unknown``; a user without feedback before the event
    (``hist_n`` missing or 0) is ``new``, else ``returning``; a product without feedback
    statistics (``pstat_n`` missing or 0) is ``new``, else ``known``.
    """
    out = pd.DataFrame(index=test.index)
    for name, column in SLICE_COLUMNS.items():
        values = test[column] if column in test else pd.Series(None, index=test.index)
        values = values.astype(object).where(values.notna(), UNKNOWN)
        out[name] = values.where(values != "", UNKNOWN).astype(str)
    hist_n = pd.to_numeric(test.get("hist_n", pd.Series(np.nan, index=test.index))).fillna(0)
    out["user"] = np.where(hist_n > 0, "returning", "new")
    pstat_n = pd.to_numeric(test.get("pstat_n", pd.Series(np.nan, index=test.index))).fillna(0)
    out["product"] = np.where(pstat_n > 0, "known", "new")
    return out


@dataclass(frozen=True)
class Evaluation:
    """An evaluation: flat metrics and the same metrics per slice.

    Attributes:
        metrics: What :func:`evaluate_frame` returns.
        slices: One row per (``slice``, ``value``): ``n`` and the metrics of
            :data:`SLICE_METRICS` that could be computed (NaN where a slice is too
            uniform, e.g. AUC with one outcome class).
    """

    metrics: dict[str, Any]
    slices: pd.DataFrame


def evaluate_frame(
    test: pd.DataFrame,
    fit_model: FitPredictor,
    size_model: SizePredictor,
    truth: pd.DataFrame | None = None,
    train: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Score both models on the test rows, beside the baselines and the oracle.

    Args:
        test: training-set rows of the test window (features as of each event).
        fit_model: the fit model.
        size_model: the size model.
        truth: the generator's ground truth (``truth.parquet``), when the data is synthetic.
        train: labelled rows of the training window; when given, the logistic-regression
            baseline is fitted on them and reported (``logreg_*``).

    Returns:
        Flat metrics: ``fit_*`` for the fit model on the tried sizes, ``rec_*`` for the
        recommendation, ``chart_*`` for the size-chart rule, ``usual_*`` for the user's usual
        size, ``logreg_*`` for the logistic regression (with ``train``), ``oracle_*`` and
        ``*_vs_oracle`` when ``truth`` is given, and ``feedback_agreement`` (share of
        feedback events whose outcome agrees with the recommendation: too small at s means
        the right size is > s). See :func:`evaluate` for the per-slice table.
    """
    return evaluate(test, fit_model, size_model, truth, train).metrics


def evaluate(
    test: pd.DataFrame,
    fit_model: FitPredictor,
    size_model: SizePredictor,
    truth: pd.DataFrame | None = None,
    train: pd.DataFrame | None = None,
    *,
    seed: int = 0,
) -> Evaluation:
    """:func:`evaluate_frame`'s metrics plus the slice table (see :class:`Evaluation`).

    Args:
        test: training-set rows of the test window (features as of each event).
        fit_model: the fit model.
        size_model: the size model.
        truth: the generator's ground truth, when the data is synthetic.
        train: labelled training-window rows for the logistic-regression baseline.
        seed: seeds the logistic baseline's subsample.
    """
    if len(test) == 0:
        raise ValueError("no test rows to evaluate; check the split's test window")
    y = np.asarray(pd.Series(test["outcome"]).map({o: i for i, o in enumerate(OUTCOMES)}))
    proba = fit_model.predict_proba(test)
    recs = _recommend_in_chunks(test, fit_model, size_model)
    rows: dict[str, Any] = {
        "y": y,
        "tried": test["size_index"].to_numpy(dtype=float),
        "outcome": test["outcome"].to_numpy(dtype=object),
        "fit": proba,
        "rec": _rec_index(recs),
        "chart": test["chart_pick"].to_numpy(dtype=float),
        "usual": usual_size_pick(test),
    }
    if train is not None:
        baseline = logistic_baseline(train, seed=seed)
        rows["logreg"] = baseline.predict_proba(test)
        rows["logreg_rec"] = _rec_index(_recommend_in_chunks(test, baseline, _NoSizeEstimate()))
    if truth is not None:
        joined = test[["event_id"]].merge(truth, on="event_id", how="left")
        rows["best"] = joined["best_size_index"].to_numpy(dtype=float)
        rows["oracle"] = joined[ORACLE_COLUMNS].to_numpy(dtype=float)

    result: dict[str, Any] = {"n_test": len(test)}
    result.update(_scores(rows, np.ones(len(test), dtype=bool), full=True))
    keys = slice_keys(test)
    table = []
    for name in keys.columns:
        counts = keys[name].value_counts()
        for value in counts.index[:MAX_SLICE_VALUES]:
            mask = (keys[name] == value).to_numpy()
            table.append(
                {"slice": name, "value": value, "n": int(mask.sum()), **_scores(rows, mask)}
            )
    slices = pd.DataFrame(table)
    return Evaluation(metrics=result, slices=slices)


def _recommend_in_chunks(
    test: pd.DataFrame, fit_model: FitPredictor, size_model: SizePredictor
) -> list[Recommendation | None]:
    """:func:`~serving.recommend.recommend_frame` on ``RECOMMEND_CHUNK_ROWS`` rows at a time.

    Each row's recommendation depends on that row alone (its features and its product's size
    chart, which every row of the product carries), so the result is the same as on the
    whole frame; only the candidate rows of one chunk are in memory at once.
    """
    recs: list[Recommendation | None] = []
    for start in range(0, len(test), RECOMMEND_CHUNK_ROWS):
        recs += recommend_frame(
            test.iloc[start : start + RECOMMEND_CHUNK_ROWS], fit_model, size_model
        )
    return recs


def _rec_index(recs: Sequence[Recommendation | None]) -> np.ndarray:
    return np.array([np.nan if r is None else r.recommended_index for r in recs], dtype=float)


def _safe_fit_metrics(y: np.ndarray, proba: np.ndarray, full: bool) -> dict[str, float]:
    if full:
        return fit_metrics(y, proba)
    return {"mean_auc": metrics.multiclass_auc(y, proba, class_names=OUTCOMES)["mean_auc"]}


def _scores(rows: dict[str, Any], mask: np.ndarray, *, full: bool = False) -> dict[str, float]:
    """Every model's and baseline's metrics on the rows in ``mask``.

    ``full``: all fit metrics (per-class AUC, log loss, ...), else the slice table's subset.
    """
    out: dict[str, float] = {}
    y, tried, outcome = rows["y"][mask], rows["tried"][mask], rows["outcome"][mask]
    out.update({f"fit_{k}": v for k, v in _safe_fit_metrics(y, rows["fit"][mask], full).items()})
    if full:  # how far the test rows alone let the mean AUC move
        out["fit_mean_auc_se"] = metrics.mean_auc_se(y, rows["fit"][mask])
    if "logreg" in rows:
        logreg = _safe_fit_metrics(y, rows["logreg"][mask], full)
        out.update({f"logreg_{k}": v for k, v in logreg.items()})
    picks = {"": "rec", "chart_": "chart", "usual_": "usual", "logreg_": "logreg_rec"}
    for prefix, key in picks.items():
        if key in rows:
            out[f"{prefix}feedback_agreement"] = _feedback_agreement(
                rows[key][mask], tried, outcome
            )
    out["usual_coverage"] = float((~np.isnan(rows["usual"][mask])).mean())
    if "best" in rows:
        best = rows["best"][mask]
        has = ~np.isnan(best)
        for prefix, key in picks.items():
            if key not in rows:
                continue
            name = prefix or "rec_"
            picked = rows[key][mask]
            known = has & ~np.isnan(picked)
            out[f"{name}exact_accuracy"] = _accuracy(best[known], picked[known], 0)
            out[f"{name}within_one"] = _accuracy(best[known], picked[known], 1)
        out["chart_coverage"] = float((has & ~np.isnan(rows["chart"][mask])).mean())
        oracle = _safe_fit_metrics(y, rows["oracle"][mask], full)
        out.update({f"oracle_{k}": v for k, v in oracle.items()})
        out["fit_auc_vs_oracle"] = out["fit_mean_auc"] / out["oracle_mean_auc"]
        if "logreg_mean_auc" in out:
            out["logreg_auc_vs_oracle"] = out["logreg_mean_auc"] / out["oracle_mean_auc"]
        # The oracle recommends the true best size; against noisy feedback it is the ceiling.
        out["oracle_feedback_agreement"] = _feedback_agreement(best, tried, outcome)
        ceiling = out["oracle_feedback_agreement"]
        for prefix, key in picks.items():
            if key in rows:
                name = prefix or "rec_"
                agreement = out[f"{prefix}feedback_agreement"]
                out[f"{name}vs_oracle"] = agreement / ceiling if ceiling else float("nan")
    return out


def _accuracy(true: np.ndarray, picked: np.ndarray, tolerance: int) -> float:
    if true.size == 0:
        return float("nan")
    return metrics.size_accuracy(true, picked, tolerance)


def _feedback_agreement(recommended: np.ndarray, tried: np.ndarray, outcome: pd.Series) -> float:
    """Share of events whose feedback agrees with the recommended size."""
    known = ~np.isnan(recommended)
    agree = feedback_agrees(recommended, tried, outcome)
    return float(agree[known].mean()) if known.any() else float("nan")


def _champion_split(settings: Any, alias: str = "champion") -> Split:
    """The time windows the fit model registered under ``alias`` was trained on."""
    import mlflow

    from training import registry

    registry.configure(settings)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(settings.mlflow.fit_model_name, alias)
    params = mlflow.get_run(str(version.run_id)).data.params
    return Split(pd.Timestamp(params["valid_start"]), pd.Timestamp(params["test_start"]))


def _alias_windows(settings: Any, alias: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training rows (train + validation) and test rows of ``alias``'s training run.

    Read with only the columns training and evaluation need
    (:func:`training.train.read_windows`).
    """
    from training.train import read_windows

    _, train, valid, test = read_windows(settings, _champion_split(settings, alias))
    return pd.concat([train, valid]), test


def evaluate_alias(settings: Any, alias: str = "champion") -> dict[str, Any]:
    """Evaluate the models registered under ``alias`` on their held-out test window."""
    from training import registry
    from training.train import load_truth

    train, test = _alias_windows(settings, alias)
    fit, fit_version = registry.load_model(settings.mlflow.fit_model_name, alias)
    size, size_version = registry.load_model(settings.mlflow.size_model_name, alias)
    result = evaluate_frame(
        test,
        fit,  # type: ignore[arg-type]
        size,  # type: ignore[arg-type]
        load_truth(settings),
        train,
    )
    result["model_versions"] = {"fit_model": fit_version, "size_model": size_version}
    return result


def evaluate_registered(
    settings: Any, alias: str = "champion"
) -> tuple[Evaluation, dict[str, str]]:
    """:func:`evaluate_alias` with the slice table: the evaluation and the model versions."""
    from training import registry
    from training.train import load_truth

    train, test = _alias_windows(settings, alias)
    fit, fit_version = registry.load_model(settings.mlflow.fit_model_name, alias)
    size, size_version = registry.load_model(settings.mlflow.size_model_name, alias)
    evaluation = evaluate(
        test,
        fit,  # type: ignore[arg-type]
        size,  # type: ignore[arg-type]
        load_truth(settings),
        train,
        seed=settings.seed,
    )
    return evaluation, {"fit_model": fit_version, "size_model": size_version}


def log_evaluation(
    settings: Any,
    evaluation: Evaluation,
    alias: str,
    versions: dict[str, str],
    summary: str,
) -> str:
    """Log an evaluation of registered models as an ``evaluate`` run of the training experiment.

    The run holds the flat metrics, the printed tables (``evaluation/summary.txt``) and the
    slice table, tagged with the alias and versions evaluated. Started by ``mlflow run . -e
    evaluate`` against the project's store, it logs into that run (``MLFLOW_RUN_ID``); against
    another store, the launcher's run gets the same metrics and a tag pointing to this one.

    Returns:
        The id of the run that holds the evaluation in the project's store.
    """
    import os

    import mlflow

    from training import registry

    registry.configure(settings)
    metrics = {
        k: float(v)
        for k, v in evaluation.metrics.items()
        if isinstance(v, int | float | np.floating) and np.isfinite(v)
    }
    launcher_run = os.environ.get("MLFLOW_RUN_ID")
    launcher_uri = os.environ.get("MLFLOW_TRACKING_URI")
    in_project = bool(launcher_run) and _same_store(launcher_uri, settings.mlflow.tracking_uri)
    tags = {
        "fitml.kind": "evaluate",
        "fitml.alias": alias,
        "fit_model_version": versions["fit_model"],
        "size_model_version": versions["size_model"],
        registry.DESCRIPTION_TAG: (
            f"Evaluation of {alias} (fit model v{versions['fit_model']}, size model "
            f"v{versions['size_model']}) on its held-out window of "
            f"{evaluation.metrics.get('n_test')} events, beside the baselines."
        ),
    }
    if launcher_run and not in_project:
        os.environ.pop("MLFLOW_RUN_ID")  # the launcher's run lives in another store
    try:
        with mlflow.start_run(
            run_id=launcher_run if in_project else None, run_name=f"evaluate {alias}"
        ) as run:
            mlflow.set_tags(tags)
            mlflow.log_metrics(metrics)
            mlflow.log_text(summary, "evaluation/summary.txt")
            mlflow.log_dict(evaluation.metrics, "evaluation/metrics.json")
            mlflow.log_table(evaluation.slices, "evaluation/slices.json")
    finally:
        if launcher_run and not in_project:
            os.environ["MLFLOW_RUN_ID"] = launcher_run
    if launcher_run and not in_project:
        client = mlflow.MlflowClient(tracking_uri=launcher_uri)
        for key, value in metrics.items():
            client.log_metric(launcher_run, key, value)
        client.set_tag(launcher_run, "fitml.project_store", settings.mlflow.tracking_uri)
        client.set_tag(launcher_run, "fitml.project_run_id", run.info.run_id)
    return str(run.info.run_id)


def _same_store(a: str | None, b: str) -> bool:
    if not a:
        return False

    def norm(uri: str) -> str:
        if uri.startswith("sqlite:///"):
            from pathlib import Path

            return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
        return uri.rstrip("/")

    return norm(a) == norm(b)
