from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.definitions import FIT_MODEL_FEATURES
from training.models import FitModel, NotFittedError, SizeModel


def training_rows(seed: int, n: int = 600, span: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rel = rng.integers(-span, span + 1, n)
    outcome = np.where(rel < 0, "too_small", np.where(rel > 0, "too_large", "fit"))
    frame = pd.DataFrame({name: np.nan for name in FIT_MODEL_FEATURES}, index=range(n))
    frame["size_rel_chart"] = rel.astype(float)
    frame["size_index"] = 3.0 + rel
    frame["chart_pick"] = 3.0
    frame["user_sex"] = rng.choice(["F", "M"], n)
    frame["product_brand"] = rng.choice(["a", "b", "c"], n)
    frame["outcome"] = outcome
    return frame


def test_fit_model_learns_and_returns_probabilities(seed: int, tmp_path: Path) -> None:
    rows = training_rows(seed)
    model = FitModel(num_boost_round=30).fit(rows)
    proba = model.predict_proba(rows)
    assert proba.shape == (len(rows), 3)
    assert np.allclose(proba.sum(axis=1), 1.0)
    # Directional: a size below the chart's pick is more likely too small than a size above it.
    small = proba[rows["size_rel_chart"] < 0, 0].mean()
    large = proba[rows["size_rel_chart"] > 0, 0].mean()
    assert small > large
    loaded = FitModel.load(model.save(tmp_path / "m"))
    assert np.allclose(loaded.predict_proba(rows), proba)


def test_unknown_category_at_predict_time_is_not_an_error() -> None:
    rows = training_rows(0)
    model = FitModel(num_boost_round=10).fit(rows)
    unseen = rows.head(3).assign(product_brand="never-seen")
    assert model.predict_proba(unseen).shape == (3, 3)


def test_brand_does_not_change_the_prediction_when_it_carries_no_signal() -> None:
    rows = training_rows(1)
    model = FitModel(num_boost_round=20, params={"min_data_in_leaf": 50}).fit(rows)
    base = rows.head(20)
    a = model.predict_proba(base.assign(product_brand="a"))
    c = model.predict_proba(base.assign(product_brand="c"))
    assert np.abs(a - c).max() < 0.1


def test_size_model_targets_the_implied_size(tmp_path: Path) -> None:
    rows = training_rows(2, span=1)
    target = SizeModel.target(rows)
    assert np.all(target == 3.0)  # every outcome here implies the chart's pick
    model = SizeModel(num_boost_round=20).fit(rows)
    assert np.allclose(model.predict(rows), 3.0, atol=0.2)
    assert np.allclose(
        SizeModel.load(model.save(tmp_path / "s")).predict(rows), model.predict(rows)
    )


def test_unfitted_and_mislabelled_models_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(NotFittedError):
        FitModel().predict_proba(training_rows(0).head(2))
    with pytest.raises(ValueError, match="'medium'"):
        FitModel.labels(pd.Series(["fit", "medium"]))
    size_dir = SizeModel(num_boost_round=2).fit(training_rows(0)).save(tmp_path / "s")
    with pytest.raises(ValueError, match="size model"):
        FitModel.load(size_dir)
