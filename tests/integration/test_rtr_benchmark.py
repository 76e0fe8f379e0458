"""The RentTheRunway benchmark through the product's own path: protocol, report, no leakage.

They run on the first lines of the development copy: every stage (ingest, feature store,
tuner, registry, evaluation) with one small tuning trial. The full run is ``make
benchmark-rtr``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation.public_benchmark import (
    WORK_SUBDIR,
    _hold_out,
    format_table,
    run_renttherunway,
    split_by_transaction,
)
from features import store as fs
from features.aggregates import HistoryFolds, event_folds
from features.definitions import FIT_MODEL_FEATURES
from ml_pipeline.ingest import ingest_renttherunway
from ml_pipeline.settings import Settings, load_settings

pytestmark = [pytest.mark.needs_data, pytest.mark.slow]

RTR_FILE = Path("renttherunway") / "rtr_dev.jsonl.gz"
SAMPLE_LINES = 6_000


@pytest.fixture
def sample(shared_data: Path, tmp_path: Path) -> Path:
    with gzip.open(shared_data / RTR_FILE, "rt") as f:
        lines = [next(f) for _ in range(SAMPLE_LINES)]
    path = tmp_path / "sample.jsonl"
    path.write_text("".join(lines))
    return path


def test_product_path_on_a_sample_writes_the_report(sample: Path, tmp_path: Path) -> None:
    out = tmp_path / "rtr.json"
    result = run_renttherunway(
        sample, protocol="random", seed=0, n_trials=1, timeout_s=5, json_out=out, workdir=tmp_path
    )
    written = json.loads(out.read_text())
    for key in ("mean_auc", "auc_small", "auc_fit", "auc_large", "n_train", "n_test"):
        assert written[key] == pytest.approx(result[key])
    assert written["protocol"] == "random"
    total = result["n_train"] + result["n_valid"] + result["n_test"]
    assert 0.95 * SAMPLE_LINES <= total <= SAMPLE_LINES  # a few lines are quarantined
    assert result["n_test"] == pytest.approx(0.1 * total, abs=2)
    assert result["n_features"] == len(FIT_MODEL_FEATURES)
    # A sample this small is noisy; the model must still beat chance clearly.
    assert result["mean_auc"] > 0.6
    # The product's stages ran: the feature store and the MLflow registry hold the run.
    work = tmp_path / WORK_SUBDIR
    assert (work / "offline" / "features" / "product_stats.parquet").is_file()
    assert (work / "training_set.parquet").exists() or result["mlflow_run_id"]
    table = format_table(result)
    assert "K-LF-ML" in table and "fitml" in table


def test_a_separate_test_file_is_scored_unseen(sample: Path, tmp_path: Path) -> None:
    lines = sample.read_text().splitlines(keepends=True)
    train_file, test_file = tmp_path / "train.jsonl", tmp_path / "test.jsonl.gz"
    train_file.write_text("".join(lines[:5_000]))
    with gzip.open(test_file, "wt") as f:
        f.write("".join(lines[5_000:]))
    result = run_renttherunway(train_file, test_file, n_trials=1, timeout_s=5, workdir=tmp_path)
    assert result["protocol"] == "test file"
    assert 950 <= result["n_test"] <= 1_000
    assert result["mean_auc"] > 0.55


FLIP = {"too_small": "too_large", "fit": "too_small", "too_large": "fit"}


def _settings(work: Path, history: str) -> Settings:
    settings = load_settings("local", work)
    feast = settings.feast.model_copy(update={"history": history})
    return settings.model_copy(update={"feast": feast})


@pytest.mark.parametrize("history", ["point_in_time", "oof"])
def test_scored_rows_labels_enter_no_feature(sample: Path, tmp_path: Path, history: str) -> None:
    """Held-out rows' labels are out of the event log: flipping them changes no feature."""
    features = [c for c in FIT_MODEL_FEATURES]

    def rows(flip: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
        work = tmp_path / ("flipped" if flip else "plain")
        ingest_renttherunway(sample, work)
        settings = _settings(work, history)
        events = pd.read_parquet(settings.offline_dir / "events.parquet")
        events = events.sort_values("event_id", kind="stable").reset_index(drop=True)
        _, test = split_by_transaction(events, 0, (0.8, 0.2))
        held = _hold_out(settings, set(test["event_id"]))
        if flip:  # what the scored rows' labels are must not matter to anything
            held["outcome"] = held["outcome"].map(FLIP)
        fs.apply(settings)
        train = fs.training_set(settings).set_index("event_id").sort_index()
        scored = fs.training_set(settings, held).set_index("event_id").sort_index()
        return train[features], scored[features]

    plain_train, plain_scored = rows(False)
    flipped_train, flipped_scored = rows(True)
    pd.testing.assert_frame_equal(plain_train, flipped_train)
    pd.testing.assert_frame_equal(plain_scored, flipped_scored)
    # The history features are not empty: the check is not vacuous.
    assert plain_scored["pstat_n"].notna().mean() > 0.3
    assert np.isfinite(plain_scored["size_rel_item"]).mean() > 0.3


def test_oof_rows_own_fold_labels_enter_no_feature(sample: Path, tmp_path: Path) -> None:
    """Out of fold, through the store: flipping labels of one fold changes none of its rows'
    features (request-time ones included), and the held-out rows see more history."""
    features = [c for c in FIT_MODEL_FEATURES]

    def rows(flip_fold: int | None) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
        work = tmp_path / f"flip{flip_fold}"
        ingest_renttherunway(sample, work)
        settings = _settings(work, "oof")
        path = settings.offline_dir / "events.parquet"
        events = pd.read_parquet(path).sort_values("event_id", kind="stable")
        _, test = split_by_transaction(events.reset_index(drop=True), 0, (0.9, 0.1))
        held = _hold_out(settings, set(test["event_id"]))
        labelled = pd.read_parquet(path)
        fold = event_folds(labelled["event_id"], settings.feast.folds, settings.seed)
        if flip_fold is not None:
            mask = fold == flip_fold
            labelled.loc[mask, "outcome"] = labelled.loc[mask, "outcome"].map(FLIP)
            labelled.to_parquet(path, index=False)
        fs.apply(settings)
        folds = HistoryFolds.read(fs.feature_source_dir(settings))
        assert folds is not None and folds.folds == settings.feast.folds
        train = fs.training_set(settings).set_index("event_id")
        scored = fs.training_set(settings, held).set_index("event_id")
        fold_of = pd.Series(fold, index=labelled["event_id"].to_numpy())
        return train[features], scored[features], fold_of.loc[train.index].to_numpy()

    plain, scored, fold = rows(None)
    flipped, _, _ = rows(1)
    in_fold = fold == 1
    pd.testing.assert_frame_equal(plain[in_fold], flipped[in_fold])
    # Not vacuous: the flip shows in the other folds' features.
    assert not plain[~in_fold]["hist_share_small"].equals(flipped[~in_fold]["hist_share_small"])
    # A held-out row reads every labelled row; a labelled row all but its own fold's.
    assert scored["pstat_n"].mean() > plain["pstat_n"].mean()
