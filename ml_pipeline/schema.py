"""Column names of fitml's tables: the words every stage uses (docs/data-contract.md).

Raw tables (written by ``fitml data generate`` and the public-data adapters, read by
ingestion) and the ingested offline tables under ``<workdir>/offline/`` share these columns.
All lengths are centimetres, weights kilograms, timestamps timezone-aware UTC.
"""

from __future__ import annotations

from typing import Final

OUTCOMES: Final[tuple[str, ...]] = ("too_small", "fit", "too_large")
"""Fit outcomes in label order: the fit model's class ``k`` is ``OUTCOMES[k]``."""

FIT_PREFERENCES: Final[tuple[str, ...]] = ("slim", "regular", "relaxed")
CATEGORIES: Final[tuple[str, ...]] = ("tops", "knitwear", "dresses", "pants", "outerwear")
FIT_TYPES: Final[tuple[str, ...]] = ("slim", "classic", "relaxed")
BODY_DIMENSIONS: Final[tuple[str, ...]] = ("chest", "waist", "hips")
"""The body girths a size chart can be cut for (the column is ``<dimension>_cm``)."""

MEASUREMENTS: Final[tuple[str, ...]] = (
    "height_cm",
    "weight_kg",
    "chest_cm",  # bust for women, chest for men: the girth at the fullest part
    "waist_cm",
    "hips_cm",
    "inseam_cm",
)

USER_COLUMNS: Final[tuple[str, ...]] = (
    "user_id",  # str
    "sex",  # "F" | "M" | None
    *MEASUREMENTS,  # float, may be NaN
    "fit_preference",  # one of FIT_PREFERENCES or None (stated, optional)
    "event_timestamp",  # profile update time
)
PRODUCT_COLUMNS: Final[tuple[str, ...]] = (
    "product_id",  # str
    "brand",  # str
    "category",  # one of CATEGORIES (public data may carry its own)
    "fit_type",  # one of FIT_TYPES
    "stretch",  # float in [0, 1]: 0 rigid, 1 very stretchy
    "size_system",  # a key of ml_pipeline.sizes.SIZE_SCALES
    "event_timestamp",  # when the product entered the catalogue
)
SIZE_CHART_COLUMNS: Final[tuple[str, ...]] = (
    "product_id",
    "size",  # label, e.g. "M", "8", "32"
    "size_index",  # int, ordinal in the product's size system
    "dimension",  # one of BODY_DIMENSIONS: the body girth this chart is cut for
    "low_cm",  # body girth range the size is published for, [low, high)
    "high_cm",
)
EVENT_COLUMNS: Final[tuple[str, ...]] = (
    "event_id",  # str, idempotency key
    "user_id",
    "product_id",
    "size",  # label tried
    "size_index",  # int
    "outcome",  # one of OUTCOMES
    "event_timestamp",
)
TRUTH_COLUMNS: Final[tuple[str, ...]] = (
    "event_id",
    "user_id",
    "product_id",
    "best_size",  # the size the generator knows fits this user in this product best
    "best_size_index",
    "p_too_small",  # the generator's outcome probabilities for the size tried in this event
    "p_fit",
    "p_too_large",
)
