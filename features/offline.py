"""A Feast offline store: Feast's DuckDB store with a point-in-time join that scales.

Feast 0.67's DuckDB store joins every entity row to *every* earlier row of its entity and
then keeps the latest (``inner_join`` + ``row_number``): quadratic in the rows per entity. The
product fit stats have one row per feedback, so for 1M events over 200 products that is
~2.5e9 intermediate rows (50k events already took 25 s). This store keeps everything else of
the DuckDB store (sources, pushes, materialisation, ``offline_write_batch``) and answers
``get_historical_features`` with DuckDB's ``ASOF LEFT JOIN``: per entity row, the latest
feature row at or before its timestamp, ties broken by the created timestamp; a view's TTL,
when set, nulls a value older than ``ttl`` at the entity row's time (Feast's semantics).

It is selected in ``feature_store.yaml`` with ``offline_store: {type:
features.offline.AsofDuckDBOfflineStore}``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from feast import FeatureView, FileSource
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore, DuckDBOfflineStoreConfig
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig
from feast.saved_dataset import SavedDatasetStorage

_ROW = "__fitml_row"
_TS = "__fitml_ts"


class AsofDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    """Config of :class:`AsofDuckDBOfflineStore` (the DuckDB store's options)."""

    type: Literal["features.offline.AsofDuckDBOfflineStore"] = (  # type: ignore[assignment]
        "features.offline.AsofDuckDBOfflineStore"
    )
    threads: int | None = None
    """DuckDB threads for the join (default: DuckDB's, one per core)."""


class AsofRetrievalJob(RetrievalJob):
    """A historical retrieval computed by one ``ASOF``-style query when first read.

    ``plan()`` matches the entity rows (see :class:`JoinPlan`); the DuckDB and the PostgreSQL
    stores differ only in it. :meth:`to_df_chunks` builds the rows a slice at a time from one
    plan.
    """

    def __init__(
        self,
        entity_df: pd.DataFrame,
        feature_refs: list[str],
        full_feature_names: bool,
        on_demand_feature_views: list[OnDemandFeatureView],
        plan: Callable[[], JoinPlan],
    ) -> None:
        self._entity_df = entity_df
        self._refs = feature_refs
        self._full_feature_names = full_feature_names
        self._odfvs = on_demand_feature_views
        self._plan = plan
        ts = pd.to_datetime(entity_df["event_timestamp"], utc=True)
        self._metadata = RetrievalMetadata(
            features=feature_refs,
            keys=[c for c in entity_df.columns if c != "event_timestamp"],
            min_event_timestamp=ts.min() if len(ts) else None,
            max_event_timestamp=ts.max() if len(ts) else None,
        )

    @classmethod
    def checked(
        cls,
        entity_df: pd.DataFrame,
        feature_refs: list[str],
        full_feature_names: bool,
        project: str,
        registry: BaseRegistry,
        plan: Callable[[], JoinPlan],
    ) -> AsofRetrievalJob:
        """The job for ``entity_df``, after checking it has ``event_timestamp``.

        Raises:
            ValueError: naming the columns ``entity_df`` has instead.
        """
        if "event_timestamp" not in entity_df.columns:
            raise ValueError(
                "entity_df needs an 'event_timestamp' column; got "
                f"{', '.join(map(str, entity_df.columns))}"
            )
        odfvs = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
        return cls(entity_df, feature_refs, full_feature_names, odfvs, plan)

    @property
    def full_feature_names(self) -> bool:
        """Whether features are named ``view__feature``."""
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        """On-demand views Feast applies on top of the join."""
        return self._odfvs

    @property
    def metadata(self) -> RetrievalMetadata | None:
        """Features, keys and the entity rows' time range."""
        return self._metadata

    def to_df(self, validation_reference: Any = None, timeout: int | None = None) -> pd.DataFrame:
        """The joined rows as a DataFrame.

        Non-numeric features come from the join as indices into their source column and become
        object columns whose rows share the source's values (one array per product chart,
        not one per row): 1M rows with four chart arrays convert in milliseconds, not seconds.
        """
        if validation_reference is not None or self._odfvs:
            return super().to_df(validation_reference=validation_reference, timeout=timeout)
        return self._to_df_internal(timeout)

    def to_df_chunks(self, chunk_rows: int) -> Iterator[pd.DataFrame]:
        """The rows of :meth:`to_df`, ``chunk_rows`` entity rows at a time, in their order.

        The entity rows are matched once; each chunk holds only its own rows' features. No
        entity rows give one empty chunk.
        """
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows={chunk_rows}: must be >= 1")
        if self._odfvs:  # on-demand views are applied by Feast to a whole frame
            whole = self.to_df()
            for start in range(0, max(1, len(whole)), chunk_rows):
                yield whole.iloc[start : start + chunk_rows].reset_index(drop=True)
            return
        plan = self._plan()
        for start in range(0, max(1, len(self._entity_df)), chunk_rows):
            part = self._entity_df.iloc[start : start + chunk_rows].reset_index(drop=True)
            yield _to_pandas_shared(plan.table(part, start, encoded=True), part)

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        table = self._plan().table(self._entity_df, encoded=True)
        return _to_pandas_shared(table, self._entity_df)

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        return self._plan().table(self._entity_df)

    def persist(
        self,
        storage: SavedDatasetStorage,
        allow_overwrite: bool = False,
        timeout: int | None = None,
    ) -> None:
        """Saved datasets are not supported by the fitml offline stores."""
        raise NotImplementedError("fitml's offline stores do not persist saved datasets")


class AsofDuckDBOfflineStore(DuckDBOfflineStore):
    """Feast's DuckDB offline store with an ``ASOF JOIN`` for historical retrieval."""

    @staticmethod
    def offline_write_batch(
        config: RepoConfig,
        feature_view: FeatureView,
        table: pa.Table,
        progress: Callable[[int], Any] | None,
    ) -> None:
        """Append pushed rows to a view's parquet source, keeping the file's schema.

        Feast's DuckDB append rewrites timestamps as strings, after which no join can read
        the file; this appends with Arrow, under a file lock (concurrent pushes do not lose
        rows), and replaces the file atomically (readers never see half a file).
        """
        source = feature_view.batch_source
        if not isinstance(source, FileSource):
            raise TypeError(
                f"view {feature_view.name!r} has a {type(source).__name__} batch source; "
                "AsofDuckDBOfflineStore appends to parquet FileSources only"
            )
        append_parquet(
            Path(FileSource.get_uri_for_file_path(str(config.repo_path), source.path)), table
        )
        if progress:
            progress(table.num_rows)

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        """Point-in-time join of ``entity_df`` (a DataFrame with ``event_timestamp``).

        A SQL ``entity_df`` or a non-file source falls back to the DuckDB store's join.
        """
        if not isinstance(entity_df, pd.DataFrame) or not all(
            isinstance(v.batch_source, FileSource) for v in feature_views
        ):
            return DuckDBOfflineStore.get_historical_features(
                config,
                feature_views,
                feature_refs,
                entity_df,
                registry,
                project,
                full_feature_names,
                filter_by_created_timestamp,
            )
        threads = getattr(config.offline_store, "threads", None)
        repo_path = str(config.repo_path)

        def plan() -> JoinPlan:
            return asof_plan(
                entity_df,
                feature_views,
                feature_refs,
                full_feature_names=full_feature_names,
                repo_path=repo_path,
                threads=threads,
            )

        return AsofRetrievalJob.checked(
            entity_df, feature_refs, full_feature_names, project, registry, plan
        )


def append_parquet(path: Path, table: pa.Table) -> None:
    """Append ``table`` to the parquet file ``path`` (cast to its schema), atomically.

    Raises:
        ValueError: ``table`` lacks a column of the file.
    """
    import fcntl

    import pyarrow.parquet as pq

    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        existing = pq.read_table(path)
        missing = [c for c in existing.column_names if c not in table.column_names]
        if missing:
            raise ValueError(f"rows pushed to {path} lack column(s) {missing}")
        schema = existing.schema.remove_metadata()
        rows = table.select(existing.column_names).cast(schema)
        combined = pa.concat_tables([existing.cast(schema), rows])
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        pq.write_table(combined, tmp)
        os.replace(tmp, path)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def entity_key_columns(entity_df: pd.DataFrame, feature_views: list[FeatureView]) -> list[str]:
    """The join keys of ``feature_views`` (sorted), checked to be columns of ``entity_df``.

    Raises:
        ValueError: naming the join keys ``entity_df`` lacks.
    """
    key_columns = sorted(
        {
            (view.projection.join_key_map or {}).get(c.name, c.name)
            for view in feature_views
            for c in view.entity_columns
        }
    )
    missing = [k for k in key_columns if k not in entity_df.columns]
    if missing:
        raise ValueError(f"entity_df lacks the join key(s) {missing}; add them as columns")
    return key_columns


MATCH_BLOCK_ROWS = 4_000_000
"""Entity rows per ``ASOF`` query of :func:`asof_plan` (each query rescans the sources' keys)."""


def asof_plan(
    entity_df: pd.DataFrame,
    feature_views: list[FeatureView],
    feature_refs: list[str],
    *,
    full_feature_names: bool = False,
    repo_path: str = "",
    threads: int | None = None,
) -> JoinPlan:
    """Match each row of ``entity_df`` to the latest row of each view at or before its time.

    One query matches all of ``entity_df``'s rows, and each view's source is read once,
    however many slices of the plan are then built (:meth:`JoinPlan.table`).

    Args:
        entity_df: entity keys and ``event_timestamp``, one row per wanted output row.
        feature_views: the views to read (file sources).
        feature_refs: ``view:feature`` references to return.
        full_feature_names: name output columns ``view__feature``.
        repo_path: the feature repo, for relative source paths.
        threads: DuckDB threads (default: DuckDB's).

    Returns:
        The plan whose tables have ``entity_df``'s columns, then the features, in
        ``entity_df``'s row order: exactly one output row per entity row.
    """
    import duckdb
    import pyarrow.parquet as pq

    n = len(entity_df)
    key_columns = entity_key_columns(entity_df, feature_views)

    def entity_block(start: int, stop: int) -> pa.Table:
        rows = entity_df.iloc[start:stop]
        ts = pd.to_datetime(rows["event_timestamp"], utc=True)
        return pa.table(
            {
                **{
                    k: pa.array(rows[k].astype(object).to_numpy(), pa.string()) for k in key_columns
                },
                _TS: pa.array(ts.to_numpy(dtype="datetime64[ns]").view("i8")),
                _ROW: pa.array(np.arange(start, stop, dtype=np.int64)),
            }
        )

    plans = []
    con = duckdb.connect()
    try:
        if threads:
            con.execute(f"SET threads TO {int(threads)}")
        selects = [f"e.{_ROW}"]
        joins = []
        for i, view in enumerate(feature_views):
            prefix = view.projection.name_to_use()
            features = [r.split(":", 1)[1] for r in feature_refs if r.split(":", 1)[0] == prefix]
            if not features:
                continue
            source = view.batch_source
            assert isinstance(source, FileSource)
            path = str(FileSource.get_uri_for_file_path(repo_path, source.path))
            source_keys = [c.name for c in view.entity_columns]
            if not source_keys:
                raise ValueError(
                    f"feature view {view.name!r} has no entity columns; declare its join "
                    "key in its schema (or read the view from the registry)"
                )
            keys = [(view.projection.join_key_map or {}).get(k, k) for k in source_keys]
            ts_col = source.timestamp_field
            alias = f"v{i}"
            table = f"read_parquet({_literal(path)}, file_row_number = true)"
            cols = ", ".join(
                [
                    *(f"{_quote(k)}::VARCHAR AS __k{j}" for j, k in enumerate(source_keys)),
                    f"epoch_ns({_quote(ts_col)}) AS __ts",
                    "file_row_number AS __i",
                ]
            )
            inner = f"SELECT {cols} FROM {table}"
            created = source.created_timestamp_column
            if created and _has_ties(con, table, [*source_keys, ts_col]):
                # Several rows at one (entity, time): the latest created wins, as in Feast.
                partition = ", ".join(_quote(c) for c in [*source_keys, ts_col])
                inner += (
                    f" QUALIFY row_number() OVER (PARTITION BY {partition} "
                    f"ORDER BY {_quote(created)} DESC) = 1"
                )
            on = " AND ".join(
                [
                    *(f"e.{_quote(k)} = {alias}.__k{j}" for j, k in enumerate(keys)),
                    f"e.{_TS} >= {alias}.__ts",
                ]
            )
            joins.append(f"ASOF LEFT JOIN ({inner}) {alias} ON {on}")
            picked = f"{alias}.__i"
            ttl = view.ttl
            if ttl and ttl > timedelta(0):
                limit = int(ttl.total_seconds() * 1e9)
                picked = f"CASE WHEN e.{_TS} - {alias}.__ts <= {limit} THEN {picked} END"
            selects.append(f"{picked} AS __i{i}")
            names = [f"{prefix}__{f}" if full_feature_names else f for f in features]
            plans.append((f"__i{i}", path, features, names))
        query = f"SELECT {', '.join(selects)} FROM entity_rows e {' '.join(joins)}"
        blocks = []
        # Entity rows are matched a block at a time: the query's memory is one block's.
        for start in range(0, max(1, n), MATCH_BLOCK_ROWS):
            con.register("entity_rows", entity_block(start, min(n, start + MATCH_BLOCK_ROWS)))
            blocks.append(con.sql(query).to_arrow_table())
            con.unregister("entity_rows")
        matches = pa.concat_tables(blocks)
    finally:
        con.close()
    if matches.num_rows != n:
        raise RuntimeError(f"ASOF join returned {matches.num_rows} rows for {n} entity rows")
    picks = []
    for index_column, path, features, names in plans:
        source_table = pq.read_table(path, columns=features)
        picks.append((matches.column(index_column), source_table, features, names))
    return JoinPlan(matches.column(_ROW), picks)


Pick = tuple[pa.ChunkedArray | pa.Array, pa.Table, list[str], list[str]]
"""One view's part of a join: per match row, the row of ``table`` it picked (null: none);
the features to take from ``table`` and the output names they get."""


class JoinPlan:
    """A point-in-time join's matches, turned into tables for any run of its entity rows.

    The matching (which source row each entity row picks in each view) is done once for all
    entity rows; :meth:`table` then builds the joined rows of one slice of them, so a training
    set of tens of millions of rows is written in chunks without joining again per chunk.
    """

    def __init__(self, entity_rows: pa.ChunkedArray | pa.Array, picks: list[Pick]) -> None:
        """Turn the join's matches into each view's picked rows, in the entity rows' order.

        Args:
            entity_rows: per match row, the position of its entity row (a permutation of
                ``0..n-1``: the join may return its rows in any order).
            picks: per view, the picked source rows and what to take from them.
        """
        n = len(entity_rows)
        # Back to the entity rows' order without a sort: row ids are a permutation of 0..n-1.
        order = np.empty(n, dtype=np.int64)
        order[np.asarray(entity_rows, dtype=np.int64)] = np.arange(n, dtype=np.int64)
        taken = pa.array(order)
        self.rows = n
        self._views: list[tuple[pa.Array, list[pa.Array], list[str]]] = []
        for picked, source_table, features, names in picks:
            rows = picked.take(taken)
            if isinstance(rows, pa.ChunkedArray):
                rows = rows.combine_chunks()
            columns = [source_table.column(f).combine_chunks() for f in features]
            self._views.append((rows, columns, names))

    def table(self, entity_df: pd.DataFrame, start: int = 0, *, encoded: bool = False) -> pa.Table:
        """The joined rows of entity rows ``start .. start + len(entity_df)``.

        Args:
            entity_df: those entity rows, in the order the output keeps.
            start: the position of ``entity_df``'s first row among the planned rows.
            encoded: return non-numeric features dictionary-encoded (indices into the source
                column) instead of copied per row.

        Returns:
            ``entity_df``'s columns, then each view's features.
        """
        if start < 0 or start + len(entity_df) > self.rows:
            raise ValueError(
                f"rows {start}..{start + len(entity_df)} are outside the {self.rows} planned rows"
            )
        out = pa.Table.from_pandas(entity_df, preserve_index=False)
        for rows, columns, names in self._views:
            part = rows.slice(start, len(entity_df))
            for column, name in zip(columns, names, strict=True):
                if encoded and not _is_numeric(column.type):
                    values: pa.Array = pa.DictionaryArray.from_arrays(part, column)
                else:
                    values = column.take(part)
                out = out.append_column(name, values)
        return out


def _is_numeric(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_temporal(kind)
    )


def _to_pandas_shared(table: pa.Table, entity_df: pd.DataFrame | None = None) -> pd.DataFrame:
    """``table.to_pandas()``, decoding dictionary columns into shared objects.

    When ``entity_df`` is given, its columns (the table's first ones) are reused as they are
    instead of being converted back from Arrow.
    """
    reused = list(entity_df.columns) if entity_df is not None else []
    frame = (
        entity_df.reset_index(drop=True).copy(deep=False)
        if entity_df is not None
        else pd.DataFrame(index=pd.RangeIndex(table.num_rows))
    )
    for name in table.column_names:
        if name in reused:
            continue
        column = table.column(name).combine_chunks()
        if isinstance(column, pa.DictionaryArray):
            values = np.empty(len(column.dictionary) + 1, dtype=object)
            values[:-1] = column.dictionary.to_numpy(zero_copy_only=False)
            values[-1] = None
            indices = column.indices.fill_null(-1).to_numpy(zero_copy_only=False)
            frame[name] = values[indices]
        else:
            frame[name] = column.to_pandas()
    return frame


def to_arrow_shared(frame: pd.DataFrame) -> pa.Table:
    """``pa.Table.from_pandas(frame)``, converting shared objects once instead of once per row.

    A column of :func:`_to_pandas_shared`'s objects (a product's chart arrays, one array per
    product, referenced by each of its rows) is converted per distinct object and spread to
    its rows by index; any other column is converted as ``from_pandas`` converts it.
    """
    shared = [c for c in frame.columns if _is_array_column(frame[c])]
    table = pa.Table.from_pandas(
        frame, columns=[c for c in frame.columns if c not in shared], preserve_index=False
    )
    for position, name in enumerate(frame.columns):
        if name in shared:
            table = table.add_column(position, name, _shared_to_arrow(frame[name].to_numpy()))
    return table


def _is_array_column(column: pd.Series) -> bool:
    """Whether ``column`` holds objects whose first non-null one is a NumPy array."""
    if column.dtype != object:
        return False
    present = column.first_valid_index()
    return present is not None and isinstance(column[present], np.ndarray)


def _shared_to_arrow(values: np.ndarray) -> pa.Array:
    """Objects, many of them the same object, as an Arrow array (each converted once)."""
    ids = np.fromiter(map(id, values), dtype=np.int64, count=len(values))
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    distinct = pa.array(list(values[first]), from_pandas=True)
    return distinct.take(pa.array(inverse.astype(np.int64)))


def _has_ties(con: Any, table: str, columns: list[str]) -> bool:
    """Whether some rows of ``table`` share all of ``columns`` (an entity and an instant)."""
    group = ", ".join(_quote(c) for c in columns)
    found = con.sql(f"SELECT 1 FROM {table} GROUP BY {group} HAVING count(*) > 1 LIMIT 1")
    return bool(found.fetchall())
