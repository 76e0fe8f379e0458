"""The numpy fast paths give exactly what the pandas paths give.

``request_features`` / ``chart_features`` on a dict of arrays vs on a DataFrame,
``TabularEncoder.matrix`` + booster vs LightGBM on the encoded DataFrame, and
``recommend_rows`` vs the original pandas implementation of ``recommend_frame`` (kept here,
frozen, as the oracle).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from features.transforms import STRING_FEATURES, request_features
from serving.recommend import (
    Recommendation,
    candidate_frame,
    recommend,
    recommend_frame,
    recommend_rows,
)
from training.models import FitModel, SizeModel, TabularEncoder

CHARTS = {
    "p1": (["S", "M", "L"], [2, 3, 4], [80.0, 88.0, 96.0], [88.0, 96.0, 104.0], "chest"),
    "p2": (["28", "30", "32", "34"], [28, 30, 32, 34], [70, 75, 80, 85], [75, 80, 85, 90], "waist"),
    "p3": (["XS", "S"], [1, 2], [60.0, 70.0], [70.0, 80.0], "hips"),
}


def random_rows(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Feature-service rows with missing values sprinkled in."""
    rows = []
    for _ in range(n):
        pid = str(rng.choice(list(CHARTS)))
        sizes, index, low, high, dim = CHARTS[pid]

        def maybe(v: object, p: float = 0.2) -> object:
            return None if rng.random() < p else v

        rows.append(
            {
                "user_id": f"u{rng.integers(100)}",
                "product_id": pid,
                "chart_sizes": sizes,
                "chart_index": index,
                "chart_low": low,
                "chart_high": high,
                "chart_dimension": dim,
                "product_size_system": maybe(str(rng.choice(["alpha", "numeric", "waist"]))),
                "product_brand": maybe(str(rng.choice(["a", "b"]))),
                "product_category": maybe("tops"),
                "product_fit_type": maybe(str(rng.choice(["slim", "classic"]))),
                "product_stretch": maybe(float(rng.random())),
                "user_sex": maybe(str(rng.choice(["f", "m"]))),
                "user_fit_preference": maybe(str(rng.choice(["slim", "regular"]))),
                "user_height_cm": maybe(float(rng.normal(170, 10))),
                "user_weight_kg": maybe(float(rng.normal(70, 10))),
                "user_chest_cm": maybe(float(rng.normal(92, 8))),
                "user_waist_cm": maybe(float(rng.normal(80, 8))),
                "user_hips_cm": maybe(float(rng.normal(70, 8))),
                "user_inseam_cm": maybe(float(rng.normal(80, 5))),
                "user_underbust_cm": maybe(float(rng.normal(80, 6)), 0.6),
                "user_cup_cm": maybe(float(rng.integers(1, 7)) * 2.54, 0.6),
                "user_age": maybe(float(rng.integers(18, 70)), 0.5),
                "user_body_type": maybe(str(rng.choice(["pear", "athletic"])), 0.5),
                "hist_n": maybe(float(rng.integers(1, 9)), 0.4),
                "hist_share_small": maybe(float(rng.random()), 0.4),
                "hist_share_large": maybe(float(rng.random()), 0.4),
                "hist_mean_offset": maybe(float(rng.normal()), 0.4),
                "hist_last_offset": maybe(float(rng.normal()), 0.4),
                "hist_usual_alpha": maybe(float(rng.integers(0, 6)), 0.5),
                "hist_usual_numeric": maybe(float(rng.integers(0, 12)), 0.5),
                "hist_usual_waist": maybe(float(rng.integers(24, 40)), 0.5),
                "hist_usual_rtr": maybe(float(rng.integers(0, 20)), 0.9),
                "hist_usual_modcloth": maybe(float(rng.integers(0, 20)), 0.9),
                "hist_item_offset": maybe(float(rng.normal()), 0.4),
                "pstat_n": maybe(float(rng.integers(1, 100)), 0.3),
                "pstat_share_small": maybe(float(rng.random()), 0.3),
                "pstat_share_large": maybe(float(rng.random()), 0.3),
                "pstat_mean_offset": maybe(float(rng.normal()), 0.3),
                "pstat_size_mean": maybe(float(rng.uniform(1, 6)), 0.3),
                "pstat_implied_mean": maybe(float(rng.uniform(1, 6)), 0.3),
                "pstat_user_offset": maybe(float(rng.normal()), 0.3),
                "pstat_body_weight": maybe(float(rng.uniform(50, 90)), 0.3),
                "pstat_body_size": maybe(float(rng.uniform(1, 6)), 0.3),
                "pstat_body_slope": maybe(float(rng.normal(0, 0.05)), 0.3),
            }
        )
    return pd.DataFrame(rows)


def as_dict(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {c: frame[c].to_numpy() for c in frame.columns}


def assert_same_columns(frame: pd.DataFrame, columns: dict[str, np.ndarray]) -> None:
    assert set(frame.columns) == set(columns)
    for name in frame.columns:
        left = frame[name].to_numpy()
        right = np.asarray(columns[name])
        if left.dtype.kind == "f" or name in ("size_index",):
            np.testing.assert_array_equal(left.astype(float), right.astype(float), err_msg=name)
        else:
            assert [repr(v) for v in left] == [repr(v) for v in right], name


@pytest.mark.parametrize("n", [1, 7, 60])
def test_request_features_same_on_dict_and_frame(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    frame = candidate_frame(random_rows(rng, n))
    assert_same_columns(request_features(frame), request_features(as_dict(frame)))


def test_string_features_fill_unknown_on_both_paths() -> None:
    frame = candidate_frame(random_rows(np.random.default_rng(0), 20))
    out = request_features(as_dict(frame))
    for column in STRING_FEATURES:
        if column in out:
            assert all(v is not None and v == v for v in out[column])


@pytest.fixture(scope="module")
def models() -> tuple[FitModel, SizeModel]:
    rng = np.random.default_rng(1)
    rows = request_features(candidate_frame(random_rows(rng, 400)))
    rows["outcome"] = rng.choice(["too_small", "fit", "too_large"], size=len(rows))
    fit = FitModel(num_boost_round=15).fit(rows)
    size = SizeModel(num_boost_round=15).fit(rows)
    return fit, size


def test_encoder_matrix_predicts_like_the_encoded_frame(
    models: tuple[FitModel, SizeModel], seed: int
) -> None:
    fit, size = models
    rows = request_features(candidate_frame(random_rows(np.random.default_rng(seed + 10), 50)))
    rows.loc[rows.index[:5], "product_brand"] = "a brand never seen"
    for model in (fit, size):
        by_frame = model.booster_.predict(model.encoder_.transform(rows), num_threads=1)
        by_matrix = model.booster_.predict(model.encoder_.matrix(rows), num_threads=1)
        by_dict = model.booster_.predict(model.encoder_.matrix(as_dict(rows)), num_threads=1)
        np.testing.assert_array_equal(by_frame, by_matrix)
        np.testing.assert_array_equal(by_frame, by_dict)


def test_encoder_matrix_codes_follow_the_booster_categories(
    models: tuple[FitModel, SizeModel],
) -> None:
    fit, _ = models
    booster: lgb.Booster = fit.booster_
    categorical = [c for c in fit.encoder_.features if c in fit.encoder_.categories_]
    assert booster.pandas_categorical == [fit.encoder_.categories_[c] for c in categorical]


def legacy_recommend_frame(
    rows: pd.DataFrame,
    fit_model: FitModel,
    size_model: SizeModel,
    fallbacks: Sequence[Sequence[str]] | None = None,
) -> list[Recommendation | None]:
    """The pandas implementation recommend_frame had before the fast path (the oracle)."""
    rows = rows.reset_index(drop=True)
    candidates = request_features(candidate_frame(rows))
    if candidates.empty:
        return [None] * len(rows)
    proba = fit_model.booster_.predict(fit_model.encoder_.transform(candidates), num_threads=1)
    base = request_features(rows.assign(size_index=np.nan))
    expected = size_model.booster_.predict(size_model.encoder_.transform(base), num_threads=1)
    groups = candidates.groupby("row", sort=False).indices
    out: list[Recommendation | None] = []
    for i in range(len(rows)):
        at = groups.get(i)
        if at is None:
            out.append(None)
            continue
        out.append(
            recommend(
                candidates["size"].to_numpy()[at],
                candidates["size_index"].to_numpy()[at].astype(int),
                np.asarray(proba)[at],
                float(expected[i]),
                dimension=str(rows["chart_dimension"].iat[i]),
                fallbacks=() if fallbacks is None else fallbacks[i],
            )
        )
    return out


@pytest.mark.parametrize("n", [1, 25])
def test_recommend_rows_and_frame_equal_the_legacy_pandas_path(
    models: tuple[FitModel, SizeModel], seed: int, n: int
) -> None:
    fit, size = models
    rows = random_rows(np.random.default_rng(seed + 20), n)
    if n > 1:  # a product without a chart gets None
        rows.at[0, "product_id"] = "p-without-chart"  # charts are per product
        rows.at[0, "chart_sizes"] = None
        rows.at[0, "chart_index"] = None
    fallbacks = [["guest: no fit history"] if i % 2 else [] for i in range(n)]
    expected = legacy_recommend_frame(rows, fit, size, fallbacks)
    assert recommend_frame(rows, fit, size, fallbacks) == expected
    assert recommend_rows(as_dict(rows), fit, size, fallbacks) == expected


def test_no_chart_at_all_gives_none() -> None:
    rows = random_rows(np.random.default_rng(0), 2)
    rows["chart_sizes"] = None
    rows["chart_index"] = None
    assert recommend_frame(rows, None, None) == [None, None]  # type: ignore[arg-type]


def test_one_encoder_contract_is_kept() -> None:
    encoder = TabularEncoder(["a", "c"], ["c"]).fit(pd.DataFrame({"a": [1.0], "c": ["x"]}))
    m = encoder.matrix({"a": np.array(["2.5", None], dtype=object), "c": np.array(["x", None])})
    assert m[0].tolist() == [2.5, 0.0]
    assert np.isnan(m[1]).all()


def test_size_model_inputs_do_not_depend_on_the_candidate_size(seed: int) -> None:
    """recommend_rows feeds the size model the first candidate's features as they are."""
    from features.definitions import SIZE_MODEL_FEATURES
    from serving.recommend import candidate_columns

    rows = candidate_columns(as_dict(random_rows(np.random.default_rng(seed), 20)))
    at_size = request_features(rows)
    unset = request_features({**rows, "size_index": np.full(len(rows["size_index"]), np.nan)})
    for name in SIZE_MODEL_FEATURES:
        if name in at_size:
            a, b = pd.Series(at_size[name]), pd.Series(unset[name])
            assert a.equals(b), name
