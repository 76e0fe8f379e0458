"""Unit tests of evaluation.metrics on tiny arrays with answers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from evaluation.metrics import (
    binary_auc,
    brier_score,
    exact_size_accuracy,
    expected_calibration_error,
    log_loss,
    mean_auc_se,
    multiclass_auc,
    size_accuracy,
    within_one_size_accuracy,
)
from ml_pipeline.errors import InvalidValueError

Y = np.array([0, 1, 2, 1])
P = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.2, 0.6, 0.2],
        [0.1, 0.3, 0.6],
        [0.5, 0.4, 0.1],
    ]
)


def test_binary_auc_known_values() -> None:
    assert binary_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert binary_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts one half
    assert binary_auc([0, 1, 1], [0.9, 0.1, 0.2]) == 0.0
    assert math.isnan(binary_auc([1, 1], [0.2, 0.3]))


def test_binary_auc_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.3 * y, 1)  # rounded: many ties
    assert binary_auc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_multiclass_auc_per_class_and_mean() -> None:
    result = multiclass_auc(Y, P, class_names=["small", "fit", "large"])
    # class 0: positive row 0 (0.7) beats all three negatives (0.2, 0.1, 0.5) -> 1.0
    assert result["auc_small"] == pytest.approx(1.0)
    # class 1: positives 0.6, 0.4 vs negatives 0.2, 0.3 -> 4/4
    assert result["auc_fit"] == pytest.approx(1.0)
    # class 2: positive 0.6 vs 0.1, 0.2, 0.1 -> 1.0
    assert result["auc_large"] == pytest.approx(1.0)
    assert result["mean_auc"] == pytest.approx(1.0)
    flipped = multiclass_auc(Y, P[:, ::-1])
    assert set(flipped) == {"auc_0", "auc_1", "auc_2", "mean_auc"}
    # class 0 scored by column 2: 0.1 vs (0.2, 0.6, 0.1) -> (0 + 0 + 0.5) / 3
    assert flipped["auc_0"] == pytest.approx(1 / 6)


def test_multiclass_auc_absent_class_is_nan_and_left_out() -> None:
    result = multiclass_auc([0, 1, 0, 1], P)
    assert math.isnan(result["auc_2"])
    assert result["mean_auc"] == pytest.approx((result["auc_0"] + result["auc_1"]) / 2)


def test_log_loss_known_value() -> None:
    expected = -np.mean(np.log([0.7, 0.6, 0.6, 0.4]))
    assert log_loss(Y, P) == pytest.approx(expected)
    assert log_loss([0], [[0.0, 1.0]]) == pytest.approx(-math.log(1e-15))  # clipped, finite


def test_brier_score_known_value() -> None:
    # row 0: 0.09+0.04+0.01; row 1: 0.04+0.16+0.04; row 2: 0.01+0.09+0.16; row 3: .25+.36+.01
    expected = (0.14 + 0.24 + 0.26 + 0.62) / 4
    assert brier_score(Y, P) == pytest.approx(expected)
    assert brier_score([0], [[1.0, 0.0]]) == 0.0
    assert brier_score([0], [[0.0, 1.0]]) == pytest.approx(2.0)


def test_expected_calibration_error_known_value() -> None:
    # confidences 0.7, 0.6, 0.6, 0.5; correct: yes, yes, yes, no (row 3 predicts 0, truth 1)
    # bins of width 1/15: 0.7 -> bin 10, 0.6 -> bin 8, 0.5 -> bin 7
    # bin 10: |1 - 0.7| * 1/4; bin 8: |1 - 0.6| * 2/4; bin 7: |0 - 0.5| * 1/4
    expected = 0.3 / 4 + 0.4 / 2 + 0.5 / 4
    assert expected_calibration_error(Y, P) == pytest.approx(expected)
    assert expected_calibration_error([0, 1], [[1.0, 0.0], [0.0, 1.0]]) == 0.0


def test_expected_calibration_error_single_bin() -> None:
    # one bin: |accuracy 3/4 - mean confidence 0.6|
    assert expected_calibration_error(Y, P, n_bins=1) == pytest.approx(abs(0.75 - 0.6))


def test_size_accuracy() -> None:
    true = [3, 4, 5, 6]
    pred = [3, 5, 7, 6]
    assert exact_size_accuracy(true, pred) == pytest.approx(0.5)
    assert within_one_size_accuracy(true, pred) == pytest.approx(0.75)
    assert size_accuracy(true, pred, tolerance=2) == 1.0


@pytest.mark.parametrize(
    ("y", "proba", "match"),
    [
        ([0, 1], [[0.5, 0.5]], "y"),
        ([0, 3], [[0.5, 0.5], [0.5, 0.5]], "outside"),
        ([0, 1], [0.5, 0.5], "proba"),
        ([], np.zeros((0, 2)), "empty"),
    ],
)
def test_bad_inputs_name_the_value(y: list, proba: object, match: str) -> None:
    with pytest.raises(InvalidValueError, match=match):
        log_loss(y, proba)  # type: ignore[arg-type]


def test_size_accuracy_shape_mismatch() -> None:
    with pytest.raises(InvalidValueError, match="predicted_index"):
        exact_size_accuracy([1, 2], [1])


def _draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of a fixed, moderately informative 3-class model."""
    y = rng.integers(0, 3, size=n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += 1.0
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


def test_mean_auc_se_matches_the_spread_over_fresh_test_sets() -> None:
    """The bootstrap's error from one test set is close to the real spread of mean AUC
    over many independent test sets of that size from the same model."""
    rng = np.random.default_rng(1)
    spread = np.std([multiclass_auc(*_draw(rng, 3_000))["mean_auc"] for _ in range(300)], ddof=1)
    estimates = [mean_auc_se(*_draw(rng, 3_000), seed=s) for s in range(5)]
    assert 0.75 * spread < np.median(estimates) < 1.3 * spread


def test_mean_auc_se_repeats_and_scales_a_large_set_from_its_resamples() -> None:
    y, proba = _draw(np.random.default_rng(2), 40_000)
    whole = mean_auc_se(y, proba, seed=3)
    assert whole == mean_auc_se(y, proba, seed=3)
    scaled = mean_auc_se(y, proba, seed=3, max_rows=10_000)
    assert 0.7 * whole < scaled < 1.4 * whole  # 1/4 of the rows, error scaled by sqrt(1/4)
    assert mean_auc_se(y[:10_000], proba[:10_000], seed=3) > 1.5 * whole


def test_mean_auc_se_needs_two_replicates_and_defined_aucs() -> None:
    with pytest.raises(InvalidValueError, match="replicates"):
        mean_auc_se([0, 1, 2], np.full((3, 3), 1 / 3), replicates=1)
    assert math.isnan(mean_auc_se([1, 1, 1], np.full((3, 3), 1 / 3)))
