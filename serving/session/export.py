"""Merge the session service's feedback into the offline store, so training sees it.

:func:`export_feedback` reads the feedback of known shoppers from the event store and ingests
it through :mod:`ml_pipeline.ingest` (the event contract, referential checks against the
stored users, products and charts, quarantine for bad rows, idempotent merge on
``event_id``) into ``<workdir>/offline/events.parquet``. The next ``fitml pipeline run`` (or
``fitml features apply`` + ``fitml train``) trains on it. Guest feedback has no shopper to
attribute it to and is not exported.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd

from ml_pipeline.ingest import IngestSummary, ingest_synthetic
from ml_pipeline.schema import PRODUCT_COLUMNS, SIZE_CHART_COLUMNS, USER_COLUMNS
from ml_pipeline.settings import Settings
from serving.session.store import EventStore, events_frame


def _empty(columns: tuple[str, ...]) -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    for column in columns:
        if column == "event_timestamp":
            frame[column] = pd.Series(dtype="datetime64[ns, UTC]")
        elif column.endswith(("_cm", "_kg")) or column in ("stretch",):
            frame[column] = pd.Series(dtype=float)
        elif column == "size_index":
            frame[column] = pd.Series(dtype="int64")
    return frame


def feedback_events(store: EventStore) -> pd.DataFrame:
    """Stored feedback of known shoppers, with exactly the event contract's columns."""
    return events_frame(e for e in store.all_events() if e.user_id)


def export_feedback(settings: Settings, store: EventStore) -> IngestSummary:
    """Ingest the stored feedback into ``<workdir>/offline/events.parquet`` (idempotent).

    Returns:
        The ingestion summary: ``accepted["events"]`` rows merged, ``quarantined["events"]``
        rejected (with reasons, under ``<workdir>/quarantine/``).
    """
    events = feedback_events(store)
    batch = Path(tempfile.mkdtemp(prefix="feedback-", dir=settings.workdir))
    try:
        events.to_parquet(batch / "events.parquet", index=False)
        _empty(USER_COLUMNS).to_parquet(batch / "users.parquet", index=False)
        _empty(PRODUCT_COLUMNS).to_parquet(batch / "products.parquet", index=False)
        _empty(SIZE_CHART_COLUMNS).to_parquet(batch / "size_charts.parquet", index=False)
        return ingest_synthetic(batch, settings.workdir)
    finally:
        shutil.rmtree(batch, ignore_errors=True)
