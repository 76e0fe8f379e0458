from __future__ import annotations

from datetime import UTC, datetime, timedelta

from features.definitions import MAX_AGE, USER_HISTORY_FIELDS
from features.freshness import enforce_freshness, stale_features, timestamp_key

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _row(age_days: float) -> dict[str, object]:
    seconds = (NOW - timedelta(days=age_days)).timestamp()
    return {
        "hist_n": 3.0,
        "hist_share_small": 0.5,
        "pstat_n": 10.0,
        "user_height_cm": 170.0,
        **{timestamp_key(v): seconds for v in MAX_AGE},
    }


def test_fresh_row_passes_unchanged() -> None:
    row = _row(1)
    out, reasons = enforce_freshness(row, NOW)
    assert reasons == [] and out == row


def test_stale_history_is_dropped_with_a_reason() -> None:
    max_age = MAX_AGE["user_history"]
    assert max_age is not None
    out, reasons = enforce_freshness(_row(max_age.days + 1), NOW)
    assert any("fit history" in r for r in reasons)
    assert all(out[name] is None for name, _ in USER_HISTORY_FIELDS)
    assert out["user_height_cm"] == 170.0  # profiles never go stale


def test_missing_timestamps_are_not_stale() -> None:
    assert stale_features({"hist_n": None}, NOW) == []


def test_event_times_mapping_as_the_serving_reader_gives_them() -> None:
    old = NOW - timedelta(days=800)
    times = {"user_history": old, "product_stats": None, "user_profile": old}
    assert stale_features({"hist_n": 1.0}, NOW, event_times=times) == [
        "fit history older than 730 days: treated as a new user"
    ]
