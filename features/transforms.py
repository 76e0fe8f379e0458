"""Request-time features: the one definition, imported by training, batch and online serving.

Given a product's size chart (as the ``chart_*`` features carry it), a shopper's measurements
and history, and a *candidate size*, these functions say where that size sits against the
chart's pick for the shopper's body and against what the shopper's past feedback implies.
Training applies them to one row per event (the size tried); serving to one row per size
of the product. There is no second copy anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import pandas as pd

BODY_COLUMN: Final[dict[str, str]] = {
    "chest": "user_chest_cm",
    "waist": "user_waist_cm",
    "hips": "user_hips_cm",
}
"""Which user feature holds the body girth a chart of each dimension is cut for."""

CATALOGUE_SYSTEMS: Final[tuple[str, ...]] = ("alpha", "numeric", "waist")
"""Size systems whose usual size is kept in the shopper's history features."""

OUTCOME_STEP: Final[dict[str, int]] = {"too_small": 1, "fit": 0, "too_large": -1}
"""How far the right size is from the size tried, as the outcome implies it."""

UNKNOWN: Final = "unknown"
"""The category a missing string feature takes, in training and serving alike."""
STRING_FEATURES: Final[tuple[str, ...]] = (
    "user_sex",
    "user_fit_preference",
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
)
"""Columns :func:`request_features` adds; the per-size ones depend on ``size_index``."""

PER_SIZE_FEATURES: Final[tuple[str, ...]] = (
    "size_index",
    "size_pos",
    "size_rel_chart",
    "ease_cm",
    "size_rel_usual",
    "size_rel_expected",
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


def chart_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Place each row's ``size_index`` and the shopper's girth on the product's size chart.

    ``frame`` needs ``product_id``, ``size_index``, the ``chart_*`` product features and the
    ``user_*`` girths. A product without a chart, or a shopper without the girth the chart
    needs, gets NaN where the chart is needed; the models treat NaN as unknown.

    Returns:
        A frame on ``frame``'s index with ``n_sizes``, ``size_pos`` (position among the
        product's sizes), ``body_cm``, ``chart_pick`` (the size index the chart picks for the
        girth) and ``ease_cm`` (middle of the size's published range minus the girth).
    """
    n = len(frame)
    size_index = frame["size_index"].to_numpy(dtype=float)
    n_sizes = np.full(n, np.nan)
    size_pos = np.full(n, np.nan)
    body = np.full(n, np.nan)
    pick = np.full(n, np.nan)
    ease = np.full(n, np.nan)

    for rows in frame.groupby("product_id", sort=False).indices.values():
        first = rows[0]
        indices = _as_array(frame["chart_index"].iat[first])
        if indices.size == 0:
            continue
        n_sizes[rows] = indices.size
        size_pos[rows] = size_index[rows] - indices[0]
        column = BODY_COLUMN.get(str(frame["chart_dimension"].iat[first]))
        if column is None or column not in frame:
            continue
        low = _as_array(frame["chart_low"].iat[first])
        high = _as_array(frame["chart_high"].iat[first])
        girth = frame[column].to_numpy(dtype=float)[rows]
        pos = chart_pick(girth, low, high)
        known = ~np.isnan(pos)
        picked = np.full(rows.size, np.nan)
        picked[known] = indices[pos[known].astype(int)]
        body[rows] = girth
        pick[rows] = picked
        where = np.clip(np.searchsorted(indices, size_index[rows]), 0, indices.size - 1)
        on_chart = indices[where] == size_index[rows]
        mid = (low + high) / 2.0
        ease[rows] = np.where(on_chart, mid[where] - girth, np.nan)

    return pd.DataFrame(
        {
            "n_sizes": n_sizes,
            "size_pos": size_pos,
            "body_cm": body,
            "chart_pick": pick,
            "ease_cm": ease,
        },
        index=frame.index,
    )


def request_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Add the request-time features (:data:`REQUEST_FEATURES`) to ``frame``.

    ``frame`` holds one row per (shopper, product, candidate size) with the Feast features of
    the ``fitml`` feature service (``chart_*``, ``user_*``, ``hist_*``, ``pstat_*``,
    ``product_size_system``), ``product_id`` and the candidate's ``size_index``.

    Returns:
        A new frame: ``frame``'s columns plus the request-time features.
    """
    out = frame.copy()
    for column in STRING_FEATURES:
        if column in out:
            out[column] = out[column].where(out[column].notna(), UNKNOWN).astype(object)
    chart = chart_features(out)
    size_index = out["size_index"].to_numpy(dtype=float)
    pick = chart["chart_pick"].to_numpy()
    usual = _usual_index(out)
    offset = out["hist_mean_offset"].to_numpy(dtype=float)
    product_offset = out["pstat_mean_offset"].to_numpy(dtype=float)
    shift = np.where(np.isnan(offset), np.nan_to_num(product_offset), offset)
    expected = np.where(np.isnan(pick), usual, pick + shift)

    out["size_index"] = size_index
    for column in chart.columns:
        out[column] = chart[column]
    out["size_rel_chart"] = size_index - pick
    out["usual_index"] = usual
    out["size_rel_usual"] = size_index - usual
    out["expected_index"] = expected
    out["size_rel_expected"] = size_index - expected
    return out


def implied_index(size_index: np.ndarray, outcomes: Sequence[str] | pd.Series) -> np.ndarray:
    """Return the size index each outcome implies was right (too small at s: s + 1)."""
    steps = pd.Series(outcomes).map(OUTCOME_STEP).to_numpy(dtype=float)
    return np.asarray(size_index, dtype=float) + steps


def _usual_index(frame: pd.DataFrame) -> np.ndarray:
    system = frame["product_size_system"].astype(object).to_numpy()
    usual = np.full(len(frame), np.nan)
    for name in CATALOGUE_SYSTEMS:
        column = f"hist_usual_{name}"
        if column in frame:
            mask = system == name
            usual[mask] = frame[column].to_numpy(dtype=float)[mask]
    return usual


def _as_array(value: object) -> np.ndarray:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.empty(0)
    return np.asarray(value, dtype=float)
