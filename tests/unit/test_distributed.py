"""Unit tests of training.distributed: the trial queue, its checks, partitions; the cost fit."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from benchmarks.bench_scale import crossover, exponent, summarise

from ml_pipeline.errors import InvalidValueError
from training.distributed import (
    StudyFullError,
    StudySpec,
    _window_frames,
    create_shared_study,
    model_columns,
    shared_storage,
    write_partitions,
)
from training.models import FitModel


def _spec(n_trials: int) -> StudySpec:
    return StudySpec(
        model="fit",
        data_path="rows.parquet",
        valid_start="2026-01-01T00:00:00+00:00",
        test_start="2026-02-01T00:00:00+00:00",
        seed=0,
        num_threads=1,
        max_rounds=10,
        n_trials=n_trials,
    )


def test_a_shared_study_runs_exactly_its_queued_trials(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = shared_storage(url, heartbeat_interval=1, grace_period=2)
    study = create_shared_study(storage, "queued", _spec(3))
    assert StudySpec.load(study) == _spec(3)
    with pytest.raises(StudyFullError):
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=10)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    # Queueing more (as a retry does) is still allowed; only fresh trials are refused.
    study.enqueue_trial({"x": 0.5})
    with pytest.raises(StudyFullError):
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=10)
    assert len(study.get_trials(deepcopy=False)) == 4
    with pytest.raises(InvalidValueError, match="exists already"):
        create_shared_study(storage, "queued", _spec(3))


def test_fixed_points_set_the_first_queued_trials_and_the_rest_are_sampled(
    tmp_path: Path,
) -> None:
    storage = shared_storage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat_interval=1, grace_period=2)
    study = create_shared_study(storage, "points", _spec(3), [{"x": 0.25}, {"x": 0.75}])
    with pytest.raises(StudyFullError):
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=10)
    xs = [t.params["x"] for t in study.get_trials(deepcopy=False)]
    assert xs[:2] == [0.25, 0.75]
    assert len(xs) == 3 and xs[2] not in (0.25, 0.75)
    with pytest.raises(InvalidValueError, match="exceed the study's 1 trials"):
        create_shared_study(storage, "too-many", _spec(1), [{"x": 0.1}, {"x": 0.2}])


@pytest.mark.parametrize(
    ("url", "interval", "grace", "message"),
    [
        (None, 5, 30, "not a database URL"),
        ("var/optuna.journal", 5, 30, "not a database URL"),
        ("sqlite:///x.db", 5, 5, "must exceed heartbeat_interval"),
        ("sqlite:///x.db", 0, 5, "must exceed heartbeat_interval"),
    ],
)
def test_shared_storage_rejects_what_workers_cannot_share(
    url: str | None, interval: int, grace: int, message: str
) -> None:
    with pytest.raises(InvalidValueError, match=message):
        shared_storage(url, heartbeat_interval=interval, grace_period=grace)  # type: ignore[arg-type]


def test_a_study_not_made_by_fitml_is_refused_by_name(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="foreign")
    with pytest.raises(InvalidValueError, match="foreign"):
        StudySpec.load(study)


def test_a_tuning_worker_reads_only_the_models_columns_of_its_windows(tmp_path: Path) -> None:
    columns = model_columns(FitModel.features)
    assert {"outcome", "size_index", "event_timestamp", *FitModel.features} == set(columns)
    times = pd.date_range("2025-12-20", "2026-02-20", periods=60, tz="UTC")
    rows = pd.DataFrame({c: np.nan for c in columns if c != "event_timestamp"}, index=times)
    rows = rows.rename_axis("event_timestamp").reset_index()
    rows["outcome"] = "fit"
    rows["chart_sizes"] = [np.array(["S", "M"])] * len(rows)  # in the set, not in the model
    rows["user_id"] = "u1"
    path = tmp_path / "rows.parquet"
    rows.to_parquet(path, index=False)
    train, valid = _window_frames(_spec(2), str(path))
    assert list(train.columns) == list(valid.columns) == columns
    assert (train["event_timestamp"] < pd.Timestamp("2026-01-01", tz="UTC")).all()
    assert (
        valid["event_timestamp"]
        .between(pd.Timestamp("2026-01-01", tz="UTC"), pd.Timestamp("2026-02-01", tz="UTC"), "left")
        .all()
    )
    assert len(train) + len(valid) < len(rows)  # the test window is not read for tuning


def test_write_partitions_keeps_every_row_once(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": np.arange(1003), "b": np.arange(1003) * 2.0})
    paths = write_partitions(frame, tmp_path / "parts", rows_per_part=250)
    assert len(paths) == 5
    back = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    pd.testing.assert_frame_equal(back, frame)
    assert len(write_partitions(frame.head(10), tmp_path / "few", 250, min_parts=2)) == 2


def test_cost_exponent_and_the_size_where_dask_pays_off() -> None:
    x = np.array([1e5, 1e6, 1e7])
    assert exponent(x, 3.0 * x**1.2) == pytest.approx(1.2, abs=1e-9)
    assert exponent(x[:1], x[:1]) is None
    report = {
        "sizes": {
            str(n): {
                "events": n,
                "local": {"exit_code": 0, "wall_s": n / 1e4},
                "dask": {"exit_code": 0, "wall_s": 30 + n / 2e4},
            }
            for n in (100_000, 1_000_000, 4_000_000)
        }
    }
    summary = summarise(report)
    assert summary["dask_over_local"]["wall_s"]["100000"] == pytest.approx(3.5)
    assert summary["dask_faster_from_events"] == 1_000_000
    assert summary["exponents"]["local.wall_s"] == pytest.approx(1.0)


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_failed_and_queued_again(
    tmp_path: Path,
) -> None:
    storage = shared_storage(
        f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1, grace_period=2
    )
    study = create_shared_study(storage, "orphan", _spec(1))
    orphan = study.ask()  # taken, then its worker vanished: running, never a heartbeat
    optuna.storages.fail_stale_trials(study)
    assert study.trials[orphan.number].state == optuna.trial.TrialState.RUNNING  # in grace
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    assert trials[orphan.number].state == optuna.trial.TrialState.FAIL
    assert [t.state for t in trials[1:]] == [optuna.trial.TrialState.WAITING]
    assert trials[1].system_attrs["failed_trial"] == orphan.number


def test_the_extrapolated_crossover_is_where_the_fitted_costs_meet() -> None:
    x = np.array([1e5, 1e6])
    # local = 1e-3 n and dask = 0.1 n^0.5 are equal at n = 1e4
    local, dask = 1e-3 * x, 0.1 * np.sqrt(x)
    assert crossover(x, local, x, dask) == 10_000
    assert crossover(x, dask, x, local) is None  # the Dask line grows faster: never
    assert crossover(x[:1], local[:1], x, dask) is None
