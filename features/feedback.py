"""Fresh feedback: fit feedback from the session service, online within a second.

:func:`push_feedback` appends new try-on events to the event log, recomputes the fit
history of the shoppers and the fit stats of the products they touch with the *same*
functions the batch job uses (:mod:`features.aggregates`), and pushes the rows through the
views' push sources: online (what serving reads next) and offline (what the next training
set joins). Recomputing from the log of the touched entities, not updating online values,
keeps pushed rows bit-for-bit equal to what ``fitml features apply`` would compute.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd

from features.aggregates import (
    event_offsets,
    product_attrs_table,
    product_stats_table,
    user_history_table,
    user_profile_table,
    utc_ns,
)
from features.definitions import CREATED_TIMESTAMP, push_source_name
from features.store import feedback_dir, open_store, read_offline
from ml_pipeline.settings import Settings

FEEDBACK_COLUMNS: Final = ("event_id", "user_id", "product_id", "outcome", "event_timestamp")
OUTCOMES: Final = ("too_small", "fit", "too_large")


class FeedbackError(ValueError):
    """Feedback events that cannot be pushed (missing columns, unknown sizes or outcomes)."""


@dataclass(frozen=True)
class PushResult:
    """What one push did."""

    new_events: int
    duplicates: int
    user_rows: int
    product_rows: int
    online_s: float
    offline_s: float


def _validate(events: pd.DataFrame, size_charts: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in FEEDBACK_COLUMNS if c not in events.columns]
    if "size_index" not in events.columns and "size" not in events.columns:
        missing.append("size or size_index")
    if missing:
        raise FeedbackError(f"feedback events lack column(s) {missing}; send every one of them")
    bad = sorted(set(events["outcome"]) - set(OUTCOMES))
    if bad:
        raise FeedbackError(f"unknown outcome(s) {bad}; use one of {', '.join(OUTCOMES)}")
    out = events.copy()
    out["event_timestamp"] = utc_ns(out["event_timestamp"])
    for column in ("event_id", "user_id", "product_id"):
        out[column] = out[column].astype(str)
    if "size_index" not in out.columns or out["size_index"].isna().any():
        chart = size_charts[["product_id", "size", "size_index"]].astype(
            {"product_id": str, "size": str}
        )
        looked_up = (
            out[["product_id", "size"]]
            .astype(str)
            .merge(chart, on=["product_id", "size"], how="left")
        )
        if looked_up["size_index"].isna().any():
            unknown = looked_up.loc[looked_up["size_index"].isna(), ["product_id", "size"]]
            raise FeedbackError(
                f"size(s) not on the product's size chart: {unknown.head(3).to_dict('records')}"
            )
        out["size_index"] = looked_up["size_index"].to_numpy()
    out["size_index"] = out["size_index"].astype(np.int64)
    if out["event_id"].duplicated().any():
        out = out.drop_duplicates("event_id", keep="first")
    return out


def _read_log(
    settings: Settings, users: list[str], products: list[str], ids: list[str]
) -> pd.DataFrame:
    """Logged events of these shoppers or products or with these ids, plus pushed feedback.

    Reads only those rows of the ingested events (a parquet filter).
    """
    filters = [
        [("user_id", "in", users)],
        [("product_id", "in", products)],
        [("event_id", "in", ids)],
    ]
    path = settings.offline_dir / "events.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no ingested events at {path}; run `fitml ingest` first")
    frames = [pd.read_parquet(path, filters=filters)]
    frames += [pd.read_parquet(p) for p in sorted(feedback_dir(settings).glob("*.parquet"))]
    columns = list(frames[0].columns)
    log = pd.concat([f.reindex(columns=columns) for f in frames], ignore_index=True)
    log["event_timestamp"] = utc_ns(log["event_timestamp"])
    return log.drop_duplicates("event_id", keep="first").reset_index(drop=True)


def _touched_log(settings: Settings, incoming: pd.DataFrame) -> pd.DataFrame:
    """The logged events the touched shoppers' and products' features are computed from.

    First the events of the incoming events' shoppers and products (or with their ids);
    then, because a shopper's latent size is measured against each product's typical size
    and a product's against each shopper's usual size, every event of the products and
    shoppers those events name.
    """
    ids = sorted(set(incoming["event_id"]))
    first = _read_log(
        settings, sorted(set(incoming["user_id"])), sorted(set(incoming["product_id"])), ids
    )
    users = set(first["user_id"].astype(str)) | set(incoming["user_id"])
    products = set(first["product_id"].astype(str)) | set(incoming["product_id"])
    return _read_log(settings, sorted(users), sorted(products), ids)


def push_feedback(
    store_or_settings: Any,
    events: pd.DataFrame,
    *,
    settings: Settings | None = None,
    offline: bool = True,
) -> PushResult:
    """Push new fit feedback: event log, online store, offline store.

    Args:
        store_or_settings: a ``feast.FeatureStore`` opened with :func:`features.store.open_store`
            (then pass ``settings`` too), or the run's :class:`Settings`.
        events: one row per try-on: ``event_id``, ``user_id``, ``product_id``, ``size`` or
            ``size_index``, ``outcome`` and ``event_timestamp``. Events whose ``event_id`` is
            already logged are ignored (the id is the idempotency key).
        settings: the run's settings, when ``store_or_settings`` is a store.
        offline: also append the rows to the offline store (default). Online rows are
            written first either way, so they are visible before the offline write ends.

    Returns:
        Counts and the seconds the online and offline writes took.

    Raises:
        FeedbackError: a column is missing, an outcome or size is unknown.
    """
    from feast.data_source import PushMode

    if isinstance(store_or_settings, Settings):
        settings = store_or_settings
        store = open_store(settings)
    else:
        store = store_or_settings
        if settings is None:
            raise TypeError("push_feedback(store, events) needs settings=: the run's Settings")
    size_charts = read_offline(settings, "size_charts")
    incoming = _validate(events, size_charts)
    log = _touched_log(settings, incoming)
    known = incoming["event_id"].isin(log["event_id"])
    new = incoming.loc[~known]
    if new.empty:
        return PushResult(0, int(known.sum()), 0, 0, 0.0, 0.0)
    directory = feedback_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    new.reindex(columns=list(log.columns)).to_parquet(
        directory / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet", index=False
    )
    users = set(new["user_id"])
    products = set(new["product_id"])
    log = pd.concat([log, new.reindex(columns=log.columns)], ignore_index=True)
    touched = log  # every event the touched entities' features depend on (_touched_log)
    # Only the touched shoppers and products: the same functions, on fewer rows.
    users_table = read_offline(settings, "users")
    products_table = read_offline(settings, "products")
    in_users = users_table["user_id"].astype(str).isin(set(touched["user_id"]))
    in_products = products_table["product_id"].astype(str).isin(set(touched["product_id"]))
    profile = user_profile_table(users_table[in_users])
    attrs = product_attrs_table(
        products_table[in_products],
        size_charts[size_charts["product_id"].astype(str).isin(set(touched["product_id"]))],
    )
    offsets = event_offsets(touched, profile, attrs)

    # Rows from each touched entity's earliest new event on: usually just the new rows; a
    # late event also rewrites the entity's later rows (the newest created timestamp wins).
    now = pd.Timestamp.now(tz="UTC")
    first_user = new.groupby("user_id")["event_timestamp"].min()
    first_product = new.groupby("product_id")["event_timestamp"].min()
    history = user_history_table(offsets[offsets["user_id"].isin(users)])
    history = history[history["event_timestamp"] > history["user_id"].map(first_user)]
    stats = product_stats_table(offsets[offsets["product_id"].isin(products)])
    stats = stats[stats["event_timestamp"] > stats["product_id"].map(first_product)]
    history = history.assign(**{CREATED_TIMESTAMP: now})
    stats = stats.assign(**{CREATED_TIMESTAMP: now})

    started = time.perf_counter()
    for view, rows, key in (
        ("user_history", history, "user_id"),
        ("product_stats", stats, "product_id"),
    ):
        latest = rows.sort_values("event_timestamp", kind="stable").groupby(key).tail(1)
        store.push(push_source_name(view), latest.reset_index(drop=True), to=PushMode.ONLINE)
    online_s = time.perf_counter() - started
    started = time.perf_counter()
    if offline:
        for view, rows in (("user_history", history), ("product_stats", stats)):
            store.push(push_source_name(view), rows.reset_index(drop=True), to=PushMode.OFFLINE)
    offline_s = time.perf_counter() - started
    return PushResult(
        new_events=len(new),
        duplicates=int(known.sum()),
        user_rows=len(history),
        product_rows=len(stats),
        online_s=online_s,
        offline_s=offline_s,
    )
