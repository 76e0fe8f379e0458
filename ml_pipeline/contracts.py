"""Data contracts: pandera schemas for users, products, size charts and events.

The columns are those of :mod:`ml_pipeline.schema`; this module says what values they may
hold. Validation is lazy (every failing row of a table is found in one pass) and splits a
table into the rows that honour the contract (coerced to the contract's types) and the rows
that do not, each with a short countable ``reason`` (``"height_cm: out of range"``,
``"user_id: unknown user"``) and a ``detail`` naming the offending values.

What the contract requires (public data may leave optional fields null):

* users: ``user_id`` and ``event_timestamp`` present, one row per (``user_id``,
  ``event_timestamp``); measurements optional but plausible (``ml_pipeline.units`` ranges);
  ``sex`` in F/M, ``fit_preference`` in ``schema.FIT_PREFERENCES``, both optional; optional
  extras ``age`` (13..100), ``body_type``, and a bra size's ``underbust_cm`` (a plausible
  girth) and ``cup_cm`` (bust minus underbust, 0..40).
* products: unique ``product_id``; ``category`` and ``size_system`` (a known system) present;
  ``brand``, ``fit_type`` (``schema.FIT_TYPES``) and ``stretch`` ([0, 1]) optional.
* size charts: one row per (``product_id``, ``size``, ``dimension``); the product exists; the
  size is a size of the product's system and ``size_index`` is its index; ``dimension`` in
  ``schema.BODY_DIMENSIONS``; ``low_cm < high_cm``, both plausible girths.
* events: unique ``event_id`` (the first of duplicates is kept); the user and product exist;
  ``outcome`` in ``schema.OUTCOMES``; the size is a size of the product's system with the
  matching ``size_index``, and in the product's size chart when it has one; measurement
  columns carried on events are plausible; a non-null ``problems`` column (set by the public
  adapters when a field could not be standardised) fails the row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaError, SchemaErrors

from ml_pipeline import schema, sizes, units

UTC_TIMESTAMP: Final = pd.DatetimeTZDtype("ns", "UTC")
AGE_RANGE_YEARS: Final[tuple[int, int]] = units.AGE_RANGE_YEARS
SEXES: Final[tuple[str, ...]] = ("F", "M")
MEASUREMENT_RANGES: Final[dict[str, tuple[float, float]]] = {
    "height_cm": units.HEIGHT_RANGE_CM,
    "weight_kg": units.WEIGHT_RANGE_KG,
    "chest_cm": units.GIRTH_RANGE_CM,
    "waist_cm": units.GIRTH_RANGE_CM,
    "hips_cm": units.GIRTH_RANGE_CM,
    "inseam_cm": units.INSEAM_RANGE_CM,
}
"""Plausible range of every measurement column, inclusive."""

REASON_COLUMNS: Final[tuple[str, ...]] = ("reason", "detail")


@dataclass
class ValidationResult:
    """A table split by its contract.

    Attributes:
        valid: The rows that honour the contract, coerced to its types, original index kept.
        rejected: The other rows, as given, plus ``reason`` (short, countable) and ``detail``.
    """

    valid: pd.DataFrame
    rejected: pd.DataFrame


def _measurement_columns(columns: Iterable[str]) -> dict[str, pa.Column]:
    return {
        name: pa.Column(
            float,
            pa.Check.in_range(lo, hi, error="out of range"),
            nullable=True,
            coerce=True,
            required=False,
        )
        for name, (lo, hi) in MEASUREMENT_RANGES.items()
        if name in columns
    }


def _timestamp() -> pa.Column:
    return pa.Column(UTC_TIMESTAMP, nullable=False, coerce=True)


def _id() -> pa.Column:
    return pa.Column(str, pa.Check.str_length(min_value=1, error="empty id"), nullable=False)


def users_schema() -> pa.DataFrameSchema:
    """Return the pandera schema of the users table."""
    return pa.DataFrameSchema(
        {
            "user_id": _id(),
            "sex": pa.Column(
                object, pa.Check.isin(SEXES, error="not F or M"), nullable=True, required=False
            ),
            **_measurement_columns(schema.MEASUREMENTS),
            "fit_preference": pa.Column(
                object,
                pa.Check.isin(schema.FIT_PREFERENCES, error="not a fit preference"),
                nullable=True,
                required=False,
            ),
            "event_timestamp": _timestamp(),
            "age": pa.Column(
                float,
                pa.Check.in_range(*AGE_RANGE_YEARS, error="out of range"),
                nullable=True,
                coerce=True,
                required=False,
            ),
            "body_type": pa.Column(object, nullable=True, required=False),
            "underbust_cm": pa.Column(
                float,
                pa.Check.in_range(*units.GIRTH_RANGE_CM, error="out of range"),
                nullable=True,
                coerce=True,
                required=False,
            ),
            "cup_cm": pa.Column(
                float,
                pa.Check.in_range(0.0, 40.0, error="out of range"),
                nullable=True,
                coerce=True,
                required=False,
            ),
        },
        unique=["user_id", "event_timestamp"],
        report_duplicates="exclude_first",
        strict=False,
        name="users",
    )


def products_schema() -> pa.DataFrameSchema:
    """Return the pandera schema of the products table."""
    return pa.DataFrameSchema(
        {
            "product_id": pa.Column(
                str,
                pa.Check.str_length(min_value=1, error="empty id"),
                unique=True,
                report_duplicates="exclude_first",
            ),
            "brand": pa.Column(object, nullable=True, required=False),
            "category": pa.Column(
                str, pa.Check.str_length(min_value=1, error="empty category"), nullable=False
            ),
            "fit_type": pa.Column(
                object,
                pa.Check.isin(schema.FIT_TYPES, error="not a fit type"),
                nullable=True,
                required=False,
            ),
            "stretch": pa.Column(
                float,
                pa.Check.in_range(0.0, 1.0, error="out of range"),
                nullable=True,
                coerce=True,
                required=False,
            ),
            "size_system": pa.Column(
                str, pa.Check.isin(sizes.size_systems(), error="unknown size system")
            ),
            "event_timestamp": _timestamp(),
        },
        strict=False,
        name="products",
    )


def _systems_of(products: pd.DataFrame | None) -> dict[str, str]:
    if products is None or products.empty:
        return {}
    return dict(zip(products["product_id"], products["size_system"], strict=True))


def _size_matches(
    product_ids: pd.Series, size: pd.Series, size_index: pd.Series, systems: dict[str, str]
) -> pd.Series:
    """Whether each size is a size of its product's system with the given index.

    Rows whose product is unknown pass (referential integrity is checked apart).
    """
    system = product_ids.map(systems)
    known: dict[tuple[Any, Any], int | None] = {}
    for pair in set(zip(system, size, strict=True)):
        sys_name, label = pair
        if not isinstance(sys_name, str):
            continue
        try:
            known[pair] = units.to_size_index(sys_name, label)
        except (units.InvalidValueError, TypeError):
            known[pair] = None
    expected = pd.Series(
        [known.get(p, -1) for p in zip(system, size, strict=True)], index=size.index, dtype=object
    )
    index = pd.to_numeric(size_index, errors="coerce")
    return system.isna() | (expected.notna() & (expected == index))


def size_charts_schema(products: pd.DataFrame | None = None) -> pa.DataFrameSchema:
    """Return the pandera schema of the size-chart table.

    Args:
        products: The products the charts may refer to (``product_id``, ``size_system``);
            ``None`` skips the product checks.
    """
    systems = _systems_of(products)
    checks = [
        pa.Check(lambda df: ~(df["low_cm"] >= df["high_cm"]), error="low_cm not below high_cm"),
    ]
    if products is not None:
        checks.append(
            pa.Check(
                lambda df: _size_matches(df["product_id"], df["size"], df["size_index"], systems),
                error="size not in the product's size system",
            )
        )
    product_checks = (
        [pa.Check(lambda s: s.isin(systems.keys()), error="unknown product")]
        if products is not None
        else []
    )
    return pa.DataFrameSchema(
        {
            "product_id": pa.Column(str, product_checks, nullable=False),
            "size": pa.Column(str, nullable=False, coerce=True),
            "size_index": pa.Column(
                "int64", pa.Check.ge(0, error="negative"), nullable=False, coerce=True
            ),
            "dimension": pa.Column(
                str, pa.Check.isin(schema.BODY_DIMENSIONS, error="not a body dimension")
            ),
            "low_cm": pa.Column(
                float,
                pa.Check.in_range(*units.GIRTH_RANGE_CM, error="out of range"),
                coerce=True,
            ),
            "high_cm": pa.Column(
                float,
                pa.Check.in_range(*units.GIRTH_RANGE_CM, error="out of range"),
                coerce=True,
            ),
        },
        checks=checks,
        unique=["product_id", "size", "dimension"],
        report_duplicates="exclude_first",
        strict=False,
        name="size_charts",
    )


def events_schema(
    user_ids: Iterable[str] | None = None,
    products: pd.DataFrame | None = None,
    size_charts: pd.DataFrame | None = None,
    columns: Iterable[str] = (),
) -> pa.DataFrameSchema:
    """Return the pandera schema of the events table.

    Args:
        user_ids: The users events may refer to; ``None`` skips that check.
        products: The products events may refer to (``product_id``, ``size_system``);
            ``None`` skips the product and size checks.
        size_charts: Size charts (``product_id``, ``size``); an event of a product that has a
            chart must try a size of that chart.
        columns: The columns of the frame to validate (extra measurement columns get range
            checks).
    """
    users = set(user_ids) if user_ids is not None else None
    systems = _systems_of(products)
    charted: set[str] = set()
    chart_sizes: set[tuple[str, str]] = set()
    if size_charts is not None and not size_charts.empty:
        charted = set(size_charts["product_id"])
        chart_sizes = set(
            zip(size_charts["product_id"], size_charts["size"].astype(str), strict=True)
        )
    checks = []
    if products is not None:
        checks.append(
            pa.Check(
                lambda df: _size_matches(df["product_id"], df["size"], df["size_index"], systems),
                error="size not in the product's size system",
            )
        )
    if charted:
        checks.append(
            pa.Check(
                lambda df: (
                    ~df["product_id"].isin(charted)
                    | pd.Series(
                        [p in chart_sizes for p in zip(df["product_id"], df["size"], strict=True)],
                        index=df.index,
                    )
                ),
                error="size not in the product's size chart",
            )
        )
    user_checks = (
        [pa.Check(lambda s: s.isin(users), error="unknown user")] if users is not None else []
    )
    product_checks = (
        [pa.Check(lambda s: s.isin(systems.keys()), error="unknown product")]
        if products is not None
        else []
    )
    return pa.DataFrameSchema(
        {
            "event_id": pa.Column(
                str,
                pa.Check.str_length(min_value=1, error="empty id"),
                unique=True,
                report_duplicates="exclude_first",
            ),
            "user_id": pa.Column(str, user_checks, nullable=False),
            "product_id": pa.Column(str, product_checks, nullable=False),
            "size": pa.Column(str, nullable=False, coerce=True),
            "size_index": pa.Column(
                "int64", pa.Check.ge(0, error="negative"), nullable=False, coerce=True
            ),
            "outcome": pa.Column(str, pa.Check.isin(schema.OUTCOMES, error="not an outcome")),
            "event_timestamp": _timestamp(),
            "problems": pa.Column(
                object,
                pa.Check(lambda s: s.isna(), ignore_na=False, error="unusable field"),
                nullable=True,
                required=False,
            ),
            "age": pa.Column(
                float,
                pa.Check.in_range(*AGE_RANGE_YEARS, error="out of range"),
                nullable=True,
                coerce=True,
                required=False,
            ),
            **_measurement_columns(columns),
        },
        checks=checks,
        strict=False,
        name="events",
    )


_CHECK_LABELS: Final[tuple[tuple[str, str], ...]] = (
    ("coerce_dtype", "wrong type"),
    ("dtype(", "wrong type"),
    ("not_nullable", "missing"),
    ("field_uniqueness", "duplicate"),
    ("multiple_fields_uniqueness", "duplicate"),
    ("column_in_dataframe", "missing column"),
)


def _label(check: str) -> str:
    for prefix, label in _CHECK_LABELS:
        if check.startswith(prefix):
            return label
    return check


def _row_reasons(failures: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """One (reason, detail) per failing row index, from pandera's failure cases."""
    rows = failures[failures["index"].notna()].copy()
    rows["label"] = rows["check"].astype(str).map(_label)
    column_level = rows["schema_context"] == "Column"
    # Frame-wide checks report every column of a failing row; name them by the check only.
    rows["reason"] = np.where(
        column_level & rows["column"].notna(),
        rows["column"].astype(str) + ": " + rows["label"],
        rows["label"],
    )
    if "problems" in frame.columns:
        problem_rows = rows["reason"] == "problems: unusable field"
        if problem_rows.any():
            text = frame["problems"].reindex(rows.loc[problem_rows, "index"]).astype(str)
            field = text.str.extract(r"^([\w ]+?) ['\"]", expand=False).fillna("field")
            rows.loc[problem_rows, "reason"] = ("invalid " + field.str.replace(" ", "_")).to_numpy()
            rows.loc[problem_rows, "failure_case"] = text.to_numpy()
    rows["detail"] = rows["reason"] + " (" + rows["failure_case"].astype(str).str[:200] + ")"
    rows["order"] = np.where(column_level, 0, 1)
    rows = rows.sort_values(["order"], kind="stable").drop_duplicates(["index", "reason"])
    grouped = rows.groupby("index", sort=False)
    return pd.DataFrame(
        {"reason": grouped["reason"].first(), "detail": grouped["detail"].agg("; ".join)}
    )


def validate(frame: pd.DataFrame, contract: pa.DataFrameSchema) -> ValidationResult:
    """Split ``frame`` into the rows that honour ``contract`` and the rows that do not.

    Validation is lazy: every failing row is reported, each with the first reason found
    (column checks before table-wide checks) and all reasons in ``detail``. A problem that
    concerns no row in particular (a missing required column) rejects every row.

    Args:
        frame: The table to validate; its index must be unique.
        contract: One of this module's schemas.

    Returns:
        The :class:`ValidationResult`; ``len(valid) + len(rejected) == len(frame)``.
    """
    if not frame.index.is_unique:
        frame = frame.reset_index(drop=True)
    pending = frame
    reasons: list[pd.DataFrame] = []
    for _ in range(4):
        try:
            valid = contract.validate(pending, lazy=True)
            break
        except (SchemaErrors, SchemaError) as exc:
            failures = _failure_cases(exc)
            missing = failures[failures["check"].astype(str) == "column_in_dataframe"]
            row_level = _row_reasons(failures, frame) if missing.empty else pd.DataFrame()
            if row_level.empty:  # nothing to pin on a row: the whole table fails
                first = (missing if not missing.empty else failures).iloc[0]
                label = _label(str(first["check"]))
                what = first["failure_case"] if not missing.empty else first["column"]
                reason = f"{what}: {label}" if pd.notna(what) else label
                reasons.append(
                    pd.DataFrame(
                        {"reason": reason, "detail": f"{reason} ({first['failure_case']})"},
                        index=pending.index,
                    )
                )
                valid = pending.iloc[0:0]
                break
            row_level = row_level[row_level.index.isin(pending.index)]
            reasons.append(row_level)
            pending = pending.drop(index=row_level.index)
    else:  # pragma: no cover - each pass removes rows, so this means a pandera surprise
        raise RuntimeError(f"contract {contract.name!r} did not converge")
    all_reasons = (
        pd.concat(reasons) if reasons else pd.DataFrame(columns=list(REASON_COLUMNS), dtype=object)
    )
    rejected = frame.loc[all_reasons.index].copy()
    rejected["reason"] = all_reasons["reason"].astype(str)
    rejected["detail"] = all_reasons["detail"].astype(str)
    return ValidationResult(valid=valid, rejected=rejected)


def _failure_cases(exc: SchemaErrors | SchemaError) -> pd.DataFrame:
    if isinstance(exc, SchemaErrors):
        return exc.failure_cases
    cases = exc.failure_cases
    if isinstance(cases, pd.DataFrame) and "index" in cases:
        cases = cases.assign(schema_context="Column", column=getattr(exc.schema, "name", None))
        cases["check"] = str(exc.check)
        return cases
    return pd.DataFrame(
        {
            "schema_context": ["DataFrameSchema"],
            "column": [None],
            "check": [re.sub(r"\s+", " ", str(exc))[:200]],
            "failure_case": [str(exc)[:200]],
            "index": [None],
        }
    )
