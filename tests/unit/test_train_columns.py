"""Training reads only the columns it needs: the column lists and the windowed reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluation.evaluate import EVALUATION_INPUTS, evaluate, time_split
from features.definitions import FEATURE_NAMES, FIT_MODEL_FEATURES, SIZE_MODEL_FEATURES
from features.transforms import request_features
from ml_pipeline.errors import InvalidValueError
from ml_pipeline.settings import Settings, load_settings
from training.models import FitModel, SizeModel
from training.train import (
    TRAINING_SET_FILE,
    evaluation_columns,
    load_training_set,
    read_windows,
    training_columns,
)

CHARTS = {
    "p1": (["S", "M", "L", "XL"], [2, 3, 4, 5], [80.0, 88.0, 96.0, 104.0], "chest", "alpha"),
    "p2": (["28", "30", "32"], [28, 30, 32], [70.0, 75.0, 80.0], "waist", "waist"),
}


def training_set(seed: int, n: int) -> pd.DataFrame:
    """Training-set rows with every column a real one has, and a few it does not need.

    Timestamps are mostly but not strictly increasing (as in files appended to), so the
    windows are not contiguous runs of rows.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        pid = "p1" if rng.random() < 0.6 else "p2"
        sizes, index, low, dim, system = CHARTS[pid]
        best, tried = int(rng.choice(index)), int(rng.choice(index))
        returning = rng.random() < 0.7
        row: dict[str, Any] = dict.fromkeys(FEATURE_NAMES, np.nan)
        row.update(
            {
                "event_id": f"e{i}",
                "user_id": f"u{i % 50}",
                "product_id": pid,
                "event_timestamp": pd.Timestamp("2025-01-01", tz="UTC")
                + pd.Timedelta(hours=i + 30 * rng.random()),
                "size": sizes[index.index(tried)],
                "notes": "runs small" if rng.random() < 0.1 else None,
                "chart_sizes": sizes,
                "chart_index": index,
                "chart_low": low,
                "chart_high": [v + (8.0 if dim == "chest" else 5.0) for v in low],
                "chart_dimension": dim,
                "product_size_system": system,
                "product_category": "tops" if pid == "p1" else "pants",
                "product_brand": "a" if pid == "p1" else "b",
                "user_fit_preference": [None, "slim", "regular"][int(rng.integers(3))],
                "user_chest_cm": 90.0 + 4 * rng.standard_normal(),
                "user_waist_cm": 76.0 + 4 * rng.standard_normal(),
                "user_weight_kg": 70.0 + 8 * rng.standard_normal(),
                "hist_n": float(rng.integers(1, 9)) if returning else np.nan,
                "hist_mean_offset": rng.normal(0, 0.5) if returning else np.nan,
                f"hist_usual_{system}": float(best) if returning else np.nan,
                "pstat_n": float(rng.integers(1, 50)) if rng.random() < 0.9 else np.nan,
                "pstat_mean_offset": rng.normal(0, 0.3),
                "size_index": tried,
                "outcome": "too_small"
                if tried < best
                else ("too_large" if tried > best else "fit"),
            }
        )
        rows.append(row)
    return request_features(pd.DataFrame(rows))


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return training_set(0, 600)


@pytest.fixture
def settings(frame: pd.DataFrame, tmp_path: Path) -> Settings:
    settings = load_settings("local", tmp_path / "var", env={})
    settings.workdir.mkdir(parents=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, settings.workdir / TRAINING_SET_FILE, row_group_size=70)
    return settings


def test_the_column_lists_cover_both_models_the_label_and_evaluation() -> None:
    train, test = training_columns(), evaluation_columns()
    assert len(train) == len(set(train)) and len(test) == len(set(test))
    for column in (*FIT_MODEL_FEATURES, *SIZE_MODEL_FEATURES, "outcome", "event_timestamp"):
        assert column in train, column
    assert set(train) <= set(test)
    assert set(EVALUATION_INPUTS) <= set(test)
    assert {"event_id", "product_id", *FEATURE_NAMES} <= set(test)
    # The per-size chart arrays are what the recommendation needs, not the models.
    assert not {"chart_sizes", "chart_index", "chart_low", "chart_high"} & set(train)


def test_the_windows_read_equal_the_whole_file_split(
    frame: pd.DataFrame, settings: Settings
) -> None:
    whole = pd.read_parquet(settings.workdir / TRAINING_SET_FILE)
    assert not whole["event_timestamp"].is_monotonic_increasing  # windows interleave in the file
    expected_split = time_split(whole)
    train, valid, test = expected_split.windows(whole)

    split, train_rows, valid_rows, test_rows = read_windows(settings)
    assert split == expected_split
    pd.testing.assert_frame_equal(train_rows, train[training_columns()])
    pd.testing.assert_frame_equal(valid_rows, valid[training_columns()])
    pd.testing.assert_frame_equal(test_rows, test[evaluation_columns()])
    assert len(train_rows) + len(valid_rows) + len(test_rows) == len(frame)

    # A given split (a registered model's) is read as it is, not recomputed.
    later = type(split)(split.test_start, split.test_start + pd.Timedelta(days=3))
    again, train_rows, valid_rows, test_rows = read_windows(settings, later)
    assert again == later
    pd.testing.assert_frame_equal(test_rows, later.windows(whole)[2][evaluation_columns()])


def test_load_training_set_passes_columns_and_filters(settings: Settings) -> None:
    whole = pd.read_parquet(settings.workdir / TRAINING_SET_FILE)
    start = whole["event_timestamp"].median()
    part = load_training_set(
        settings, columns=["event_id", "outcome"], filters=[("event_timestamp", ">=", start)]
    )
    assert list(part.columns) == ["event_id", "outcome"]
    expected = whole.loc[whole["event_timestamp"] >= start, ["event_id", "outcome"]]
    assert part["event_id"].tolist() == expected["event_id"].tolist()
    pd.testing.assert_frame_equal(load_training_set(settings), whole)


def test_a_missing_column_is_named(frame: pd.DataFrame, settings: Settings) -> None:
    frame.drop(columns=["hist_n", "chart_low"]).to_parquet(
        settings.workdir / TRAINING_SET_FILE, index=False
    )
    with pytest.raises(InvalidValueError, match="hist_n, chart_low") as error:
        read_windows(settings)
    assert TRAINING_SET_FILE in str(error.value) and "rebuild" in str(error.value)


def test_evaluation_on_the_test_window_columns_equals_it_on_every_column(
    frame: pd.DataFrame,
) -> None:
    split = time_split(frame)
    train, valid, test = split.windows(frame)
    fit_rows = pd.concat([train, valid])
    fit_model = FitModel(num_boost_round=30).fit(fit_rows)
    size_model = SizeModel(num_boost_round=30).fit(fit_rows)
    everything = evaluate(test, fit_model, size_model, None, fit_rows)
    needed = evaluate(
        test[evaluation_columns()], fit_model, size_model, None, fit_rows[training_columns()]
    )
    assert needed.metrics == pytest.approx(everything.metrics, rel=0, abs=0, nan_ok=True)
    pd.testing.assert_frame_equal(needed.slices, everything.slices)
