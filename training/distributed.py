"""Scale-out on existing engines: tuning workers on one Optuna study, LightGBM on Dask.

**Tuning workers.** A shared study lives in an RDB storage (PostgreSQL in ``prod``). The
coordinator (:func:`tune_in_workers`, behind ``fitml train --workers N``) creates the study,
queues exactly ``n_trials`` trials in it and records in the study what a worker needs: which
model, the training data, the split, the seed and the MLflow parent run. Any number of
workers (:func:`run_tune_worker`, behind ``fitml tune-worker --study NAME``: local processes,
a Kubernetes Job, a Dask cluster or a second machine) take queued trials until none is left.
The storage refuses to create trials beyond the queue (:class:`QueuedTrialsStorage`), so the
study ends with exactly ``n_trials`` finished trials, whatever the number of workers and
however their trials interleave.

Each running trial beats a heartbeat into the storage. A worker that dies (killed, its machine
lost) stops beating; after ``grace_period`` seconds another worker marks its trial ``FAIL``
and Optuna's :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` queues a copy with the same
parameters, so the dead worker loses only its running trial. A worker leaves only when no
trial is queued or running: the last one alive waits out the grace period of a dead peer.

Every trial is a nested MLflow run under its worker's run, and every worker's run is nested
under the coordinator's tuning run, wherever the worker ran.

**Distributed training.** :func:`fit_on_dask` fits the fit or size model with
``lightgbm.dask`` on a Dask cluster (a :class:`distributed.LocalCluster` unless a scheduler
address is given), reading the training set's parquet in partitions inside the Dask workers.
The booster comes back (``to_local()``) into the same :class:`~training.models.FitModel` /
:class:`~training.models.SizeModel` as a single-process fit, with the same encoder, so it is
saved, registered and served exactly like one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import optuna
import pandas as pd
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from features.definitions import CATEGORICAL_FEATURES
from ml_pipeline.errors import InvalidValueError
from training.models import FitModel, SizeModel, TabularEncoder, model_columns
from training.tuning import (
    CLASS_WEIGHT_PARAM,
    VALID_NAME,
    TuningResult,
    starting_point,
    tune_lightgbm,
)

if TYPE_CHECKING:
    from distributed import Client

    from evaluation.evaluate import Split
    from ml_pipeline.settings import Settings

HEARTBEAT_INTERVAL_S = 5
"""Seconds between a running trial's heartbeats."""
GRACE_PERIOD_S = 30
"""A running trial whose last heartbeat is older than this is taken for dead."""
MAX_RETRY = 2
"""How often a trial lost with its worker is queued again."""
ENGINES = ("local", "dask")
"""Where the final models are fitted: in this process, or with ``lightgbm.dask``."""

_ATTR = "fitml."
_RDB_PREFIXES = ("sqlite:", "postgresql:", "postgresql+", "mysql:", "mysql+")
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_Model = TypeVar("_Model", FitModel, SizeModel)
_MODELS: dict[str, type[FitModel] | type[SizeModel]] = {"fit": FitModel, "size": SizeModel}


class StudyFullError(RuntimeError):
    """A worker asked for a trial beyond the ones queued for the study."""


class QueuedTrialsStorage(RDBStorage):
    """An RDB storage in which a study runs only the trials queued for it.

    ``study.ask()`` takes a queued (``WAITING``) trial atomically; when none is left it would
    create a new one, which this storage refuses with :class:`StudyFullError`. Queueing
    (``enqueue_trial``) and the retry of a failed trial copy a template trial and are allowed.
    """

    def _create_new_trial(
        self, study_id: int, template_trial: optuna.trial.FrozenTrial | None = None
    ) -> optuna.trial.FrozenTrial:
        """Create a trial from a template; refuse a fresh one (the queue is empty).

        (Optuna's cached storage and ``create_new_trial`` both create trials through here.)
        """
        if template_trial is None:
            raise StudyFullError(f"study {study_id} has no queued trial left")
        return super()._create_new_trial(study_id, template_trial)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Running trials past the grace period: without a recent heartbeat, or without any.

        Optuna skips a running trial that never beat, so a worker killed between taking a
        trial and its first heartbeat would leave that trial running forever; here such a
        trial is stale once it started more than ``grace_period`` seconds ago.
        """
        import sqlalchemy.orm
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        stale = list(super()._get_stale_trial_ids(study_id))
        assert self.heartbeat_interval is not None
        grace = timedelta(seconds=self.grace_period or 2 * self.heartbeat_interval)
        now = datetime.now()  # the clock Optuna stamps datetime_start with
        with _create_scoped_session(self.scoped_session) as session:
            running = (
                session.query(models.TrialModel)
                .options(sqlalchemy.orm.selectinload(models.TrialModel.heartbeats))
                .filter(models.TrialModel.state == TrialState.RUNNING)
                .filter(models.TrialModel.study_id == study_id)
                .all()
            )
            for trial in running:
                started = trial.datetime_start
                if not trial.heartbeats and started is not None and now - started > grace:
                    stale.append(int(trial.trial_id))
        return stale


def shared_storage(
    url: str,
    *,
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
    max_retry: int = MAX_RETRY,
) -> QueuedTrialsStorage:
    """The storage tuning workers share: heartbeats, retry of lost trials, a fixed queue.

    Args:
        url: An RDB URL (``postgresql+psycopg://user@host/db``, ``sqlite:///path.db``).
        heartbeat_interval: Seconds between heartbeats of a running trial.
        grace_period: Seconds without a heartbeat after which a trial is failed and retried.
        max_retry: How many times one trial is retried.

    Raises:
        InvalidValueError: ``url`` is not an RDB URL, or the timings are inconsistent.
    """
    if not isinstance(url, str) or not url.startswith(_RDB_PREFIXES):
        raise InvalidValueError(
            "optuna storage",
            url,
            "is not a database URL that several workers can share",
            "use the prod profile or set FITML_OPTUNA_STORAGE=postgresql+psycopg://user@host/db",
        )
    if heartbeat_interval < 1 or grace_period <= heartbeat_interval:
        raise InvalidValueError(
            "grace_period",
            grace_period,
            f"must exceed heartbeat_interval ({heartbeat_interval}, >= 1 s)",
            "e.g. heartbeat_interval=5, grace_period=30",
        )
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return QueuedTrialsStorage(
            url,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
        )


@dataclass(frozen=True)
class StudySpec:
    """What a tuning worker needs to know, stored in the study's user attributes."""

    model: str
    data_path: str
    valid_start: str
    test_start: str
    seed: int
    num_threads: int
    max_rounds: int
    n_trials: int
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S
    grace_period: int = GRACE_PERIOD_S
    max_retry: int = MAX_RETRY
    mlflow_tracking_uri: str = ""
    mlflow_parent_run_id: str = ""

    def save(self, study: optuna.Study) -> None:
        """Write the spec into ``study``'s user attributes."""
        for key, value in self.__dict__.items():
            study.set_user_attr(_ATTR + key, value)

    @classmethod
    def load(cls, study: optuna.Study) -> StudySpec:
        """Read the spec back from ``study``.

        Raises:
            InvalidValueError: the study was not created by :func:`create_shared_study`.
        """
        attrs = study.user_attrs
        try:
            return cls(**{k: attrs[_ATTR + k] for k in cls.__dataclass_fields__})
        except KeyError as exc:
            raise InvalidValueError(
                "study",
                study.study_name,
                f"was not created by fitml (no {exc.args[0]!r} attribute)",
                "start workers on a study made by `fitml train --workers N`",
            ) from None


def create_shared_study(
    storage: QueuedTrialsStorage,
    study_name: str,
    spec: StudySpec,
    points: Sequence[Mapping[str, Any]] = (),
) -> optuna.Study:
    """Create ``study_name`` with ``spec.n_trials`` queued trials and the worker's spec.

    ``points`` fix the parameters of the first queued trials (as ``initial_params`` of
    :func:`training.tuning.tune_lightgbm`); the other trials are sampled by the worker that
    takes them.

    Raises:
        InvalidValueError: a study of that name exists already, or more points than trials.
    """
    if len(points) > spec.n_trials:
        raise InvalidValueError(
            "points", len(points), f"exceed the study's {spec.n_trials} trials", "queue fewer"
        )
    model_class(spec.model)
    if spec.n_trials < 1:
        raise InvalidValueError("n_trials", spec.n_trials, "must be >= 1")
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, direction="minimize")
    except optuna.exceptions.DuplicatedStudyError:
        raise InvalidValueError(
            "study", study_name, "exists already", "pick a new study name"
        ) from None
    spec.save(study)
    for i in range(spec.n_trials):
        study.enqueue_trial(dict(points[i]) if i < len(points) else {})
    return study


def model_class(model: str) -> type[FitModel] | type[SizeModel]:
    """The model class named ``model`` (``fit`` or ``size``).

    Raises:
        InvalidValueError: ``model`` names no fitml model.
    """
    try:
        return _MODELS[model]
    except KeyError:
        raise InvalidValueError("model", model, "is not a fitml model", "use fit or size") from None


def _window_frames(spec: StudySpec, data_path: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    columns = model_columns(model_class(spec.model).features)
    frame = pd.read_parquet(data_path or spec.data_path, columns=columns)
    ts = pd.to_datetime(frame["event_timestamp"], utc=True)
    valid_start = pd.Timestamp(spec.valid_start)
    test_start = pd.Timestamp(spec.test_start)
    train = frame[ts < valid_start]
    valid = frame[(ts >= valid_start) & (ts < test_start)]
    if train.empty or valid.empty:
        raise InvalidValueError(
            "training data",
            data_path or spec.data_path,
            f"has no rows before {valid_start} or none between it and {test_start}",
            "point the worker at the training set the study was made from",
        )
    return train, valid


def tuning_inputs(
    model: str, train: pd.DataFrame, valid: pd.DataFrame
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray, dict[str, Any], list[str]]:
    """Encoded matrices, targets, objective and categorical columns to tune ``model`` on."""
    cls = model_class(model)
    encoder = TabularEncoder(cls.features, CATEGORICAL_FEATURES).fit(train)
    if cls is FitModel:
        targets = (FitModel.labels(train["outcome"]), FitModel.labels(valid["outcome"]))
        objective: dict[str, Any] = {"objective": "multiclass", "num_class": 3}
    else:
        targets = (SizeModel.target(train), SizeModel.target(valid))
        objective = {"objective": "regression"}
    categorical = [c for c in CATEGORICAL_FEATURES if c in cls.features]
    return (
        encoder.transform(train),
        targets[0],
        encoder.transform(valid),
        targets[1],
        objective,
        categorical,
    )


def _count(study: optuna.Study, states: Sequence[TrialState]) -> int:
    return len(study.get_trials(deepcopy=False, states=tuple(states)))


@dataclass(frozen=True)
class WorkerReport:
    """What one tuning worker did."""

    study: str
    trials_run: int
    mlflow_run_id: str
    seconds: float


def run_tune_worker(
    storage_url: str,
    study_name: str,
    *,
    worker_index: int | None = None,
    data_path: str | None = None,
    timeout_s: float | None = None,
) -> WorkerReport:
    """Take queued trials of ``study_name`` until none is queued or running.

    Args:
        storage_url: The shared Optuna database (heartbeat, grace period and retries come
            from the study, see :class:`StudySpec`).
        study_name: A study made by :func:`create_shared_study`.
        worker_index: Seeds this worker's sampler and LightGBM with ``seed + index`` so
            workers do not propose the same points (default: the process id).
        data_path: Read the training set here instead of the path in the study (a worker on
            another machine, with the same file elsewhere).
        timeout_s: Stop taking trials after this many seconds.

    Returns:
        How many trials this worker ran, and its MLflow run.
    """
    started = time.perf_counter()
    spec = StudySpec.load(optuna.load_study(study_name=study_name, storage=storage_url))
    storage = shared_storage(
        storage_url,
        heartbeat_interval=spec.heartbeat_interval,
        grace_period=spec.grace_period,
        max_retry=spec.max_retry,
    )
    study = optuna.load_study(study_name=study_name, storage=storage)
    train, valid = _window_frames(spec, data_path)
    X_tr, y_tr, X_va, y_va, objective, categorical = tuning_inputs(spec.model, train, valid)
    index = os.getpid() if worker_index is None else worker_index
    mine_before = _count(study, _FINISHED)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    import mlflow

    with _worker_run(spec, study_name, index) as run_id:
        while deadline is None or time.monotonic() < deadline:
            try:
                tune_lightgbm(
                    X_tr,
                    y_tr,
                    X_va,
                    y_va,
                    n_trials=spec.n_trials,
                    timeout_s=None if deadline is None else max(1.0, deadline - time.monotonic()),
                    seed=spec.seed + index,
                    storage=storage,
                    study_name=study_name,
                    categorical=categorical,
                    base_params={
                        "num_threads": spec.num_threads,
                        "num_boost_round": spec.max_rounds,
                    },
                    log_to_mlflow=mlflow.active_run() is not None,
                    **objective,
                )
                break  # only a time budget ends the call without the queue running dry
            except StudyFullError:
                pass
            except RuntimeError as exc:  # no trial completed yet: others may still finish
                if "no tuning trial completed" not in str(exc):
                    raise
            if not _count(study, (TrialState.RUNNING, TrialState.WAITING)):
                break
            # A peer is still running a trial: wait for it, or for its heartbeat to go
            # stale, in which case its trial is failed and queued again for us to run.
            time.sleep(spec.heartbeat_interval)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
    trials_run = _count(study, _FINISHED) - mine_before
    return WorkerReport(study_name, trials_run, run_id, time.perf_counter() - started)


@contextmanager
def _worker_run(spec: StudySpec, study_name: str, index: int) -> Iterator[str]:
    """An MLflow run for this worker under the study's parent run (none without one)."""
    if not spec.mlflow_tracking_uri or not spec.mlflow_parent_run_id:
        yield ""
        return
    import mlflow

    mlflow.set_tracking_uri(spec.mlflow_tracking_uri)
    parent = mlflow.MlflowClient().get_run(spec.mlflow_parent_run_id)
    with mlflow.start_run(
        run_name=f"tune-worker-{index}",
        experiment_id=parent.info.experiment_id,
        parent_run_id=spec.mlflow_parent_run_id,
        tags={
            "fitml.worker_host": socket.gethostname(),
            "fitml.worker_pid": str(os.getpid()),
            "fitml.worker_index": str(index),
            "optuna.study_name": study_name,
        },
    ) as run:
        yield run.info.run_id


def result_from_study(study: optuna.Study) -> TuningResult:
    """The :class:`TuningResult` of a finished shared study (as :func:`tune_lightgbm` gives).

    Raises:
        RuntimeError: no trial of the study completed.
    """
    trials = study.get_trials(deepcopy=False, states=_FINISHED)
    if not any(t.state == TrialState.COMPLETE for t in trials):
        raise RuntimeError(f"no tuning trial completed in study {study.study_name!r}")
    best = study.best_trial
    params = dict(best.user_attrs["lgb_params"])
    return TuningResult(
        best_params=params,
        best_iteration=int(best.user_attrs["best_iteration"]),
        best_value=float(best.value),  # type: ignore[arg-type]
        n_trials=len(trials),
        study=study,
        class_weight_power=float(best.user_attrs.get(CLASS_WEIGHT_PARAM, 0.0)),
        metric=str(params.get("metric", "")),
    )


def worker_command(
    study_name: str, storage_url: str, index: int, workdir: Path | None = None
) -> list[str]:
    """The ``fitml tune-worker`` command line of worker ``index``."""
    argv = [sys.executable, "-m", "ml_pipeline.cli", "tune-worker", "--study", study_name]
    argv += ["--storage", storage_url, "--index", str(index)]
    if workdir is not None:
        argv += ["--workdir", str(workdir)]
    return argv


def tune_in_workers(
    model: str,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    *,
    storage_url: str,
    workers: int,
    n_trials: int,
    seed: int,
    data_dir: Path,
    num_threads: int = 1,
    max_rounds: int = 1000,
    timeout_s: float | None = None,
    study_name: str | None = None,
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
    initial_params: Sequence[Mapping[str, Any]] = (),
) -> TuningResult:
    """Tune ``model`` with ``workers`` local ``fitml tune-worker`` processes on one study.

    ``initial_params`` fix the first trials' parameters (see :func:`create_shared_study`).

    The train and validation rows are written to ``data_dir/<study>.parquet`` for the
    workers; when an MLflow run is active the workers' runs (and their trials) nest under it
    and the best result is logged on it, as :func:`tune_lightgbm` does.

    Raises:
        InvalidValueError: ``workers`` < 1, or the storage is not a shared database.
        RuntimeError: a worker failed, or no trial completed.
    """
    if workers < 1:
        raise InvalidValueError("workers", workers, "must be >= 1")
    columns = model_columns(model_class(model).features)
    import mlflow

    storage = shared_storage(
        storage_url, heartbeat_interval=heartbeat_interval, grace_period=grace_period
    )
    name = study_name or f"fitml-{model}-{int(time.time())}-{os.getpid()}"
    data_dir.mkdir(parents=True, exist_ok=True)
    data_path = data_dir / f"{name}.parquet"
    rows = pd.concat([train[columns], valid[columns]])
    rows.to_parquet(data_path, index=False)
    active = mlflow.active_run()
    spec = StudySpec(
        model=model,
        data_path=str(data_path.resolve()),
        valid_start=pd.Timestamp(valid["event_timestamp"].min()).isoformat(),
        test_start=(pd.Timestamp(valid["event_timestamp"].max()) + pd.Timedelta(1)).isoformat(),
        seed=seed,
        num_threads=num_threads,
        max_rounds=max_rounds,
        n_trials=n_trials,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        mlflow_tracking_uri=mlflow.get_tracking_uri() if active else "",
        mlflow_parent_run_id=active.info.run_id if active else "",
    )
    study = create_shared_study(storage, name, spec, initial_params)
    logs = [data_dir / f"{name}.worker-{i}.log" for i in range(workers)]
    procs = []
    for i, log in enumerate(logs):
        with log.open("wb") as handle:
            procs.append(
                subprocess.Popen(
                    worker_command(name, storage_url, i),
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONWARNINGS": "ignore"},
                )
            )
    try:
        for proc in procs:
            proc.wait(timeout=None if timeout_s is None else timeout_s + 10 * grace_period)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        data_path.unlink(missing_ok=True)
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        tail = logs[failed[0][0]].read_text()[-2000:]
        raise RuntimeError(f"tuning worker(s) {failed} failed; last output:\n{tail}")
    for log in logs:
        log.unlink(missing_ok=True)
    result = result_from_study(study)
    if active is not None:
        _log_best(result)
    return result


def _log_best(result: TuningResult) -> None:
    import mlflow

    mlflow.log_params(
        {
            **{f"tune.best.{k}": v for k, v in result.best_params.items()},
            f"tune.best.{CLASS_WEIGHT_PARAM}": result.class_weight_power,
            "tune.study_name": result.study.study_name,
        }
    )
    mlflow.log_metrics(
        {
            f"tune.best_{VALID_NAME}_{result.metric}": result.best_value,
            "tune.best_iteration": float(result.best_iteration),
            "tune.n_trials": float(result.n_trials),
        }
    )


# ---------------------------------------------------------------------------------------------
# LightGBM on Dask


@contextmanager
def dask_client(
    scheduler: str | None = None, n_workers: int = 2, threads_per_worker: int = 1
) -> Iterator[Client]:
    """A Dask client: to ``scheduler`` (``tcp://host:8786``), else to a new LocalCluster.

    The local cluster runs ``n_workers`` worker processes on 127.0.0.1 without a dashboard
    and is closed on exit.
    """
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _dask_params(model: FitModel | SizeModel) -> dict[str, Any]:
    params = model._lgb_params()
    for key in ("num_class", "num_iterations", "num_boost_round", "n_estimators", "metric"):
        params.pop(key, None)
    params["n_estimators"] = model.num_boost_round
    return params


def fit_on_dask(
    model: FitModel | SizeModel,
    data: str | Path | Sequence[str | Path],
    client: Client,
    *,
    before: pd.Timestamp | None = None,
) -> FitModel | SizeModel:
    """Fit ``model`` with ``lightgbm.dask`` on the parquet training set ``data``.

    The rows (with ``event_timestamp`` before ``before``, when given) are read in partitions
    (one per parquet row group) by the Dask workers and never gathered in this process: the
    category vocabularies and class counts come from small aggregations, each partition is
    encoded where it lives, and LightGBM trains data-parallel across the workers.

    Args:
        model: An unfitted model carrying its parameters (e.g. the tuned ones).
        data: One parquet file, a directory or glob of them, or a list of files.
        client: A Dask client (see :func:`dask_client`).
        before: Keep only rows before this time (the fit window of :func:`train`).

    Returns:
        ``model``, fitted: ``booster_`` is a plain :class:`lightgbm.Booster` and
        ``encoder_`` the same kind of :class:`TabularEncoder` a local fit learns.
    """
    import dask.dataframe as dd
    from lightgbm.dask import DaskLGBMClassifier, DaskLGBMRegressor

    paths: Any = [str(p) for p in data] if isinstance(data, list | tuple) else str(data)
    ddf = dd.read_parquet(paths, columns=model_columns(model.features), split_row_groups=True)
    if before is not None:
        ddf = ddf[ddf["event_timestamp"] < before]
    categorical = [c for c in CATEGORICAL_FEATURES if c in model.features]
    uniques = client.compute([ddf[c].dropna().astype(str).unique() for c in categorical])
    encoder = TabularEncoder(model.features, CATEGORICAL_FEATURES)
    encoder.categories_ = {
        column: sorted(str(v) for v in values)
        for column, values in zip(categorical, client.gather(uniques), strict=True)
    }
    X = ddf.map_partitions(encoder.transform, meta=encoder.transform(ddf._meta))
    if isinstance(model, FitModel):
        y = ddf.map_partitions(
            lambda part: pd.Series(FitModel.labels(part["outcome"]), index=part.index),
            meta=pd.Series(dtype="int64"),
        )
        counts = y.value_counts().compute().reindex(range(3), fill_value=0).to_numpy()
        total = counts.sum()
        inverse = total / (3 * np.maximum(counts, 1.0))
        raw = inverse ** float(model.sample_weight_power)
        mean = float((raw * counts).sum() / max(total, 1))
        per_class = raw / mean  # the same normalised weights class_sample_weights gives
        w = y.map_partitions(
            lambda part: pd.Series(per_class[part.to_numpy()], index=part.index),
            meta=pd.Series(dtype="float64"),
        )
        estimator: Any = DaskLGBMClassifier(client=client, **_dask_params(model))
        estimator.fit(X, y, sample_weight=w)
    else:
        y = ddf.map_partitions(
            lambda part: pd.Series(SizeModel.target(part), index=part.index),
            meta=pd.Series(dtype="float64"),
        )
        estimator = DaskLGBMRegressor(client=client, **_dask_params(model))
        estimator.fit(X, y)
    model.encoder_ = encoder
    model.booster_ = estimator.to_local().booster_
    return model


def fit_models_on_dask(
    models: Sequence[FitModel | SizeModel],
    source: Path | pd.DataFrame,
    split: Split,
    scheduler: str | None = None,
    *,
    n_workers: int = 2,
    rows_per_part: int = 250_000,
) -> None:
    """Fit ``models`` on the rows before ``split.test_start`` with ``lightgbm.dask``.

    Args:
        models: Unfitted models with their (tuned) parameters; fitted in place.
        source: The training set's parquet file (read in partitions by the workers), or rows
            already in memory, written as a partitioned parquet dataset next to nothing
            else (a temporary directory) for the workers to read.
        split: The training split; rows from ``split.test_start`` on are left out.
        scheduler: A Dask scheduler address (default: a LocalCluster of ``n_workers``).
        n_workers: Worker processes of the local cluster.
        rows_per_part: Rows per partition when ``source`` is a frame.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fitml-dask-") as tmp:
        if isinstance(source, pd.DataFrame):
            paths = write_partitions(source, Path(tmp), rows_per_part, min_parts=n_workers)
            data: Any = paths
            before = None
        else:
            data, before = source, split.test_start
        with dask_client(scheduler, n_workers=n_workers) as client:
            for model in models:
                fit_on_dask(model, data, client, before=before)


def write_partitions(
    frame: pd.DataFrame, directory: Path, rows_per_part: int, *, min_parts: int = 1
) -> list[Path]:
    """Write ``frame`` as ``part-00000.parquet``... of at most ``rows_per_part`` rows each."""
    directory.mkdir(parents=True, exist_ok=True)
    parts = max(min_parts, -(-len(frame) // max(1, rows_per_part)))
    bounds = np.linspace(0, len(frame), parts + 1).astype(int)
    paths = []
    for i in range(parts):
        path = directory / f"part-{i:05d}.parquet"
        frame.iloc[bounds[i] : bounds[i + 1]].to_parquet(path, index=False)
        paths.append(path)
    return paths


def tune_model_in_workers(
    model: _Model,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    settings: Settings,
    n_trials: int,
    timeout_s: float | None,
    workers: int,
) -> tuple[_Model, TuningResult]:
    """``training.train``'s tuning step with ``workers`` tuning processes on one study.

    Runs inside a nested ``tune_<kind>_model`` MLflow run, as the in-process tuning does, and
    returns the model carrying the best parameters.
    """
    import mlflow

    if settings.optuna.storage is None:
        raise InvalidValueError(
            "optuna.storage",
            None,
            "is in memory, which tuning workers cannot share",
            "use the prod profile or set FITML_OPTUNA_STORAGE to a PostgreSQL URL",
        )
    with mlflow.start_run(run_name=f"tune_{model.kind}_model", nested=True):
        result = tune_in_workers(
            model.kind,
            train,
            valid,
            storage_url=settings.optuna.storage,
            workers=workers,
            n_trials=n_trials,
            seed=settings.seed,
            data_dir=settings.workdir / "tuning",
            num_threads=settings.training.num_threads,
            max_rounds=settings.training.max_rounds,
            timeout_s=timeout_s,
            initial_params=(starting_point(len(train)),),  # as the in-process tuning starts
        )
    tuned = type(model)(
        params=result.best_params,
        num_boost_round=max(1, result.best_iteration),
        sample_weight_power=result.class_weight_power,
    )
    return tuned, result
