"""Property: no training row holds information from its own event or any later one.

Hypothesis generates event histories (few shoppers and products, many events at the same
instant); the join of :mod:`features.offline` over the tables of :mod:`features.aggregates`
must give each event exactly the features the batch job computes from the events strictly
before it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.aggregates import build_feature_tables
from features.definitions import PRODUCT_STATS_FIELDS, USER_HISTORY_FIELDS, build_definitions
from features.offline import asof_plan

T0 = pd.Timestamp("2026-01-01", tz="UTC")
USERS = pd.DataFrame(
    {
        "user_id": ["u0", "u1", "u2"],
        "sex": ["F", "M", None],
        "height_cm": [165.0, 180.0, np.nan],
        "weight_kg": [60.0, 80.0, np.nan],
        "chest_cm": [88.0, 101.0, np.nan],
        "waist_cm": [70.0, 86.0, 75.0],
        "hips_cm": [96.0, 100.0, np.nan],
        "inseam_cm": [np.nan, 82.0, np.nan],
        "fit_preference": ["slim", None, "relaxed"],
        "event_timestamp": [T0 - pd.Timedelta(days=30)] * 3,
    }
)
PRODUCTS = pd.DataFrame(
    {
        "product_id": ["p0", "p1"],
        "brand": ["A", "B"],
        "category": ["tops", "jeans"],
        "fit_type": ["regular", "slim"],
        "stretch": [0.1, 0.3],
        "size_system": ["alpha", "waist"],
        "event_timestamp": [T0 - pd.Timedelta(days=60)] * 2,
    }
)
CHARTS = pd.DataFrame(
    {
        "product_id": ["p0"] * 4 + ["p1"] * 3,
        "size": ["S", "M", "L", "XL", "30", "32", "34"],
        "size_index": [2, 3, 4, 5, 3, 4, 5],
        "dimension": ["chest"] * 4 + ["waist"] * 3,
        "low_cm": [84.0, 90.0, 96.0, 102.0, 74.0, 79.0, 84.0],
        "high_cm": [90.0, 96.0, 102.0, 108.0, 79.0, 84.0, 89.0],
    }
)
SIZES = {"p0": [2, 3, 4, 5], "p1": [3, 4, 5]}

event = st.tuples(
    st.sampled_from(["u0", "u1", "u2"]),
    st.sampled_from(["p0", "p1"]),
    st.integers(0, 3),
    st.sampled_from(["too_small", "fit", "too_large"]),
    st.integers(0, 20),  # seconds after T0: few distinct instants, many ties
)


def _events(rows: list[tuple[str, str, int, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(rows))],
            "user_id": [r[0] for r in rows],
            "product_id": [r[1] for r in rows],
            "size_index": [SIZES[r[1]][min(r[2], len(SIZES[r[1]]) - 1)] for r in rows],
            "outcome": [r[3] for r in rows],
            "event_timestamp": [T0 + pd.Timedelta(seconds=r[4]) for r in rows],
        }
    )


def _latest(table: pd.DataFrame, key: str, value: str) -> pd.Series | None:
    rows = table[table[key] == value]
    return None if rows.empty else rows.sort_values("event_timestamp").iloc[-1]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event, min_size=1, max_size=25))
def test_no_row_sees_its_own_or_a_later_event(rows: list[tuple[str, str, int, str, int]]) -> None:
    events = _events(rows)
    tables = build_feature_tables(USERS, PRODUCTS, CHARTS, events)
    with tempfile.TemporaryDirectory() as directory:
        tables.write(Path(directory))
        definitions = build_definitions(Path(directory))
        views = [v for v in definitions.views if v.name in ("user_history", "product_stats")]
        refs = [f"{v.name}:{f.name}" for v in views for f in v.features]
        entity_df = events[["event_id", "user_id", "product_id", "event_timestamp"]]
        plan = asof_plan(entity_df, views, refs, repo_path=directory)
        joined = plan.table(entity_df).to_pandas()

    assert joined["event_id"].tolist() == events["event_id"].tolist()
    for position, ev in events.iterrows():
        earlier = events[events["event_timestamp"] < ev["event_timestamp"]]
        truth = build_feature_tables(USERS, PRODUCTS, CHARTS, earlier) if len(earlier) else None
        for key, table, fields in (
            ("user_id", "user_history", USER_HISTORY_FIELDS),
            ("product_id", "product_stats", PRODUCT_STATS_FIELDS),
        ):
            expected = None if truth is None else _latest(getattr(truth, table), key, ev[key])
            for name, _ in fields:
                got = joined.at[position, name]
                want = np.nan if expected is None else expected[name]
                assert (pd.isna(got) and pd.isna(want)) or got == want, (
                    ev["event_id"],
                    name,
                    got,
                    want,
                )
