"""Public-data adapters on tiny inline RentTheRunway / ModCloth files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from ml_pipeline import adapters, schema
from ml_pipeline.errors import NotFoundError

RTR_LINES = [
    {
        "fit": "fit",
        "user_id": "1",
        "item_id": "10",
        "bust size": "34d",
        "weight": "137lbs",
        "rented for": "party",
        "body type": "pear",
        "category": "dress",
        "height": "5' 8\"",
        "size": 12,
        "age": "36",
        "review_date": "April 20, 2016",
    },
    {
        "fit": "small",
        "user_id": "1",
        "item_id": "11",
        "bust size": "34dd",
        "weight": "140lbs",
        "category": "gown",
        "height": "5' 8\"",
        "size": 8,
        "age": "37",
        "review_date": "May 1, 2017",
    },
    {
        "fit": "large",
        "user_id": "2",
        "item_id": "10",
        "weight": "50lbs",
        "category": "dress",
        "size": 4,
        "age": "116",
        "review_date": "June 2, 2015",
    },
    {"fit": "maybe", "user_id": "3", "item_id": "10", "size": 4, "review_date": "June 2, 2015"},
    {"fit": "fit", "item_id": "10", "size": 4, "review_date": "June 2, 2015"},
    {"fit": "fit", "user_id": "4", "item_id": "10", "size": 99, "review_date": "June 2, 2015"},
    {"fit": "fit", "user_id": "5", "item_id": "10", "size": 4, "review_date": "someday"},
]


def write_jsonl(path: Path, rows: list[dict[str, object]], extra: str = "") -> Path:
    text = "\n".join(json.dumps(r) for r in rows) + "\n" + extra
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def rtr_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "rtr.jsonl.gz", RTR_LINES, extra="{not json\n\n")


def test_every_line_is_an_event_or_a_reject(rtr_file: Path) -> None:
    raw = adapters.read_renttherunway(rtr_file)
    assert raw.input_rows == len(RTR_LINES) + 1  # the blank line is not a row
    assert len(raw.events) + len(raw.rejected) == raw.input_rows
    assert dict(raw.rejected["reason"].value_counts()) == {
        "invalid fit": 1,
        "missing user_id": 1,
        "invalid size": 1,
        "invalid review_date": 1,
        "unreadable json": 1,
    }
    assert raw.rejected["raw"].notna().all()


def test_events_are_standardised(rtr_file: Path) -> None:
    events = adapters.read_renttherunway(rtr_file).events.set_index("source_line")
    assert set(schema.EVENT_COLUMNS) <= set(events.columns)
    first = events.loc[1]
    assert first["user_id"] == "rtr:1" and first["product_id"] == "rtr:10"
    assert first["outcome"] == "fit" and first["size"] == "12" and first["size_index"] == 12
    assert first["event_timestamp"] == pd.Timestamp("2016-04-20", tz="UTC")
    assert first["height_cm"] == pytest.approx(172.72)
    assert first["weight_kg"] == pytest.approx(137 * 0.45359237)
    assert first["chest_cm"] == pytest.approx(38 * 2.54)
    assert (first["band_in"], first["cup"], first["bust_size"]) == (34, "D", "34d")
    assert (first["body_type"], first["rented_for"], first["age"]) == ("pear", "party", 36.0)
    assert events.loc[2, "outcome"] == "too_small"
    assert events.loc[3, "outcome"] == "too_large"
    assert events["event_id"].str.match(r"^rtr-[0-9a-f]{16}$").all()
    assert events["problems"].isna().sum() == 2


def test_unusable_fields_are_nulled_and_described(rtr_file: Path) -> None:
    events = adapters.read_renttherunway(rtr_file).events.set_index("source_line")
    bad = events.loc[3]
    assert pd.isna(bad["weight_kg"]) and pd.isna(bad["age"])
    assert "'50lbs'" in bad["problems"] and "'116'" in bad["problems"]


def test_event_ids_are_deterministic_and_position_free(tmp_path: Path) -> None:
    a = adapters.read_renttherunway(write_jsonl(tmp_path / "a.jsonl", RTR_LINES[:3]))
    b = adapters.read_renttherunway(write_jsonl(tmp_path / "b.json", RTR_LINES[2::-1]))
    assert set(a.events["event_id"]) == set(b.events["event_id"])


def test_users_and_products(rtr_file: Path) -> None:
    raw = adapters.read_renttherunway(rtr_file)
    users = raw.users.set_index("user_id")
    assert list(raw.users.columns[: len(schema.USER_COLUMNS)]) == list(schema.USER_COLUMNS)
    assert users.index.is_unique and set(users.index) == {"rtr:1", "rtr:2"}
    one = users.loc["rtr:1"]
    assert one["weight_kg"] == pytest.approx(137 * 0.45359237)  # first in time order
    assert one["event_timestamp"] == pd.Timestamp("2016-04-20", tz="UTC")
    assert pd.isna(one["waist_cm"])
    products = raw.products.set_index("product_id")
    assert list(raw.products.columns) == list(schema.PRODUCT_COLUMNS)
    assert products.loc["rtr:10", "category"] == "dress"
    assert products.loc["rtr:10", "size_system"] == "rtr"
    assert products["brand"].isna().all()
    assert raw.size_charts.empty and list(raw.size_charts.columns) == list(
        schema.SIZE_CHART_COLUMNS
    )


def test_json_array_file(tmp_path: Path) -> None:
    path = tmp_path / "rtr.json"
    path.write_text(json.dumps(RTR_LINES[:2]), encoding="utf-8")
    assert len(adapters.read_renttherunway(path).events) == 2


def test_missing_file() -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        adapters.read_renttherunway("/nonexistent/rtr.jsonl")


MODCLOTH_LINES = [
    {
        "item_id": "1",
        "waist": "29",
        "size": 7,
        "cup size": "d",
        "hips": "38",
        "bra size": "34",
        "category": "new",
        "bust": "36",
        "height": "5ft 6in",
        "length": "just right",
        "fit": "small",
        "user_id": "9",
    },
    {
        "item_id": "1",
        "size": 15,
        "cup size": "dd/e",
        "bra size": "36",
        "category": "new",
        "height": "5ft",
        "fit": "large",
        "user_id": "8",
        "hips": "60.0",
    },
    {
        "item_id": "2",
        "size": 9,
        "category": "new",
        "fit": "fit",
        "user_id": "7",
        "cup size": "q",
        "bra size": "34",
    },
]


def test_modcloth(tmp_path: Path) -> None:
    raw = adapters.read_modcloth(write_jsonl(tmp_path / "mc.jsonl", MODCLOTH_LINES))
    events = raw.events.set_index("source_line")
    assert len(events) == 3 and raw.rejected.empty
    first = events.loc[1]
    assert first["user_id"] == "mc:9" and first["outcome"] == "too_small"
    assert first["size_index"] == 7 and first["height_cm"] == pytest.approx(167.64)
    assert first["waist_cm"] == pytest.approx(29 * 2.54)
    assert first["chest_cm"] == pytest.approx(36 * 2.54)  # the bust girth wins
    second = events.loc[2]
    assert second["chest_cm"] == pytest.approx(41 * 2.54)  # band 36 + DD/E
    assert second["hips_cm"] == pytest.approx(152.4)  # bare numbers are inches
    assert events["timestamp_imputed"].all()
    assert "cup" in str(events.loc[3, "problems"])
