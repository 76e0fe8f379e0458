"""The data contract as a document for retailers, generated from the pandera schemas.

``fitml data contract`` prints it; ``docs/data-contract.md`` is the committed copy (a test
keeps the two equal). Every constraint in the tables below is read from the schemas that
ingestion enforces (:mod:`ml_pipeline.contracts`), so the document cannot say something the
validation does not do; only the plain-language meaning of each column is written here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import pandera.pandas as pa

from ml_pipeline import contracts, schema, sizes

CONTRACT_FILE: Final = Path(__file__).resolve().parents[1] / "docs" / "data-contract.md"
"""The committed copy of the contract (``fitml data contract --out docs/data-contract.md``)."""

TABLE_NOTES: Final[dict[str, str]] = {
    "users": "One row per shopper and profile update (a later row is a newer profile).",
    "products": "One row per product of the catalogue.",
    "size_charts": (
        "One row per (product, size, body dimension): the body girth range the size "
        "is cut for. Without a chart a product is still recommended for, from feedback alone."
    ),
    "events": "One row per try-on: the size a shopper tried and what they said about its fit.",
}
REQUIRED_TABLES: Final[tuple[str, ...]] = ("users", "products", "events")

COLUMN_MEANING: Final[dict[str, str]] = {
    "user_id": "the shopper's id (any stable text; pseudonymous is fine)",
    "sex": "`F` or `M`",
    "height_cm": "height, centimetres",
    "weight_kg": "weight, kilograms",
    "chest_cm": "chest (men) or bust (women) girth at the fullest part, centimetres",
    "waist_cm": "natural waist girth, centimetres",
    "hips_cm": "hip girth at the fullest part, centimetres",
    "inseam_cm": "inside leg length, centimetres",
    "fit_preference": "how the shopper likes clothes to fit",
    "users.event_timestamp": "when this profile took effect (ISO 8601; UTC unless an offset)",
    "products.event_timestamp": "when the product entered the catalogue (ISO 8601)",
    "events.event_timestamp": "when the shopper tried the size (ISO 8601)",
    "age": "age in years",
    "body_type": "free text, e.g. `hourglass`",
    "underbust_cm": "girth under the bust, cm (a bra size's band)",
    "cup_cm": "bust girth minus underbust, cm (a bra size's cup)",
    "product_id": "the product's id",
    "brand": "brand name",
    "category": "garment category (fitml's synthetic data uses "
    + ", ".join(f"`{c}`" for c in schema.CATEGORIES)
    + "; any non-empty text is accepted)",
    "fit_type": "the cut",
    "stretch": "fabric stretch: 0 rigid .. 1 very stretchy",
    "size_system": "the product's size system (see *Size systems* below)",
    "size": "size label in the product's size system, e.g. `M`, `8`, `32`",
    "size_index": "position of `size` in its size system, 0 = smallest (see below)",
    "dimension": "the body girth the chart row is cut for",
    "low_cm": "lowest body girth the size is cut for, centimetres (inclusive)",
    "high_cm": "highest body girth, centimetres (exclusive; above `low_cm`)",
    "event_id": "the try-on's id: the idempotency key (a repeated id is stored once)",
    "outcome": "what the shopper said about the size they tried",
    "problems": "set by fitml's public-data adapters; leave it out",
}

_CUSTOM_CHECKS: Final[dict[str, str]] = {
    "unknown product": "a `product_id` of products",
    "unknown user": "a `user_id` of users",
    "empty id": "not empty",
    "empty category": "not empty",
    "negative": ">= 0",
}
_TABLE_CHECKS: Final[dict[str, str]] = {
    "low_cm not below high_cm": "`low_cm` is below `high_cm`",
    "size not in the product's size system": (
        "`size` is a size of the product's `size_system` and `size_index` is its position"
    ),
    "size not in the product's size chart": (
        "when the product has a size chart, `size` is one of the chart's sizes"
    ),
}


def contract_schemas() -> dict[str, pa.DataFrameSchema]:
    """The schemas ingestion validates each table with (with every referential check on)."""
    import pandas as pd

    products = pd.DataFrame({"product_id": ["p"], "size_system": ["alpha"]})
    charts = pd.DataFrame({"product_id": ["p"], "size": ["M"]})
    return {
        "users": contracts.users_schema(),
        "products": contracts.products_schema(),
        "size_charts": contracts.size_charts_schema(products),
        "events": contracts.events_schema(["u"], products, charts, schema.MEASUREMENTS),
    }


def _type(column: pa.Column) -> str:
    dtype = str(column.dtype)
    if "datetime" in dtype:
        return "timestamp"
    if dtype.startswith("int"):
        return "integer"
    if dtype.startswith("float"):
        return "number"
    return "text"


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check_text(check: Any) -> str:
    stats = getattr(check, "statistics", None) or {}
    name = getattr(check, "name", "") or ""
    if name == "in_range":
        return f"{_number(stats['min_value'])} .. {_number(stats['max_value'])}"
    if name == "isin":
        return "one of " + ", ".join(f"`{v}`" for v in stats["allowed_values"])
    error = str(getattr(check, "error", "") or "")
    if error in _CUSTOM_CHECKS:
        return _CUSTOM_CHECKS[error]
    if name == "greater_than_or_equal_to":
        return f">= {_number(stats['min_value'])}"
    if name == "str_length":
        return "not empty"
    if error == "unusable field":
        return "empty"
    return error or name


def _allowed(name: str, column: pa.Column) -> str:
    parts = [_check_text(c) for c in column.checks]
    if name == "size_system":
        parts = ["one of " + ", ".join(f"`{s}`" for s in sizes.size_systems())]
    if column.unique:
        parts.append("unique")
    return "; ".join(dict.fromkeys(p for p in parts if p)) or "any"


def render_table(table: str, contract: pa.DataFrameSchema) -> str:
    """One table of the contract as Markdown: files, columns, rules."""
    required = "required" if table in REQUIRED_TABLES else "optional"
    lines = [
        f"### `{table}` ({required}): `{table}.parquet` or `{table}.csv`",
        "",
        TABLE_NOTES[table],
        "",
        "| column | type | required | may be empty | allowed values | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for name, column in contract.columns.items():
        if name == "problems":
            continue
        lines.append(
            f"| `{name}` | {_type(column)} | {'yes' if column.required else 'no'} | "
            f"{'yes' if column.nullable else 'no'} | {_allowed(name, column)} | "
            f"{COLUMN_MEANING.get(f'{table}.{name}', COLUMN_MEANING.get(name, ''))} |"
        )
    rules = []
    if contract.unique:
        keys = ", ".join(f"`{k}`" for k in contract.unique)
        rules.append(f"one row per ({keys}): later rows repeating a key are quarantined")
    rules += [_TABLE_CHECKS.get(str(c.error), str(c.error)) for c in contract.checks]
    if rules:
        lines += ["", *(f"- {rule}" for rule in rules)]
    lines.append("")
    return "\n".join(lines)


def render_sizes() -> str:
    """The size systems and their scales, smallest first, as Markdown."""
    lines = [
        "## Size systems",
        "",
        "`size_index` is the position of the size label in its system's scale (0 = smallest);",
        "labels match case-insensitively.",
        "",
        "| `size_system` | sizes, smallest first (`size_index` 0, 1, ...) |",
        "|---|---|",
    ]
    for system, labels in sizes.SIZE_SCALES.items():
        shown = ", ".join(labels)
        if len(labels) > 20:
            shown = f"{labels[0]}, {labels[1]} .. {labels[-1]}"
        lines.append(f"| `{system}` | {shown} |")
    lines.append("")
    return "\n".join(lines)


def render() -> str:
    """The whole contract as Markdown (what ``docs/data-contract.md`` holds)."""
    head = [
        "# fitml data contract",
        "",
        "<!-- Generated by `fitml data contract --out docs/data-contract.md` from the",
        "     pandera schemas in ml_pipeline/contracts.py; tests/unit/test_own_data.py keeps",
        "     it current. -->",
        "",
        "What a retailer hands fitml: one folder with a file per table, each either parquet or",
        "CSV (UTF-8, a header row, comma-separated, an empty field for a missing value). Load it",
        "with `fitml ingest tables DIR --workdir WORKDIR`.",
        "",
        "Ingestion checks every row against the rules below. A row that breaks one is not loaded:",
        "it goes to `WORKDIR/quarantine/<table>.parquet` with a `reason` (e.g. `height_cm: out of",
        "range`), a `detail` naming the value, and the file it came from; the command prints how",
        "many rows of each file were accepted and quarantined, with an example of each reason.",
        "Every input row ends up in exactly one of the two places. A file that cannot be used at",
        "all (missing, unreadable, or without a required column) stops the command with a",
        "message naming the file and the column, before anything is written.",
        "",
        "Units: lengths in centimetres, weights in kilograms, timestamps ISO 8601 (with an",
        "offset, or read as UTC). Extra columns are kept but not used. Ingesting the same data",
        "twice leaves the store as after once (rows replace stored rows with the same key), and",
        "an event may refer to a user or product ingested earlier.",
        "",
        "## Tables",
        "",
        "",
    ]
    body = [render_table(t, s) for t, s in contract_schemas().items()]
    return "\n".join(head) + "\n".join(body) + "\n" + render_sizes()
