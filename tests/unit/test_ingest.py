"""Ingestion on tiny inline raw tables: nothing silently dropped, idempotent merges."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ml_pipeline import ingest
from ml_pipeline.errors import FitmlError, NotFoundError, RejectRateExceededError

T = pd.Timestamp("2025-01-01", tz="UTC")


def raw_tables() -> dict[str, pd.DataFrame]:
    users = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3"],
            "sex": ["F", "M", "F"],
            "height_cm": [165.0, 180.0, 4000.0],
            "weight_kg": [60.0, 80.0, 60.0],
            "chest_cm": [90.0, 100.0, 90.0],
            "waist_cm": [70.0, 85.0, 70.0],
            "hips_cm": [95.0, 100.0, 95.0],
            "inseam_cm": [78.0, 82.0, 78.0],
            "fit_preference": ["slim", "regular", None],
            "event_timestamp": [T] * 3,
        }
    )
    products = pd.DataFrame(
        {
            "product_id": ["p1", "p2"],
            "brand": ["Aurelle", "Birchwood"],
            "category": ["tops", "pants"],
            "fit_type": ["slim", "classic"],
            "stretch": [0.2, 0.0],
            "size_system": ["alpha", "waist"],
            "event_timestamp": [T] * 2,
        }
    )
    size_charts = pd.DataFrame(
        {
            "product_id": ["p1", "p1", "p1"],
            "size": ["S", "M", "L"],
            "size_index": [2, 3, 4],
            "dimension": ["chest", "chest", "chest"],
            "low_cm": [86.0, 94.0, 102.0],
            "high_cm": [94.0, 102.0, 110.0],
        }
    )
    events = pd.DataFrame(
        {
            "event_id": ["e1", "e2", "e3", "e4", "e5"],
            "user_id": ["u1", "u2", "u3", "u1", "u2"],
            "product_id": ["p1", "p2", "p1", "p1", "p2"],
            "size": ["M", "32", "M", "XS", "32"],
            "size_index": [3, 8, 3, 1, 8],
            "outcome": ["fit", "too_small", "fit", "fit", "fit"],
            "event_timestamp": [T] * 5,
        }
    )
    return {"users": users, "products": products, "size_charts": size_charts, "events": events}


def write_raw(folder: Path, tables: dict[str, pd.DataFrame], truth: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.to_parquet(folder / f"{name}.parquet", index=False)
    if truth:
        pd.DataFrame({"event_id": ["e1"], "best_size": ["M"]}).to_parquet(
            folder / "truth.parquet", index=False
        )
    return folder


def test_accepted_plus_quarantined_equals_input(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", raw_tables())
    summary = ingest.ingest_synthetic(raw, tmp_path / "w")
    for table in (*ingest.TABLES, "total"):
        assert summary.accepted[table] + summary.quarantined[table] == summary.input[table], table
    assert summary.quarantined == {
        "users": 1,
        "products": 0,
        "size_charts": 0,
        "events": 2,
        "total": 3,
    }
    assert summary.reasons == {
        "users: height_cm: out of range": 1,
        "events: user_id: unknown user": 1,  # u3 was quarantined
        "events: size not in the product's size chart": 1,  # p1 has no XS
    }
    offline = tmp_path / "w" / "offline"
    assert len(pd.read_parquet(offline / "events.parquet")) == 3
    quarantined = pd.read_parquet(tmp_path / "w" / "quarantine" / "events.parquet")
    assert set(quarantined["event_id"]) == {"e3", "e4"}
    assert {"reason", "detail", "source"} <= set(quarantined.columns)
    assert pd.read_parquet(offline / "truth.parquet").equals(pd.read_parquet(raw / "truth.parquet"))
    assert json.loads(summary.to_json())["accepted"]["total"] == summary.accepted["total"]


def test_reingest_is_idempotent(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", raw_tables())
    ingest.ingest_synthetic(raw, tmp_path / "w")
    before = {
        t: pd.read_parquet(tmp_path / "w" / "offline" / f"{t}.parquet") for t in ingest.TABLES
    }
    q_before = pd.read_parquet(tmp_path / "w" / "quarantine" / "events.parquet")
    ingest.ingest_synthetic(raw, tmp_path / "w")
    for table in ingest.TABLES:
        after = pd.read_parquet(tmp_path / "w" / "offline" / f"{table}.parquet")
        pd.testing.assert_frame_equal(after, before[table])
    q_after = pd.read_parquet(tmp_path / "w" / "quarantine" / "events.parquet")
    assert len(q_after) == len(q_before)


def test_later_batches_merge_and_see_stored_references(tmp_path: Path) -> None:
    tables = raw_tables()
    ingest.ingest_synthetic(write_raw(tmp_path / "a", tables), tmp_path / "w")
    second = {
        "users": tables["users"].iloc[0:0],
        "products": tables["products"].iloc[0:0],
        "events": pd.DataFrame(
            {
                "event_id": ["e1", "e9"],
                "user_id": ["u1", "u2"],
                "product_id": ["p1", "p1"],
                "size": ["L", "S"],
                "size_index": [4, 2],
                "outcome": ["too_large", "fit"],
                "event_timestamp": [T, T],
            }
        ),
    }
    summary = ingest.ingest_synthetic(
        write_raw(tmp_path / "b", second, truth=False), tmp_path / "w"
    )
    assert summary.accepted["events"] == 2 and summary.quarantined["total"] == 0
    events = pd.read_parquet(tmp_path / "w" / "offline" / "events.parquet").set_index("event_id")
    assert sorted(events.index) == ["e1", "e2", "e5", "e9"]
    assert events.loc["e1", "outcome"] == "too_large"  # the newer row replaced the stored one


def test_max_reject_rate_raises_after_writing(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", raw_tables())
    with pytest.raises(RejectRateExceededError) as info:
        ingest.ingest_synthetic(raw, tmp_path / "w", max_reject_rate=0.01)
    assert isinstance(info.value, FitmlError)
    assert info.value.rate == pytest.approx(3 / 13)
    assert json.loads(info.value.summary_json or "{}")["quarantined"]["total"] == 3
    assert (tmp_path / "w" / "quarantine" / "events.parquet").exists()
    assert (tmp_path / "w" / "offline" / "events.parquet").exists()
    ingest.ingest_synthetic(raw, tmp_path / "w2", max_reject_rate=0.5)  # within the limit


def test_missing_raw_table(tmp_path: Path) -> None:
    tables = raw_tables()
    del tables["events"]
    with pytest.raises(NotFoundError, match=r"events\.parquet"):
        ingest.ingest_synthetic(write_raw(tmp_path / "raw", tables), tmp_path / "w")


def test_public_file_rows_are_all_accounted_for(tmp_path: Path) -> None:
    lines = [
        {
            "fit": "fit",
            "user_id": "1",
            "item_id": "10",
            "bust size": "34d",
            "size": 12,
            "review_date": "April 20, 2016",
            "category": "dress",
        },
        {
            "fit": "fit",
            "user_id": "1",
            "item_id": "10",
            "bust size": "34d",
            "size": 12,
            "review_date": "April 20, 2016",
            "category": "dress",
        },  # exact duplicate
        {
            "fit": "large",
            "user_id": "2",
            "item_id": "10",
            "size": 4,
            "age": "0",
            "review_date": "June 2, 2015",
            "category": "dress",
        },
        {"fit": "?", "user_id": "3", "item_id": "10", "size": 4, "review_date": "June 2, 2015"},
    ]
    path = tmp_path / "rtr.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    summary = ingest.ingest_renttherunway(path, tmp_path / "w")
    assert summary.input["events"] == 4
    assert summary.accepted["events"] == 1
    assert summary.reasons == {
        "events: event_id: duplicate": 1,
        "events: invalid age": 1,
        "events: invalid fit": 1,
    }
    quarantined = pd.read_parquet(tmp_path / "w" / "quarantine" / "events.parquet")
    assert len(quarantined) == 3 and quarantined["source"].eq("renttherunway").all()
