"""Data contracts on tiny inline tables: every failing row is found, with a reason."""

from __future__ import annotations

import pandas as pd
import pytest

from ml_pipeline import contracts

T = pd.Timestamp("2025-01-01", tz="UTC")


def users() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3", "u4", "u1"],
            "sex": ["F", "M", None, "X", "F"],
            "height_cm": [170.0, 4000.0, None, 180.0, 170.0],
            "weight_kg": [60.0, 80.0, 3.0, None, 60.0],
            "chest_cm": [90.0, None, None, None, 90.0],
            "waist_cm": [None] * 5,
            "hips_cm": [None] * 5,
            "inseam_cm": [None] * 5,
            "fit_preference": ["slim", None, "regular", "baggy", "slim"],
            "event_timestamp": [T] * 5,
        }
    )


def products() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "product_id": ["p1", "p2", "p3", "p1"],
            "brand": ["B", None, "B", "B"],
            "category": ["tops", "dresses", "tops", "tops"],
            "fit_type": ["slim", None, "boxy", "slim"],
            "stretch": [0.2, None, 1.5, 0.2],
            "size_system": ["alpha", "numeric", "alpha", "alpha"],
            "event_timestamp": [T] * 4,
        }
    )


def charts() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "product_id": ["p1", "p1", "p1", "zz", "p1"],
            "size": ["S", "M", "Q", "S", "L"],
            "size_index": [2, 3, 0, 2, 9],
            "dimension": ["chest", "chest", "chest", "chest", "elbow"],
            "low_cm": [86.0, 94.0, 80.0, 86.0, 110.0],
            "high_cm": [94.0, 90.0, 86.0, 94.0, 118.0],
        }
    )


def events() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": ["e1", "e2", "e3", "e4", "e5", "e1", "e6", "e7"],
            "user_id": ["u1", "u1", "ghost", "u1", "u1", "u1", "u1", "u1"],
            "product_id": ["p1", "p2", "p1", "nope", "p1", "p1", "p1", "p2"],
            "size": ["S", "8", "S", "S", "XL", "S", "M", "9"],
            "size_index": [2, 5, 2, 2, 5, 2, 3, 5],
            "outcome": ["fit", "too_small", "fit", "fit", "fit", "fit", "meh", "fit"],
            "event_timestamp": [T] * 8,
        }
    )


def reasons(result: contracts.ValidationResult) -> dict[int, str]:
    return {int(i): str(r) for i, r in result.rejected["reason"].items()}


def test_users_contract_finds_every_bad_row() -> None:
    result = contracts.validate(users(), contracts.users_schema())
    assert reasons(result) == {
        1: "height_cm: out of range",
        2: "weight_kg: out of range",
        3: "sex: not F or M",
        4: "duplicate",
    }
    assert "fit_preference: not a fit preference" in result.rejected.loc[3, "detail"]
    assert list(result.valid.index) == [0]


def test_products_contract() -> None:
    result = contracts.validate(products(), contracts.products_schema())
    assert reasons(result) == {2: "fit_type: not a fit type", 3: "product_id: duplicate"}
    assert "stretch: out of range" in result.rejected.loc[2, "detail"]


def test_size_charts_contract() -> None:
    result = contracts.validate(charts(), contracts.size_charts_schema(products().iloc[:3]))
    assert reasons(result) == {
        1: "low_cm not below high_cm",
        2: "size not in the product's size system",
        3: "product_id: unknown product",
        4: "dimension: not a body dimension",
    }


def test_events_contract_checks_references_sizes_and_charts() -> None:
    chart = charts().iloc[:2]  # p1 offers S and M
    result = contracts.validate(
        events(), contracts.events_schema(["u1"], products().iloc[:3], chart)
    )
    assert reasons(result) == {
        2: "user_id: unknown user",
        3: "product_id: unknown product",
        4: "size not in the product's size chart",
        5: "event_id: duplicate",
        6: "outcome: not an outcome",
        7: "size not in the product's size system",
    }
    assert list(result.valid["event_id"]) == ["e1", "e2"]
    assert str(result.valid["event_timestamp"].dtype) == "datetime64[ns, UTC]"


def test_events_contract_without_references() -> None:
    result = contracts.validate(events(), contracts.events_schema())
    assert reasons(result) == {5: "event_id: duplicate", 6: "outcome: not an outcome"}


def test_types_are_coerced_and_bad_types_rejected_by_row() -> None:
    frame = users().iloc[:2].astype({"height_cm": object})
    frame.loc[1, "height_cm"] = "tall"
    frame["event_timestamp"] = ["2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z"]
    result = contracts.validate(frame, contracts.users_schema())
    assert reasons(result) == {1: "height_cm: wrong type"}
    assert result.valid["height_cm"].dtype == float


def test_missing_required_column_rejects_every_row() -> None:
    result = contracts.validate(events().drop(columns="outcome"), contracts.events_schema())
    assert len(result.valid) == 0 and len(result.rejected) == len(events())
    assert set(result.rejected["reason"]) == {"outcome: missing column"}


def test_problems_column_names_the_field() -> None:
    frame = events().iloc[:2].assign(problems=[None, "age '116' is outside the plausible"])
    result = contracts.validate(frame, contracts.events_schema(columns=frame.columns))
    assert reasons(result) == {1: "invalid age"}


@pytest.mark.parametrize("value", [10.0, 300.0])
def test_event_measurements_are_range_checked(value: float) -> None:
    frame = events().iloc[:1].assign(chest_cm=[value])
    result = contracts.validate(frame, contracts.events_schema(columns=frame.columns))
    assert reasons(result) == {0: "chest_cm: out of range"}
