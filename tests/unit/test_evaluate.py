"""Unit tests of evaluation.evaluate's baselines and slices on tiny inline frames."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest

from evaluation import evaluate as evaluate_module
from evaluation.evaluate import (
    LogisticFitBaseline,
    evaluate,
    evaluate_frame,
    logistic_baseline,
    slice_keys,
    usual_size_pick,
)
from features.definitions import FEATURE_NAMES
from features.transforms import request_features
from training.models import NotFittedError

CHARTS = {
    "p1": (["S", "M", "L", "XL"], [2, 3, 4, 5], [80.0, 88.0, 96.0, 104.0], "chest", "alpha"),
    "p2": (["28", "30", "32"], [28, 30, 32], [70.0, 75.0, 80.0], "waist", "waist"),
}


def tiny_frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Training-set rows whose outcome follows the tried size against the usual size.

    Each shopper's usual size is their true best size; the outcome is too_small below it,
    fit at it and too_large above it, so the usual-size rule is perfect on returning shoppers.
    """
    rows = []
    for i in range(n):
        pid = "p1" if rng.random() < 0.6 else "p2"
        sizes, index, low, dim, system = CHARTS[pid]
        best = int(rng.choice(index))
        tried = int(rng.choice(index))
        returning = rng.random() < 0.8
        row: dict[str, Any] = dict.fromkeys(FEATURE_NAMES, np.nan)
        row.update(
            {
                "event_id": f"e{i}",
                "user_id": f"u{i % 40}",
                "product_id": pid,
                "event_timestamp": pd.Timestamp("2025-01-01") + pd.Timedelta(hours=i),
                "chart_sizes": sizes,
                "chart_index": index,
                "chart_low": low,
                "chart_high": [v + (8.0 if dim == "chest" else 5.0) for v in low],
                "chart_dimension": dim,
                "product_size_system": system,
                "product_category": "tops" if pid == "p1" else "pants",
                "product_brand": "a" if pid == "p1" else "b",
                "user_fit_preference": [None, "slim", "regular"][int(rng.integers(3))],
                "user_chest_cm": 90.0 + 4 * rng.standard_normal(),
                "user_waist_cm": 76.0 + 4 * rng.standard_normal(),
                "hist_n": float(rng.integers(1, 9)) if returning else np.nan,
                f"hist_usual_{system}": float(best) if returning else np.nan,
                "pstat_n": float(rng.integers(1, 50)) if rng.random() < 0.9 else np.nan,
                "size_index": tried,
                "outcome": "too_small"
                if tried < best
                else ("too_large" if tried > best else "fit"),
                "best_size_index": best,
            }
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    return request_features(frame)


def _n(frame: pd.DataFrame | Mapping[str, Any]) -> int:
    return len(frame) if isinstance(frame, pd.DataFrame) else len(next(iter(frame.values())))


class UsualFit:
    """A fit model that knows the rule: probabilities from the size against the usual size."""

    def predict_proba(self, frame: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        rel = np.nan_to_num(np.asarray(frame["size_rel_usual"], dtype=float))
        proba = np.full((_n(frame), 3), 0.1)
        proba[rel < 0, 0] = 0.8
        proba[rel == 0, 1] = 0.8
        proba[rel > 0, 2] = 0.8
        return proba


class NoSize:
    """A size model without an opinion."""

    def predict(self, frame: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        return np.full(_n(frame), np.nan)


def truth_of(frame: pd.DataFrame) -> pd.DataFrame:
    """Ground truth as the generator writes it, with oracle probabilities."""
    y = frame["outcome"].map({"too_small": 0, "fit": 1, "too_large": 2}).to_numpy()
    onehot = np.eye(3)[y] * 0.9 + 0.1 / 3
    return pd.DataFrame(
        {
            "event_id": frame["event_id"],
            "best_size_index": frame["best_size_index"],
            "p_too_small": onehot[:, 0],
            "p_fit": onehot[:, 1],
            "p_too_large": onehot[:, 2],
        }
    )


def test_usual_size_pick_snaps_to_the_chart_and_skips_unknowns() -> None:
    frame = pd.DataFrame(
        {
            "usual_index": [3.4, 3.6, np.nan, 9.0, 29.2],
            "chart_index": [[2, 3, 4], [2, 3, 4], [2, 3, 4], None, [28, 30, 32]],
        }
    )
    picked = usual_size_pick(frame)
    np.testing.assert_array_equal(picked[[0, 1, 4]], [3.0, 4.0, 30.0])
    assert np.isnan(picked[2]) and np.isnan(picked[3])


def test_slice_keys_mark_new_users_and_products() -> None:
    frame = pd.DataFrame(
        {
            "product_category": ["tops", None],
            "product_size_system": ["alpha", "waist"],
            "product_brand": ["a", ""],
            "user_fit_preference": [None, "slim"],
            "hist_n": [np.nan, 3.0],
            "pstat_n": [0.0, 12.0],
        }
    )
    keys = slice_keys(frame)
    assert list(keys.columns) == [
        "category",
        "size_system",
        "brand",
        "fit_preference",
        "user",
        "product",
    ]
    assert keys["user"].tolist() == ["new", "returning"]
    assert keys["product"].tolist() == ["new", "known"]
    assert keys["category"].tolist() == ["tops", "unknown"]
    assert keys["brand"].tolist() == ["a", "unknown"]
    assert keys["fit_preference"].tolist() == ["unknown", "slim"]


def test_logistic_baseline_learns_a_linear_signal(seed: int) -> None:
    rng = np.random.default_rng(seed)
    train, test = tiny_frame(rng, 600), tiny_frame(rng, 200)
    model = logistic_baseline(train, seed=seed)
    proba = model.predict_proba(test)
    assert proba.shape == (200, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    returning = test["usual_index"].notna().to_numpy()
    y = test["outcome"].map({"too_small": 0, "fit": 1, "too_large": 2}).to_numpy()
    accuracy = (proba.argmax(axis=1) == y)[returning].mean()
    assert accuracy > 0.8
    # A dict of arrays (the serving fast path) gives the same numbers.
    as_dict = {c: test[c].to_numpy() for c in test.columns}
    np.testing.assert_allclose(model.predict_proba(as_dict), proba)


def test_logistic_baseline_tolerates_unseen_categories_and_subsamples() -> None:
    rng = np.random.default_rng(0)
    train = tiny_frame(rng, 300)
    test = tiny_frame(rng, 10).assign(product_brand="never seen", user_height_cm=np.nan)
    model = LogisticFitBaseline(max_rows=100).fit(train)
    assert np.isfinite(model.predict_proba(test)).all()


def test_logistic_baseline_errors_are_clear() -> None:
    rng = np.random.default_rng(0)
    train = tiny_frame(rng, 50)
    with pytest.raises(NotFittedError):
        LogisticFitBaseline().predict_proba(train)
    with pytest.raises(KeyError, match="outcome"):
        LogisticFitBaseline().fit(train.drop(columns="outcome"))
    with pytest.raises(ValueError, match="single outcome"):
        LogisticFitBaseline().fit(train.assign(outcome="fit"))


def test_evaluate_reports_baselines_oracle_and_slices() -> None:
    rng = np.random.default_rng(1)
    train, test = tiny_frame(rng, 500), tiny_frame(rng, 300)
    report = evaluate(test, UsualFit(), NoSize(), truth_of(test), train)
    m = report.metrics
    for key in (
        "n_test",
        "fit_mean_auc",
        "fit_log_loss",
        "fit_brier",
        "fit_ece",
        "rec_exact_accuracy",
        "chart_exact_accuracy",
        "usual_exact_accuracy",
        "usual_feedback_agreement",
        "usual_coverage",
        "logreg_mean_auc",
        "logreg_feedback_agreement",
        "logreg_exact_accuracy",
        "feedback_agreement",
        "chart_feedback_agreement",
        "oracle_mean_auc",
        "rec_vs_oracle",
        "fit_auc_vs_oracle",
    ):
        assert key in m, key
    assert m["n_test"] == 300
    # The usual size is each shopper's true best size here: perfect where known.
    assert m["usual_exact_accuracy"] == pytest.approx(1.0)
    assert m["usual_coverage"] == pytest.approx(test["usual_index"].notna().mean())
    assert 0.5 < m["logreg_mean_auc"] <= 1.0

    slices = report.slices
    assert set(slices["slice"]) == {
        "category",
        "size_system",
        "brand",
        "fit_preference",
        "user",
        "product",
    }
    for _, part in slices.groupby("slice"):
        assert part["n"].sum() == 300
    new_users = slices[(slices["slice"] == "user") & (slices["value"] == "new")]
    assert new_users["usual_coverage"].item() == 0.0
    assert {"fit_mean_auc", "logreg_mean_auc", "feedback_agreement"} <= set(slices.columns)
    assert evaluate_frame(test, UsualFit(), NoSize(), truth_of(test), train) == pytest.approx(m)


def test_evaluate_without_truth_or_training_rows() -> None:
    rng = np.random.default_rng(2)
    test = tiny_frame(rng, 120)
    m = evaluate_frame(test, UsualFit(), NoSize())
    assert "logreg_mean_auc" not in m and "oracle_mean_auc" not in m
    assert "usual_feedback_agreement" in m and "fit_mean_auc" in m
    with pytest.raises(ValueError, match="no test rows"):
        evaluate(test.iloc[0:0], UsualFit(), NoSize())


def test_evaluation_recommends_in_chunks_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(3)
    train, test = tiny_frame(rng, 400), tiny_frame(rng, 250)
    whole = evaluate(test, UsualFit(), NoSize(), truth_of(test), train)
    calls: list[int] = []
    recommend = evaluate_module.recommend_frame

    def counted(rows: pd.DataFrame, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(rows))
        return recommend(rows, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "RECOMMEND_CHUNK_ROWS", 60)
    monkeypatch.setattr(evaluate_module, "recommend_frame", counted)
    chunked = evaluate(test, UsualFit(), NoSize(), truth_of(test), train)
    # the model's and the logistic baseline's recommendations, five chunks each
    assert calls == [60, 60, 60, 60, 10] * 2
    assert chunked.metrics == pytest.approx(whole.metrics, rel=0, abs=0, nan_ok=True)
    pd.testing.assert_frame_equal(chunked.slices, whole.slices)


def test_logistic_baseline_predicts_in_chunks_with_the_same_numbers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(4)
    train, test = tiny_frame(rng, 400), tiny_frame(rng, 130)
    model = logistic_baseline(train)
    whole = model.predict_proba(test)
    monkeypatch.setattr(evaluate_module, "LOGREG_PREDICT_ROWS", 40)
    np.testing.assert_array_equal(model.predict_proba(test), whole)
    as_dict = {c: test[c].to_numpy() for c in test.columns}
    np.testing.assert_array_equal(model.predict_proba(as_dict), whole)
    assert model.predict_proba(test.iloc[0:0]).shape == (0, 3)
