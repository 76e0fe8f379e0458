"""The real public files: RentTheRunway dev split and the ModCloth sample."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from ml_pipeline import adapters, ingest

pytestmark = pytest.mark.needs_data


def test_rtr_read_keeps_every_line(shared_data: Path) -> None:
    raw = adapters.read_renttherunway(shared_data / "renttherunway" / "rtr_dev.jsonl.gz")
    assert raw.input_rows == 154_075
    assert len(raw.events) + len(raw.rejected) == raw.input_rows
    events = raw.events
    assert set(events["outcome"]) == {"too_small", "fit", "too_large"}
    assert events["size_index"].between(0, 58).all()
    for col in (
        "height_cm",
        "weight_kg",
        "chest_cm",
        "band_in",
        "cup",
        "age",
        "body_type",
        "category",
        "rented_for",
        "bust_size",
    ):
        assert events[col].notna().mean() > 0.8, col
    assert raw.users["user_id"].is_unique and raw.products["product_id"].is_unique


@pytest.mark.slow
def test_rtr_ingest_accounts_for_every_row_quickly(shared_data: Path, tmp_path: Path) -> None:
    start = time.perf_counter()
    summary = ingest.ingest_renttherunway(
        shared_data / "renttherunway" / "rtr_dev.jsonl.gz", tmp_path, max_reject_rate=0.01
    )
    seconds = time.perf_counter() - start
    assert seconds < 30, f"ingesting RTR took {seconds:.1f} s"
    assert summary.input["events"] == 154_075
    for table in (*ingest.TABLES, "total"):
        assert summary.accepted[table] + summary.quarantined[table] == summary.input[table]
    assert sum(summary.reasons.values()) == summary.quarantined["total"]
    quarantined = pd.read_parquet(tmp_path / "quarantine" / "events.parquet")
    assert len(quarantined) == summary.quarantined["events"]
    assert quarantined["reason"].notna().all()
    stored = pd.read_parquet(tmp_path / "offline" / "events.parquet")
    assert len(stored) == summary.accepted["events"] and stored["event_id"].is_unique


def test_modcloth_ingest(shared_data: Path, tmp_path: Path) -> None:
    summary = ingest.ingest_modcloth(shared_data / "modcloth" / "modcloth_sample.jsonl", tmp_path)
    assert summary.input["events"] == 14
    assert summary.accepted["events"] + summary.quarantined["events"] == 14
    users = pd.read_parquet(tmp_path / "offline" / "users.parquet")
    assert users["height_cm"].notna().sum() >= 10
    assert users["chest_cm"].notna().sum() >= 10
