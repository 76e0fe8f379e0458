"""The synthetic data generator: ANSUR bodies, outcome mix, truth, determinism, scenarios."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml_pipeline import schema
from ml_pipeline.ansur import derive_params, load_params, read_ansur
from ml_pipeline.sizes import size_index
from ml_pipeline.synth import SCENARIOS, generate, sample_bodies

START = datetime(2026, 1, 1, tzinfo=UTC)
WORLD = {"users": 4000, "products": 400, "events": 40_000}
TABLES = ("users", "products", "size_charts", "events", "truth")
COLUMNS = {
    "users": schema.USER_COLUMNS,
    "products": schema.PRODUCT_COLUMNS,
    "size_charts": schema.SIZE_CHART_COLUMNS,
    "events": schema.EVENT_COLUMNS,
    "truth": schema.TRUTH_COLUMNS,
}
RTR_MIX = {"too_small": 0.134, "fit": 0.738, "too_large": 0.128}


def _read(paths: dict[str, Path]) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(paths[name]) for name in TABLES}


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, pd.DataFrame]]:
    """One mid-sized world per scenario, same seed (shared by the tests below)."""
    out = {}
    for scenario in SCENARIOS:
        paths = generate(tmp_path_factory.mktemp(scenario), seed=7, scenario=scenario, **WORLD)
        out[scenario] = _read(paths)
        out[scenario]["manifest"] = json.loads(paths["manifest"].read_text())
    return out


@pytest.fixture(scope="module")
def world(worlds: dict[str, dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    return worlds["baseline"]


def _mix(events: pd.DataFrame) -> pd.Series:
    return events["outcome"].value_counts(normalize=True).reindex(schema.OUTCOMES, fill_value=0)


# --- ANSUR -------------------------------------------------------------------------------------


@pytest.mark.needs_data
def test_committed_params_are_derived_from_ansur(shared_data: Path) -> None:
    derived = derive_params(read_ansur(shared_data / "ansur2"))
    committed = load_params()
    assert derived["measurements"] == list(schema.MEASUREMENTS)
    for sex in ("F", "M"):
        d, c = derived["sexes"][sex], committed["sexes"][sex]
        assert d["n"] == c["n"] > 1000
        np.testing.assert_allclose(d["mean"], c["mean"], atol=1e-3)
        np.testing.assert_allclose(d["std"], c["std"], atol=1e-3)
        np.testing.assert_allclose(d["corr"], c["corr"], atol=1e-4)
    # ANSUR II's women are shorter and lighter than its men (and the units are cm / kg)
    f, m = derived["sexes"]["F"]["mean"], derived["sexes"]["M"]["mean"]
    assert 150 < f[0] < m[0] < 190 and 50 < f[1] < m[1] < 110


def test_sampled_bodies_match_ansur() -> None:
    params = load_params()
    rng = np.random.default_rng(0)
    for sex in ("F", "M"):
        n = 100_000
        bodies = sample_bodies(params, np.full(n, sex), rng.standard_normal((n, 6)))
        ref = params["sexes"][sex]
        np.testing.assert_allclose(bodies.mean(axis=0), ref["mean"], rtol=0.01)
        np.testing.assert_allclose(bodies.std(axis=0), ref["std"], rtol=0.05)
        np.testing.assert_allclose(np.corrcoef(bodies, rowvar=False), ref["corr"], atol=0.03)


def test_users_table_matches_ansur(world: dict[str, pd.DataFrame]) -> None:
    params = load_params()
    users = world["users"]
    for sex in ("F", "M"):
        rows = users[users["sex"] == sex][list(schema.MEASUREMENTS)]
        ref = params["sexes"][sex]
        np.testing.assert_allclose(rows.mean(), ref["mean"], rtol=0.03)
        np.testing.assert_allclose(rows.corr(), ref["corr"], atol=0.08)
    assert 0.55 < (users["sex"] == "F").mean() / users["sex"].notna().mean() < 0.65


def test_some_measurements_missing_and_cold_start_users(world: dict[str, pd.DataFrame]) -> None:
    users = world["users"]
    missing = users[list(schema.MEASUREMENTS)].isna()
    assert ((missing.mean() > 0.10) & (missing.mean() < 0.40)).all()
    assert 0.04 < missing.all(axis=1).mean() < 0.15
    assert set(users["fit_preference"].dropna()) == set(schema.FIT_PREFERENCES)
    assert users["fit_preference"].isna().any()


# --- tables and truth --------------------------------------------------------------------------


def test_columns_and_types_follow_the_schema(world: dict[str, pd.DataFrame]) -> None:
    for name in TABLES:
        assert tuple(world[name].columns) == COLUMNS[name], name
    for name in ("users", "products", "events"):
        ts = world[name]["event_timestamp"]
        assert isinstance(ts.dtype, pd.DatetimeTZDtype) and str(ts.dt.tz) == "UTC"
    events = world["events"]
    assert events["event_id"].is_unique and world["users"]["user_id"].is_unique
    assert all(isinstance(v, str) for v in events[["event_id", "user_id", "product_id"]].iloc[0])
    assert set(events["outcome"]) == set(schema.OUTCOMES)
    products = world["products"]
    assert set(products["category"]) == set(schema.CATEGORIES)
    assert set(products["fit_type"]) == set(schema.FIT_TYPES)
    assert products["stretch"].between(0, 1).all()
    assert set(world["size_charts"]["dimension"]) <= set(schema.BODY_DIMENSIONS)


def test_outcome_mix_close_to_rent_the_runway(world: dict[str, pd.DataFrame]) -> None:
    mix = _mix(world["events"])
    for outcome, share in RTR_MIX.items():
        assert abs(mix[outcome] - share) < 0.025, (outcome, mix.to_dict())


def test_every_event_size_is_in_its_product_chart(world: dict[str, pd.DataFrame]) -> None:
    charts = world["size_charts"]
    tried = world["events"].merge(
        charts, on=["product_id", "size"], how="left", suffixes=("", "_chart")
    )
    assert tried["size_index_chart"].notna().all()
    assert (tried["size_index"] == tried["size_index_chart"]).all()


def test_size_charts_are_contiguous_ordered_ranges(world: dict[str, pd.DataFrame]) -> None:
    charts = world["size_charts"].merge(world["products"], on="product_id")
    assert (charts["low_cm"] < charts["high_cm"]).all()
    for _, chart in charts.groupby("product_id"):
        assert (np.diff(chart["size_index"]) == 1).all()
        np.testing.assert_allclose(chart["high_cm"].to_numpy()[:-1], chart["low_cm"].to_numpy()[1:])
        system = chart["size_system"].iloc[0]
        assert [size_index(system, s) for s in chart["size"]] == chart["size_index"].tolist()
    pants = world["products"]["category"] == "pants"
    pant_charts = world["size_charts"][
        world["size_charts"]["product_id"].isin(world["products"].loc[pants, "product_id"])
    ]
    assert set(pant_charts["dimension"]) <= {"waist", "hips"}
    assert world["products"].loc[pants, "size_system"].value_counts().idxmax() == "waist"


def test_truth_has_one_row_per_event(world: dict[str, pd.DataFrame]) -> None:
    events, truth, charts = world["events"], world["truth"], world["size_charts"]
    assert len(truth) == len(events)
    assert (truth["event_id"].to_numpy() == events["event_id"].to_numpy()).all()
    assert (truth["user_id"].to_numpy() == events["user_id"].to_numpy()).all()
    probs = truth[["p_too_small", "p_fit", "p_too_large"]]
    assert ((probs >= 0) & (probs <= 1)).all().all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    best = truth.merge(
        charts, left_on=["product_id", "best_size"], right_on=["product_id", "size"], how="left"
    )
    assert (best["size_index"] == best["best_size_index"]).all()


def test_oracle_is_strong_and_habits_are_not(world: dict[str, pd.DataFrame]) -> None:
    events, truth = world["events"], world["truth"]
    hit = (events["size_index"] == truth["best_size_index"]).to_numpy()
    # shoppers' habits miss the best size often; the best size fits better than the others
    assert 0.35 < hit.mean() < 0.8
    assert truth["p_fit"][hit].mean() > truth["p_fit"][~hit].mean() + 0.1
    assert world["manifest"]["oracle"]["mean_p_fit_of_best"] > 0.9
    # the outcomes follow the probabilities
    fit = (events["outcome"] == "fit").to_numpy()
    assert abs(fit.mean() - truth["p_fit"].mean()) < 0.01


def test_time_order_products_and_users_precede_their_events(
    world: dict[str, pd.DataFrame],
) -> None:
    events = world["events"]
    ts = events["event_timestamp"]
    assert ts.is_monotonic_increasing
    assert ts.min() >= pd.Timestamp(START) and ts.max() < pd.Timestamp(START + timedelta(days=180))
    for table, key in (("products", "product_id"), ("users", "user_id")):
        first = events.groupby(key)["event_timestamp"].min()
        created = world[table].set_index(key)["event_timestamp"].reindex(first.index)
        assert (created < first).all(), table
    assert (world["products"]["event_timestamp"] >= pd.Timestamp(START)).mean() > 0.5
    per_user = events["user_id"].value_counts()
    assert per_user.max() > 10 * per_user.median()  # heavy-tailed activity


def test_manifest_records_the_run(world: dict[str, pd.DataFrame]) -> None:
    manifest = world["manifest"]
    assert manifest["seed"] == 7 and manifest["scenario"] == "baseline"
    assert manifest["counts"]["events"] == WORLD["events"]
    assert manifest["outcome_mix"] == pytest.approx(_mix(world["events"]).to_dict(), abs=1e-4)


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    small = {"users": 300, "products": 40, "events": 3000}
    a = generate(tmp_path / "a", seed=3, **small)
    b = generate(tmp_path / "b", seed=3, **small)
    c = generate(tmp_path / "c", seed=4, **small)
    for name in (*TABLES, "manifest"):
        assert a[name].read_bytes() == b[name].read_bytes(), name
    for name in TABLES:
        pd.testing.assert_frame_equal(pd.read_parquet(a[name]), pd.read_parquet(b[name]))
    assert not pd.read_parquet(a["events"]).equals(pd.read_parquet(c["events"]))
    assert not pd.read_parquet(a["users"]).equals(pd.read_parquet(c["users"]))


def test_invariants_hold_for_any_seed(tmp_path: Path, seed: int) -> None:
    paths = generate(tmp_path, users=200, products=30, events=2000, seed=seed, start=START)
    t = _read(paths)
    assert len(t["events"]) == len(t["truth"]) == 2000
    charts = set(zip(t["size_charts"]["product_id"], t["size_charts"]["size"], strict=True))
    assert set(zip(t["events"]["product_id"], t["events"]["size"], strict=True)) <= charts
    assert set(zip(t["truth"]["product_id"], t["truth"]["best_size"], strict=True)) <= charts
    first = t["events"].groupby("product_id")["event_timestamp"].min()
    created = t["products"].set_index("product_id")["event_timestamp"].reindex(first.index)
    assert (created < first).all()


# --- scenarios ---------------------------------------------------------------------------------


def test_population_shift_has_heavier_bodies_and_more_men(
    worlds: dict[str, dict[str, pd.DataFrame]],
) -> None:
    base, shifted = worlds["baseline"]["users"], worlds["population_shift"]["users"]
    for sex in ("F", "M"):
        b = base.loc[base["sex"] == sex, ["weight_kg", "waist_cm"]].mean()
        s = shifted.loc[shifted["sex"] == sex, ["weight_kg", "waist_cm"]].mean()
        assert (s > b * 1.04).all(), sex
    assert (shifted["sex"] == "F").mean() < (base["sex"] == "F").mean() - 0.1


def test_runs_small_adds_too_small_outcomes_on_the_new_line(
    worlds: dict[str, dict[str, pd.DataFrame]],
) -> None:
    base, small = worlds["baseline"], worlds["runs_small"]
    line = small["products"].loc[small["products"]["brand"] == "Northline", "product_id"]
    assert len(line) > 0
    assert (
        small["products"].set_index("product_id").loc[line, "event_timestamp"]
        >= pd.Timestamp(START + timedelta(days=90))
    ).all()
    # users are the same as in the baseline; only the new line's cut differs
    pd.testing.assert_frame_equal(base["users"], small["users"])
    on_line = small["events"]["product_id"].isin(line)
    assert _mix(small["events"][on_line])["too_small"] > 0.3
    assert _mix(small["events"])["too_small"] > _mix(base["events"])["too_small"] + 0.02
    # the same try-ons elsewhere keep their outcomes
    same = ~on_line.to_numpy()
    assert (small["events"]["outcome"][same] == base["events"]["outcome"][same]).mean() > 0.99


def test_unit_bug_logs_some_girths_in_inches(worlds: dict[str, dict[str, pd.DataFrame]]) -> None:
    base, bug = worlds["baseline"]["users"], worlds["unit_bug"]["users"]
    for column in ("chest_cm", "waist_cm", "hips_cm"):
        assert (base[column] < 60).mean() < 0.001
        assert 0.03 < (bug[column] < 60).mean() < 0.3, column
    pd.testing.assert_series_equal(base["height_cm"], bug["height_cm"])
    assert (
        worlds["unit_bug"]["events"]["outcome"] == worlds["baseline"]["events"]["outcome"]
    ).all()


def test_unknown_scenario_names_the_value_and_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'nope'.*baseline.*unit_bug"):
        generate(tmp_path, users=10, products=5, events=10, seed=0, scenario="nope")
    assert not any(tmp_path.iterdir())
