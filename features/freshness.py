"""Freshness on the serving path: Feast enforces a view's ``ttl`` in offline joins only.

The ages are :data:`features.definitions.MAX_AGE` (the views' ``ttl``). A training row sees a
view's value only if it was at most that old at the event (the offline join applies the
ttl); serving must see the same, so a value older than that *now* is dropped here and the
recommendation falls back as if it were missing, with a reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from features.definitions import MAX_AGE, VIEW_FIELDS

TIMESTAMP_PREFIX: Final = "event_ts__"
"""``online_features`` adds ``event_ts__<view>``: the view's value's event time (epoch s)."""

REASONS: Final[dict[str, str]] = {
    "user_history": "fit history older than {days} days: treated as a new user",
    "product_stats": "product fit feedback older than {days} days: treated as a new product",
    "user_profile": "profile older than {days} days: stored measurements not used",
    "product_attrs": "product attributes older than {days} days: not used",
}


def timestamp_key(view: str) -> str:
    """The key of ``view``'s event time in an online feature row."""
    return f"{TIMESTAMP_PREFIX}{view}"


EventTimes = Mapping[str, "datetime | float | int | None"]
"""View name -> event time of the entity's online value (datetime or epoch seconds)."""


def _seconds(value: datetime | float | int | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    return float(value) or None


def stale_views(
    row: Mapping[str, Any], now: datetime | None = None, event_times: EventTimes | None = None
) -> list[str]:
    """The views whose value is older than its :data:`MAX_AGE` at ``now``.

    Args:
        row: an online feature row; its ``event_ts__<view>`` keys give the event times
            unless ``event_times`` does.
        now: the serving time (default: now, UTC).
        event_times: view -> event time (e.g. ``serving.online_features.OnlineRow
            .event_times``).
    """
    now = now or datetime.now(UTC)
    stale = []
    for view, max_age in MAX_AGE.items():
        raw = event_times.get(view) if event_times is not None else row.get(timestamp_key(view))
        seconds = _seconds(raw)
        if max_age is None or seconds is None:
            continue
        if now.timestamp() - seconds > max_age.total_seconds():
            stale.append(view)
    return stale


def stale_features(
    row: Mapping[str, Any], now: datetime | None = None, event_times: EventTimes | None = None
) -> list[str]:
    """Fallback reasons for the stale views of an online feature row (empty when fresh).

    Args:
        row: what :func:`features.store.online_features` returned (with ``event_times=True``).
        now: the serving time (default: now, UTC).
        event_times: view -> event time, when ``row`` does not carry them.
    """
    return [
        REASONS[view].format(days=MAX_AGE[view].days)  # type: ignore[union-attr]
        for view in stale_views(row, now, event_times)
    ]


def enforce_freshness(
    row: Mapping[str, Any], now: datetime | None = None, event_times: EventTimes | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Drop stale views from an online feature row, as the training join would.

    Returns:
        A copy of ``row`` with each stale view's features set to None, and the fallback
        reasons (:func:`stale_features`).
    """
    out = dict(row)
    views = stale_views(row, now, event_times)
    for view in views:
        for name, _ in VIEW_FIELDS[view]:
            out[name] = None
    return out, [REASONS[v].format(days=MAX_AGE[v].days) for v in views]  # type: ignore[union-attr]
