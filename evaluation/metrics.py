"""Evaluation metrics of fitml's models, as pure functions of labels and predictions.

Fit model (probabilities over ``too_small`` / ``fit`` / ``too_large``): per-class one-vs-rest
AUC and their mean (the published metric for fit prediction, Misra et al., RecSys 2018), log
loss, multiclass Brier score, top-label expected calibration error. Size model (ordinal size
indices): exact and within-one accuracy.

Labels are integer class indices ``0..K-1``; ``proba`` is an ``(n, K)`` array whose rows are
probability distributions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from ml_pipeline.errors import InvalidValueError

_EPS = 1e-15


def _labels_and_proba(y: ArrayLike, proba: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(y)
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise InvalidValueError(
            "proba",
            f"shape {p.shape}",
            "is not an (n_rows, n_classes >= 2) array",
            "pass one row of class probabilities per label",
        )
    if labels.ndim != 1 or labels.shape[0] != p.shape[0]:
        raise InvalidValueError(
            "y", f"shape {labels.shape}", f"does not match proba's {p.shape[0]} rows"
        )
    if labels.size == 0:
        raise InvalidValueError("y", "0 rows", "is empty", "pass at least one row")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.mod(labels, 1) == 0):
            raise InvalidValueError(
                "y",
                labels[:5].tolist(),
                "are not integer class indices",
                "encode classes as 0..K-1",
            )
        labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= p.shape[1]:
        raise InvalidValueError(
            "y",
            sorted(set(labels.tolist()))[:10],
            f"holds labels outside 0..{p.shape[1] - 1}",
            "encode classes as 0..K-1 in the column order of proba",
        )
    return labels, p


def binary_auc(y_true: ArrayLike, score: ArrayLike) -> float:
    """Area under the ROC curve (ties count one half), NaN when only one class is present.

    Args:
        y_true: 0/1 (or boolean) labels.
        score: Scores, higher meaning more likely positive.

    Returns:
        The AUC in [0, 1], or NaN if ``y_true`` holds no positive or no negative.
    """
    positive = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Mann-Whitney U with mid-ranks for ties.
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    mid = first + (counts + 1) / 2.0  # 1-based mid-rank of each tie group
    ranks[order] = np.repeat(mid, counts)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def multiclass_auc(
    y: ArrayLike, proba: ArrayLike, class_names: Sequence[str] | None = None
) -> dict[str, float]:
    """Per-class one-vs-rest AUC and their unweighted mean.

    Args:
        y: Integer class labels ``0..K-1``.
        proba: ``(n, K)`` predicted class probabilities.
        class_names: Names used in the keys (default ``"0"``, ``"1"``, ...).

    Returns:
        ``{"auc_<name>": AUC of class k vs the rest, ..., "mean_auc": mean over classes}``. A
        class absent from ``y`` (or the only class present) gets NaN and is left out of the
        mean; the mean is NaN if no class has a defined AUC.

    Raises:
        InvalidValueError: On mismatched shapes, labels outside ``0..K-1`` or a wrong number
            of class names.
    """
    labels, p = _labels_and_proba(y, proba)
    k = p.shape[1]
    names = [str(i) for i in range(k)] if class_names is None else list(class_names)
    if len(names) != k:
        raise InvalidValueError(
            "class_names", names, f"has {len(names)} names for {k} probability columns"
        )
    result = {f"auc_{name}": binary_auc(labels == i, p[:, i]) for i, name in enumerate(names)}
    defined = [v for v in result.values() if not np.isnan(v)]
    result["mean_auc"] = float(np.mean(defined)) if defined else float("nan")
    return result


BOOTSTRAP_REPLICATES = 100
"""Resamples behind :func:`mean_auc_se`."""
BOOTSTRAP_MAX_ROWS = 100_000
"""Rows per resample of :func:`mean_auc_se`; a larger test set's error is scaled from it."""


def mean_auc_se(
    y: ArrayLike,
    proba: ArrayLike,
    *,
    replicates: int = BOOTSTRAP_REPLICATES,
    max_rows: int = BOOTSTRAP_MAX_ROWS,
    seed: int = 0,
) -> float:
    """Bootstrap standard error of :func:`multiclass_auc`'s ``mean_auc`` over the rows.

    Rows are resampled with replacement ``replicates`` times (seeded, so the figure repeats).
    A test set of more than ``max_rows`` rows is resampled ``max_rows`` at a time and the
    error scaled by ``sqrt(max_rows / n)``, its size's standard error to first order.

    Returns:
        The standard deviation of the resampled means, or NaN with fewer than two resamples
        whose mean is defined.

    Raises:
        InvalidValueError: as :func:`multiclass_auc`, or for ``replicates`` < 2.
    """
    if replicates < 2:
        raise InvalidValueError("replicates", replicates, "must be >= 2")
    labels, p = _labels_and_proba(y, proba)
    n = labels.size
    size = min(n, max_rows)
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(replicates):
        rows = rng.integers(0, n, size=size)
        means.append(multiclass_auc(labels[rows], p[rows])["mean_auc"])
    defined = np.array([m for m in means if not np.isnan(m)])
    if defined.size < 2:
        return float("nan")
    return float(defined.std(ddof=1) * np.sqrt(size / n))


def log_loss(y: ArrayLike, proba: ArrayLike) -> float:
    """Mean negative log-likelihood of the true class (natural log; probabilities clipped).

    Args:
        y: Integer class labels ``0..K-1``.
        proba: ``(n, K)`` predicted class probabilities.

    Returns:
        The mean of ``-log p[y]`` with ``p`` clipped to ``[1e-15, 1]``.
    """
    labels, p = _labels_and_proba(y, proba)
    picked = np.clip(p[np.arange(labels.size), labels], _EPS, 1.0)
    return float(-np.mean(np.log(picked)))


def brier_score(y: ArrayLike, proba: ArrayLike) -> float:
    """Multiclass Brier score: mean over rows of the squared distance to the one-hot label.

    Ranges from 0 (perfect) to 2 (certain and wrong).

    Args:
        y: Integer class labels ``0..K-1``.
        proba: ``(n, K)`` predicted class probabilities.

    Returns:
        ``mean_i sum_k (p_ik - [y_i == k])**2``.
    """
    labels, p = _labels_and_proba(y, proba)
    onehot = np.zeros_like(p)
    onehot[np.arange(labels.size), labels] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def expected_calibration_error(y: ArrayLike, proba: ArrayLike, n_bins: int = 15) -> float:
    """Top-label expected calibration error with equal-width confidence bins.

    Each row's confidence is its largest probability; rows fall in bin ``b`` when the
    confidence lies in ``(b/n_bins, (b+1)/n_bins]``. ECE is the row-weighted mean over bins of
    ``|accuracy - mean confidence|`` (Guo et al., 2017).

    Args:
        y: Integer class labels ``0..K-1``.
        proba: ``(n, K)`` predicted class probabilities.
        n_bins: Number of bins (15 by default, as in the literature).

    Returns:
        The ECE in [0, 1].
    """
    if n_bins < 1:
        raise InvalidValueError("n_bins", n_bins, "must be >= 1")
    labels, p = _labels_and_proba(y, proba)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == labels).astype(np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def size_accuracy(true_index: ArrayLike, predicted_index: ArrayLike, tolerance: int = 0) -> float:
    """Share of rows whose predicted size index is within ``tolerance`` of the true one.

    Args:
        true_index: Ordinal size indices that fit.
        predicted_index: Recommended ordinal size indices.
        tolerance: Allowed distance on the size scale (0: exact, 1: within one size).

    Returns:
        The share in [0, 1].
    """
    t = np.asarray(true_index)
    q = np.asarray(predicted_index)
    if t.shape != q.shape or t.ndim != 1 or t.size == 0:
        raise InvalidValueError(
            "predicted_index",
            f"shape {q.shape}",
            f"does not match true_index's {t.shape}",
            "pass two non-empty 1-d arrays of the same length",
        )
    if tolerance < 0:
        raise InvalidValueError("tolerance", tolerance, "must be >= 0")
    return float(np.mean(np.abs(t.astype(np.int64) - q.astype(np.int64)) <= tolerance))


def exact_size_accuracy(true_index: ArrayLike, predicted_index: ArrayLike) -> float:
    """Share of rows whose predicted size index equals the true one.

    Args:
        true_index: Ordinal size indices that fit.
        predicted_index: Recommended ordinal size indices.

    Returns:
        The share in [0, 1].
    """
    return size_accuracy(true_index, predicted_index, tolerance=0)


def within_one_size_accuracy(true_index: ArrayLike, predicted_index: ArrayLike) -> float:
    """Share of rows whose predicted size index is at most one size off.

    Args:
        true_index: Ordinal size indices that fit.
        predicted_index: Recommended ordinal size indices.

    Returns:
        The share in [0, 1].
    """
    return size_accuracy(true_index, predicted_index, tolerance=1)
