"""Leakage tests of the feature job's out-of-fold history (``feast.history: oof``).

Under the paper's random split there is no time order: a labelled row sees the feedback of
the other folds, earlier and later, and never its own fold's (its own label included); a row
not in the event log (a held-out test row) sees every labelled row, and its own label is in no
table. Each property is checked by perturbing labels and comparing the joined features, so a
leak of a row's own label, of its fold's labels or of a test label makes the test fail.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import test_aggregates_pit as pit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.aggregates import HistoryFolds, build_feature_tables, event_folds
from features.definitions import PRODUCT_STATS_FIELDS, USER_HISTORY_FIELDS, build_definitions
from features.offline import asof_plan

USERS, PRODUCTS, CHARTS, _events = pit.USERS, pit.PRODUCTS, pit.CHARTS, pit._events

FOLDS = 3
HISTORY = [name for name, _ in (*USER_HISTORY_FIELDS, *PRODUCT_STATS_FIELDS)]
OTHER = {"too_small": "too_large", "fit": "too_small", "too_large": "fit"}

event = st.tuples(
    st.sampled_from(["u0", "u1", "u2"]),
    st.sampled_from(["p0", "p1"]),
    st.integers(0, 3),
    st.sampled_from(["too_small", "fit", "too_large"]),
    st.integers(0, 20),
)


def _oof(events: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, HistoryFolds]:
    """The tables of an ``oof`` job on ``events``, joined for ``events`` as training_set does."""
    tables = build_feature_tables(
        USERS, PRODUCTS, CHARTS, events, history="oof", folds=FOLDS, seed=seed
    )
    assert tables.history_folds is not None
    return tables, tables.history_folds


def _join(tables: object, folds: HistoryFolds, rows: pd.DataFrame) -> pd.DataFrame:
    """The history views joined for ``rows`` as of their fold version (by event_id)."""
    with tempfile.TemporaryDirectory() as directory:
        tables.write(Path(directory))  # type: ignore[attr-defined]
        assert HistoryFolds.read(Path(directory)) is not None
        definitions = build_definitions(Path(directory))
        views = [v for v in definitions.views if v.name in ("user_history", "product_stats")]
        refs = [f"{v.name}:{f.name}" for v in views for f in v.features]
        entity_df = rows[["event_id", "user_id", "product_id"]].assign(
            event_timestamp=folds.as_of(rows["event_id"])
        )
        plan = asof_plan(entity_df, views, refs, repo_path=directory)
        joined = plan.table(entity_df).to_pandas()
    return joined.set_index("event_id")[HISTORY]


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_exact=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event, min_size=1, max_size=25), st.integers(0, 24), st.integers(0, 3))
def test_own_fold_labels_enter_no_feature_of_the_fold(
    rows: list[tuple[str, str, int, str, int]], pick: int, seed: int
) -> None:
    events = _events(rows)
    tables, folds = _oof(events, seed)
    before = _join(tables, folds, events)
    target = pick % len(events)
    fold = event_folds(events["event_id"], FOLDS, seed)
    flipped = events.copy()
    flipped.loc[target, "outcome"] = OTHER[events.at[target, "outcome"]]
    tables2, folds2 = _oof(flipped, seed)
    after = _join(tables2, folds2, flipped)
    same_fold = events["event_id"][fold == fold[target]]
    # The flipped row and every row of its fold see exactly the same features.
    _same(before.loc[same_fold], after.loc[same_fold])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event, min_size=2, max_size=25), st.integers(0, 3))
def test_a_row_sees_the_other_folds_earlier_and_later(
    rows: list[tuple[str, str, int, str, int]], seed: int
) -> None:
    events = _events(rows)
    tables, folds = _oof(events, seed)
    joined = _join(tables, folds, events)
    fold = event_folds(events["event_id"], FOLDS, seed)
    for position, ev in events.iterrows():
        for key, count in (("user_id", "hist_n"), ("product_id", "pstat_n")):
            others = ((events[key] == ev[key]).to_numpy() & (fold != fold[position])).sum()
            got = joined.at[ev["event_id"], count]
            assert (pd.isna(got) and others == 0) or got == others, (ev["event_id"], count)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(event, min_size=1, max_size=20),
    st.lists(event, min_size=1, max_size=8),
    st.integers(0, 3),
)
def test_held_out_rows_see_every_labelled_row_and_no_test_label(
    labelled: list[tuple[str, str, int, str, int]],
    held: list[tuple[str, str, int, str, int]],
    seed: int,
) -> None:
    every = _events(labelled + held)
    train, test = every.iloc[: len(labelled)], every.iloc[len(labelled) :]
    tables, folds = _oof(train.reset_index(drop=True), seed)
    got = _join(tables, folds, test)
    # A test row reads the version built from all labelled rows: the features a job over
    # the labelled rows plus this test row would give the test row out of its own fold.
    for _, ev in test.iterrows():
        for key, count in (("user_id", "hist_n"), ("product_id", "pstat_n")):
            n = int((train[key] == ev[key]).sum())
            value = got.at[ev["event_id"], count]
            assert (pd.isna(value) and n == 0) or value == n
    # Any test labels give the same features everywhere: they enter no table.
    relabelled = test.assign(outcome=test["outcome"].map(OTHER))
    _same(got, _join(tables, folds, relabelled))
    assert set(folds.event_fold["event_id"]) == set(train["event_id"])


def test_folds_are_seeded_balanced_and_order_free() -> None:
    ids = pd.Series([f"e{i}" for i in range(103)])
    fold = event_folds(ids, 5, seed=3)
    assert np.bincount(fold).tolist() == [21, 21, 21, 20, 20]
    shuffled = ids.sample(frac=1.0, random_state=1)
    again = pd.Series(event_folds(shuffled, 5, seed=3), index=shuffled.index).sort_index()
    assert again.tolist() == fold.tolist()
    assert event_folds(ids, 5, seed=4).tolist() != fold.tolist()


def test_point_in_time_job_writes_no_folds_and_removes_old_ones(tmp_path: Path) -> None:
    events = _events([("u0", "p0", 1, "fit", 0), ("u1", "p0", 2, "too_small", 5)])
    tables, _ = _oof(events)
    tables.write(tmp_path)
    assert HistoryFolds.read(tmp_path) is not None
    build_feature_tables(USERS, PRODUCTS, CHARTS, events).write(tmp_path)
    assert HistoryFolds.read(tmp_path) is None
    with pytest.raises(ValueError, match="history"):
        build_feature_tables(USERS, PRODUCTS, CHARTS, events, history="future")  # type: ignore[arg-type]
