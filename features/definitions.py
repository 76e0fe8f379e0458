"""The Feast definitions: entities, sources, feature views and the feature service.

This is the one place every model feature is named. Training reads the feature service
with ``get_historical_features`` and serving with ``get_online_features``, by the same name;
the request-time features on top of it come from :mod:`features.transforms`.

Sources are the tables written by :mod:`features.aggregates`: parquet files under
``<workdir>/offline/features/`` (``local``) or PostgreSQL tables named after the Feast project
(``prod``). Where they live depends on the work directory and the profile, so the definitions
are built by a function rather than at import time; the views, fields and the service are the
same in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.data_source import DataSource
from feast.types import Array, Float64, Int64, String

from features.transforms import PER_SIZE_FEATURES, REQUEST_FEATURES, STRING_FEATURES

FEATURE_SERVICE: Final = "fitml_v1"
"""The feature service both models of this version are trained and served with."""

USER_PROFILE_FIELDS: Final = (
    ("user_sex", String),
    ("user_fit_preference", String),
    ("user_height_cm", Float64),
    ("user_weight_kg", Float64),
    ("user_chest_cm", Float64),
    ("user_waist_cm", Float64),
    ("user_hips_cm", Float64),
    ("user_inseam_cm", Float64),
    ("user_underbust_cm", Float64),
    ("user_cup_cm", Float64),
    ("user_age", Float64),
    ("user_body_type", String),
)
USER_HISTORY_FIELDS: Final = (
    ("hist_n", Float64),
    ("hist_share_small", Float64),
    ("hist_share_large", Float64),
    ("hist_mean_offset", Float64),
    ("hist_last_offset", Float64),
    ("hist_usual_alpha", Float64),
    ("hist_usual_numeric", Float64),
    ("hist_usual_waist", Float64),
    ("hist_usual_rtr", Float64),
    ("hist_usual_modcloth", Float64),
    ("hist_item_offset", Float64),
)
PRODUCT_ATTR_FIELDS: Final = (
    ("product_brand", String),
    ("product_category", String),
    ("product_fit_type", String),
    ("product_stretch", Float64),
    ("product_size_system", String),
    ("chart_dimension", String),
    ("chart_sizes", Array(String)),
    ("chart_index", Array(Int64)),
    ("chart_low", Array(Float64)),
    ("chart_high", Array(Float64)),
)
PRODUCT_STATS_FIELDS: Final = (
    ("pstat_n", Float64),
    ("pstat_share_small", Float64),
    ("pstat_share_large", Float64),
    ("pstat_mean_offset", Float64),
    ("pstat_size_mean", Float64),
    ("pstat_implied_mean", Float64),
    ("pstat_user_offset", Float64),
    ("pstat_body_weight", Float64),
    ("pstat_body_size", Float64),
    ("pstat_body_slope", Float64),
)

VIEW_FIELDS: Final = {
    "user_profile": USER_PROFILE_FIELDS,
    "user_history": USER_HISTORY_FIELDS,
    "product_attrs": PRODUCT_ATTR_FIELDS,
    "product_stats": PRODUCT_STATS_FIELDS,
}
VIEW_ENTITY: Final = {
    "user_profile": "user",
    "user_history": "user",
    "product_attrs": "product",
    "product_stats": "product",
}
FEATURE_NAMES: Final[tuple[str, ...]] = tuple(
    name for fields in VIEW_FIELDS.values() for name, _ in fields
)
"""Every feature the feature service returns, in view order."""

PUSHED_VIEWS: Final[tuple[str, ...]] = ("user_history", "product_stats")
"""Views fed by fit feedback: each has a push source ``<view>_push`` besides its batch source,
so feedback is online within a second (:func:`features.feedback.push_feedback`)."""

CREATED_TIMESTAMP: Final = "created_timestamp"
"""Column of the pushed views' sources that breaks ties between rows of one entity and instant
(a late or repeated push recomputes a row): the latest created wins, offline and online."""

MAX_AGE: Final[dict[str, timedelta | None]] = {
    "user_profile": None,
    "user_history": timedelta(days=730),
    "product_attrs": None,
    "product_stats": timedelta(days=365),
}
"""How old a view's value may be before it is stale (None: never), i.e. its Feast ``ttl``.

- ``user_profile``: never. A profile is what the shopper stated; it holds until they update
  it, and a request's own measurements override it anyway.
- ``user_history``: two years. Bodies and tastes change; fit feedback older than that says
  little about today's size, so the shopper is treated as new.
- ``product_attrs``: never. Catalogue data and the size chart do not age.
- ``product_stats``: one year. Feedback on a product nobody has tried for a year may describe
  an earlier production run; the product is treated as new.

Feast's offline join enforces ``ttl`` (a training row sees a value only if it was fresh at
the event), its online read does not: :mod:`features.freshness` enforces the same ages on
the serving path, so training and serving agree.
"""

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
product = Entity(name="product", join_keys=["product_id"], value_type=ValueType.STRING)


@dataclass(frozen=True)
class Definitions:
    """The Feast objects of fitml, ready for ``FeatureStore.apply``."""

    entities: tuple[Entity, ...]
    sources: tuple[DataSource, ...]
    views: tuple[FeatureView, ...]
    services: tuple[FeatureService, ...]

    def objects(self) -> list[object]:
        """Every object, in the order ``apply`` takes them."""
        return [*self.entities, *self.sources, *self.views, *self.services]


def build_definitions(
    source_dir: Path | None = None, *, table_prefix: str | None = None
) -> Definitions:
    """Build the definitions, reading either parquet files or PostgreSQL tables.

    Args:
        source_dir: the views' sources are ``<source_dir>/<view>.parquet`` (``local``).
        table_prefix: the views' sources are the PostgreSQL tables ``<prefix>_<view>``
            (``prod``; see :func:`source_table`).

    Raises:
        ValueError: neither or both given.
    """
    if (source_dir is None) == (table_prefix is None):
        raise ValueError("build_definitions takes exactly one of source_dir and table_prefix")
    entities = {"user": user, "product": product}
    sources: list[DataSource] = []
    views: list[FeatureView | Any] = []
    for name, fields in VIEW_FIELDS.items():
        pushed = name in PUSHED_VIEWS
        created = CREATED_TIMESTAMP if pushed else ""
        batch: DataSource
        if table_prefix is not None:
            from features.offline_postgres import FeatureTableSource

            batch = FeatureTableSource(
                name=f"{name}_source",
                table=source_table(table_prefix, name),
                timestamp_field="event_timestamp",
                created_timestamp_column=created,
            )
        else:
            assert source_dir is not None
            batch = FileSource(
                name=f"{name}_source",
                path=str(Path(source_dir).resolve() / f"{name}.parquet"),
                timestamp_field="event_timestamp",
                created_timestamp_column=created,
            )
        sources.append(batch)
        source: DataSource = batch
        if pushed:
            source = PushSource(name=push_source_name(name), batch_source=batch)
            sources.append(source)
        views.append(
            FeatureView(
                name=name,
                entities=[entities[VIEW_ENTITY[name]]],
                schema=[
                    Field(name=f"{VIEW_ENTITY[name]}_id", dtype=String),
                    *(Field(name=field, dtype=dtype) for field, dtype in fields),
                ],
                source=source,
                online=True,
                ttl=MAX_AGE[name] or timedelta(0),
            )
        )
    service = FeatureService(name=FEATURE_SERVICE, features=views)
    return Definitions(
        entities=(user, product),
        sources=tuple(sources),
        views=tuple(views),
        services=(service,),
    )


def source_table(prefix: str, view: str) -> str:
    """The PostgreSQL table of a view's batch source: ``<prefix>_<view>``.

    The prefix is the Feast project, so projects sharing a database keep apart.
    """
    return f"{prefix}_{view}"


def push_source_name(view: str) -> str:
    """The push source of a feedback view (see :data:`PUSHED_VIEWS`)."""
    return f"{view}_push"


CATEGORICAL_FEATURES: Final[tuple[str, ...]] = STRING_FEATURES
"""Features the models treat as categories."""

_CHART_ARRAYS: Final = ("chart_sizes", "chart_index", "chart_low", "chart_high")

FIT_MODEL_FEATURES: Final[tuple[str, ...]] = (
    *(name for name in FEATURE_NAMES if name not in _CHART_ARRAYS),
    *REQUEST_FEATURES,
)
"""Inputs of the fit model: the feature service (charts enter through the request-time
features) plus the request-time features of the candidate size."""

SIZE_MODEL_FEATURES: Final[tuple[str, ...]] = tuple(
    name for name in FIT_MODEL_FEATURES if name not in PER_SIZE_FEATURES
)
"""Inputs of the size model: everything but what depends on a candidate size."""
