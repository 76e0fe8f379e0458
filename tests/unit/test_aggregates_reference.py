"""The aggregate job's values against a plain pandas computation of the same formulas.

:mod:`features.aggregates` joins and groups events through integer codes, one column at a
time, so that tens of millions of events fit in memory. The reference below is the earlier
form of the job (string keys, whole-frame ``groupby`` / ``merge_asof`` / ``merge``), kept here
as the test's expected result only: on a small event log with ties, missing profiles,
products without a chart or attributes, a repeated product row, missing outcomes and sizes,
every table and offset must be equal to it exactly (not merely close).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import pytest

from features.aggregates import (
    BODY_SLOPE_PRIOR,
    LATENT_PRIOR,
    STAMP_DELAY,
    build_feature_tables,
    event_offsets,
    product_attrs_table,
    product_stats_table,
    user_history_table,
    user_profile_table,
    utc_ns,
)
from features.definitions import CREATED_TIMESTAMP
from features.transforms import CATALOGUE_SYSTEMS, chart_features, implied_index

T0 = pd.Timestamp("2026-01-01", tz="UTC")
SYSTEMS = {"alpha": [2, 3, 4, 5], "waist": [3, 4, 5], "numeric": [1, 2, 3, 4], "eu": [0, 1]}
DIMENSIONS = {"alpha": "chest", "waist": "waist", "numeric": "hips", "eu": "chest"}


def _data(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Users, products, size charts and events with every awkward case the job meets."""
    rng = np.random.default_rng(seed)
    n_users, n_products, n_events = 12, 8, 400
    users = pd.DataFrame(
        {
            "user_id": [f"u{i:02d}" for i in range(n_users)],
            "sex": rng.choice(["F", "M", None], n_users),
            "height_cm": rng.normal(170, 8, n_users).round(1),
            "weight_kg": np.where(
                rng.random(n_users) < 0.2, np.nan, rng.normal(70, 12, n_users).round(1)
            ),
            "chest_cm": rng.normal(95, 8, n_users).round(1),
            "waist_cm": np.where(rng.random(n_users) < 0.2, np.nan, rng.normal(80, 8, n_users)),
            "hips_cm": rng.normal(100, 7, n_users).round(1),
            "inseam_cm": np.nan,
            "fit_preference": rng.choice(["slim", "relaxed", None], n_users),
            "event_timestamp": [T0 - pd.Timedelta(days=30)] * n_users,
        }
    )
    # A later profile update (events before it read the first one), and two updates of one
    # shopper at the same instant (the later row wins).
    later = users.iloc[[1, 2, 2]].assign(
        weight_kg=[91.3, 55.5, 57.7],
        chest_cm=[120.0, 80.0, 82.0],
        event_timestamp=[T0 + pd.Timedelta(seconds=20)] * 3,
    )
    users = pd.concat([users, later], ignore_index=True)
    systems = ["alpha", "waist", "numeric", "eu", "alpha", "waist", "alpha", "numeric"]
    products = pd.DataFrame(
        {
            "product_id": [f"p{i}" for i in range(n_products)],
            "brand": "B",
            "category": "tops",
            "fit_type": "regular",
            "stretch": 0.1,
            "size_system": systems,
            "event_timestamp": [T0 - pd.Timedelta(days=60)] * n_products,
        }
    )
    # p5 twice (every event on it joins both rows), p7 never in the catalogue.
    products = pd.concat([products.iloc[:7], products.iloc[[5]]], ignore_index=True)
    chart_rows = []
    for pid, system in zip(products["product_id"][:6], systems, strict=False):
        for k, index in enumerate(SYSTEMS[system]):  # p6: no chart
            low = 70.0 + 6 * k
            chart_rows.append((pid, f"s{index}", index, DIMENSIONS[system], low, low + 6))
    charts = pd.DataFrame(
        chart_rows, columns=["product_id", "size", "size_index", "dimension", "low_cm", "high_cm"]
    )
    user_ids = [f"u{i:02d}" for i in range(n_users)] + ["u99"]  # u99: no profile
    product_ids = rng.choice([f"p{i}" for i in range(n_products)], n_events)
    size_index = np.array(
        [rng.choice(SYSTEMS[systems[int(p[1])]]) for p in product_ids], dtype=float
    )
    size_index[rng.random(n_events) < 0.03] = np.nan
    outcome = rng.choice(["too_small", "fit", "too_large"], n_events).astype(object)
    outcome[rng.random(n_events) < 0.03] = None
    events = pd.DataFrame(
        {
            "event_id": [f"e{i:04d}" for i in rng.permutation(n_events)],
            "user_id": rng.choice(user_ids, n_events),
            "product_id": product_ids,
            "size_index": size_index,
            "outcome": outcome,
            # Few instants: many events at the same one; not in time order.
            "event_timestamp": T0 + pd.to_timedelta(rng.integers(0, 40, n_events), unit="s"),
        }
    )
    return users, products, charts, events


# --------------------------------------------------------------------------------------------
# The reference: the job as plain pandas on string keys.


def _ref_offsets(
    events: pd.DataFrame,
    user_profile: pd.DataFrame,
    product_attrs: pd.DataFrame,
    context: Literal["before", "others"],
) -> pd.DataFrame:
    ev = events[["event_id", "user_id", "product_id", "size_index", "outcome", "event_timestamp"]]
    ev = ev.assign(event_timestamp=utc_ns(ev["event_timestamp"]))
    ev = ev.sort_values("event_timestamp", kind="stable")
    profile = user_profile.sort_values("event_timestamp", kind="stable")
    joined = pd.merge_asof(
        ev,
        profile.rename(columns={"event_timestamp": "profile_timestamp"}),
        left_on="event_timestamp",
        right_on="profile_timestamp",
        by="user_id",
        direction="backward",
    )
    joined = joined.merge(
        product_attrs.drop(columns=["event_timestamp"]), on="product_id", how="left"
    )
    chart = chart_features(joined.reset_index(drop=True))
    implied = implied_index(joined["size_index"].to_numpy(), joined["outcome"])
    out = pd.DataFrame(
        {
            "event_id": joined["event_id"].to_numpy(),
            "user_id": joined["user_id"].to_numpy(),
            "product_id": joined["product_id"].to_numpy(),
            "event_timestamp": joined["event_timestamp"],
            "outcome": joined["outcome"].to_numpy(),
            "size_system": joined["product_size_system"].to_numpy(),
            "size_index": joined["size_index"].to_numpy(dtype=float),
            "implied_index": implied,
            "implied_offset": implied - chart["chart_pick"].to_numpy(),
            "weight_kg": pd.to_numeric(joined["user_weight_kg"]).to_numpy(dtype=float),
        }
    )
    mean = _ref_mean_before if context == "before" else _ref_mean_others
    out["item_off"] = out["implied_index"] - mean(out, ["product_id"], "size_index")
    out["user_off"] = out["implied_index"] - mean(out, ["user_id", "size_system"], "implied_index")
    return out


def _ref_mean_others(frame: pd.DataFrame, keys: list[str], column: str) -> np.ndarray:
    values = frame[column].astype(float)
    own_s = values.fillna(0.0)
    own_n = values.notna().astype(float)
    grouped = frame[keys].assign(s=own_s, n=own_n).groupby(keys, sort=False, dropna=False)
    s = grouped["s"].transform("sum") - own_s
    n = grouped["n"].transform("sum") - own_n
    with np.errstate(invalid="ignore", divide="ignore"):
        return (s / n.replace(0.0, np.nan)).to_numpy(dtype=float)


def _ref_mean_before(frame: pd.DataFrame, keys: list[str], column: str) -> np.ndarray:
    groups = [*keys, "event_timestamp"]
    values = frame[column].astype(float)
    per_instant = (
        frame[groups]
        .assign(s=values.fillna(0.0), n=values.notna().astype(float))
        .groupby(groups, sort=True, dropna=False)[["s", "n"]]
        .sum()
    )
    level = list(range(len(keys)))
    before = per_instant.groupby(level=level, dropna=False).cumsum()
    before = before.groupby(level=level, dropna=False).shift(1).fillna(0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = before["s"] / before["n"].replace(0.0, np.nan)
    index = pd.MultiIndex.from_frame(frame[groups])
    return mean.reindex(index).to_numpy(dtype=float)


def _ref_cumulative(offsets: pd.DataFrame, key: str, systems: tuple[str, ...]) -> pd.DataFrame:
    frame = offsets.assign(
        n=1.0,
        small=(offsets["outcome"] == "too_small").astype(float),
        large=(offsets["outcome"] == "too_large").astype(float),
        off_sum=offsets["implied_offset"].fillna(0.0),
        off_n=offsets["implied_offset"].notna().astype(float),
        size_sum=offsets["size_index"].fillna(0.0),
        size_n=offsets["size_index"].notna().astype(float),
        implied_sum=offsets["implied_index"].fillna(0.0),
        item_off_sum=offsets["item_off"].fillna(0.0),
        item_off_n=offsets["item_off"].notna().astype(float),
        user_off_sum=offsets["user_off"].fillna(0.0),
        user_off_n=offsets["user_off"].notna().astype(float),
    )
    sums = ["n", "small", "large", "off_sum", "off_n", "size_sum", "size_n", "implied_sum"]
    sums += ["item_off_sum", "item_off_n", "user_off_sum", "user_off_n"]
    body = offsets["weight_kg"].notna() & offsets["implied_index"].notna()
    w = offsets["weight_kg"].where(body, 0.0)
    y = offsets["implied_index"].where(body, 0.0)
    frame = frame.assign(bw_n=body.astype(float), bw_x=w, bw_y=y, bw_xx=w * w, bw_xy=w * y)
    sums += ["bw_n", "bw_x", "bw_y", "bw_xx", "bw_xy"]
    for system in systems:
        mask = (frame["size_system"] == system).to_numpy()
        frame[f"idx_sum_{system}"] = np.where(mask, frame["implied_index"], 0.0)
        frame[f"idx_n_{system}"] = mask.astype(float)
        sums += [f"idx_sum_{system}", f"idx_n_{system}"]
    grouped = frame.groupby([key, "event_timestamp"], sort=True)
    per_instant = grouped[sums].sum()
    per_instant["last_off"] = grouped["implied_offset"].last()
    cum = per_instant[sums].groupby(level=0).cumsum()
    cum["last_off"] = per_instant["last_off"].groupby(level=0).ffill()
    return cum.reset_index()


def _ref_user_history(offsets: pd.DataFrame) -> pd.DataFrame:
    cum = _ref_cumulative(offsets, "user_id", CATALOGUE_SYSTEMS)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = pd.DataFrame(
            {
                "user_id": cum["user_id"].astype(str),
                "event_timestamp": cum["event_timestamp"] + STAMP_DELAY,
                CREATED_TIMESTAMP: cum["event_timestamp"] + STAMP_DELAY,
                "hist_n": cum["n"].astype(float),
                "hist_share_small": cum["small"] / cum["n"],
                "hist_share_large": cum["large"] / cum["n"],
                "hist_mean_offset": cum["off_sum"] / cum["off_n"].replace(0, np.nan),
                "hist_last_offset": cum["last_off"].astype(float),
                "hist_item_offset": cum["item_off_sum"] / (cum["item_off_n"] + LATENT_PRIOR),
            }
        )
        for system in CATALOGUE_SYSTEMS:
            count = cum[f"idx_n_{system}"].replace(0, np.nan)
            out[f"hist_usual_{system}"] = cum[f"idx_sum_{system}"] / count
    return out


def _ref_product_stats(offsets: pd.DataFrame) -> pd.DataFrame:
    cum = _ref_cumulative(offsets, "product_id", ())
    n = cum["bw_n"].replace(0, np.nan)
    x_mean = cum["bw_x"] / n
    y_mean = cum["bw_y"] / n
    sxx = cum["bw_xx"] - cum["bw_x"] * x_mean
    sxy = cum["bw_xy"] - cum["bw_x"] * y_mean
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame(
            {
                "product_id": cum["product_id"].astype(str),
                "event_timestamp": cum["event_timestamp"] + STAMP_DELAY,
                CREATED_TIMESTAMP: cum["event_timestamp"] + STAMP_DELAY,
                "pstat_n": cum["n"].astype(float),
                "pstat_share_small": cum["small"] / cum["n"],
                "pstat_share_large": cum["large"] / cum["n"],
                "pstat_mean_offset": cum["off_sum"] / cum["off_n"].replace(0, np.nan),
                "pstat_size_mean": cum["size_sum"] / cum["size_n"].replace(0, np.nan),
                "pstat_implied_mean": cum["implied_sum"] / cum["size_n"].replace(0, np.nan),
                "pstat_user_offset": cum["user_off_sum"] / (cum["user_off_n"] + LATENT_PRIOR),
                "pstat_body_weight": x_mean,
                "pstat_body_size": y_mean,
                "pstat_body_slope": sxy / (sxx.clip(lower=0.0) + BODY_SLOPE_PRIOR),
            }
        )


# --------------------------------------------------------------------------------------------


def _as_objects(frame: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns as the plain object columns they stand for."""
    categorical = [c for c in frame if isinstance(frame[c].dtype, pd.CategoricalDtype)]
    return frame.astype(dict.fromkeys(categorical, object))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("context", ["before", "others"])
def test_offsets_and_tables_equal_the_plain_pandas_job_exactly(
    seed: int, context: Literal["before", "others"]
) -> None:
    users, products, charts, events = _data(seed)
    profile = user_profile_table(users)
    attrs = product_attrs_table(products, charts)
    offsets = event_offsets(events, profile, attrs, context=context)
    expected = _ref_offsets(events, profile, attrs, context)
    assert len(expected) > len(events)  # the repeated product row joined twice
    assert expected["item_off"].notna().sum() > 100
    assert expected["user_off"].notna().sum() > 100
    assert (expected["weight_kg"] > 90).any()  # a later profile was read
    pd.testing.assert_frame_equal(_as_objects(offsets), expected, check_exact=True)
    for table, reference in (
        (user_history_table, _ref_user_history),
        (product_stats_table, _ref_product_stats),
    ):
        pd.testing.assert_frame_equal(table(offsets), reference(expected), check_exact=True)


def test_a_body_line_slope_is_not_integer_arithmetic() -> None:
    # The equality above covers sums of non-integer values (weights), where summation order
    # shows in the last bits: the slopes must be genuinely fractional.
    users, products, charts, events = _data(0)
    tables = build_feature_tables(users, products, charts, events)
    slope = tables.product_stats["pstat_body_slope"].dropna()
    assert (slope != slope.round(6)).any()
    expected = _ref_product_stats(
        _ref_offsets(
            events, user_profile_table(users), product_attrs_table(products, charts), "before"
        )
    )
    pd.testing.assert_frame_equal(tables.product_stats, expected, check_exact=True)


def test_empty_event_log_gives_empty_tables() -> None:
    users, products, charts, events = _data(0)
    tables = build_feature_tables(users, products, charts, events.iloc[:0])
    assert tables.user_history.empty and tables.product_stats.empty
    expected = _ref_user_history(
        _ref_offsets(events.iloc[:0], tables.user_profile, tables.product_attrs, "before")
    )
    assert list(tables.user_history.columns) == list(expected.columns)
