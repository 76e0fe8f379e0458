"""The feature store end to end on a small synthetic world (local profile, real Feast).

Point-in-time correctness (truncation), training/serving parity, push -> online read,
idempotent pushes, and the ASOF offline store against Feast's own DuckDB join.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import offline
from features import store as fs
from features.definitions import FIT_MODEL_FEATURES
from features.feedback import FeedbackError, push_feedback
from features.offline import to_arrow_shared
from features.transforms import request_features
from ml_pipeline.ingest import ingest_synthetic
from ml_pipeline.settings import Settings, load_settings
from ml_pipeline.synth import generate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("raw")
    generate(out, users=120, products=12, events=1500, seed=7)
    return out


def _world(raw: Path, workdir: Path, events_before: pd.Timestamp | None = None) -> Settings:
    ingest_synthetic(raw, workdir)
    settings = load_settings("local", workdir)
    if events_before is not None:
        path = settings.offline_dir / "events.parquet"
        events = pd.read_parquet(path)
        events[events["event_timestamp"] < events_before].to_parquet(path, index=False)
    fs.apply(settings)
    return settings


@pytest.fixture(scope="module")
def world(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return _world(raw, tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def training(world: Settings) -> pd.DataFrame:
    return fs.training_set(world)


def _features(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index("event_id")[list(FIT_MODEL_FEATURES)].sort_index()


def test_one_row_per_event_in_event_order(world: Settings, training: pd.DataFrame) -> None:
    events = fs.read_events(world)
    assert len(training) == len(events)
    assert training["event_id"].is_unique
    assert set(training["event_id"]) == set(events["event_id"])
    assert training["event_timestamp"].is_monotonic_increasing
    assert set(FIT_MODEL_FEATURES) <= set(training.columns)


def test_training_set_written_in_chunks_equals_the_one_built_whole(
    world: Settings, training: pd.DataFrame, tmp_path: Path
) -> None:
    path = tmp_path / "rows.parquet"
    rows = fs.write_training_set(world, path, chunk_rows=len(training) // 3 + 1)
    assert rows == len(training)
    assert pq.ParquetFile(path).num_row_groups == 3
    pd.testing.assert_frame_equal(pd.read_parquet(path), training)
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("history", ["point_in_time", "oof"])
def test_chunks_from_one_match_equal_each_chunk_joined_on_its_own(
    raw: Path, tmp_path: Path, history: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file's chunks come from one match of all events (its queries in blocks of rows
    that are not the chunks); joining each chunk's events on its own must give the same
    rows, in either history mode."""
    monkeypatch.setattr(offline, "MATCH_BLOCK_ROWS", 301)
    settings = load_settings("local", tmp_path / "work")
    ingest_synthetic(raw, settings.workdir)
    feast = settings.feast.model_copy(update={"history": history})
    settings = settings.model_copy(update={"feast": feast})
    fs.apply(settings)
    events = fs.read_events(settings)
    path = tmp_path / "rows.parquet"
    chunk = len(events) // 4 + 1
    assert fs.write_training_set(settings, path, chunk_rows=chunk) == len(events)
    ordered = events.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    one_by_one = pd.concat(
        [
            fs.training_set(settings, ordered.iloc[i : i + chunk])
            for i in range(0, len(events), chunk)
        ],
        ignore_index=True,
    )
    pd.testing.assert_frame_equal(pd.read_parquet(path), one_by_one)
    assert one_by_one["hist_n"].notna().mean() > 0.5  # histories are there to compare


def test_shared_chart_arrays_convert_to_the_arrow_from_pandas_gives(
    training: pd.DataFrame,
) -> None:
    charts = [c for c in training.columns if c.startswith("chart_") and training[c].dtype == object]
    assert {"chart_sizes", "chart_low"} <= set(charts)
    # One array object per product, referenced by each of its rows: converted once each.
    assert training["chart_low"].map(id).nunique() <= training["product_id"].nunique() + 1
    frame = training.copy()
    frame.loc[frame.index[::7], "chart_low"] = None  # a product row without a chart
    ours = to_arrow_shared(frame)
    theirs = pa.Table.from_pandas(frame, preserve_index=False)
    assert ours.column_names == theirs.column_names
    for name in theirs.column_names:
        assert ours.column(name).equals(theirs.column(name)), name


def test_truncated_ingest_gives_identical_rows_before_cutoff(
    raw: Path, training: pd.DataFrame, tmp_path: Path
) -> None:
    times = training["event_timestamp"]
    for quantile in (0.3, 0.8):
        cutoff = times.quantile(quantile)
        settings = _world(raw, tmp_path / f"q{quantile}", events_before=cutoff)
        truncated = fs.training_set(settings)
        before = training[training["event_timestamp"] < cutoff]
        assert len(truncated) == len(before)
        pd.testing.assert_frame_equal(_features(truncated), _features(before))


def test_first_event_of_a_shopper_sees_no_history(training: pd.DataFrame) -> None:
    first = training.sort_values("event_timestamp").drop_duplicates("user_id")
    assert first["hist_n"].isna().all()
    later = training[~training["event_id"].isin(first["event_id"])]
    assert later["hist_n"].notna().all()


def test_training_row_equals_online_vector_at_the_same_time(
    world: Settings, training: pd.DataFrame, tmp_path: Path
) -> None:
    settings = world.model_copy(update={"workdir": tmp_path})
    shutil.copytree(world.offline_dir, settings.offline_dir)
    fs.apply(settings)
    store = fs.open_store(settings)
    rng = np.random.default_rng(0)
    picks = training.iloc[np.sort(rng.choice(len(training), size=6, replace=False))]
    start = pd.Timestamp("1970-01-02", tz="UTC").to_pydatetime()
    for event in picks.itertuples():
        end = event.event_timestamp.to_pydatetime()
        store.materialize(start_date=start, end_date=end)
        start = end
        row = fs.online_features(store, event.user_id, event.product_id)
        row["size_index"] = event.size_index
        online = request_features(pd.DataFrame([row]))
        expected = training[training["event_id"] == event.event_id]
        for name in FIT_MODEL_FEATURES:
            got, want = online[name].iloc[0], expected[name].iloc[0]
            if isinstance(want, float) and np.isnan(want):
                assert got is None or np.isnan(got), (event.event_id, name, got)
            else:
                assert got == want, (event.event_id, name, got, want)


def test_push_is_visible_online_and_equals_the_batch_job(world: Settings, tmp_path: Path) -> None:
    settings = world.model_copy(update={"workdir": tmp_path / "pushed"})
    shutil.copytree(world.offline_dir, settings.offline_dir)
    shutil.rmtree(fs.feedback_dir(settings), ignore_errors=True)
    fs.apply(settings)
    store = fs.open_store(settings)
    store.materialize(
        start_date=pd.Timestamp("1970-01-02", tz="UTC").to_pydatetime(),
        end_date=pd.Timestamp.now(tz="UTC").to_pydatetime(),
    )
    events = fs.read_events(settings)
    last = events.sort_values("event_timestamp").iloc[-1]
    before = fs.online_features(store, last.user_id, last.product_id)
    at = last.event_timestamp + timedelta(minutes=5)
    new = pd.DataFrame(
        [
            {
                "event_id": "pushed-1",
                "user_id": last.user_id,
                "product_id": last.product_id,
                "size": last["size"],
                "outcome": "too_small",
                "event_timestamp": at,
            }
        ]
    )
    result = push_feedback(store, new, settings=settings)
    assert (result.new_events, result.user_rows, result.product_rows) == (1, 1, 1)
    after = fs.online_features(store, last.user_id, last.product_id)
    assert after["hist_n"] == before["hist_n"] + 1
    assert after["pstat_n"] == before["pstat_n"] + 1

    again = push_feedback(store, new, settings=settings)
    assert (again.new_events, again.duplicates) == (0, 1)
    assert fs.online_features(store, last.user_id, last.product_id)["hist_n"] == after["hist_n"]

    # The offline store got the same rows the batch job computes from the event log.
    pushed_rows = fs.training_set(settings)
    rebuilt = settings.model_copy(update={"workdir": tmp_path / "rebuilt"})
    shutil.copytree(settings.offline_dir, rebuilt.offline_dir)
    fs.apply(rebuilt)
    batch_rows = fs.training_set(rebuilt)
    pd.testing.assert_frame_equal(_features(pushed_rows), _features(batch_rows))
    later = pd.DataFrame(
        [{**new.iloc[0].to_dict(), "event_id": "pushed-2", "event_timestamp": at + timedelta(1)}]
    )
    push_feedback(store, later, settings=settings)
    row = fs.training_set(settings).set_index("event_id").loc["pushed-2"]
    online = fs.online_features(store, last.user_id, last.product_id)
    assert row["hist_n"] == after["hist_n"] == online["hist_n"] - 1


def test_push_rejects_bad_feedback(world: Settings) -> None:
    bad = pd.DataFrame(
        [
            {
                "event_id": "x",
                "user_id": "u1",
                "product_id": "p0000",
                "size": "M",
                "outcome": "perfect",
                "event_timestamp": pd.Timestamp.now(tz="UTC"),
            }
        ]
    )
    with pytest.raises(FeedbackError, match="perfect"):
        push_feedback(world, bad)
    with pytest.raises(FeedbackError, match="event_timestamp"):
        push_feedback(world, bad.drop(columns=["event_timestamp"]))


def test_asof_store_equals_feasts_duckdb_join(world: Settings, tmp_path: Path) -> None:
    stock_yaml = tmp_path / "feature_store.yaml"
    text = world.feast.config_file.read_text()
    stock_yaml.write_text(text.replace("features.offline.AsofDuckDBOfflineStore", "duckdb"))
    stock = world.model_copy(
        update={
            "workdir": tmp_path / "stock",
            "feast": world.feast.model_copy(update={"config_file": stock_yaml}),
        }
    )
    shutil.copytree(world.offline_dir, stock.offline_dir)
    fs.apply(stock)
    ours = fs.training_set(world)
    theirs = fs.training_set(stock)
    pd.testing.assert_frame_equal(_features(ours), _features(theirs))


class _StockStore:
    """A feature store whose offline store is not one of fitml's: it records what it is asked."""

    def __init__(self, store_type: str) -> None:
        self.config = type("Config", (), {"offline_store": type("C", (), {"type": store_type})})
        self.asked: list[int] = []

    def get_historical_features(self, entity_df: pd.DataFrame, features: object) -> object:
        self.asked.append(len(entity_df))
        rows = entity_df[::-1].reset_index(drop=True)  # another store may change the order
        return type("Job", (), {"to_df": staticmethod(lambda: rows)})


def test_another_offline_store_is_asked_once_per_chunk_never_for_the_whole_set() -> None:
    store = _StockStore("duckdb")
    events = pd.DataFrame({"event_id": [f"e{i}" for i in range(10)]})
    chunks = list(fs._joined_chunks(store, None, events, chunk_rows=4))
    assert store.asked == [4, 4, 2]
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), events)
