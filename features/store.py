"""The feature store of a work directory: build, apply, materialise, read.

These are the plain functions behind ``fitml features apply|materialize|training-set``;
serving uses :func:`open_store` and :func:`online_features`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import yaml

from features.aggregates import (
    FEATURE_TABLES,
    FeatureTables,
    HistoryFolds,
    build_feature_tables,
    utc_ns,
)
from features.definitions import (
    CREATED_TIMESTAMP,
    FEATURE_SERVICE,
    PUSHED_VIEWS,
    VIEW_ENTITY,
    VIEW_FIELDS,
    build_definitions,
    source_table,
)
from features.feast_repo import write_repo
from features.transforms import request_features
from ml_pipeline.settings import Settings, expand_env

log = logging.getLogger(__name__)

LABEL_COLUMNS = ("event_id", "user_id", "product_id", "event_timestamp", "size_index", "outcome")


class TrainingSetError(RuntimeError):
    """The point-in-time join did not return exactly one row per event."""


def feature_source_dir(settings: Settings) -> Path:
    """Where the feature-view sources of this work directory live."""
    return settings.offline_dir / "features"


def open_store(settings: Settings, *, online_only: bool = False) -> Any:
    """Open the Feast feature store of ``settings`` (config from the profile's YAML).

    Args:
        settings: the profile and work directory.
        online_only: for readers of the online store (the services). Feast validates an
            offline store's configuration when the store opens, importing its module (the
            DuckDB store and ibis: 0.3-0.5 s of a service's start here); given the offline
            store's type alone, it does so on first use, which an online reader never makes.

    Returns:
        A ``feast.FeatureStore``.
    """
    from feast import FeatureStore, RepoConfig

    raw = yaml.safe_load(settings.feast.config_file.read_text())
    data = expand_env(raw, {**os.environ, "FITML_WORKDIR": str(settings.workdir)})
    data["project"] = settings.feast.project
    if online_only and isinstance(data.get("offline_store"), dict):
        data["offline_store"] = data["offline_store"]["type"]
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    config = RepoConfig(repo_path=settings.feast_dir, **data)
    return FeatureStore(config=config)


def read_offline(settings: Settings, table: str) -> pd.DataFrame:
    """Read an ingested table (``users``, ``products``, ``size_charts``, ``events``).

    Raises:
        FileNotFoundError: naming the table and telling to run ``fitml ingest`` first.
    """
    path = settings.offline_dir / f"{table}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no ingested {table} at {path}; run `fitml ingest` first")
    return pd.read_parquet(path)


def feedback_dir(settings: Settings) -> Path:
    """Where pushed fit feedback is appended to the event log (one parquet file per push)."""
    return settings.offline_dir / "feedback"


def read_events(settings: Settings) -> pd.DataFrame:
    """The event log: ingested try-on events plus the feedback pushed since.

    ``event_id`` is the idempotency key: an event seen twice counts once (the first copy:
    ingested before pushed, earlier pushes before later ones).

    Raises:
        FileNotFoundError: no ingested events (run ``fitml ingest`` first).
    """
    events = read_offline(settings, "events")
    pushed = sorted(feedback_dir(settings).glob("*.parquet"))
    if not pushed:
        return events
    frames = [events, *(pd.read_parquet(p) for p in pushed)]
    columns = list(events.columns)
    log = pd.concat([f.reindex(columns=columns) for f in frames], ignore_index=True)
    log["event_timestamp"] = utc_ns(log["event_timestamp"])
    return log.drop_duplicates("event_id", keep="first").reset_index(drop=True)


@dataclass(frozen=True)
class ApplyResult:
    """What ``apply`` registered and where the sources are."""

    views: tuple[str, ...]
    service: str
    source_dir: Path
    offline_store: str
    """Where Feast reads the views' history: ``parquet`` files in ``source_dir`` or
    ``postgresql`` tables ``<project>_<view>``."""
    seconds: float


ASOF_OFFLINE_STORES: Final = (
    "features.offline.AsofDuckDBOfflineStore",
    "features.offline_postgres.AsofPostgreSQLOfflineStore",
)
"""fitml's offline stores: each matches every entity row once (:mod:`features.offline`)."""


def _offline_store_type(store: Any) -> str:
    return str(getattr(store.config.offline_store, "type", ""))


def uses_postgres(store: Any) -> bool:
    """Whether the store's offline tables live in PostgreSQL (the ``prod`` profile)."""
    return _offline_store_type(store) == ASOF_OFFLINE_STORES[1]


def apply(settings: Settings) -> ApplyResult:
    """Compute the feature tables from the ingested data and register the definitions.

    The tables are written to parquet under the work directory (what the session service
    reads its size charts from) and, when the profile's offline store is PostgreSQL, loaded
    into it: each table is replaced whole, in one transaction. ``settings.feast.history``
    chooses the aggregate job's history mode (:mod:`features.aggregates`).
    """
    started = time.perf_counter()
    tables = build_feature_tables(
        read_offline(settings, "users"),
        read_offline(settings, "products"),
        read_offline(settings, "size_charts"),
        read_events(settings),
        history=settings.feast.history,
        folds=settings.feast.folds,
        seed=settings.seed,
    )
    source_dir = feature_source_dir(settings)
    tables.write(source_dir)
    store = open_store(settings)
    postgres = uses_postgres(store)
    if postgres:
        prefix = settings.feast.project
        load_postgres_tables(store, tables, prefix)
        definitions = build_definitions(table_prefix=prefix)
    else:
        definitions = build_definitions(source_dir)
    store.apply(definitions.objects())
    write_repo(settings, None if postgres else source_dir)
    return ApplyResult(
        views=tuple(v.name for v in definitions.views),
        service=FEATURE_SERVICE,
        source_dir=source_dir,
        offline_store="postgresql" if postgres else "parquet",
        seconds=time.perf_counter() - started,
    )


def load_postgres_tables(store: Any, tables: FeatureTables, prefix: str) -> dict[str, int]:
    """Replace the PostgreSQL tables ``<prefix>_<view>`` by ``tables``; rows per table."""
    from feast.infra.utils.postgres.connection_utils import _get_conn

    from features.offline_postgres import replace_table

    written = {}
    with _get_conn(store.config.offline_store) as conn:
        for view in FEATURE_TABLES:
            written[view] = replace_table(
                conn,
                source_table(prefix, view),
                getattr(tables, view),
                [f"{VIEW_ENTITY[view]}_id"],
                created_timestamp_column=CREATED_TIMESTAMP if view in PUSHED_VIEWS else "",
            )
    return written


def forget_offline_user(store: Any, user_id: str) -> dict[str, int]:
    """Delete ``user_id``'s rows from the PostgreSQL tables of the user-keyed views.

    Returns:
        Table -> rows deleted; empty when the offline tables are parquet files (the work
        directory's files are rewritten by the caller).
    """
    if not uses_postgres(store):
        return {}
    from feast.infra.utils.postgres.connection_utils import _get_conn

    from features.offline_postgres import view_table

    removed = {}
    views = [v for v in store.list_feature_views() if "user_id" in v.join_keys]
    with _get_conn(store.config.offline_store) as conn, conn.transaction():
        for view in views:
            _, table = view_table(view)
            cursor = conn.execute(f"DELETE FROM {table} WHERE user_id = %s", (user_id,))
            removed[table] = cursor.rowcount
    return removed


def delete_project(settings: Settings) -> None:
    """Remove the Feast project of ``settings`` from shared servers.

    Drops its PostgreSQL feature tables, deletes its Redis keys and its registry entries.
    Other projects in the same database and Redis are untouched (``FeatureStore.teardown``
    would also drop the shared SQL registry).
    """
    from feast.infra.utils.postgres.connection_utils import _get_conn

    from features.offline_postgres import drop_tables

    store = open_store(settings)
    project = settings.feast.project
    if uses_postgres(store):
        with _get_conn(store.config.offline_store) as conn:
            drop_tables(conn, project)
    if getattr(store.config.online_store, "type", "") == "redis":
        client = store._get_provider().online_store._get_client(store.config.online_store)
        for key in client.scan_iter(match=f"*{project}*".encode(), count=1000):
            client.delete(key)
    store.delete_project(project)


def materialize(settings: Settings, end: datetime | None = None) -> float:
    """Load the latest feature values up to ``end`` (default now) into the online store.

    Returns:
        Seconds taken.
    """
    started = time.perf_counter()
    store = open_store(settings)
    end = end or datetime.now(UTC)
    store.materialize(start_date=datetime(1970, 1, 2, tzinfo=UTC), end_date=end)
    return time.perf_counter() - started


def training_set(settings: Settings, events: pd.DataFrame | None = None) -> pd.DataFrame:
    """Build one training row per event: label, Feast features as of the event, request features.

    After an ``oof`` feature job the feedback views (``user_history``, ``product_stats``) are
    read as of each event's fold version instead (:meth:`HistoryFolds.as_of`): a labelled
    event sees the other folds' feedback, any other event all of it; profile and catalogue
    views are read as of the event either way.

    Args:
        settings: the run's settings.
        events: the events to build rows for (default: every ingested event).

    Raises:
        TrainingSetError: when the join lost or duplicated rows.
    """
    entity_df = _entity_rows(read_events(settings) if events is None else events)
    return next(_training_chunks(settings, entity_df, max(1, len(entity_df))))


def _entity_rows(events: pd.DataFrame) -> pd.DataFrame:
    """The label columns of ``events`` in event-time order (stable), checked for repeats.

    Raises:
        TrainingSetError: an ``event_id`` repeats.
    """
    entity_df = events[list(LABEL_COLUMNS)].copy()
    entity_df["event_timestamp"] = utc_ns(entity_df["event_timestamp"])
    ts = entity_df["event_timestamp"].to_numpy(dtype="datetime64[ns]").view("i8")
    if not (ts[1:] >= ts[:-1]).all():
        entity_df = entity_df.iloc[np.argsort(ts, kind="stable")]
    entity_df = entity_df.reset_index(drop=True)
    if entity_df["event_id"].duplicated().any():
        dupes = entity_df.loc[entity_df["event_id"].duplicated(), "event_id"].head(3).tolist()
        raise TrainingSetError(
            f"events repeat event_id {dupes}: event_id is the idempotency key; "
            "deduplicate the events (read_events does) before building a training set"
        )
    return entity_df


def _training_chunks(
    settings: Settings, entity_df: pd.DataFrame, chunk_rows: int
) -> Iterator[pd.DataFrame]:
    """The training rows of ``entity_df`` (see :func:`training_set`), ``chunk_rows`` at a time."""
    store = open_store(settings)
    service = store.get_feature_service(FEATURE_SERVICE)
    joined = _joined_chunks(store, service, entity_df, chunk_rows)
    history = None
    folds = HistoryFolds.read(feature_source_dir(settings))
    if folds is not None:
        as_of = entity_df.assign(event_timestamp=folds.as_of(entity_df["event_id"]))
        history = _joined_chunks(store, service, as_of, chunk_rows)
    for chunk in joined:
        if history is not None:
            past = next(history)
            for view in PUSHED_VIEWS:
                for name, _ in VIEW_FIELDS[view]:
                    chunk[name] = past[name].to_numpy()
        yield request_features(chunk)


def _joined_chunks(
    store: Any, service: Any, entity_df: pd.DataFrame, chunk_rows: int
) -> Iterator[pd.DataFrame]:
    """The feature service joined to ``entity_df``, ``chunk_rows`` rows at a time, in its order.

    fitml's offline stores match every row once and build the chunks from that one match;
    another store is asked once per chunk.

    Raises:
        TrainingSetError: when the join lost or duplicated rows.
    """
    # Only fitml's stores build chunks from one match: another store is not asked for the
    # whole set, which it might start computing (or uploading) at once.
    job = (
        store.get_historical_features(entity_df=entity_df, features=service)
        if _offline_store_type(store) in ASOF_OFFLINE_STORES
        else None
    )
    if job is not None and hasattr(job, "to_df_chunks"):
        chunks = job.to_df_chunks(chunk_rows)
    else:
        chunks = (
            store.get_historical_features(
                entity_df=entity_df.iloc[start : start + chunk_rows].reset_index(drop=True),
                features=service,
            ).to_df()
            for start in range(0, max(1, len(entity_df)), chunk_rows)
        )
    start = 0
    for joined in chunks:
        wanted = entity_df["event_id"].iloc[start : start + chunk_rows].reset_index(drop=True)
        start += len(wanted)
        if len(joined) != len(wanted) or not joined["event_id"].is_unique:
            raise TrainingSetError(
                f"point-in-time join returned {len(joined)} rows "
                f"({joined['event_id'].nunique()} distinct events) for {len(wanted)} events"
            )
        if not joined["event_id"].equals(wanted):
            # The ASOF stores keep entity_df's order; another offline store may not.
            joined = joined.set_index("event_id").loc[wanted].reset_index()
        yield joined


TRAINING_SET_CHUNK_ROWS = 1_000_000
"""Events built and written per chunk when the training set is written to a file."""
TRAINING_SET_ROW_GROUP_ROWS = 100_000
"""Rows per parquet row group of that file: a Dask fit reads one partition per row group."""


def write_training_set(
    settings: Settings,
    path: Path,
    events: pd.DataFrame | None = None,
    chunk_rows: int = TRAINING_SET_CHUNK_ROWS,
) -> int:
    """Build the training set in event-time chunks straight into a parquet file.

    The events are matched to their features once; each chunk of ``chunk_rows`` events is
    then built from that match and written, so memory holds one chunk's rows, never the whole
    set: the way to build tens of millions of rows. The file has the rows
    :func:`training_set` returns, in event-time order, in row groups of at most
    ``TRAINING_SET_ROW_GROUP_ROWS``; it appears only when complete.

    Returns:
        The number of rows written.

    Raises:
        TrainingSetError: a chunk's join lost or duplicated rows.
    """
    import pyarrow.parquet as pq

    from features.offline import to_arrow_shared

    if chunk_rows < 1:
        raise ValueError(f"chunk_rows={chunk_rows}: must be >= 1")
    entity_df = _entity_rows(read_events(settings) if events is None else events)
    if entity_df.empty:
        raise TrainingSetError("no events to build a training set from")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    writer: Any = None
    rows = 0
    try:
        for frame in _training_chunks(settings, entity_df, chunk_rows):
            table = to_arrow_shared(frame)
            del frame
            if writer is None:
                writer = pq.ParquetWriter(partial, table.schema)
            else:  # a column all-null in one chunk is typed by the first chunk
                table = table.cast(writer.schema)
            writer.write_table(table, row_group_size=min(chunk_rows, TRAINING_SET_ROW_GROUP_ROWS))
            rows += table.num_rows
        writer.close()
        writer = None
        partial.replace(path)
    finally:
        if writer is not None:
            writer.close()
        partial.unlink(missing_ok=True)
    return rows


def online_features(
    store: Any, user_id: str | None, product_id: str, *, event_times: bool = False
) -> dict[str, Any]:
    """Read the feature service online for one (user, product): feature name -> value.

    Args:
        store: an open ``feast.FeatureStore``.
        user_id: the shopper (None or empty for a guest: every user feature is None).
        product_id: the product.
        event_times: also return ``event_ts__<view>``, each view's event time in epoch
            seconds (None when the entity has no value), for :mod:`features.freshness`.
    """
    from features.definitions import VIEW_FIELDS
    from features.freshness import timestamp_key

    row = {"user_id": user_id or "", "product_id": product_id}
    response = store.get_online_features(
        features=store.get_feature_service(FEATURE_SERVICE), entity_rows=[row]
    )
    values = response.to_dict(include_event_timestamps=event_times)
    out = {key: v[0] for key, v in values.items() if not key.endswith("__ts")}
    if event_times:
        for view, fields in VIEW_FIELDS.items():
            seconds = values.get(f"{fields[0][0]}__ts", [None])[0]
            out[timestamp_key(view)] = seconds or None
    return out
