"""The recommendation: one pure function, used online, in batch prediction and in evaluation.

:func:`recommend` turns the fit model's probabilities for every size of a product and the size
model's estimate into the answer a shopper sees. :func:`recommend_frame` runs the whole path
(candidate sizes -> request-time features -> both models -> :func:`recommend`) for any number
of (shopper, product) rows of feature-service values; evaluation calls it with thousands of
rows, the prediction service calls :func:`recommend_rows`, the same code on a dict of arrays,
with one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import numpy as np
import pandas as pd

from features.transforms import request_features

WINDOW: Final = 2
"""Candidates are the sizes within this many steps of the size model's estimate."""
FALLBACK_PENALTY: Final = 0.8
"""Confidence is multiplied by this for every fallback the answer had to take."""
DIMENSION_WORDS: Final = {"chest": "the chest", "waist": "the waist", "hips": "the hips"}


class FitPredictor(Protocol):
    """What :func:`recommend_frame` needs of a fit model."""

    def predict_proba(self, frame: pd.DataFrame | dict[str, np.ndarray]) -> np.ndarray:
        """Return (n, 3) outcome probabilities."""
        ...


class SizePredictor(Protocol):
    """What :func:`recommend_frame` needs of a size model."""

    def predict(self, frame: pd.DataFrame | dict[str, np.ndarray]) -> np.ndarray:
        """Return the best size index per row."""
        ...


@dataclass(frozen=True)
class SizeScore:
    """The fit model's probabilities for one size."""

    size: str
    size_index: int
    p_too_small: float
    p_fit: float
    p_too_large: float


@dataclass(frozen=True)
class Recommendation:
    """What the shopper is told, with every size's probabilities behind it."""

    recommended_size: str
    confidence: float
    runner_up: str | None
    fit_note: str
    sizes: tuple[SizeScore, ...]
    expected_index: float | None = None
    fallbacks: tuple[str, ...] = field(default_factory=tuple)

    @property
    def recommended_index(self) -> int:
        """The size index of the recommended size."""
        return next(s.size_index for s in self.sizes if s.size == self.recommended_size)


class NoSizesError(ValueError):
    """A product without any size cannot be recommended for."""


def recommend(
    sizes: Sequence[str] | np.ndarray,
    size_indices: Sequence[int] | np.ndarray,
    proba: np.ndarray,
    expected_index: float | None,
    *,
    dimension: str | None = None,
    fallbacks: Sequence[str] = (),
    window: int = WINDOW,
) -> Recommendation:
    """Pick the size with the highest P(fit) among the size model's candidates.

    Args:
        sizes: the product's size labels, ascending.
        size_indices: their ordinal indices.
        proba: ``(len(sizes), 3)`` probabilities of too_small, fit, too_large per size.
        expected_index: the size model's estimate of the best index (None or NaN: unknown,
            every size is a candidate).
        dimension: the body dimension the chart is cut for, for the fit note.
        fallbacks: reasons the inputs were incomplete (each lowers the confidence).
        window: how many sizes either side of the estimate are candidates.

    Raises:
        NoSizesError: ``sizes`` is empty.
    """
    if len(sizes) == 0:
        raise NoSizesError("the product has no sizes to recommend from")
    proba = np.asarray(proba, dtype=float).reshape(len(sizes), 3)
    indices = np.asarray(size_indices, dtype=float)
    known = expected_index is not None and not np.isnan(expected_index)
    candidates = np.ones(len(sizes), dtype=bool)
    if known:
        candidates = np.abs(indices - float(expected_index)) <= window  # type: ignore[arg-type]
        if not candidates.any():
            candidates[int(np.argmin(np.abs(indices - float(expected_index))))] = True  # type: ignore[arg-type]
    p_fit = np.where(candidates, proba[:, 1], -1.0)
    order = np.argsort(-p_fit, kind="stable")
    best = int(order[0])
    runner = int(order[1]) if len(sizes) > 1 and p_fit[order[1]] >= 0 else None
    penalty = FALLBACK_PENALTY ** len(fallbacks)
    scores = tuple(
        SizeScore(str(s), int(i), float(p[0]), float(p[1]), float(p[2]))
        for s, i, p in zip(sizes, indices, proba, strict=True)
    )
    return Recommendation(
        recommended_size=str(sizes[best]),
        confidence=round(float(proba[best, 1]) * penalty, 4),
        runner_up=None if runner is None else str(sizes[runner]),
        fit_note=fit_note(scores, best, runner, dimension),
        sizes=scores,
        expected_index=float(expected_index) if known else None,  # type: ignore[arg-type]
        fallbacks=tuple(fallbacks),
    )


def fit_note(
    scores: Sequence[SizeScore], best: int, runner: int | None, dimension: str | None
) -> str:
    """A short note on how the recommended size will feel, from its probabilities."""
    chosen = scores[best]
    where = f" in {DIMENSION_WORDS[dimension]}" if dimension in DIMENSION_WORDS else ""
    if chosen.p_fit >= 0.75:
        return f"{chosen.size} should fit you well."
    if runner is None:
        return f"{chosen.size} is the closest fit we have."
    other = scores[runner]
    if chosen.p_too_small > chosen.p_too_large and other.size_index > chosen.size_index:
        return f"Runs small{where}: between sizes, size up to {other.size}."
    if chosen.p_too_large > chosen.p_too_small and other.size_index < chosen.size_index:
        return f"Runs large{where}: between sizes, size down to {other.size}."
    if chosen.p_too_small > chosen.p_too_large:
        return f"{chosen.size} may feel snug{where}."
    return f"{chosen.size} may feel loose{where}."


def candidate_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Expand each (shopper, product) row into one row per size of the product's chart.

    ``rows`` holds feature-service values (including ``chart_sizes`` and ``chart_index``) and
    ``product_id``; the result adds ``row`` (the position in ``rows``), ``size`` and
    ``size_index``.
    """
    columns = candidate_columns({c: rows[c].to_numpy() for c in rows.columns})
    return pd.DataFrame(columns)


def candidate_columns(rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`candidate_frame` for rows given as a dict of equal-length 1-D arrays."""
    chart_index = rows["chart_index"]
    counts = np.fromiter((0 if v is None else len(v) for v in chart_index), dtype=np.int64)
    row = np.repeat(np.arange(len(counts)), counts)
    out = {name: np.asarray(values)[row] for name, values in rows.items()}
    out["row"] = row
    out["size"] = np.concatenate(
        [np.asarray(v, dtype=object) for v in rows["chart_sizes"] if v is not None and len(v)]
        or [np.empty(0, dtype=object)]
    )
    out["size_index"] = np.concatenate(
        [np.asarray(v, dtype=float) for v in chart_index if v is not None and len(v)]
        or [np.empty(0)]
    )
    return out


def recommend_frame(
    rows: pd.DataFrame,
    fit_model: FitPredictor,
    size_model: SizePredictor,
    fallbacks: Sequence[Sequence[str]] | None = None,
) -> list[Recommendation | None]:
    """Recommend a size for every (shopper, product) row of feature-service values.

    Returns:
        One recommendation per row, ``None`` for a product without a size chart.
    """
    return recommend_rows(
        {c: rows[c].to_numpy() for c in rows.columns}, fit_model, size_model, fallbacks
    )


def recommend_rows(
    rows: Mapping[str, np.ndarray],
    fit_model: FitPredictor,
    size_model: SizePredictor,
    fallbacks: Sequence[Sequence[str]] | None = None,
) -> list[Recommendation | None]:
    """:func:`recommend_frame` for rows given as a dict of equal-length 1-D arrays.

    The whole path (candidate sizes, request-time features, both models, :func:`recommend`)
    runs on numpy arrays, which is what makes one online request cheap; a frame goes through
    the very same code.
    """
    n = len(rows["chart_index"])
    candidates = request_features(candidate_columns(rows))
    row = candidates["row"]
    if row.size == 0:
        return [None] * n
    proba = fit_model.predict_proba(candidates)
    # The size model's inputs do not depend on the candidate size (SIZE_MODEL_FEATURES
    # leaves out PER_SIZE_FEATURES): each row's first candidate already carries them, with
    # the request-time features computed once above.
    starts = np.searchsorted(row, np.arange(n), side="left")
    ends = np.searchsorted(row, np.arange(n), side="right")
    has = ends > starts
    first = {name: values[starts[has]] for name, values in candidates.items()}
    first["size_index"] = np.full(int(has.sum()), np.nan)
    expected = np.full(n, np.nan)
    expected[has] = size_model.predict(first)
    sizes = candidates["size"]
    size_index = candidates["size_index"].astype(int)
    dimension = rows["chart_dimension"]
    out: list[Recommendation | None] = []
    for i in range(n):
        if not has[i]:
            out.append(None)
            continue
        at = slice(int(starts[i]), int(ends[i]))
        out.append(
            recommend(
                sizes[at],
                size_index[at],
                proba[at],
                float(expected[i]),
                dimension=str(dimension[i]),
                fallbacks=() if fallbacks is None else fallbacks[i],
            )
        )
    return out


def feedback_agrees(recommended: Any, tried: Any, outcome: Any) -> Any:
    """Whether feedback agrees with the recommended size (size indices; arrays or scalars).

    Too small at the tried size means the right size is larger, so the feedback agrees when
    the recommendation was larger than the tried size; too large agrees with a smaller
    recommendation; fit agrees only with the tried size itself. The one definition used by
    evaluation (``feedback_agreement``) and by the live metric ``tryon_feedback_total``.
    """
    outcome, recommended, tried = np.asarray(outcome), np.asarray(recommended), np.asarray(tried)
    return np.where(
        outcome == "too_small",
        recommended > tried,
        np.where(outcome == "too_large", recommended < tried, recommended == tried),
    )
