"""The RentTheRunway fit benchmark on the real file: accuracy floor and no label leakage."""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation.public_benchmark import (
    build_features,
    format_table,
    load_renttherunway_events,
    oof_folds,
    run_renttherunway,
    split_by_transaction,
)

pytestmark = [pytest.mark.needs_data, pytest.mark.slow]

RTR_FILE = Path("renttherunway") / "rtr_dev.jsonl.gz"
# Measured with this budget (n_trials=3, timeout_s=30, final_seeds=1, seed=0): mean AUC 0.779
# in 94 s; the floor leaves room for seed, budget and machine-load noise.
MEAN_AUC_FLOOR = 0.75


@functools.cache
def _events(path: Path) -> pd.DataFrame:
    return load_renttherunway_events(path)


@pytest.fixture
def rtr_events(shared_data: Path) -> pd.DataFrame:
    return _events(shared_data / RTR_FILE).copy()


def test_benchmark_beats_the_floor_and_the_paper(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "rtr.json"
    result = run_renttherunway(
        shared_data / RTR_FILE, seed=0, n_trials=3, timeout_s=30, json_out=out, final_seeds=1
    )
    assert result["mean_auc"] >= MEAN_AUC_FLOOR
    assert result["mean_auc"] > max(result["published_mean_auc"].values())
    for key in ("auc_small", "auc_fit", "auc_large"):
        assert 0.6 < result[key] < 1.0
    assert result["n_train"] + result["n_valid"] + result["n_test"] == 154_075
    assert json.loads(out.read_text())["mean_auc"] == pytest.approx(result["mean_auc"])
    table = format_table(result)
    assert "K-LF-ML" in table and "fitml" in table


def test_with_a_separate_test_file(shared_data: Path, tmp_path: Path) -> None:
    with gzip.open(shared_data / RTR_FILE, "rt") as f:
        lines = f.readlines()[:30_000]
    train_file, test_file = tmp_path / "train.jsonl", tmp_path / "test.jsonl.gz"
    train_file.write_text("".join(lines[:24_000]))
    with gzip.open(test_file, "wt") as f:
        f.write("".join(lines[24_000:]))
    result = run_renttherunway(
        train_file, test_file, seed=0, n_trials=2, timeout_s=20, final_seeds=1
    )
    assert result["n_train"] + result["n_valid"] == 24_000
    assert result["n_test"] == 6_000
    assert result["mean_auc"] > 0.65


def test_training_row_features_ignore_its_own_label(rtr_events: pd.DataFrame) -> None:
    train = rtr_events.iloc[:20_000].reset_index(drop=True)
    rng = np.random.default_rng(0)
    # Rows of one fold: their features come from the other folds only, so changing all of
    # their labels at once must leave all of their features unchanged.
    fold0 = np.flatnonzero(oof_folds(len(train), 5, 0) == 0)
    rows = rng.choice(fold0, size=200, replace=False)
    shuffled = train.copy()
    # Give each chosen row a different label from its own.
    shuffled.loc[rows, "label"] = (train.loc[rows, "label"] + rng.integers(1, 3, 200)) % 3
    before, _ = build_features(train, [], n_folds=5, seed=0)
    after, _ = build_features(shuffled, [], n_folds=5, seed=0)
    pd.testing.assert_frame_equal(before.iloc[rows], after.iloc[rows])
    # ...while the labels do feed other rows' features (the check is not vacuous).
    assert not before.drop(index=rows).equals(after.drop(index=rows))


def test_scored_rows_never_read_their_labels(rtr_events: pd.DataFrame) -> None:
    train, test = split_by_transaction(rtr_events.iloc[:20_000], seed=0, fractions=(0.8, 0.2))
    unlabelled = test.drop(columns=["label", "outcome"])
    _, (with_labels,) = build_features(train, [test], seed=0)
    _, (without,) = build_features(train, [unlabelled], seed=0)
    pd.testing.assert_frame_equal(with_labels, without)
