"""Public-data adapters: RentTheRunway and ModCloth reviews onto fitml's tables.

Both public data sets are JSON lines, one review (a rental or purchase with fit feedback) per
line. :func:`read_renttherunway` and :func:`read_modcloth` turn a file into :class:`RawTables`:
users, products, size charts and events with fitml's columns (``ml_pipeline.schema``), before
contract validation (``ml_pipeline.contracts``) and ingestion (``ml_pipeline.ingest``).

Conventions:

* Ids are namespaced by source so that several sources can share one offline store:
  ``rtr:<user_id>``, ``rtr:<item_id>``; ``mc:<user_id>``, ``mc:<item_id>``.
* ``event_id`` is ``rtr-<16 hex digits>`` (``mc-`` for ModCloth): a hash of the review's raw
  JSON line, so it is the same whichever file or position the review comes from, and an exact
  duplicate line gets the same id (the contract then quarantines it as a duplicate).
  ``source_line`` (1-based line number in the file) is kept beside it.
* ``outcome``: ``small`` -> ``too_small``, ``fit`` -> ``fit``, ``large`` -> ``too_large``.
* Sizes are each retailer's own numeric size index, size systems ``rtr`` and ``modcloth``
  (see ``ml_pipeline.sizes``); ``size`` is the label (``"12"``), ``size_index`` its ordinal.
* Events carry the shopper's measurements *as given with that review* (``height_cm``,
  ``weight_kg``, ``chest_cm`` from the bra size, ...) plus the raw public fields useful as
  features (``bust_size``, ``band_in``, ``cup``, ``underbust_cm``, ``cup_cm``, ``body_type``,
  ``age``, ``category``, ``rented_for``...), because a shopper's weight or bra size can
  change between reviews.
* A field that is present but cannot be standardised (``50lbs``, age 116) becomes missing on
  the event and is described in its ``problems`` column (``None`` when there is none); the
  contract quarantines such events with that reason.
* Users: one row per shopper; each measurement is the first valid value in time order and
  ``event_timestamp`` is the shopper's first review. Optional profile extras, the same way:
  ``body_type``, ``age`` (RentTheRunway) and the bra size's ``underbust_cm`` and ``cup_cm``.
  Products: one row per item; ``category`` is the item's most frequent category, brand, fit
  type, stretch and size chart are unknown.
* Lines that cannot be read at all (bad JSON, no user/item/fit/size/date, unknown fit or size)
  go to :attr:`RawTables.rejected` with a reason.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from ml_pipeline import schema, units
from ml_pipeline.errors import InvalidValueError, NotFoundError

RTR_SYSTEM: Final[str] = "rtr"
MODCLOTH_SYSTEM: Final[str] = "modcloth"
AGE_RANGE_YEARS: Final[tuple[int, int]] = units.AGE_RANGE_YEARS
MODCLOTH_TIMESTAMP: Final[pd.Timestamp] = pd.Timestamp("2017-01-01", tz="UTC")
"""ModCloth reviews carry no date: every ModCloth event gets this time (``timestamp_imputed``)."""

_OUTCOME: Final[dict[str, str]] = {
    "small": "too_small",
    "fit": "fit",
    "large": "too_large",
    "too_small": "too_small",
    "too_large": "too_large",
}
BRA_GIRTHS: Final[tuple[str, ...]] = ("underbust_cm", "cup_cm")
"""Optional profile girths from a bra size (see :func:`_bra_parts`)."""
RTR_PROFILE_EXTRAS: Final[tuple[str, ...]] = ("body_type", "age", *BRA_GIRTHS)
"""Optional profile columns beyond the contract's, first valid value per RTR shopper."""
REJECTED_COLUMNS: Final[tuple[str, ...]] = ("event_id", "source_line", "reason", "detail", "raw")


@dataclass
class RawTables:
    """fitml tables read from a public file, before contract validation.

    Attributes:
        users: One row per shopper (``schema.USER_COLUMNS`` plus source extras).
        products: One row per item (``schema.PRODUCT_COLUMNS``).
        size_charts: Size-chart rows (``schema.SIZE_CHART_COLUMNS``); empty for public data.
        events: One row per readable review (``schema.EVENT_COLUMNS`` plus ``source_line``,
            ``problems`` and the per-review raw features).
        rejected: Lines that could not be read at all: ``event_id`` (if known),
            ``source_line``, ``reason`` (short, countable), ``detail`` and ``raw`` (the line).
        source: ``"renttherunway"`` or ``"modcloth"``.
    """

    users: pd.DataFrame
    products: pd.DataFrame
    size_charts: pd.DataFrame
    events: pd.DataFrame
    rejected: pd.DataFrame
    source: str = ""
    input_rows: int = field(default=0)
    """Number of non-blank lines read from the file."""


def _open_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text) of the non-blank lines of a JSON-lines file."""
    if not path.exists():
        raise NotFoundError(f"public data file {str(path)!r} does not exist; check the path")
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            text = line.strip()
            if text:
                yield number, text


def _read_records(path: Path, prefix: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Parse a JSON-lines file (or a JSON array) into records and unreadable-line rejects."""
    records: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    lines = list(_open_lines(Path(path)))
    if len(lines) == 1 and lines[0][1].startswith("["):  # a plain JSON array
        try:
            items = json.loads(lines[0][1])
        except json.JSONDecodeError:
            items = None
        if isinstance(items, list):
            lines = [(i, json.dumps(item)) for i, item in enumerate(items, start=1)]
    for number, text in lines:
        event_id = f"{prefix}-{hashlib.blake2b(text.encode(), digest_size=8).hexdigest()}"
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            rejected.append(_reject(event_id, number, "unreadable json", str(exc), text))
            continue
        if not isinstance(record, dict):
            rejected.append(
                _reject(event_id, number, "unreadable json", "line is not a JSON object", text)
            )
            continue
        record["_event_id"] = event_id
        record["_line"] = number
        record["_raw"] = text
        records.append(record)
    return records, rejected


def _reject(event_id: str | None, line: int, reason: str, detail: str, raw: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "source_line": line,
        "reason": reason,
        "detail": detail,
        "raw": raw,
    }


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _parse_column(series: pd.Series, parse: Callable[[Any], Any]) -> tuple[pd.Series, pd.Series]:
    """Apply ``parse`` to each distinct non-missing value; return (values, error messages)."""
    try:
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
    except TypeError:  # unhashable values (JSON lists or objects): compare them as JSON text
        safe = series.map(lambda v: v if _hashable(v) else json.dumps(v))
        codes, uniques = pd.factorize(safe, use_na_sentinel=True)
    values = np.empty(len(uniques) + 1, dtype=object)
    errors = np.empty(len(uniques) + 1, dtype=object)
    values[:] = None
    errors[:] = None
    for i, raw in enumerate(uniques):
        if _missing(raw):
            continue
        try:
            values[i] = parse(raw)
        except InvalidValueError as exc:
            errors[i] = str(exc)
    # code -1 (missing) picks the last slot, which stays None
    return (
        pd.Series(values[codes], index=series.index, dtype=object),
        pd.Series(errors[codes], index=series.index, dtype=object),
    )


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _missing_mask(series: pd.Series) -> pd.Series:
    """Vectorised :func:`_missing`: null, or text that is only white space."""
    try:
        blank = series.str.strip().eq("")
    except AttributeError:  # no text values at all
        return series.isna()
    return series.isna() | blank.fillna(False).astype(bool)


def _parse_age(value: Any) -> float:
    text = str(value).strip()
    try:
        age = float(text)
    except ValueError:
        raise InvalidValueError(
            "age", value, "is not a number of years", "write it like 34"
        ) from None
    lo, hi = AGE_RANGE_YEARS
    if not (math.isfinite(age) and lo <= age <= hi):
        raise InvalidValueError("age", value, f"is outside the plausible {lo}..{hi} years")
    return age


def _size_label(system: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        index = units.to_size_index(system, value)
        return str(index) if system in (RTR_SYSTEM, MODCLOTH_SYSTEM) else str(value)

    return parse


def _records_frame(records: list[dict[str, Any]], columns: dict[str, str]) -> pd.DataFrame:
    """A frame of the wanted raw fields (renamed), plus the bookkeeping columns."""
    frame = pd.DataFrame.from_records(
        records, columns=[*columns, "_event_id", "_line", "_raw"], coerce_float=False
    )
    return frame.rename(columns=columns)


def _standardise(
    frame: pd.DataFrame,
    *,
    source: str,
    prefix: str,
    system: str,
    parsers: dict[str, tuple[str, Callable[[Any], Any]]],
    timestamps: pd.Series | None,
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Map raw review fields onto event columns; split off unreadable rows.

    Args:
        frame: Raw fields (already renamed) with ``_event_id``, ``_line``, ``_raw``.
        source: Data set name, for messages.
        prefix: Id namespace (``rtr``/``mc``).
        system: The retailer's size system.
        parsers: Output column -> (input column, parser) for optional per-review fields.
        timestamps: Parsed event times (NaT where unreadable), or None to use
            :data:`MODCLOTH_TIMESTAMP`.

    Returns:
        The events frame and the list of rejected rows.
    """
    n = len(frame)
    reason = pd.Series([None] * n, index=frame.index, dtype=object)
    detail = pd.Series([None] * n, index=frame.index, dtype=object)

    def flag(mask: pd.Series, why: str, what: pd.Series | str) -> None:
        new = mask & reason.isna()
        reason[new] = why
        detail[new] = what[new] if isinstance(what, pd.Series) else what

    for col in ("user_id", "item_id", "fit", "size"):
        flag(
            _missing_mask(frame[col]),
            f"missing {col}",
            f"the review has no {col!r}; {source} reviews need user_id, item_id, fit and size",
        )
    outcome, _ = _parse_column(frame["fit"], lambda v: _OUTCOME.get(str(v).strip().lower()))
    flag(
        outcome.isna() & ~_missing_mask(frame["fit"]),
        "invalid fit",
        "fit " + frame["fit"].astype(str) + " is not one of small, fit, large",
    )
    size_label, size_error = _parse_column(frame["size"], _size_label(system))
    flag(size_error.notna(), "invalid size", size_error)
    if timestamps is None:
        event_time = pd.Series(MODCLOTH_TIMESTAMP, index=frame.index)
    else:
        event_time = timestamps
        flag(
            _missing_mask(frame["review_date"]),
            "missing review_date",
            f"the review has no 'review_date'; {source} reviews need one",
        )
        flag(
            event_time.isna(),
            "invalid review_date",
            "review_date "
            + frame["review_date"].astype(str)
            + " is not a date like April 20, 2016",
        )

    bad = reason.notna()
    rejected = [
        _reject(e, int(line), r, d, raw)
        for e, line, r, d, raw in zip(
            frame.loc[bad, "_event_id"],
            frame.loc[bad, "_line"],
            reason[bad],
            detail[bad],
            frame.loc[bad, "_raw"],
            strict=True,
        )
    ]
    good = frame.loc[~bad]
    events = pd.DataFrame(
        {
            "event_id": good["_event_id"].astype(object),
            "user_id": prefix + ":" + good["user_id"].astype(str).str.strip(),
            "product_id": prefix + ":" + good["item_id"].astype(str).str.strip(),
            "size": size_label[~bad].astype(object),
            "size_index": size_label[~bad].astype("int64"),
            "outcome": outcome[~bad].astype(object),
            "event_timestamp": event_time[~bad],
            "source_line": good["_line"].astype("int64"),
            "size_system": system,
        }
    )
    problems = pd.Series([None] * len(good), index=good.index, dtype=object)
    for out_col, (in_col, parse) in parsers.items():
        values, errors = _parse_column(good[in_col], parse)
        events[out_col] = values
        has = errors.notna()
        problems[has] = np.where(
            problems[has].isna(), errors[has], problems[has].astype(str) + "; " + errors[has]
        )
    events["problems"] = problems
    return events.reset_index(drop=True), rejected


def _bra_parts(events: pd.DataFrame, bras: pd.Series) -> None:
    """Split parsed :class:`~ml_pipeline.units.BraSize` objects into event columns."""
    events["band_in"] = pd.array(
        [b.band_in if isinstance(b, units.BraSize) else None for b in bras], dtype="Int64"
    )
    events["cup"] = [b.cup if isinstance(b, units.BraSize) else None for b in bras]
    events["cup_step_in"] = [
        b.cup_step_in if isinstance(b, units.BraSize) else np.nan for b in bras
    ]
    events["chest_cm"] = [b.bust_cm if isinstance(b, units.BraSize) else np.nan for b in bras]
    # The bra size in metric girths a retailer's profile could carry too: the underbust (the
    # band) and the cup (bust minus underbust); the chest girth above is their sum.
    events["underbust_cm"] = events["band_in"].astype("float64") * units.CM_PER_INCH
    events["cup_cm"] = events["cup_step_in"].astype("float64") * units.CM_PER_INCH


def _first_valid(events: pd.DataFrame, key: str, columns: list[str]) -> pd.DataFrame:
    """Per ``key``, the first non-missing value of each column in (time, line) order."""
    ordered = events.sort_values(["event_timestamp", "source_line"], kind="stable")
    grouped = ordered.groupby(key, sort=True)
    out = grouped[columns].first()  # GroupBy.first skips missing values
    out["event_timestamp"] = grouped["event_timestamp"].min()
    return out.reset_index()


def _users(events: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    measured = [c for c in schema.MEASUREMENTS if c in events.columns]
    users = _first_valid(events, "user_id", measured + extra)
    users["sex"] = None
    users["fit_preference"] = None
    for col in schema.MEASUREMENTS:
        if col not in users.columns:
            users[col] = np.nan
        users[col] = users[col].astype("float64")
    return users[[*schema.USER_COLUMNS, *extra]]


def _products(events: pd.DataFrame, system: str) -> pd.DataFrame:
    ordered = events.sort_values(["event_timestamp", "source_line"], kind="stable")
    counts = (
        ordered.dropna(subset=["category"])
        .groupby(["product_id", "category"], sort=False)
        .size()
        .reset_index(name="n")
        .sort_values("n", ascending=False, kind="stable")
    )
    category = counts.drop_duplicates("product_id").set_index("product_id")["category"]
    products = ordered.groupby("product_id", sort=True)["event_timestamp"].min().to_frame()
    products["category"] = category
    products["brand"] = None
    products["fit_type"] = None
    products["stretch"] = np.nan
    products["size_system"] = system
    products = products.reset_index()
    products["category"] = (
        products["category"].astype(object).where(products["category"].notna(), None)
    )
    return products[list(schema.PRODUCT_COLUMNS)]


def empty_size_charts() -> pd.DataFrame:
    """Return an empty size-chart table with the contract's columns and types."""
    return pd.DataFrame(
        {
            "product_id": pd.Series(dtype=object),
            "size": pd.Series(dtype=object),
            "size_index": pd.Series(dtype="int64"),
            "dimension": pd.Series(dtype=object),
            "low_cm": pd.Series(dtype="float64"),
            "high_cm": pd.Series(dtype="float64"),
        }
    )


def _rejected_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(REJECTED_COLUMNS))
    frame["source_line"] = frame["source_line"].astype("int64")
    return frame


def _text_or_none(value: Any) -> str | None:
    return None if _missing(value) else str(value).strip().lower()


def read_renttherunway(path: str | Path) -> RawTables:
    """Read a RentTheRunway reviews file into fitml tables (before contract validation).

    Accepts JSON lines (``.json``, ``.jsonl``, optionally gzipped) or a JSON array. Each review
    becomes one event (see the module docstring for ids, outcomes and the per-review feature
    columns ``bust_size, band_in, cup, cup_step_in, chest_cm, height_cm, weight_kg,
    body_type, age, category, rented_for``).

    Args:
        path: The file, e.g. ``/work/shared/data/renttherunway/rtr_dev.jsonl.gz``.

    Returns:
        The :class:`RawTables`; ``events`` plus ``rejected`` hold every non-blank line once.

    Raises:
        NotFoundError: if the file does not exist.
    """
    records, rejected = _read_records(Path(path), "rtr")
    frame = _records_frame(
        records,
        {
            "user_id": "user_id",
            "item_id": "item_id",
            "fit": "fit",
            "size": "size",
            "review_date": "review_date",
            "bust size": "bust_size",
            "height": "height",
            "weight": "weight",
            "age": "age",
            "body type": "body_type",
            "category": "category",
            "rented for": "rented_for",
        },
    )
    timestamps = pd.to_datetime(frame["review_date"], format="%B %d, %Y", errors="coerce", utc=True)
    events, more = _standardise(
        frame,
        source="RentTheRunway",
        prefix="rtr",
        system=RTR_SYSTEM,
        parsers={
            "bra": ("bust_size", units.parse_bra_size),
            "height_cm": ("height", units.parse_height_cm),
            "weight_kg": ("weight", units.parse_weight_kg),
            "age": ("age", _parse_age),
            "body_type": ("body_type", _text_or_none),
            "category": ("category", _text_or_none),
            "rented_for": ("rented_for", _text_or_none),
            "bust_size": ("bust_size", _text_or_none),
        },
        timestamps=timestamps,
    )
    _bra_parts(events, events.pop("bra"))
    for col in ("height_cm", "weight_kg", "age"):
        events[col] = events[col].astype("float64")
    return RawTables(
        users=_users(events, list(RTR_PROFILE_EXTRAS)),
        products=_products(events, RTR_SYSTEM),
        size_charts=empty_size_charts(),
        events=events,
        rejected=_rejected_frame(rejected + more),
        source="renttherunway",
        input_rows=len(records) + len(rejected),
    )


def _modcloth_bra(row: tuple[Any, Any]) -> units.BraSize:
    cup, band = row
    return units.parse_bra_size(cup, band_in=band)


def read_modcloth(path: str | Path) -> RawTables:
    """Read a ModCloth reviews file into fitml tables (before contract validation).

    ModCloth gives girths as bare inch numbers (``waist``, ``hips``, ``bust``), the bra band
    (``bra size``) and cup (``cup size``, e.g. ``dd/e``) apart, and heights like ``5ft 6in``.
    ``chest_cm`` is the ``bust`` girth when given, else the bust implied by band and cup.
    Reviews carry no date: ``event_timestamp`` is :data:`MODCLOTH_TIMESTAMP` and
    ``timestamp_imputed`` is True, so do not make time-based splits on ModCloth.

    Args:
        path: The file, e.g. ``/work/shared/data/modcloth/modcloth_sample.jsonl``.

    Returns:
        The :class:`RawTables`; ``events`` plus ``rejected`` hold every non-blank line once.

    Raises:
        NotFoundError: if the file does not exist.
    """
    records, rejected = _read_records(Path(path), "mc")
    frame = _records_frame(
        records,
        {
            "user_id": "user_id",
            "item_id": "item_id",
            "fit": "fit",
            "size": "size",
            "height": "height",
            "waist": "waist",
            "hips": "hips",
            "bust": "bust",
            "bra size": "bra_band",
            "cup size": "cup_size",
            "category": "category",
            "length": "length",
            "shoe width": "shoe_width",
        },
    )
    both = pd.Series(
        list(zip(frame["cup_size"], frame["bra_band"], strict=True)), index=frame.index
    )
    frame["bra_pair"] = both.where(frame["cup_size"].notna() & frame["bra_band"].notna(), None)

    def girth(name: str) -> Callable[[Any], float]:
        return lambda v: units.parse_length_cm(v, "in", field=name)

    events, more = _standardise(
        frame,
        source="ModCloth",
        prefix="mc",
        system=MODCLOTH_SYSTEM,
        parsers={
            "bra": ("bra_pair", _modcloth_bra),
            "height_cm": ("height", units.parse_height_cm),
            "waist_cm": ("waist", girth("waist")),
            "hips_cm": ("hips", girth("hips")),
            "bust_girth_cm": ("bust", girth("bust")),
            "category": ("category", _text_or_none),
            "length": ("length", _text_or_none),
            "cup_size": ("cup_size", _text_or_none),
            "shoe_width": ("shoe_width", _text_or_none),
        },
        timestamps=None,
    )
    _bra_parts(events, events.pop("bra"))
    bust = events.pop("bust_girth_cm").astype("float64")
    events["chest_cm"] = bust.where(bust.notna(), events["chest_cm"]).astype("float64")
    for col in ("height_cm", "waist_cm", "hips_cm"):
        events[col] = events[col].astype("float64")
    events["timestamp_imputed"] = True
    return RawTables(
        users=_users(events, list(BRA_GIRTHS)),
        products=_products(events, MODCLOTH_SYSTEM),
        size_charts=empty_size_charts(),
        events=events,
        rejected=_rejected_frame(rejected + more),
        source="modcloth",
        input_rows=len(records) + len(rejected),
    )
