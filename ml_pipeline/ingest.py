"""Ingestion: validate raw tables against the contracts and write them to the offline store.

Every input row ends up in exactly one place: accepted rows are merged into
``<workdir>/offline/{users,products,size_charts,events}.parquet`` and rejected rows are added
to ``<workdir>/quarantine/<table>.parquet`` with ``reason`` (short, countable), ``detail`` and
``source`` columns (the rejected values are stored as text, as given). Per table,
``accepted + quarantined == input rows``.

Merging is idempotent: a row replaces the stored row with the same key, so ingesting the same
data twice leaves the store as after once. Keys: users (``user_id``, ``event_timestamp``);
products ``product_id``; size charts (``product_id``, ``size``, ``dimension``); events
``event_id``. Quarantine files are merged the same way on their full content.

Referential checks see what is already stored: an event may refer to a user ingested earlier.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from ml_pipeline import adapters, contracts
from ml_pipeline.errors import IngestError, NotFoundError, RejectRateExceededError

TABLES: Final[tuple[str, ...]] = ("users", "products", "size_charts", "events")
KEYS: Final[dict[str, list[str]]] = {
    "users": ["user_id", "event_timestamp"],
    "products": ["product_id"],
    "size_charts": ["product_id", "size", "dimension"],
    "events": ["event_id"],
}
"""The merge key of each offline table."""


@dataclass
class IngestSummary:
    """What one ingestion run did.

    Attributes:
        source: ``"synthetic"``, ``"renttherunway"`` or ``"modcloth"``.
        input: Input rows per table, and ``"total"``.
        accepted: Accepted rows per table, and ``"total"``.
        quarantined: Quarantined rows per table, and ``"total"``.
        reasons: Quarantine reason -> row count, over all tables (``"<table>: <reason>"``).
        reject_rate: ``quarantined["total"] / input["total"]`` (0 when there is no input).
        seconds: Wall-clock time of the run.
        workdir: The work directory written to.
    """

    source: str
    input: dict[str, int] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    reject_rate: float = 0.0
    seconds: float = 0.0
    workdir: str = ""
    examples: dict[str, str] = field(default_factory=dict)
    """Quarantine reason -> the first row quarantined for it: file, row number, column and
    value (when the input came from files: ``fitml ingest tables``)."""

    def to_json(self) -> str:
        """Return the summary as an indented JSON document."""
        return json.dumps(asdict(self), indent=2, sort_keys=False)


def offline_dir(workdir: str | Path) -> Path:
    """Return ``<workdir>/offline``, where accepted tables live."""
    return Path(workdir) / "offline"


def quarantine_dir(workdir: str | Path) -> Path:
    """Return ``<workdir>/quarantine``, where rejected rows live."""
    return Path(workdir) / "quarantine"


def _read_stored(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.exists() else None


def _write_atomic(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _merge(stored: pd.DataFrame | None, new: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """Stored rows whose key is not in ``new``, then ``new`` (new rows win)."""
    new = new.reset_index(drop=True)
    if stored is None or stored.empty:
        return new
    if new.empty:
        return stored
    new_keys = pd.MultiIndex.from_frame(new[key].astype(str))
    old_keys = pd.MultiIndex.from_frame(stored[key].astype(str))
    kept = stored.loc[~old_keys.isin(new_keys)]
    return pd.concat([kept, new], ignore_index=True)


def _as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Quarantined rows as nullable text, so any raw value can be stored."""
    out = frame.reset_index(drop=True).copy()
    for col in out.columns:
        values = out[col]
        out[col] = (
            values.astype(object)
            .where(values.notna(), None)
            .map(lambda v: None if v is None else str(v))
        )
    return out.astype("string")


def _quarantine(workdir: Path, table: str, rejected: pd.DataFrame, source: str) -> None:
    if rejected.empty:
        return
    new = _as_text(rejected.assign(source=source))
    path = quarantine_dir(workdir) / f"{table}.parquet"
    stored = _read_stored(path)
    merged = new if stored is None else pd.concat([stored.astype("string"), new], ignore_index=True)
    merged = merged.drop_duplicates(keep="last", ignore_index=True)
    _write_atomic(merged, path)


def _examples(
    file: str, table: str, rejected: pd.DataFrame, seen: dict[str, str]
) -> dict[str, str]:
    """The first quarantined row of each new reason: ``<file> row <n>: <detail>``.

    Rows are numbered from 1 after the header (the data row of a CSV file, the row of a
    parquet file); rows rejected by validation keep their position as index.
    """
    out: dict[str, str] = {}
    for index, row in rejected.iterrows():
        key = f"{table}: {row['reason']}"
        if key in seen or key in out:
            continue
        where = f"row {int(index) + 1}" if isinstance(index, int | np.integer) else "row ?"
        out[key] = f"{file} {where}: {row['detail']}"
    return out


def _known(stored: pd.DataFrame | None, accepted: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    parts = [accepted[columns]]
    if stored is not None and not stored.empty:
        parts.insert(0, stored[columns])
    return pd.concat(parts, ignore_index=True)


def _ingest_tables(
    tables: dict[str, pd.DataFrame],
    workdir: str | Path,
    *,
    source: str,
    pre_rejected: pd.DataFrame | None = None,
    input_rows: dict[str, int] | None = None,
    max_reject_rate: float | None = None,
    started: float | None = None,
    files: dict[str, str] | None = None,
) -> IngestSummary:
    """Validate the four tables in dependency order, write accepted and quarantined rows.

    ``files`` (table -> file read) makes each quarantined row's ``source`` its file and adds
    an example per reason (file, row, column and value) to the summary.
    """
    start = time.perf_counter() if started is None else started
    work = Path(workdir)
    stored = {t: _read_stored(offline_dir(work) / f"{t}.parquet") for t in TABLES}
    results: dict[str, contracts.ValidationResult] = {}

    results["users"] = contracts.validate(tables["users"], contracts.users_schema())
    results["products"] = contracts.validate(tables["products"], contracts.products_schema())
    products = _known(
        stored["products"], results["products"].valid, ["product_id", "size_system"]
    ).drop_duplicates("product_id", keep="last")
    results["size_charts"] = contracts.validate(
        tables["size_charts"], contracts.size_charts_schema(products)
    )
    charts = _known(stored["size_charts"], results["size_charts"].valid, ["product_id", "size"])
    users = _known(stored["users"], results["users"].valid, ["user_id"])["user_id"]
    events = tables["events"]
    results["events"] = contracts.validate(
        events, contracts.events_schema(users, products, charts, events.columns)
    )

    summary = IngestSummary(source=source, workdir=str(work))
    reasons: Counter[str] = Counter()
    for table in TABLES:
        result = results[table]
        rejected = result.rejected
        if table == "events" and pre_rejected is not None and not pre_rejected.empty:
            rejected = pd.concat([rejected, pre_rejected], ignore_index=True)
        accepted = result.valid
        if table == "events" and "problems" in accepted.columns:
            accepted = accepted.drop(columns="problems")
        merged = _merge(stored[table], accepted, KEYS[table])
        _write_atomic(merged, offline_dir(work) / f"{table}.parquet")
        file = (files or {}).get(table)
        _quarantine(work, table, rejected, file or source)
        if file is not None:
            summary.examples.update(_examples(file, table, rejected, summary.examples))
        given = (input_rows or {}).get(table, len(tables[table]))
        summary.input[table] = int(given)
        summary.accepted[table] = len(accepted)
        summary.quarantined[table] = len(rejected)
        for reason, count in rejected["reason"].value_counts().items():
            reasons[f"{table}: {reason}"] += int(count)
        if summary.accepted[table] + summary.quarantined[table] != summary.input[table]:
            raise AssertionError(  # pragma: no cover - an invariant of validate()
                f"{table}: {summary.accepted[table]} accepted + {summary.quarantined[table]} "
                f"quarantined != {summary.input[table]} input rows"
            )
    for counts in (summary.input, summary.accepted, summary.quarantined):
        counts["total"] = sum(counts[t] for t in TABLES)
    summary.reasons = dict(reasons.most_common())
    total = summary.input["total"]
    summary.reject_rate = summary.quarantined["total"] / total if total else 0.0
    summary.seconds = round(time.perf_counter() - start, 3)
    if max_reject_rate is not None and summary.reject_rate > max_reject_rate:
        top = ", ".join(f"{r}: {n}" for r, n in list(summary.reasons.items())[:3])
        raise RejectRateExceededError(
            summary.reject_rate, max_reject_rate, top, summary_json=summary.to_json()
        )
    return summary


def ingest_synthetic(
    raw_dir: str | Path, workdir: str | Path, *, max_reject_rate: float | None = None
) -> IngestSummary:
    """Ingest a raw synthetic data set (``fitml data generate`` output).

    Reads ``users.parquet``, ``products.parquet``, ``events.parquet`` and (optionally)
    ``size_charts.parquet`` from ``raw_dir``; copies ``truth.parquet`` unchanged to
    ``<workdir>/offline/truth.parquet`` when present.

    Args:
        raw_dir: The raw data folder.
        workdir: The work directory (``offline/`` and ``quarantine/`` are written under it).
        max_reject_rate: Fail when a larger share of all input rows is quarantined.

    Returns:
        The :class:`IngestSummary`.

    Raises:
        NotFoundError: if ``raw_dir`` lacks a required table.
        RejectRateExceededError: if the reject rate exceeds ``max_reject_rate`` (raised after
            everything has been written).
    """
    start = time.perf_counter()
    raw = Path(raw_dir)
    tables: dict[str, pd.DataFrame] = {}
    for table in TABLES:
        path = raw / f"{table}.parquet"
        if path.exists():
            tables[table] = pd.read_parquet(path)
        elif table == "size_charts":
            tables[table] = adapters.empty_size_charts()
        else:
            raise NotFoundError(
                f"raw table {str(path)!r} does not exist; point to a folder written by "
                "`fitml data generate` (users, products, events and size_charts .parquet)"
            )
    truth = raw / "truth.parquet"
    if truth.exists():
        target = offline_dir(workdir) / "truth.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(truth, target)
    return _ingest_tables(
        tables, workdir, source="synthetic", max_reject_rate=max_reject_rate, started=start
    )


TABLE_FORMATS: Final[tuple[str, ...]] = ("parquet", "csv")
"""The file formats of a retailer's own tables (``<table>.parquet`` or ``<table>.csv``)."""


def _table_file(raw: Path, table: str) -> Path | None:
    """The one file of ``table`` in ``raw`` (None when absent).

    Raises:
        IngestError: both a parquet and a CSV file of the table are there.
    """
    found = [raw / f"{table}.{fmt}" for fmt in TABLE_FORMATS if (raw / f"{table}.{fmt}").is_file()]
    if len(found) > 1:
        raise IngestError(
            f"{raw} holds both {found[0].name} and {found[1].name}; keep one file per table"
        )
    return found[0] if found else None


def read_table_file(path: Path, table: str) -> pd.DataFrame:
    """Read one of a retailer's tables (parquet or CSV) and check it has the required columns.

    CSV is read as text (an empty field is a missing value); the contract's types are applied
    by validation, which quarantines the rows whose values do not convert.

    Raises:
        IngestError: the file cannot be read, or lacks a column the contract requires; the
            message names the file and the column.
    """
    from ml_pipeline.contract_doc import contract_schemas

    try:
        if path.suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        else:
            frame = pd.read_parquet(path)
    except Exception as exc:  # any reader error becomes one clear message
        raise IngestError(f"{path}: cannot be read as {path.suffix[1:]} ({exc})") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    contract = contract_schemas()[table]
    missing = [n for n, c in contract.columns.items() if c.required and n not in frame.columns]
    if missing:
        raise IngestError(
            f"{path}: missing required column {missing[0]!r} (found: "
            f"{', '.join(frame.columns) or 'none'}); see docs/data-contract.md or "
            "`fitml data contract`"
        )
    return frame


def ingest_tables(
    raw_dir: str | Path, workdir: str | Path, *, max_reject_rate: float | None = None
) -> IngestSummary:
    """Ingest a retailer's own tables: ``<table>.parquet`` or ``<table>.csv`` in ``raw_dir``.

    ``users``, ``products`` and ``events`` are required, ``size_charts`` optional (see
    ``docs/data-contract.md``). Rows that break the contract are quarantined as in every
    ingestion, with the file they came from as ``source``; the summary's ``examples`` name
    the file, row, column and value of the first row quarantined for each reason.

    Raises:
        NotFoundError: ``raw_dir`` is not a folder, or a required table has no file.
        IngestError: a file is unreadable, lacks a required column, or is there twice.
        RejectRateExceededError: as in :func:`ingest_synthetic`.
    """
    start = time.perf_counter()
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise NotFoundError(f"{raw} is not a folder; give the folder holding your table files")
    files: dict[str, Path] = {}
    tables: dict[str, pd.DataFrame] = {}
    for table in TABLES:
        path = _table_file(raw, table)
        if path is None:
            if table == "size_charts":
                tables[table] = adapters.empty_size_charts()
                continue
            raise NotFoundError(
                f"no {table}.parquet or {table}.csv in {raw}; the contract "
                "(docs/data-contract.md, `fitml data contract`) lists the files"
            )
        files[table] = path
        tables[table] = read_table_file(path, table)
    return _ingest_tables(
        tables,
        workdir,
        source="tables",
        max_reject_rate=max_reject_rate,
        started=start,
        files={t: str(p) for t, p in files.items()},
    )


def _ingest_public(
    raw: adapters.RawTables, workdir: str | Path, max_reject_rate: float | None, start: float
) -> IngestSummary:
    tables = {
        "users": raw.users,
        "products": raw.products,
        "size_charts": raw.size_charts,
        "events": raw.events,
    }
    counts = {t: len(f) for t, f in tables.items()}
    counts["events"] = raw.input_rows
    return _ingest_tables(
        tables,
        workdir,
        source=raw.source,
        pre_rejected=raw.rejected,
        input_rows=counts,
        max_reject_rate=max_reject_rate,
        started=start,
    )


def ingest_renttherunway(
    path: str | Path, workdir: str | Path, *, max_reject_rate: float | None = None
) -> IngestSummary:
    """Ingest a RentTheRunway reviews file (see :func:`ml_pipeline.adapters.read_renttherunway`).

    Per table ``input`` counts: events = non-blank lines of the file; users and products =
    the distinct shoppers and items read from it.

    Args:
        path: JSON lines, optionally gzipped, e.g. ``rtr_dev.jsonl.gz``.
        workdir: The work directory.
        max_reject_rate: Fail when a larger share of all input rows is quarantined.

    Returns:
        The :class:`IngestSummary`.

    Raises:
        NotFoundError: if the file does not exist.
        RejectRateExceededError: if the reject rate exceeds ``max_reject_rate`` (raised after
            everything has been written).
    """
    start = time.perf_counter()
    return _ingest_public(adapters.read_renttherunway(path), workdir, max_reject_rate, start)


def ingest_modcloth(
    path: str | Path, workdir: str | Path, *, max_reject_rate: float | None = None
) -> IngestSummary:
    """Ingest a ModCloth reviews file (see :func:`ml_pipeline.adapters.read_modcloth`).

    Args:
        path: JSON lines, optionally gzipped, e.g. ``modcloth_sample.jsonl``.
        workdir: The work directory.
        max_reject_rate: Fail when a larger share of all input rows is quarantined.

    Returns:
        The :class:`IngestSummary`.

    Raises:
        NotFoundError: if the file does not exist.
        RejectRateExceededError: if the reject rate exceeds ``max_reject_rate`` (raised after
            everything has been written).
    """
    start = time.perf_counter()
    return _ingest_public(adapters.read_modcloth(path), workdir, max_reject_rate, start)


def summary_from_json(text: str) -> IngestSummary:
    """Rebuild an :class:`IngestSummary` from :meth:`IngestSummary.to_json` output.

    Args:
        text: The JSON document.

    Returns:
        The summary.
    """
    data: dict[str, Any] = json.loads(text)
    return IngestSummary(**data)
