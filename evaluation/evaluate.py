"""Scoring models on a held-out window, beside the baselines and (on synthetic data) the oracle.

:func:`evaluate_frame` is the one evaluation of fitml: ``fitml train`` calls it on the test
window to log metrics, ``fitml evaluate`` and the promotion gate call it on the same window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from evaluation import metrics
from ml_pipeline.schema import OUTCOMES
from serving.recommend import FitPredictor, SizePredictor, recommend_frame

ORACLE_COLUMNS = ["p_too_small", "p_fit", "p_too_large"]


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


def evaluate_frame(
    test: pd.DataFrame,
    fit_model: FitPredictor,
    size_model: SizePredictor,
    truth: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Score both models on the test rows, beside the size-chart baseline and the oracle.

    Args:
        test: training-set rows of the test window (features as of each event).
        fit_model: the fit model.
        size_model: the size model.
        truth: the generator's ground truth (``truth.parquet``), when the data is synthetic.

    Returns:
        Flat metrics: ``fit_*`` for the fit model on the tried sizes, ``rec_*`` for the
        recommendation, ``chart_*`` for the size-chart rule, ``oracle_*`` and ``*_vs_oracle``
        when ``truth`` is given, and ``feedback_agreement`` (share of feedback events whose
        outcome agrees with the recommendation: too small at s means the right size is > s).
    """
    y = np.asarray(pd.Series(test["outcome"]).map({o: i for i, o in enumerate(OUTCOMES)}))
    proba = fit_model.predict_proba(test)
    result: dict[str, Any] = {"n_test": len(test)}
    result.update({f"fit_{k}": v for k, v in fit_metrics(y, proba).items()})

    recs = recommend_frame(test, fit_model, size_model)
    rec_index = np.array([np.nan if r is None else r.recommended_index for r in recs])
    chart = test["chart_pick"].to_numpy(dtype=float)
    tried = test["size_index"].to_numpy(dtype=float)
    result["feedback_agreement"] = _feedback_agreement(rec_index, tried, test["outcome"])
    result["chart_feedback_agreement"] = _feedback_agreement(chart, tried, test["outcome"])

    if truth is not None:
        joined = test[["event_id"]].merge(truth, on="event_id", how="left")
        best = joined["best_size_index"].to_numpy(dtype=float)
        has = ~np.isnan(best)
        result["rec_exact_accuracy"] = metrics.exact_size_accuracy(best[has], rec_index[has])
        result["rec_within_one"] = metrics.within_one_size_accuracy(best[has], rec_index[has])
        chart_known = has & ~np.isnan(chart)
        result["chart_exact_accuracy"] = metrics.exact_size_accuracy(
            best[chart_known], chart[chart_known]
        )
        result["chart_coverage"] = float(chart_known.mean())
        oracle = joined[ORACLE_COLUMNS].to_numpy(dtype=float)
        result.update({f"oracle_{k}": v for k, v in fit_metrics(y, oracle).items()})
        result["fit_auc_vs_oracle"] = result["fit_mean_auc"] / result["oracle_mean_auc"]
        # The oracle recommends the true best size; against noisy feedback it is the ceiling.
        result["oracle_feedback_agreement"] = _feedback_agreement(best, tried, test["outcome"])
        result["rec_vs_oracle"] = (
            result["feedback_agreement"] / result["oracle_feedback_agreement"]
        )
    return result


def _feedback_agreement(recommended: np.ndarray, tried: np.ndarray, outcome: pd.Series) -> float:
    """Share of events whose feedback agrees with the recommended size."""
    outcome = np.asarray(outcome)
    known = ~np.isnan(recommended)
    agree = np.where(
        outcome == "too_small",
        recommended > tried,
        np.where(outcome == "too_large", recommended < tried, recommended == tried),
    )
    return float(agree[known].mean()) if known.any() else float("nan")


def default_windows(settings: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The champion's training window (train + validation) and the window after it."""
    frame, split = _champion_split(settings)
    ts = frame["event_timestamp"]
    return frame[ts < split.test_start], frame[ts >= split.test_start]


def _champion_split(settings: Any, alias: str = "champion") -> tuple[pd.DataFrame, Split]:
    import mlflow

    from training import registry
    from training.train import load_training_set

    registry.configure(settings)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(settings.mlflow.fit_model_name, alias)
    params = mlflow.get_run(version.run_id).data.params
    split = Split(pd.Timestamp(params["valid_start"]), pd.Timestamp(params["test_start"]))
    return load_training_set(settings), split


def evaluate_alias(settings: Any, alias: str = "champion") -> dict[str, Any]:
    """Evaluate the models registered under ``alias`` on their held-out test window."""
    from training import registry
    from training.train import load_truth

    frame, split = _champion_split(settings, alias)
    _, _, test = split.windows(frame)
    fit, fit_version = registry.load_model(settings.mlflow.fit_model_name, alias)
    size, size_version = registry.load_model(settings.mlflow.size_model_name, alias)
    result = evaluate_frame(test, fit, size, load_truth(settings))  # type: ignore[arg-type]
    result["model_versions"] = {"fit_model": fit_version, "size_model": size_version}
    return result
