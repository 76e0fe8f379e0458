"""The time series of drift metrics: one table, appended by every scheduled drift check.

Ad-hoc ``fitml drift`` runs are not appended (they would mix unrelated comparisons into the
chart); scheduled checks (``fitml drift --scheduled``, :mod:`evaluation.monitoring`) are.

Each verdict becomes rows of a long table (``drift_history``): one per monitored column
(``kind = "drift"``: method, threshold, value, drifted), one per outcome share of the current
window (``kind = "outcome_share"``) and, when feedback was joined, the fit model's quality
(``kind = "quality"``). Rows carry the time bounds of both windows, so drift can be charted
against the current window's end.

Where it lives: in the local profile a parquet file in the offline store
(``<workdir>/offline/drift_history.parquet``); in the prod profile a PostgreSQL table, at
``FITML_DRIFT_HISTORY_URL`` or else the MLflow tracking database when that is PostgreSQL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pandas as pd

from evaluation.drift import (
    MONITORED,
    OUTCOME_LABELS,
    TIME_COLUMN,
    ColumnSpec,
    DriftVerdict,
    detect_drift,
)

if TYPE_CHECKING:
    from ml_pipeline.settings import Settings

TABLE: Final = "drift_history"
HISTORY_COLUMNS: Final[tuple[str, ...]] = (
    "computed_at",
    "reference_start",
    "reference_end",
    "current_start",
    "current_end",
    "n_reference",
    "n_current",
    "drift_detected",
    "kind",
    "column",
    "role",
    "method",
    "threshold",
    "value",
    "drifted",
)
_TIME_COLUMNS: Final = (
    "computed_at",
    "reference_start",
    "reference_end",
    "current_start",
    "current_end",
)


def history_rows(verdict: DriftVerdict) -> pd.DataFrame:
    """The rows one verdict adds to the history table."""
    common = {
        "computed_at": verdict.computed_at,
        "reference_start": verdict.reference_window.get("start"),
        "reference_end": verdict.reference_window.get("end"),
        "current_start": verdict.current_window.get("start"),
        "current_end": verdict.current_window.get("end"),
        "n_reference": verdict.n_reference,
        "n_current": verdict.n_current,
        "drift_detected": verdict.drift_detected,
    }
    rows: list[dict[str, Any]] = [
        {
            **common,
            "kind": "drift",
            "column": c.column,
            "role": c.role,
            "method": c.method,
            "threshold": c.threshold,
            "value": c.value,
            "drifted": c.drifted,
        }
        for c in verdict.columns
    ]
    for outcome, share in verdict.outcome_mix.get("current", {}).items():
        rows.append(
            {
                **common,
                "kind": "outcome_share",
                "column": outcome,
                "role": "outcome",
                "method": "share",
                "threshold": None,
                "value": share,
                "drifted": None,
            }
        )
    if verdict.quality:
        q = verdict.quality
        rows.append(
            {
                **common,
                "kind": "quality",
                "column": "fit_mean_auc",
                "role": "quality",
                "method": "mean_auc",
                "threshold": q.get("max_drop"),
                "value": q.get("current", {}).get("mean_auc"),
                "drifted": q.get("degraded"),
            }
        )
    frame = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    for c in _TIME_COLUMNS:
        frame[c] = pd.to_datetime(frame[c], utc=True)
    frame["threshold"] = frame["threshold"].astype(float)
    frame["value"] = frame["value"].astype(float)
    return frame


def history_location(settings: Settings) -> str:
    """Where the history table of ``settings`` lives: a parquet path or a database URL."""
    if settings.profile == "prod":
        url = os.environ.get("FITML_DRIFT_HISTORY_URL")
        if url:
            return url
        if settings.mlflow.tracking_uri.startswith("postgresql"):
            return settings.mlflow.tracking_uri
    return str(settings.offline_dir / f"{TABLE}.parquet")


def _is_database(location: str) -> bool:
    return "://" in location


def append_history(location: str | Path, verdict: DriftVerdict) -> int:
    """Append one verdict's rows to the history at ``location``; returns the rows added."""
    rows = history_rows(verdict)
    added = len(rows)
    where = str(location)
    if _is_database(where):
        from sqlalchemy import create_engine

        engine = create_engine(where)
        try:
            rows.to_sql(TABLE, engine, if_exists="append", index=False)
        finally:
            engine.dispose()
        return added
    path = Path(where)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        rows = pd.concat([pd.read_parquet(path), rows], ignore_index=True)
    tmp = path.with_suffix(".parquet.tmp")
    rows.to_parquet(tmp, index=False)
    tmp.replace(path)
    return added


def read_history(location: str | Path) -> pd.DataFrame:
    """The whole history table (empty, with its columns, when nothing was written yet)."""
    where = str(location)
    if _is_database(where):
        from sqlalchemy import create_engine, inspect

        engine = create_engine(where)
        try:
            if not inspect(engine).has_table(TABLE):
                return pd.DataFrame(columns=list(HISTORY_COLUMNS))
            frame = pd.read_sql_table(TABLE, engine)
        finally:
            engine.dispose()
    elif Path(where).is_file():
        frame = pd.read_parquet(where)
    else:
        return pd.DataFrame(columns=list(HISTORY_COLUMNS))
    for c in _TIME_COLUMNS:
        frame[c] = pd.to_datetime(frame[c], utc=True)
    return frame.sort_values(["current_end", "computed_at"]).reset_index(drop=True)


def drift_table(history: pd.DataFrame) -> pd.DataFrame:
    """Drift values over time: one row per current window end, one column per monitored column.

    When several runs share a window end, the latest run counts.
    """
    drift = history[history["kind"] == "drift"]
    latest = drift.sort_values("computed_at").drop_duplicates(
        ["current_end", "column"], keep="last"
    )
    return latest.pivot(index="current_end", columns="column", values="value").sort_index()


def rolling_windows(
    frame: pd.DataFrame, *, start: pd.Timestamp, freq: str = "7D"
) -> Iterator[tuple[pd.Timestamp, pd.DataFrame]]:
    """Consecutive windows of ``frame`` from ``start`` on, each ``freq`` long, by event time."""
    ts = pd.to_datetime(frame[TIME_COLUMN], utc=True)
    step = pd.Timedelta(freq)
    edge = pd.Timestamp(start)
    last = ts.max()
    while edge <= last:
        rows = frame[(ts >= edge) & (ts < edge + step)]
        if len(rows):
            yield edge, rows
        edge = edge + step


def backfill(
    location: str | Path,
    reference: pd.DataFrame,
    frame: pd.DataFrame,
    *,
    start: pd.Timestamp,
    freq: str = "7D",
    specs: tuple[ColumnSpec, ...] = MONITORED,
    min_rows: int = 200,
) -> list[DriftVerdict]:
    """Compare every ``freq`` window of ``frame`` from ``start`` with ``reference``; append each.

    This charts drift over a period at once (e.g. after adopting monitoring); day-to-day,
    every scheduled check appends its own verdict.

    Returns:
        The verdicts, oldest window first (windows under ``min_rows`` rows are skipped).
    """
    verdicts = []
    for _, window in rolling_windows(frame, start=start, freq=freq):
        if len(window) < min_rows:
            continue
        verdict = detect_drift(reference, window, specs=specs)
        append_history(location, verdict)
        verdicts.append(verdict)
    return verdicts


def outcome_mix_over_time(events: pd.DataFrame, freq: str = "W") -> pd.DataFrame:
    """Share of too small / fit / too large per period of event time (and the event count)."""
    ts = pd.to_datetime(events[TIME_COLUMN], utc=True).dt.tz_localize(None)
    known = events["outcome"].isin(OUTCOME_LABELS)
    period = ts[known].dt.to_period(freq).dt.start_time
    counts = pd.crosstab(period, events.loc[known, "outcome"])
    counts = counts.reindex(columns=list(OUTCOME_LABELS), fill_value=0)
    shares = counts.div(counts.sum(axis=1), axis=0)
    shares["events"] = counts.sum(axis=1)
    shares.index.name = "period"
    return shares
