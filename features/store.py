"""The feature store of a work directory: build, apply, materialise, read.

These are the plain functions behind ``fitml features apply|materialize|training-set``;
serving uses :func:`open_store` and :func:`online_features`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from features.aggregates import build_feature_tables, utc_ns
from features.definitions import FEATURE_SERVICE, build_definitions
from features.transforms import request_features
from ml_pipeline.settings import Settings, expand_env

log = logging.getLogger(__name__)

LABEL_COLUMNS = ("event_id", "user_id", "product_id", "event_timestamp", "size_index", "outcome")


class TrainingSetError(RuntimeError):
    """The point-in-time join did not return exactly one row per event."""


def feature_source_dir(settings: Settings) -> Path:
    """Where the feature-view sources of this work directory live."""
    return settings.offline_dir / "features"


def open_store(settings: Settings) -> Any:
    """Open the Feast feature store of ``settings`` (config from the profile's YAML).

    Returns:
        A ``feast.FeatureStore``.
    """
    from feast import FeatureStore, RepoConfig

    raw = yaml.safe_load(settings.feast.config_file.read_text())
    data = expand_env(raw, {"FITML_WORKDIR": str(settings.workdir), **_environ()})
    data["project"] = settings.feast.project
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    config = RepoConfig(repo_path=settings.feast_dir, **data)
    return FeatureStore(config=config)


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def read_offline(settings: Settings, table: str) -> pd.DataFrame:
    """Read an ingested table (``users``, ``products``, ``size_charts``, ``events``).

    Raises:
        FileNotFoundError: naming the table and telling to run ``fitml ingest`` first.
    """
    path = settings.offline_dir / f"{table}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no ingested {table} at {path}; run `fitml ingest` first")
    return pd.read_parquet(path)


@dataclass(frozen=True)
class ApplyResult:
    """What ``apply`` registered and where the sources are."""

    views: tuple[str, ...]
    service: str
    source_dir: Path
    seconds: float


def apply(settings: Settings) -> ApplyResult:
    """Compute the feature tables from the ingested data and register the definitions."""
    started = time.perf_counter()
    tables = build_feature_tables(
        read_offline(settings, "users"),
        read_offline(settings, "products"),
        read_offline(settings, "size_charts"),
        read_offline(settings, "events"),
    )
    source_dir = feature_source_dir(settings)
    tables.write(source_dir)
    definitions = build_definitions(source_dir)
    store = open_store(settings)
    store.apply(definitions.objects())
    return ApplyResult(
        views=tuple(v.name for v in definitions.views),
        service=FEATURE_SERVICE,
        source_dir=source_dir,
        seconds=time.perf_counter() - started,
    )


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

    Args:
        settings: the run's settings.
        events: the events to build rows for (default: every ingested event).

    Raises:
        TrainingSetError: when the join lost or duplicated rows.
    """
    if events is None:
        events = read_offline(settings, "events")
    entity_df = events[list(LABEL_COLUMNS)].copy()
    entity_df["event_timestamp"] = utc_ns(entity_df["event_timestamp"])
    store = open_store(settings)
    service = store.get_feature_service(FEATURE_SERVICE)
    joined = store.get_historical_features(entity_df=entity_df, features=service).to_df()
    if len(joined) != len(entity_df) or joined["event_id"].duplicated().any():
        raise TrainingSetError(
            f"point-in-time join returned {len(joined)} rows "
            f"({joined['event_id'].nunique()} distinct events) for {len(entity_df)} events"
        )
    joined = joined.sort_values(["event_timestamp", "event_id"], kind="stable")
    return request_features(joined.reset_index(drop=True))


def online_features(store: Any, user_id: str | None, product_id: str) -> dict[str, Any]:
    """Read the feature service online for one (user, product): feature name -> value."""
    row = {"user_id": user_id or "", "product_id": product_id}
    response = store.get_online_features(
        features=store.get_feature_service(FEATURE_SERVICE), entity_rows=[row]
    )
    return {key: values[0] for key, values in response.to_dict().items()}


def default_window_end(events: pd.DataFrame) -> datetime:
    """A materialisation end just after the last event."""
    last = pd.to_datetime(events["event_timestamp"], utc=True).max()
    return (last + timedelta(seconds=1)).to_pydatetime()
