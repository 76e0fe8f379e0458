"""A Feast offline store on PostgreSQL: the ``prod`` profile's feature tables and their join.

Feast's PostgreSQL store answers ``get_historical_features`` with the same join as its other
SQL stores (every entity row against every earlier row of its entity, then the latest kept)
and returns the rows through Python lists; it has no ``offline_write_batch``, so pushes
cannot reach it. This store keeps its sources (:class:`PostgreSQLSource` tables), its
materialisation (``pull_latest_from_table_or_query``) and its connection settings, and adds:

- **Tables** (:func:`replace_table`, :func:`append_rows`): each feature table carries two
  columns besides its own, ``fitml_row`` (identity, insertion order) and ``fitml_ts_ns``
  (the event time in integer nanoseconds, so the join compares exactly what the DuckDB store
  compares) and one index that serves the join: ``(key, fitml_ts_ns DESC, created DESC,
  fitml_row DESC)``.
- **The point-in-time join** (:func:`postgres_asof_plan`): the entity rows are copied into
  a temporary table and each is matched, per view, to the latest row of its entity at or
  before its time by a ``LEFT JOIN LATERAL ... ORDER BY ... LIMIT 1`` that is one index probe;
  a view's TTL bounds the probe (Feast's semantics). The join returns row ids only; each
  view's table is then read once with ``COPY`` and the rows taken by id, so a product chart
  crosses the wire once, not once per training row.
- **Pushes to the offline store** (``offline_write_batch``): rows are appended with ``COPY``.

It is selected in ``feature_store.yaml`` with ``offline_store: {type:
features.offline_postgres.AsofPostgreSQLOfflineStore, url: postgresql://...}``.
"""

from __future__ import annotations

import io
import itertools
import re
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from feast import FeatureView
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import (
    PostgreSQLOfflineStore,
    PostgreSQLOfflineStoreConfig,
)
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import (
    PostgreSQLSource,
)
from feast.infra.offline_stores.offline_store import RetrievalJob
from feast.infra.registry.base_registry import BaseRegistry
from feast.repo_config import RepoConfig
from pydantic import model_validator

from features.offline import AsofRetrievalJob, JoinPlan, Pick, entity_key_columns

ROW_ID = "fitml_row"
"""Identity column of every feature table: insertion order, the join's last tie-break."""
TS_NS = "fitml_ts_ns"
"""The event time in integer nanoseconds (PostgreSQL timestamps stop at microseconds)."""
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class OfflineTableError(ValueError):
    """A feature table name or frame PostgreSQL cannot hold as given."""


class AsofPostgreSQLOfflineStoreConfig(PostgreSQLOfflineStoreConfig):
    """Config of :class:`AsofPostgreSQLOfflineStore`: Feast's PostgreSQL options, or a ``url``.

    ``url`` (``postgresql://user:password@host:port/database?sslmode=...``) fills ``host``,
    ``port``, ``database``, ``user``, ``password`` and ``sslmode`` (default ``prefer``), so the
    profile reads one variable per server, like the registry's.
    """

    type: Literal["features.offline_postgres.AsofPostgreSQLOfflineStore"] = (
        "features.offline_postgres.AsofPostgreSQLOfflineStore"  # type: ignore[assignment]
    )
    url: str | None = None
    workers: int = 2
    """Connections a large point-in-time join is split over (one core each on the server)."""

    @model_validator(mode="before")
    @classmethod
    def _from_url(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("url"):
            return data
        url = str(data["url"])
        parsed = urlparse(url)
        scheme = parsed.scheme.split("+", 1)[0]
        if scheme not in ("postgresql", "postgres") or not parsed.hostname or not parsed.path:
            raise ValueError(
                f"offline_store url {url!r} is not postgresql://user@host:port/database; "
                "set FITML_FEAST_OFFLINE_URL to such a URL"
            )
        query = parse_qs(parsed.query)
        filled = {
            "host": parsed.hostname,
            "port": parsed.port or 5432,
            "database": parsed.path.lstrip("/"),
            "user": unquote(parsed.username or "postgres"),
            "password": unquote(parsed.password or ""),
            "sslmode": query.get("sslmode", ["prefer"])[0],
        }
        return {**filled, **data}


class FeatureTableSource(PostgreSQLSource):
    """A :class:`PostgreSQLSource` on a fitml feature table.

    Its table carries the join's columns (``fitml_row``, ``fitml_ts_ns``) besides the view's;
    Feast is shown only the view's, so pushed frames are checked against those.
    """

    def get_table_column_names_and_types(self, config: RepoConfig) -> list[tuple[str, str]]:
        """The table's columns but the join's own."""
        columns = super().get_table_column_names_and_types(config)
        return [(name, kind) for name, kind in columns if name not in (ROW_ID, TS_NS)]

    @staticmethod
    def from_proto(data_source: Any) -> FeatureTableSource:
        """Rebuild the source from the registry (Feast finds the class by its type name)."""
        base = PostgreSQLSource.from_proto(data_source)
        return FeatureTableSource(
            name=base.name,
            table=base._postgres_options._table,
            timestamp_field=base.timestamp_field,
            created_timestamp_column=base.created_timestamp_column,
            field_mapping=base.field_mapping,
            description=base.description,
            tags=base.tags,
            owner=base.owner,
        )

    def _to_proto_impl(self) -> Any:
        proto = super()._to_proto_impl()
        proto.data_source_class_type = f"{__name__}.{type(self).__name__}"
        return proto


class AsofPostgreSQLOfflineStore(PostgreSQLOfflineStore):
    """Feast's PostgreSQL offline store with an index-probe point-in-time join and pushes."""

    @staticmethod
    def offline_write_batch(
        config: RepoConfig,
        feature_view: FeatureView,
        table: pa.Table,
        progress: Callable[[int], Any] | None,
    ) -> None:
        """Append pushed rows to the view's table (one transaction: all rows or none)."""
        source, name = view_table(feature_view)
        from feast.infra.utils.postgres.connection_utils import _get_conn

        with _get_conn(config.offline_store) as conn:
            append_rows(conn, name, table, source.timestamp_field)
        if progress:
            progress(table.num_rows)

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str | None,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
        **kwargs: Any,
    ) -> RetrievalJob:
        """Point-in-time join of ``entity_df`` (a DataFrame with ``event_timestamp``).

        A SQL ``entity_df`` or a query-based source falls back to Feast's PostgreSQL join.
        """
        if not isinstance(entity_df, pd.DataFrame) or not all(
            isinstance(v.batch_source, PostgreSQLSource) and v.batch_source._postgres_options._table
            for v in feature_views
        ):
            return PostgreSQLOfflineStore.get_historical_features(
                config,
                feature_views,
                feature_refs,
                entity_df,
                registry,
                project,
                full_feature_names,
                filter_by_created_timestamp,
                **kwargs,
            )
        offline = config.offline_store

        def plan() -> JoinPlan:
            return postgres_asof_plan(
                offline, entity_df, feature_views, feature_refs, full_feature_names
            )

        return AsofRetrievalJob.checked(
            entity_df, feature_refs, full_feature_names, project, registry, plan
        )


def view_table(view: FeatureView) -> tuple[PostgreSQLSource, str]:
    """The view's batch source and its table name."""
    source = view.batch_source
    if not isinstance(source, PostgreSQLSource) or not source._postgres_options._table:
        raise TypeError(
            f"view {view.name!r} has a {type(source).__name__} batch source; "
            "AsofPostgreSQLOfflineStore reads and appends to PostgreSQLSource tables"
        )
    return source, check_identifier(source.get_table_query_string())


def check_identifier(name: str, what: str = "table name") -> str:
    """``name`` if it is a plain lower-case PostgreSQL identifier (no quoting needed).

    Raises:
        OfflineTableError: naming the value and what a name may contain.
    """
    if not _IDENTIFIER.match(name):
        hint = " (the Feast project name is its prefix)" if what == "table name" else ""
        raise OfflineTableError(
            f"{what} {name!r} is not a plain identifier: use lower-case letters, digits "
            f"and underscores, starting with a letter or underscore, at most 63 characters{hint}"
        )
    return name


def _pg_type(kind: pa.DataType) -> str:
    if pa.types.is_timestamp(kind):
        return "timestamptz" if kind.tz else "timestamp"
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _pg_type(kind.value_type) + "[]"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "text"
    if pa.types.is_boolean(kind):
        return "boolean"
    if pa.types.is_integer(kind):
        return "bigint"
    if pa.types.is_floating(kind):
        return "double precision"
    raise OfflineTableError(f"no PostgreSQL column type for Arrow type {kind}")


def _with_ts_ns(table: pa.Table, timestamp_field: str) -> pa.Table:
    if timestamp_field not in table.column_names:
        raise OfflineTableError(
            f"rows lack the timestamp column {timestamp_field!r}; got {table.column_names}"
        )
    ts = table.column(timestamp_field)
    if not pa.types.is_timestamp(ts.type):
        raise OfflineTableError(f"column {timestamp_field!r} is {ts.type}, not a timestamp")
    nanos = pc.cast(pc.cast(ts, pa.timestamp("ns", tz=ts.type.tz)), pa.int64())
    return table.drop_columns(
        [c for c in (TS_NS, ROW_ID) if c in table.column_names]
    ).append_column(TS_NS, nanos)


def _copy_in(cursor: Any, name: str, table: pa.Table) -> None:
    columns = ", ".join(table.column_names)
    lists = [
        f.name for f in table.schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)
    ]
    if lists:
        # Arrays: psycopg adapts Python lists (tables with arrays are catalogue-sized).
        with cursor.copy(f"COPY {name} ({columns}) FROM STDIN") as copy:
            for row in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True):
                copy.write_row(row)
        return
    import pyarrow.csv as pcsv

    buffer = io.BytesIO()
    pcsv.write_csv(table, buffer, pcsv.WriteOptions(include_header=False))
    with cursor.copy(f"COPY {name} ({columns}) FROM STDIN (FORMAT csv)") as copy:
        copy.write(buffer.getvalue())


def replace_table(
    conn: Any,
    name: str,
    frame: pd.DataFrame | pa.Table,
    keys: Sequence[str],
    *,
    timestamp_field: str = "event_timestamp",
    created_timestamp_column: str = "",
) -> int:
    """Replace table ``name`` by ``frame``, with the join's columns and index, atomically.

    Readers see the old table or the new one: the new one is built under another name and
    swapped in, in one transaction.

    Returns:
        The number of rows written.
    """
    check_identifier(name)
    table = (
        frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    )
    table = _with_ts_ns(table, timestamp_field)
    staging = check_identifier(f"{name[:50]}__staging")
    columns = ", ".join(
        f"{check_identifier(f.name, 'column name')} {_pg_type(f.type)}" for f in table.schema
    )
    order = [*keys, f"{TS_NS} DESC"]
    if created_timestamp_column:
        order.append(f"{created_timestamp_column} DESC NULLS LAST")
    order.append(f"{ROW_ID} DESC")
    with conn.transaction(), conn.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {staging}")
        cursor.execute(
            f"CREATE TABLE {staging} ({ROW_ID} bigint GENERATED BY DEFAULT AS IDENTITY, {columns})"
        )
        _copy_in(cursor, staging, table)
        index = f"{name[:40]}__pit_{uuid.uuid4().hex[:8]}"
        cursor.execute(f"CREATE INDEX {index} ON {staging} ({', '.join(order)})")
        cursor.execute(f"DROP TABLE IF EXISTS {name}")
        cursor.execute(f"ALTER TABLE {staging} RENAME TO {name}")
    # VACUUM sets the visibility map, so the join's probes are index-only scans (no heap
    # visit per entity row: 30% faster at 1M rows); it cannot run inside a transaction.
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        conn.execute(f"VACUUM (ANALYZE) {name}")
    finally:
        conn.autocommit = autocommit
    return table.num_rows


def append_rows(conn: Any, name: str, table: pa.Table, timestamp_field: str) -> int:
    """Append ``table``'s rows to feature table ``name`` (its columns; extra ones ignored).

    Raises:
        OfflineTableError: the rows lack a column of the table.
    """
    check_identifier(name)
    with conn.transaction(), conn.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {name} LIMIT 0")
        wanted = [d.name for d in cursor.description if d.name not in (ROW_ID, TS_NS)]
        missing = [c for c in wanted if c not in table.column_names]
        if missing:
            raise OfflineTableError(f"rows pushed to {name} lack column(s) {missing}")
        _copy_in(cursor, name, _with_ts_ns(table.select(wanted), timestamp_field))
    return table.num_rows


def drop_tables(conn: Any, prefix: str) -> list[str]:
    """Drop every table whose name starts with ``prefix`` + ``_`` (a project's tables)."""
    check_identifier(prefix)
    with conn.transaction(), conn.cursor() as cursor:
        cursor.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND starts_with(tablename, %s)",
            (prefix + "_",),
        )
        names = [check_identifier(row[0]) for row in cursor.fetchall()]
        for name in names:
            cursor.execute(f"DROP TABLE IF EXISTS {name}")
    return names


_CHUNK_ROWS = 8192
"""Rows packed into one CSV text value by :func:`_fetch_csv`."""


def _fetch_csv(cursor: Any, query: str, types: dict[str, pa.DataType]) -> pa.Table:
    """The rows of ``query`` (columns ``types``; the first a bigint) as an Arrow table.

    The server packs the rows into CSV text, ~8k rows per value: the client receives a
    hundred messages for a million rows instead of a million (row-at-a-time ``COPY`` cost
    ~3 s of client CPU per million rows, taken from the server on a two-core machine).
    Row order is not kept.
    """
    import pyarrow.csv as pcsv

    names = list(types)
    cells = " || ',' || ".join(_csv_cell(f"q.{name}", kind) for name, kind in types.items())
    cursor.execute(
        f"SELECT string_agg({cells}, E'\\n') FROM ({query}) q GROUP BY q.{names[0]} / {_CHUNK_ROWS}"
    )
    text = "\n".join(row[0] for row in cursor.fetchall())
    if not text:
        return pa.table({name: pa.array([], type=kind) for name, kind in types.items()})
    return pcsv.read_csv(
        io.BytesIO(text.encode()),
        read_options=pcsv.ReadOptions(column_names=names),
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(
            column_types=types, strings_can_be_null=True, quoted_strings_can_be_null=False
        ),
    )


def _csv_cell(column: str, kind: pa.DataType) -> str:
    """SQL for one CSV cell: empty for NULL, strings quoted (so an empty string stays one)."""
    if pa.types.is_string(kind):
        return f"""coalesce('"' || replace({column}, '"', '""') || '"', '')"""
    return f"coalesce({column}::text, '')"


def _read_features(cursor: Any, name: str, view: FeatureView, features: list[str]) -> pa.Table:
    """``fitml_row`` and ``features`` of every row of table ``name``, ordered by row id."""
    from feast.type_map import feast_value_type_to_pa

    kinds = {f.name: feast_value_type_to_pa(f.dtype.to_value_type()) for f in view.features}
    types = {ROW_ID: pa.int64(), **{f: kinds[f] for f in features}}
    query = f"SELECT {', '.join(types)} FROM {name}"
    if any(pa.types.is_list(t) for t in types.values()):
        # Arrays (the size charts: one row per product): psycopg adapts them to lists.
        cursor.execute(query)
        rows = cursor.fetchall()
        columns: list[list[Any]] = [[row[j] for row in rows] for j in range(len(types))]
        table = pa.table(
            {c: pa.array(v, type=t) for (c, t), v in zip(types.items(), columns, strict=True)}
        )
    else:
        table = _fetch_csv(cursor, query, types)
    return table.sort_by(ROW_ID)


def postgres_asof_plan(
    config: Any,
    entity_df: pd.DataFrame,
    feature_views: list[FeatureView],
    feature_refs: list[str],
    full_feature_names: bool = False,
) -> JoinPlan:
    """The point-in-time matches of ``entity_df``'s rows in PostgreSQL tables.

    The same contract as :func:`features.offline.asof_plan`. Large joins are split over
    ``config.workers`` connections that share one snapshot (each probes its share of the
    entity rows), so every part sees the same tables.
    """
    import psycopg
    from feast.infra.utils.postgres.connection_utils import _get_conn

    n = len(entity_df)
    key_columns = entity_key_columns(entity_df, feature_views)
    ts = pd.to_datetime(entity_df["event_timestamp"], utc=True)
    entity_rows = pa.table(
        {
            **{
                f"k{j}": pa.array(entity_df[k].astype(object).to_numpy(), pa.string())
                for j, k in enumerate(key_columns)
            },
            "ts": pa.array(ts.to_numpy(dtype="datetime64[ns]").view("i8")),
            "pos": pa.array(np.arange(n, dtype=np.int64)),
        }
    )
    workers = max(1, min(int(getattr(config, "workers", 1) or 1), n // _ROWS_PER_WORKER))
    bounds = np.linspace(0, n, workers + 1).astype(int)
    parts = [entity_rows.slice(a, b - a) for a, b in itertools.pairwise(bounds)]
    with _get_conn(config) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction(), conn.cursor() as cursor:
            snapshot = ""
            if workers > 1:
                row = cursor.execute("SELECT pg_export_snapshot()").fetchone()
                snapshot = str(row[0]) if row else ""
            unique = _one_row_per_key(cursor, feature_views, n)
            query, plans = _match_query(
                feature_views, feature_refs, key_columns, full_feature_names, unique
            )
            types = {"pos": pa.int64(), **{f"v{i}": pa.int64() for i in range(len(plans))}}
            with ThreadPoolExecutor(max_workers=max(1, workers - 1)) as pool:
                others = [
                    pool.submit(_match_in_snapshot, config, snapshot, part, query, types)
                    for part in parts[1:]
                ]
                matched = [_match(cursor, parts[0], query, types, len(key_columns))]
                matched += [future.result() for future in others]
            matches = pa.concat_tables(matched)
            if matches.num_rows != n:
                raise RuntimeError(f"point-in-time join returned {matches.num_rows} rows for {n}")
            picks: list[Pick] = []
            for i, (name, view, features, names) in enumerate(plans):
                source_table = _read_features(cursor, name, view, features)
                rest = (source_table, features, names)
                picks.append((_positions(source_table, matches.column(f"v{i}")), *rest))
    return JoinPlan(matches.column("pos"), picks)


def _positions(source_table: pa.Table, picked: pa.ChunkedArray) -> pa.Array:
    """Row ids picked by the join -> positions in ``source_table`` (null stays null)."""
    ids = source_table.column(ROW_ID).to_numpy()
    lookup = np.full(int(ids.max()) + 1 if len(ids) else 1, -1, dtype=np.int64)
    lookup[ids] = np.arange(len(ids), dtype=np.int64)
    chosen = picked.combine_chunks()
    positions = lookup[chosen.fill_null(0).to_numpy()]
    mask = chosen.is_null().to_numpy(zero_copy_only=False)
    if (positions[~mask] < 0).any():
        raise RuntimeError("the join picked a row the table read did not return")
    return pa.array(positions, mask=mask)


def _one_row_per_key(cursor: Any, feature_views: list[FeatureView], rows: int) -> frozenset[str]:
    """The views' tables that hold at most one row per entity (profiles, catalogue).

    Those are joined by one hash join instead of one index probe per entity row. Only
    tables much smaller than the entity rows are checked (the check reads the table).
    """
    unique = set()
    for view in feature_views:
        _, name = view_table(view)
        found = cursor.execute(
            "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", (name,)
        ).fetchone()
        if not found or found[0] > max(rows // 4, 1000):
            continue
        keys = ", ".join(check_identifier(c.name) for c in view.entity_columns)
        dupes = cursor.execute(
            f"SELECT 1 FROM {name} GROUP BY {keys} HAVING count(*) > 1 LIMIT 1"
        ).fetchone()
        if dupes is None:
            unique.add(name)
    return frozenset(unique)


_ROWS_PER_WORKER = 100_000
"""Below this many entity rows per connection, one connection does the whole join."""


def _match_query(
    feature_views: list[FeatureView],
    feature_refs: list[str],
    key_columns: list[str],
    full_feature_names: bool,
    unique: frozenset[str] = frozenset(),
) -> tuple[str, list[tuple[str, FeatureView, list[str], list[str]]]]:
    """The query matching entity rows (``fitml_entity_rows``) to row ids, and what to read.

    Per view: a ``LEFT JOIN LATERAL`` that is one index probe, the latest row of the entity
    at or before the entity row's time (within the view's TTL), ties broken by the created
    timestamp then insertion order. Tables in ``unique`` (at most one row per entity) are
    joined on the same conditions by a plain ``LEFT JOIN``.
    """
    selects, joins = ["e.pos"], []
    plans: list[tuple[str, FeatureView, list[str], list[str]]] = []
    for view in feature_views:
        prefix = view.projection.name_to_use()
        features = [r.split(":", 1)[1] for r in feature_refs if r.split(":", 1)[0] == prefix]
        if not features:
            continue
        source, name = view_table(view)
        source_keys = [check_identifier(c.name) for c in view.entity_columns]
        if not source_keys:
            raise ValueError(
                f"feature view {view.name!r} has no entity columns; declare its join "
                "key in its schema (or read the view from the registry)"
            )
        keys = [(view.projection.join_key_map or {}).get(k, k) for k in source_keys]
        alias = f"v{len(plans)}"
        t = alias if name in unique else "f"  # the feature table's alias in the conditions
        where = [
            *(
                f"{t}.{s} = e.k{key_columns.index(k)}"
                for s, k in zip(source_keys, keys, strict=True)
            ),
            f"{t}.{TS_NS} <= e.ts",
        ]
        if view.ttl and view.ttl > timedelta(0):
            where.append(f"{t}.{TS_NS} >= e.ts - {int(view.ttl.total_seconds() * 1e9)}")
        if name in unique:
            joins.append(f"LEFT JOIN {name} {alias} ON {' AND '.join(where)}")
        else:
            order = [*(f"f.{s}" for s in source_keys), f"f.{TS_NS} DESC"]
            if source.created_timestamp_column:
                created = check_identifier(source.created_timestamp_column)
                order.append(f"f.{created} DESC NULLS LAST")
            order.append(f"f.{ROW_ID} DESC")
            joins.append(
                f"LEFT JOIN LATERAL (SELECT f.{ROW_ID} FROM {name} f WHERE {' AND '.join(where)} "
                f"ORDER BY {', '.join(order)} LIMIT 1) {alias} ON true"
            )
        selects.append(f"{alias}.{ROW_ID} AS {alias}")
        names = [f"{prefix}__{f}" if full_feature_names else f for f in features]
        plans.append((name, view, features, names))
    query = f"SELECT {', '.join(selects)} FROM fitml_entity_rows e {' '.join(joins)}"
    return query, plans


def _match(
    cursor: Any, part: pa.Table, query: str, types: dict[str, pa.DataType], keys: int
) -> pa.Table:
    """Copy ``part`` into this transaction's ``fitml_entity_rows`` and run ``query`` on it."""
    key_defs = "".join(f"k{j} text, " for j in range(keys))
    cursor.execute(
        f"CREATE TEMP TABLE fitml_entity_rows ({key_defs}ts bigint, pos bigint) ON COMMIT DROP"
    )
    _copy_in(cursor, "fitml_entity_rows", part)
    cursor.execute("ANALYZE fitml_entity_rows")
    return _fetch_csv(cursor, query, types)


def _match_in_snapshot(
    config: Any, snapshot: str, part: pa.Table, query: str, types: dict[str, pa.DataType]
) -> pa.Table:
    """:func:`_match` on a connection of its own, in the exported ``snapshot``."""
    import psycopg
    from feast.infra.utils.postgres.connection_utils import _get_conn

    with _get_conn(config) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction(), conn.cursor() as cursor:
            cursor.execute(f"SET TRANSACTION SNAPSHOT {_literal(snapshot)}")
            keys = sum(1 for c in part.column_names if c.startswith("k"))
            return _match(cursor, part, query, types, keys)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
