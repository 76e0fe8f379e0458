"""The PostgreSQL offline store's pieces that need no server: config, names, sources."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from feast import FileSource
from feast.data_source import DataSource
from pydantic import ValidationError

from features.definitions import PUSHED_VIEWS, VIEW_FIELDS, build_definitions
from features.offline_postgres import (
    AsofPostgreSQLOfflineStoreConfig,
    FeatureTableSource,
    OfflineTableError,
    _match_query,
    _pg_type,
    _with_ts_ns,
    check_identifier,
)

STORE = "features.offline_postgres.AsofPostgreSQLOfflineStore"


def test_url_fills_the_connection_settings() -> None:
    config = AsofPostgreSQLOfflineStoreConfig(
        type=STORE, url="postgresql://fit%40ml:s3cr%2Ft@db.internal:6543/features?sslmode=require"
    )
    assert (config.host, config.port, config.database) == ("db.internal", 6543, "features")
    assert (config.user, config.password, config.sslmode) == ("fit@ml", "s3cr/t", "require")


def test_url_defaults_are_the_local_server() -> None:
    config = AsofPostgreSQLOfflineStoreConfig(type=STORE, url="postgresql://127.0.0.1/test")
    assert (config.port, config.user, config.password, config.sslmode) == (
        5432,
        "postgres",
        "",
        "prefer",
    )
    assert config.workers == 2


def test_a_bad_url_names_the_value_and_the_variable() -> None:
    with pytest.raises(ValidationError, match="FITML_FEAST_OFFLINE_URL") as caught:
        AsofPostgreSQLOfflineStoreConfig(type=STORE, url="redis://127.0.0.1:6379")
    assert "redis://127.0.0.1:6379" in str(caught.value)


@pytest.mark.parametrize("name", ["fitml_user_history", "_p1"])
def test_plain_identifiers_pass(name: str) -> None:
    assert check_identifier(name) == name


@pytest.mark.parametrize("name", ["Fitml", "1table", "a-b", "x; DROP TABLE y", "a" * 64, ""])
def test_other_table_names_are_refused_by_name(name: str) -> None:
    with pytest.raises(OfflineTableError, match="lower-case letters"):
        check_identifier(name)


def test_a_column_postgres_would_fold_is_refused_by_name() -> None:
    with pytest.raises(OfflineTableError, match="column name 'userId'"):
        check_identifier("userId", "column name")


def test_arrow_types_map_to_postgres_types() -> None:
    assert _pg_type(pa.timestamp("ns", tz="UTC")) == "timestamptz"
    assert _pg_type(pa.list_(pa.string())) == "text[]"
    assert _pg_type(pa.list_(pa.int64())) == "bigint[]"
    assert _pg_type(pa.float64()) == "double precision"
    with pytest.raises(OfflineTableError, match="struct"):
        _pg_type(pa.struct([("a", pa.int64())]))


def test_event_time_is_kept_to_the_nanosecond() -> None:
    ts = pa.array([1_700_000_000_123_456_789], pa.timestamp("ns", tz="UTC"))
    table = _with_ts_ns(pa.table({"event_timestamp": ts}), "event_timestamp")
    assert table.column("fitml_ts_ns").to_pylist() == [1_700_000_000_123_456_789]
    with pytest.raises(OfflineTableError, match="'ts'"):
        _with_ts_ns(pa.table({"event_timestamp": ts}), "ts")


def test_definitions_take_exactly_one_location(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        build_definitions()
    with pytest.raises(ValueError, match="exactly one"):
        build_definitions(tmp_path, table_prefix="fitml")


def test_prod_definitions_read_project_tables_with_the_same_views(tmp_path: Path) -> None:
    local = build_definitions(tmp_path)
    prod = build_definitions(table_prefix="fitml")
    assert [v.name for v in prod.views] == [v.name for v in local.views]
    assert [v.features for v in prod.views] == [v.features for v in local.views]
    assert [v.ttl for v in prod.views] == [v.ttl for v in local.views]
    batch = [s for s in prod.sources if isinstance(s, FeatureTableSource)]
    assert {s.get_table_query_string() for s in batch} == {f"fitml_{v}" for v in VIEW_FIELDS}
    assert not [s for s in prod.sources if isinstance(s, FileSource)]


def test_feature_table_source_survives_the_registry() -> None:
    source = build_definitions(table_prefix="fitml").sources[0]
    again = DataSource.from_proto(source.to_proto())
    assert isinstance(again, FeatureTableSource)
    assert again == source
    assert again.get_table_query_string() == source.get_table_query_string()


def test_match_query_probes_each_view_once_within_its_ttl() -> None:
    views = list(build_definitions(table_prefix="fitml").views)
    refs = [f"{v.name}:{f.name}" for v in views for f in v.features]
    query, plans = _match_query(views, refs, ["product_id", "user_id"], False)
    assert query.count("LEFT JOIN LATERAL") == len(VIEW_FIELDS) == len(plans)
    assert query.count("LIMIT 1") == len(VIEW_FIELDS)
    assert query.count("created_timestamp DESC NULLS LAST") == len(PUSHED_VIEWS)
    # TTLs: two years of history, one year of product stats; profiles and charts never age.
    assert query.count("f.fitml_ts_ns >= e.ts - ") == 2
    assert "f.user_id = e.k1" in query and "f.product_id = e.k0" in query


def test_tables_with_one_row_per_entity_are_hash_joined_on_the_same_conditions() -> None:
    views = list(build_definitions(table_prefix="fitml").views)
    refs = [f"{v.name}:{f.name}" for v in views for f in v.features]
    unique = frozenset({"fitml_user_profile", "fitml_product_attrs"})
    query, _ = _match_query(views, refs, ["product_id", "user_id"], False, unique)
    assert query.count("LEFT JOIN LATERAL") == 2
    assert (
        "LEFT JOIN fitml_user_profile v0 ON v0.user_id = e.k1 AND v0.fitml_ts_ns <= e.ts" in query
    )
    assert "LEFT JOIN fitml_product_attrs v2 ON v2.product_id = e.k0" in query
