"""Compiled boosters (treelite + tl2cgen) answer like LightGBM, and are built once per machine."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import require

from features.definitions import FIT_MODEL_FEATURES
from training.compiled import CompiledBooster, compiled_cache_path, compiled_enabled, predict_cost
from training.models import FitModel, SizeModel


@pytest.fixture
def c_compiler() -> None:
    """tl2cgen builds with the system's C compiler (skips without one; fails so in CI)."""
    require(shutil.which("gcc") is not None, "no C compiler (gcc) for tl2cgen")


def training_rows(seed: int, n: int) -> pd.DataFrame:
    """Rows of the fit model's features: a size's place on the chart decides the outcome."""
    rng = np.random.default_rng(seed)
    rel = rng.integers(-2, 3, n)
    frame = pd.DataFrame({name: np.nan for name in FIT_MODEL_FEATURES}, index=range(n))
    frame["size_rel_chart"] = rel + rng.normal(0, 0.3, n)
    frame["size_index"] = 3.0 + rel
    frame["chart_pick"] = 3.0
    frame["user_sex"] = rng.choice(["F", "M"], n)
    frame["product_brand"] = rng.choice(["a", "b", "c"], n)
    frame["outcome"] = np.where(rel < 0, "too_small", np.where(rel > 0, "too_large", "fit"))
    return frame


@pytest.mark.usefixtures("c_compiler")
def test_compiled_models_equal_lightgbm_within_1e6(tmp_path: Path) -> None:
    rows = training_rows(0, n=800)
    rows.loc[rows.index % 7 == 0, "user_sex"] = None  # missing categories route like LightGBM
    fit = FitModel.load(FitModel(num_boost_round=40).fit(rows).save(tmp_path / "fit"))
    size = SizeModel.load(SizeModel(num_boost_round=40).fit(rows).save(tmp_path / "size"))
    test = training_rows(1, n=300)
    test.loc[test.index % 5 == 0, "product_brand"] = "a-brand-never-seen"
    expected_p, expected_size = fit.predict_proba(test), size.predict(test)

    fit.compile()
    size.compile()
    assert fit.compiled_.compile_s > 0 and compiled_cache_path(fit.source_).is_file()
    np.testing.assert_allclose(fit.predict_proba(test), expected_p, rtol=0, atol=1e-6)
    np.testing.assert_allclose(size.predict(test), expected_size, rtol=0, atol=1e-6)
    assert not np.allclose(expected_p[:, 0], expected_p[0, 0])  # the rows are told apart

    again = FitModel.load(tmp_path / "fit").compile()  # a second load reuses the library
    assert again.compiled_.compile_s == 0.0
    np.testing.assert_allclose(again.predict_proba(test), expected_p, rtol=0, atol=1e-6)


@pytest.mark.usefixtures("c_compiler")
def test_predict_cost_measures_both_ways(tmp_path: Path) -> None:
    rows = training_rows(2, n=400)
    fit = FitModel.load(FitModel(num_boost_round=10).fit(rows).save(tmp_path / "fit"))
    matrix = fit.encoder_.matrix(rows.head(17))
    cost = predict_cost(fit.booster_, matrix, CompiledBooster(fit.source_), repeats=20)
    assert cost.rows == 17 and cost.trees == 30
    assert cost.lightgbm_us > 0 and cost.compiled_us is not None and cost.compiled_us > 0
    assert set(cost.as_tags()) == {
        "predict_rows",
        "predict_trees",
        "predict_lightgbm_us",
        "predict_compiled_us",
    }


def test_compiled_serving_is_opt_in() -> None:
    assert not compiled_enabled({})
    assert compiled_enabled({"FITML_COMPILED": "1"})
    assert not compiled_enabled({"FITML_COMPILED": "0"})


def test_the_registry_records_each_versions_predict_cost(tmp_path: Path) -> None:
    import mlflow

    from training import registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("cost", artifact_location=(tmp_path / "a").as_uri())
    rows = training_rows(3, n=300)
    model = FitModel(num_boost_round=12).fit(rows)
    try:
        with mlflow.start_run(experiment_id=experiment):
            logged = registry.log_and_register(model, "cost-fit", rows)
        tags = mlflow.MlflowClient().get_model_version("cost-fit", logged.version).tags
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    assert tags["predict_rows"] == "17" and tags["predict_trees"] == "36"
    assert float(tags["predict_lightgbm_us"]) > 0


def test_a_tree_budget_caps_the_rounds_tuning_may_use() -> None:
    from training.train import round_budget

    assert round_budget(1000, None, 3) == 1000
    assert round_budget(1000, 1500, 3) == 500  # the fit model grows three trees per round
    assert round_budget(1000, 1500, 1) == 1000
    assert round_budget(1000, 2, 3) == 1
