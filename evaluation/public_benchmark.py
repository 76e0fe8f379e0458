"""Public benchmark: 3-class fit prediction on RentTheRunway, through the product's own path.

The task of Misra, Wan and McAuley, "Decomposing fit semantics for product size recommendation
in metric spaces" (RecSys 2018): given a rental transaction (user, item, size), predict whether
the shopper said it was ``too_small``, ``fit`` or ``too_large``; score with the one-vs-rest
AUC of each class and their mean.

This module holds only the protocol and the report. :func:`run_renttherunway` runs what a
retailer runs: :func:`ml_pipeline.ingest.ingest_renttherunway` (the adapter and the data
contracts) into a work directory of its own, :func:`features.store.apply` (the feature
store's aggregate job and definitions), :func:`features.store.training_set` (the
point-in-time join and the request-time features) and :func:`training.train.train` (the
Optuna-tuned fit and size models, evaluated by :mod:`evaluation.evaluate`, registered in
MLflow). Nothing here computes a feature.

Protocols:

* ``random`` (the paper's): a seeded random 80/10/10 split by transaction. The test rows are
  taken out of the event log before the feature job runs, so their labels enter no feature.
  A random split has no time order to respect, so the feature job runs its out-of-fold
  history (``feast.history: oof``, :mod:`features.aggregates`): each train / validation row
  (the 80% / 10%) sees the feedback of the labelled rows outside its own fold, earlier and
  later (its own label never enters its features); each test row sees all of it.
* ``time``: the last 15% of events by time are the test window, the 15% before validation
  (:func:`evaluation.evaluate.time_split`), every row seeing the history before it.
* ``--test FILE``: train on the training file (a seeded random 10% of it for validation),
  score the test file's rows, whose labels are kept out of the event log.

``history`` overrides the feature job's history mode (``point_in_time`` or ``oof``); by
default ``oof`` for ``random`` and ``point_in_time`` otherwise.

No review text or rating is used.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import pandas as pd

from features.aggregates import HISTORY_MODES
from ml_pipeline.errors import InvalidValueError
from ml_pipeline.schema import OUTCOMES

CLASS_KEYS: Final[tuple[str, ...]] = ("small", "fit", "large")
"""Short class names used in result keys (``auc_small``, ...), in ``OUTCOMES`` order."""

PUBLISHED_MEAN_AUC: Final[dict[str, float]] = {
    "1-LV-LR": 0.61,
    "K-LV-LR": 0.676,
    "K-LF-LR": 0.672,
    "K-LV-ML": 0.681,
    "K-LF-ML": 0.719,
}
"""Average AUC on RentTheRunway, Misra, Wan, McAuley (RecSys 2018), table 3."""

Protocol = Literal["random", "time"]
PROTOCOLS: Final[tuple[str, ...]] = ("random", "time")
DEFAULT_N_TRIALS: Final[int] = 20
DEFAULT_TIMEOUT_S: Final[float] = 60.0
"""Tuning budget per model, seconds (the fit model and the size model are each tuned)."""
WORK_SUBDIR: Final = "benchmark-renttherunway"
"""The benchmark's own work directory under the given one (replaced on every run)."""


def split_by_transaction(
    events: pd.DataFrame, seed: int, fractions: tuple[float, ...] = (0.8, 0.1, 0.1)
) -> list[pd.DataFrame]:
    """A seeded random split of transactions into parts (train / valid / test by default).

    Args:
        events: One row per transaction.
        seed: Seeds the permutation.
        fractions: Positive shares of each part, summing to 1.

    Returns:
        One frame per share, in the given order, each in the original row order (index reset).
    """
    if not np.isclose(sum(fractions), 1.0) or min(fractions) <= 0:
        raise InvalidValueError(
            "fractions", fractions, "must be positive shares summing to 1", "e.g. (0.8, 0.1, 0.1)"
        )
    order = np.random.default_rng(seed).permutation(len(events))
    cuts = np.round(np.cumsum(fractions)[:-1] * len(events)).astype(int)
    return [events.iloc[np.sort(p)].reset_index(drop=True) for p in np.split(order, cuts)]


def _hold_out(settings: Any, test_ids: set[str]) -> pd.DataFrame:
    """Take the events ``test_ids`` out of the ingested event log; return them."""
    path = settings.offline_dir / "events.parquet"
    events = pd.read_parquet(path)
    held = events["event_id"].astype(str).isin(test_ids).to_numpy()
    events.loc[~held].to_parquet(path, index=False)
    return events.loc[held].reset_index(drop=True)


def run_renttherunway(
    train_path: str | Path,
    test_path: str | Path | None = None,
    *,
    protocol: Protocol = "random",
    seed: int = 0,
    n_trials: int = DEFAULT_N_TRIALS,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    json_out: str | Path | None = None,
    workdir: str | Path = "var",
    profile: str = "local",
    history: str | None = None,
    folds: int | None = None,
) -> dict[str, Any]:
    """Run the product's stages on RentTheRunway and score the fit model.

    Args:
        train_path: RentTheRunway JSON lines file to learn from (``.jsonl`` / ``.jsonl.gz``).
        test_path: Optional file to score; None: the ``protocol`` splits ``train_path``.
        protocol: ``random`` (seeded 80/10/10 by transaction) or ``time`` (last 15% by time);
            ignored with ``test_path``.
        seed: Seeds the split, the tuner and LightGBM.
        n_trials: Optuna trials per model.
        timeout_s: Tuning budget per model in seconds (None: only ``n_trials`` limits it).
        json_out: Where to write the result as JSON (parent folders are created).
        workdir: The benchmark works in ``<workdir>/benchmark-renttherunway`` (replaced).
        profile: The settings profile (``local`` or ``prod``).
        history: The feature job's history mode, ``point_in_time`` or ``oof`` (None: ``oof``
            for the ``random`` protocol, else ``point_in_time``).
        folds: Folds of the ``oof`` history (None: the settings' default).

    Returns:
        ``mean_auc`` (and its bootstrap standard error over the scored rows,
        ``mean_auc_se``), ``auc_small``, ``auc_fit``, ``auc_large``, ``log_loss``, ``brier``,
        ``ece`` of the fit model on the scored rows, the logistic-regression baseline's
        ``logreg_mean_auc``, ``n_train``, ``n_valid``, ``n_test``, ``protocol``, ``split``,
        ``seed``, ``history``, ``folds``, ``n_features``, ``timings_s``,
        ``published_mean_auc``.

    Raises:
        InvalidValueError: an unknown protocol or history mode, or an empty part.
    """
    from evaluation.evaluate import time_split
    from features.definitions import FIT_MODEL_FEATURES
    from features.store import apply, read_events, training_set
    from ml_pipeline.ingest import ingest_renttherunway
    from ml_pipeline.settings import load_settings
    from training.train import train

    if protocol not in PROTOCOLS:
        raise InvalidValueError("protocol", protocol, "is not known", "use random or time")
    if history is None:
        history = "oof" if protocol == "random" and test_path is None else "point_in_time"
    if history not in HISTORY_MODES:
        raise InvalidValueError(
            "history", history, "is not known", f"use {' or '.join(HISTORY_MODES)}"
        )
    timings: dict[str, float] = {}
    work = Path(workdir) / WORK_SUBDIR
    shutil.rmtree(work, ignore_errors=True)
    settings = load_settings(profile, work)
    feast = settings.feast.model_copy(
        update={"history": history, **({} if folds is None else {"folds": folds})}
    )
    settings = settings.model_copy(update={"seed": seed, "feast": feast})

    start = time.perf_counter()
    ingest_renttherunway(train_path, work)
    test_events: pd.DataFrame | None = None
    if test_path is not None:
        known = set(pd.read_parquet(settings.offline_dir / "events.parquet")["event_id"])
        ingest_renttherunway(test_path, work)
        every = pd.read_parquet(settings.offline_dir / "events.parquet")["event_id"]
        test_events = _hold_out(settings, set(every[~every.isin(known)].astype(str)))
        split = "train file (90/10 train/valid, random) -> test file"
    elif protocol == "random":
        events = pd.read_parquet(settings.offline_dir / "events.parquet")
        events = events.sort_values("event_id", kind="stable").reset_index(drop=True)
        _, _, test = split_by_transaction(events, seed)
        test_events = _hold_out(settings, set(test["event_id"].astype(str)))
        split = "random 80/10/10 by transaction"
    else:
        split = "time: last 15% by event time (validation: the 15% before)"
    timings["ingest"] = time.perf_counter() - start

    start = time.perf_counter()
    apply(settings)
    frame = training_set(settings, read_events(settings))
    windows: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame] | None = None
    if test_events is not None:
        scored = training_set(settings, test_events)
        shares = (0.9, 0.1) if test_path is not None else (8 / 9, 1 / 9)
        ordered = frame.sort_values("event_id", kind="stable").reset_index(drop=True)
        train_rows, valid_rows = split_by_transaction(ordered, seed, shares)
        windows = (train_rows, valid_rows, scored)
        frame = pd.concat([frame, scored], ignore_index=True)
    timings["features"] = time.perf_counter() - start
    parts = windows if windows is not None else time_split(frame).windows(frame)
    for name, part in zip(("train", "valid", "test"), parts, strict=True):
        if len(part) == 0:
            raise InvalidValueError(f"{name} rows", 0, "is empty", f"check {train_path}")

    start = time.perf_counter()
    result = train(settings, frame, n_trials=n_trials, timeout_s=timeout_s, windows=windows)
    timings["train"] = time.perf_counter() - start
    timings["total"] = sum(timings.values())
    m = result.metrics
    out: dict[str, Any] = {
        "dataset": "renttherunway",
        "path": "product: ingest -> features apply -> training_set -> train (fitml)",
        "train_path": str(train_path),
        "test_path": None if test_path is None else str(test_path),
        "protocol": "test file" if test_path is not None else protocol,
        "split": split,
        "seed": seed,
        "history": history,
        "folds": settings.feast.folds if history == "oof" else None,
        "mean_auc": m["fit_mean_auc"],
        "mean_auc_se": m.get("fit_mean_auc_se"),
        **{f"auc_{k}": m[f"fit_auc_{o}"] for k, o in zip(CLASS_KEYS, OUTCOMES, strict=True)},
        "log_loss": m.get("fit_log_loss"),
        "brier": m.get("fit_brier"),
        "ece": m.get("fit_ece"),
        "logreg_mean_auc": m.get("logreg_mean_auc"),
        "n_train": len(parts[0]),
        "n_valid": len(parts[1]),
        "n_test": len(parts[2]),
        "n_features": len(FIT_MODEL_FEATURES),
        "n_trials": n_trials,
        "timeout_s": timeout_s,
        "mlflow_run_id": result.run_id,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "published_mean_auc": dict(PUBLISHED_MEAN_AUC),
    }
    if json_out is not None:
        target = Path(json_out)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(out, indent=2, default=float) + "\n")
    return out


def format_table(result: dict[str, Any]) -> str:
    """Our result beside the published RentTheRunway numbers, as a plain-text table.

    Args:
        result: What :func:`run_renttherunway` returned (or its JSON, loaded).

    Returns:
        A table with one row per model: mean AUC, and per-class AUCs where known.
    """
    header = f"{'model':<34} {'mean AUC':>8} {'small':>7} {'fit':>7} {'large':>7}"
    lines = [
        f"RentTheRunway fit prediction ({result.get('split', '')}; "
        f"n_train={result['n_train']:,}, n_test={result['n_test']:,})",
        header,
        "-" * len(header),
    ]
    for name, auc in PUBLISHED_MEAN_AUC.items():
        lines.append(f"{'Misra et al. 2018 ' + name:<34} {auc:>8.3f} {'-':>7} {'-':>7} {'-':>7}")
    lines.append(
        f"{'fitml LightGBM (this run)':<34} {result['mean_auc']:>8.3f} "
        f"{result['auc_small']:>7.3f} {result['auc_fit']:>7.3f} {result['auc_large']:>7.3f}"
    )
    se = result.get("mean_auc_se")
    if se is not None and se == se:  # absent from older JSON; NaN when undefined
        lines.append(f"(standard error of this run's mean AUC over its scored rows: {se:.4f})")
    return "\n".join(lines)
