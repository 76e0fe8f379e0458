"""Request-time features: the one definition, imported by training, batch and online serving.

Given a product's size chart (as the ``chart_*`` features carry it), a shopper's measurements
and history, and a *candidate size*, these functions say where that size sits against the
chart's pick for the shopper's body and against what the shopper's past feedback implies.
Training applies them to one row per event (the size tried); serving to one row per size
of the product. There is no second copy anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, TypeVar

import numpy as np
import pandas as pd

BODY_COLUMN: Final[dict[str, str]] = {
    "chest": "user_chest_cm",
    "waist": "user_waist_cm",
    "hips": "user_hips_cm",
}
"""Which user feature holds the body girth a chart of each dimension is cut for."""

CATALOGUE_SYSTEMS: Final[tuple[str, ...]] = ("alpha", "numeric", "waist", "rtr", "modcloth")
"""Size systems whose usual size is kept in the shopper's history features."""

OUTCOME_STEP: Final[dict[str, int]] = {"too_small": 1, "fit": 0, "too_large": -1}
"""How far the right size is from the size tried, as the outcome implies it."""

UNKNOWN: Final = "unknown"
"""The category a missing string feature takes, in training and serving alike."""
STRING_FEATURES: Final[tuple[str, ...]] = (
    "user_sex",
    "user_fit_preference",
    "user_body_type",
    "product_brand",
    "product_category",
    "product_fit_type",
    "product_size_system",
    "chart_dimension",
)

REQUEST_FEATURES: Final[tuple[str, ...]] = (
    "size_index",
    "n_sizes",
    "size_pos",
    "body_cm",
    "chart_pick",
    "size_rel_chart",
    "ease_cm",
    "usual_index",
    "size_rel_usual",
    "expected_index",
    "size_rel_expected",
    "size_rel_item",
    "size_rel_item_implied",
    "body_item_index",
    "size_rel_body_item",
    "latent_index",
    "size_rel_latent",
    "size_rel_usual_item",
)
"""Columns :func:`request_features` adds; the per-size ones depend on ``size_index``."""

Table = TypeVar("Table", pd.DataFrame, dict[str, np.ndarray])
"""Rows as a DataFrame, or as a dict of equal-length 1-D arrays (column name -> values).

The functions below take either and return the same kind: a dict skips pandas' per-call
overhead, which dominates for the handful of rows of one online request; the arithmetic is
the same code either way."""


PER_SIZE_FEATURES: Final[tuple[str, ...]] = (
    "size_index",
    "size_pos",
    "size_rel_chart",
    "ease_cm",
    "size_rel_usual",
    "size_rel_expected",
    "size_rel_item",
    "size_rel_item_implied",
    "size_rel_body_item",
    "size_rel_latent",
    "size_rel_usual_item",
)


def chart_pick(body_cm: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Return, per body girth, the position in the chart whose ``[low, high)`` range holds it.

    A girth below the first range picks the first size, above the last range the last
    size; a missing girth (NaN) picks nothing (NaN).

    Args:
        body_cm: girths, shape ``(n,)``.
        low: the chart's lower bounds, ascending, shape ``(k,)``.
        high: the chart's upper bounds, ascending, shape ``(k,)``.
    """
    body = np.asarray(body_cm, dtype=float)
    pos = np.searchsorted(np.asarray(high, dtype=float), body, side="right").astype(float)
    pos = np.clip(pos, 0, len(high) - 1)
    pos[np.isnan(body)] = np.nan
    return pos


def chart_features(frame: Table) -> Table:
    """Place each row's ``size_index`` and the shopper's girth on the product's size chart.

    ``frame`` needs ``product_id``, ``size_index``, the ``chart_*`` product features and the
    ``user_*`` girths. A product without a chart, or a shopper without the girth the chart
    needs, gets NaN where the chart is needed; the models treat NaN as unknown.

    Returns:
        A frame on ``frame``'s index (a dict of arrays for a dict) with ``n_sizes``,
        ``size_pos`` (position among the product's sizes), ``body_cm``, ``chart_pick`` (the
        size index the chart picks for the girth) and ``ease_cm`` (middle of the size's
        published range minus the girth).
    """
    n = _n_rows(frame)
    size_index = _values(frame, "size_index", float)
    n_sizes = np.full(n, np.nan)
    size_pos = np.full(n, np.nan)
    body = np.full(n, np.nan)
    pick = np.full(n, np.nan)
    ease = np.full(n, np.nan)
    # Filled in place below; a product without a chart keeps NaN.
    out = {
        "n_sizes": n_sizes,
        "size_pos": size_pos,
        "body_cm": body,
        "chart_pick": pick,
        "ease_cm": ease,
    }

    # One chart per product, read from the product's first row; rows are then placed on
    # their product's chart all at once, by searching flattened (product, value) keys.
    codes, _ = pd.factorize(frame["product_id"], use_na_sentinel=True)
    n_products = int(codes.max()) + 1 if n else 0
    first = np.full(n_products, -1, dtype=np.int64)
    rows_with_product = np.flatnonzero(codes >= 0)
    first[codes[rows_with_product[::-1]]] = rows_with_product[::-1]
    index_col, low_col, high_col = (
        _values(frame, c, object) for c in ("chart_index", "chart_low", "chart_high")
    )
    dimension_col = _values(frame, "chart_dimension", object)
    charts = [_as_array(index_col[f]) for f in first]
    lengths = np.array([c.size for c in charts], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    if n_products == 0 or lengths.sum() == 0:
        return _like(frame, out)
    flat_index = np.concatenate(charts)
    flat_low = np.concatenate(
        [_as_array(low_col[f]) if k else np.empty(0) for f, k in zip(first, lengths, strict=True)]
    )
    flat_high = np.concatenate(
        [_as_array(high_col[f]) if k else np.empty(0) for f, k in zip(first, lengths, strict=True)]
    )
    owner = np.repeat(np.arange(n_products), lengths)

    has = codes >= 0
    has[has] = lengths[codes[has]] > 0
    c = codes[has]
    k = lengths[c]
    n_sizes[has] = k
    size_pos[has] = size_index[has] - flat_index[starts[c]]

    girth = np.full(n, np.nan)
    product_dimension = np.array([str(dimension_col[f]) for f in first], dtype=object)
    row_dimension = np.where(codes >= 0, product_dimension[np.maximum(codes, 0)], None)
    for dimension, column in BODY_COLUMN.items():
        if column in frame:
            mask = has & (row_dimension == dimension)
            girth[mask] = _values(frame, column, float)[mask]
    g = girth[has]
    pos = _search(owner, flat_high, c, g, side="right") - starts[c]
    pos = np.clip(pos, 0, k - 1)
    known = ~np.isnan(g)
    picked = np.full(c.size, np.nan)
    picked[known] = flat_index[starts[c][known] + pos[known]]
    body[has] = g
    pick[has] = picked
    s = size_index[has]
    where = np.clip(_search(owner, flat_index, c, s, side="left") - starts[c], 0, k - 1)
    at = starts[c] + where
    on_chart = flat_index[at] == s
    mid = (flat_low[at] + flat_high[at]) / 2.0
    with np.errstate(invalid="ignore"):
        ease[has] = np.where(on_chart, mid - g, np.nan)

    return _like(frame, out)


_KEY_SPAN: Final = float(2**12)
"""Values searched on a chart must lie within +-half of this (cm or size indices)."""


def _search(
    owner: np.ndarray,
    flat: np.ndarray,
    codes: np.ndarray,
    values: np.ndarray,
    side: Literal["left", "right"],
) -> np.ndarray:
    """``searchsorted`` of each value within its own product's ascending chart values.

    ``flat`` is every product's values concatenated (``owner`` names each one's product);
    keys ``product * span + value`` keep the products apart in one sorted array. Returns
    positions in ``flat`` (NaN values sort last).
    """
    half = _KEY_SPAN / 2 - 1
    keys = owner * _KEY_SPAN + np.clip(flat, -half, half)
    queries = codes * _KEY_SPAN + np.clip(values, -half, half)
    return np.searchsorted(keys, queries, side=side).astype(np.int64)


def request_features(frame: Table) -> Table:
    """Add the request-time features (:data:`REQUEST_FEATURES`) to ``frame``.

    ``frame`` holds one row per (shopper, product, candidate size) with the Feast features of
    the ``fitml`` feature service (``chart_*``, ``user_*``, ``hist_*``, ``pstat_*``,
    ``product_size_system``), ``product_id`` and the candidate's ``size_index``.

    ``frame`` may also be a dict of equal-length 1-D arrays (the fast path for a few rows);
    the result is then a new dict, with the same values as for the equivalent frame.

    Returns:
        A new frame (or dict): ``frame``'s columns plus the request-time features.
    """
    out: Any
    if isinstance(frame, pd.DataFrame):
        out = frame.copy(deep=False)  # columns are replaced, never written into
        for column in STRING_FEATURES:
            if column in out:
                out[column] = out[column].where(out[column].notna(), UNKNOWN).astype(object)
    else:
        out = dict(frame)
        for column in STRING_FEATURES:
            if column in out:
                values = np.array(out[column], dtype=object)
                values[pd.isna(values)] = UNKNOWN
                out[column] = values
    chart = chart_features(out)
    size_index = _values(out, "size_index", float)
    pick = _values(chart, "chart_pick", float)
    usual = _usual_index(out)
    offset = _values(out, "hist_mean_offset", float)
    product_offset = _values(out, "pstat_mean_offset", float)
    shift = np.where(np.isnan(offset), np.nan_to_num(product_offset), offset)
    expected = np.where(np.isnan(pick), usual, pick + shift)

    out["size_index"] = size_index
    for column in chart:
        out[column] = chart[column]
    out["size_rel_chart"] = size_index - pick
    out["usual_index"] = usual
    out["size_rel_usual"] = size_index - usual
    out["expected_index"] = expected
    out["size_rel_expected"] = size_index - expected
    # Against the product's typical size (sizes tried on it so far) and where its feedback
    # put the right size; then the shopper's latent size on this product (see
    # :func:`latent_index`).
    item_size = _optional(out, "pstat_size_mean")
    out["size_rel_item"] = size_index - item_size
    out["size_rel_item_implied"] = size_index - _optional(out, "pstat_implied_mean")
    item_user_offset = _optional(out, "pstat_user_offset")
    # The product's body-size line at the shopper's weight (the cold-start estimate).
    weight = _optional(out, "user_weight_kg")
    body_item = _optional(out, "pstat_body_size") + _optional(out, "pstat_body_slope") * (
        weight - _optional(out, "pstat_body_weight")
    )
    out["body_item_index"] = body_item
    out["size_rel_body_item"] = size_index - body_item
    latent = latent_index(
        item_size,
        _optional(out, "hist_item_offset"),
        usual,
        item_user_offset,
        np.where(np.isnan(body_item), expected, body_item),
    )
    out["latent_index"] = latent
    out["size_rel_latent"] = size_index - latent
    out["size_rel_usual_item"] = size_index - usual - np.nan_to_num(item_user_offset)
    return out


def latent_index(
    item_size: np.ndarray,
    user_item_offset: np.ndarray,
    usual: np.ndarray,
    item_user_offset: np.ndarray,
    expected: np.ndarray,
) -> np.ndarray:
    """The shopper's latent size on a product, from the two sides of the decomposition.

    In order of preference: the product's typical size plus how far from products' typical
    sizes the shopper's feedback puts their right size (``hist_item_offset``); else the
    shopper's usual size plus how far from their shoppers' usual sizes the product's
    feedback puts its right size (``pstat_user_offset``: a product that runs small has a
    positive offset); else ``expected``: the body-size estimate (the product's body-size
    line at the shopper's weight, else the chart's pick for the body). NaN when none is
    known (a new shopper without measurements on a product without feedback or chart).
    """
    from_item = item_size + user_item_offset
    from_user = usual + np.nan_to_num(item_user_offset)
    out = np.where(np.isnan(from_item), from_user, from_item)
    return np.where(np.isnan(out), expected, out)


def implied_index(size_index: np.ndarray, outcomes: Sequence[str] | pd.Series) -> np.ndarray:
    """Return the size index each outcome implies was right (too small at s: s + 1)."""
    steps = pd.Series(outcomes).map(OUTCOME_STEP).to_numpy(dtype=float)
    return np.asarray(size_index, dtype=float) + steps


def _usual_index(frame: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
    system = _values(frame, "product_size_system", object)
    usual = np.full(_n_rows(frame), np.nan)
    for name in CATALOGUE_SYSTEMS:
        column = f"hist_usual_{name}"
        if column in frame:
            mask = system == name
            usual[mask] = _values(frame, column, float)[mask]
    return usual


def _values(frame: pd.DataFrame | Mapping[str, Any], column: str, dtype: Any) -> np.ndarray:
    """One column of a frame or a dict of arrays as a 1-D numpy array of ``dtype``."""
    values = frame[column]
    if isinstance(values, pd.Series):
        return values.to_numpy(dtype=dtype)
    return np.asarray(values, dtype=dtype)


def _optional(frame: pd.DataFrame | Mapping[str, Any], column: str) -> np.ndarray:
    """A float column, or NaN everywhere when the rows lack it (a feature not yet known)."""
    if column in frame:
        return _values(frame, column, float)
    return np.full(_n_rows(frame), np.nan)


def _n_rows(frame: pd.DataFrame | Mapping[str, Any]) -> int:
    if isinstance(frame, pd.DataFrame):
        return len(frame)
    return len(next(iter(frame.values()))) if frame else 0


def _like(frame: Table, columns: dict[str, np.ndarray]) -> Table:
    """``columns`` as the kind of table ``frame`` is (a frame on its index, or a dict)."""
    if isinstance(frame, pd.DataFrame):
        return pd.DataFrame(columns, index=frame.index)
    return columns


def _as_array(value: object) -> np.ndarray:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.empty(0)
    return np.asarray(value, dtype=float)
