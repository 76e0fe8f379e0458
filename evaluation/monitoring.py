"""Monitoring the champion: ad-hoc drift checks, scheduled checks, and where their results go.

``fitml drift`` is an ad-hoc comparison by default: it writes the JSON verdict, the HTML
report and the two compared windows (for the notebook's drill-down) and nothing else. A
*scheduled* check (``fitml drift --scheduled``, what a CronJob runs, and the demo's weekly
checks) also keeps its result where people look over time:

* a row set in the drift history table (:mod:`evaluation.drift_history`);
* an Evidently snapshot in the analysts' workspace (:mod:`evaluation.workspace`), stamped
  with the end of its current window, so the dashboard's panels are drawn over data time;
* a run in the MLflow *monitoring* experiment (``<experiment>-monitoring``), tagged with the
  champion's training run and model version; the training experiment holds only training.

Data flows one way: this module uses :mod:`evaluation.drift` (the comparison),
:mod:`evaluation.drift_history` and :mod:`evaluation.workspace`; none of them imports it.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pandas as pd

from evaluation.drift import (
    TIME_COLUMN,
    DriftInputError,
    DriftVerdict,
    add_predictions,
    compare,
    feedback_quality,
    join_feedback,
    load_window,
    read_inference_log,
    score_feedback,
    write_report,
)

if TYPE_CHECKING:
    from ml_pipeline.settings import Settings

MONITORING_SUFFIX: Final = "-monitoring"
"""The monitoring experiment is the training experiment's name with this suffix."""


def monitoring_experiment(settings: Settings) -> str:
    """The MLflow experiment that holds drift checks (apart from training runs)."""
    return settings.mlflow.experiment + MONITORING_SUFFIX


def champion_windows(settings: Settings, *, with_predictions: bool = True) -> dict[str, Any]:
    """The champion's training window, the window after it, and what monitoring needs of them.

    Returns:
        ``reference`` and ``current`` (training-set rows, with the champion fit model's
        ``pred_p_*`` when ``with_predictions``), ``run_id`` of the champion's training run,
        ``fit_model`` (the loaded champion) and ``versions``.
    """
    import mlflow

    from evaluation.evaluate import Split
    from training import registry
    from training.train import load_training_set

    registry.configure(settings)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(settings.mlflow.fit_model_name, registry.CHAMPION)
    params = mlflow.get_run(str(version.run_id)).data.params
    split = Split(pd.Timestamp(params["valid_start"]), pd.Timestamp(params["test_start"]))
    frame = load_training_set(settings)
    ts = frame[TIME_COLUMN]
    reference, current = frame[ts < split.test_start], frame[ts >= split.test_start]
    fit_model, fit_version = registry.load_model(settings.mlflow.fit_model_name)
    if with_predictions:
        reference = add_predictions(reference, fit_model)
        current = add_predictions(current, fit_model)
    return {
        "reference": reference,
        "current": current,
        "run_id": str(version.run_id),
        "fit_model": fit_model,
        "versions": {"fit_model": fit_version},
        "split": split,
    }


def log_to_mlflow(
    settings: Settings,
    verdict: DriftVerdict,
    paths: list[Path],
    champion_run_id: str | None = None,
) -> str:
    """Log a scheduled check's verdict and files as a run of the monitoring experiment.

    The run is tagged with the champion's training run id and model version and carries the
    verdict as its description, so the MLflow UI lists checks apart from training runs and
    links each to the model it checked.

    Returns:
        The drift run's id.
    """
    import mlflow

    from evaluation.drift_report import headline
    from training import registry

    registry.configure(settings)
    fit_version = registry.alias_version(settings.mlflow.fit_model_name, registry.CHAMPION)
    if champion_run_id is None and fit_version is not None:
        mv = mlflow.MlflowClient().get_model_version(settings.mlflow.fit_model_name, fit_version)
        champion_run_id = str(mv.run_id)
    experiment = registry.ensure_experiment(
        settings, monitoring_experiment(settings), kind="monitoring"
    )
    window = verdict.current_window.get("end") or verdict.computed_at
    tags = {
        "fitml.kind": "drift",
        "fitml.champion_run_id": champion_run_id or "",
        "fitml.champion_fit_model_version": fit_version or "",
        "fitml.drift_detected": str(verdict.drift_detected).lower(),
        "fitml.current_window_end": str(window),
        "mlflow.note.content": (
            f"Scheduled drift check of the window ending {str(window)[:10]} "
            f"({verdict.n_current:,} rows) against the champion's training window "
            f"({verdict.n_reference:,} rows): {headline(verdict)}."
        ),
    }
    with mlflow.start_run(
        experiment_id=experiment, run_name=f"drift {str(window)[:10]}", tags=tags
    ) as run:
        mlflow.log_metrics(
            {
                "drift_detected": float(verdict.drift_detected),
                "drift_share": verdict.drift_share,
                "n_reference": float(verdict.n_reference),
                "n_current": float(verdict.n_current),
                **{f"drift_{c.column}": c.value for c in verdict.columns},
            }
        )
        mlflow.log_dict(verdict.to_dict(), "drift/drift_verdict.json")
        for path in paths:
            if path.is_file():
                mlflow.log_artifact(str(path), artifact_path="drift")
    return str(run.info.run_id)


MIN_FEEDBACK_ROWS: Final = 50
"""Fewer joined feedback rows than this: the quality comparison is not made."""


def has_champion(settings: Settings) -> bool:
    """Whether the work directory's registry has a champion fit model (no store is created)."""
    if settings.mlflow.tracking_uri.startswith("sqlite:///"):
        db = Path(settings.mlflow.tracking_uri.removeprefix("sqlite:///"))
        if not db.is_file():
            return False
    from training import registry

    try:
        registry.configure(settings)
    except Exception:  # an unreachable tracking store means no champion
        return False
    return registry.alias_version(settings.mlflow.fit_model_name, registry.CHAMPION) is not None


def _is_inference_log(source: Path | pd.DataFrame | None) -> bool:
    if source is None or isinstance(source, pd.DataFrame):
        return False
    path = Path(source)
    return path.suffix == ".jsonl" or (path.is_dir() and any(path.glob("*.jsonl")))


def drift_check(
    settings: Settings,
    reference: Path | pd.DataFrame | None = None,
    current: Path | pd.DataFrame | None = None,
    *,
    json_out: Path | None = None,
    html_out: Path | None = None,
    feedback: Path | None = None,
    scheduled: bool = False,
) -> DriftVerdict:
    """``fitml drift``: compare two windows, write the verdict, the report and the windows.

    An ad-hoc check (the default) writes only its own files. A ``scheduled`` check also
    keeps its result over time: the drift history, a snapshot in the analysts' workspace and
    a run in the MLflow monitoring experiment (see the module docstring).

    Args:
        settings: the run's settings (work directory, MLflow).
        reference: the reference window (default: the champion's training window).
        current: the current window (default: the window after the champion's training
            window). An inference log also gets the quality check when feedback has arrived.
        json_out: the verdict (default ``<workdir>/reports/drift_verdict.json``); the two
            compared windows go beside it (``<name>_windows/{reference,current}.parquet``).
        html_out: the report (default ``<workdir>/reports/drift_report.html``); the quality
            report goes beside it as ``*_quality.html``.
        feedback: feedback events (parquet) for the quality check (default: the work
            directory's ingested events).
        scheduled: record the check in the history, the workspace and MLflow.

    Raises:
        DriftInputError: a window cannot be read, or a default window is asked for but the
            work directory has no champion model.
    """
    json_out = json_out or settings.reports_dir / "drift_verdict.json"
    html_out = html_out or settings.reports_dir / "drift_report.html"
    champion = has_champion(settings)
    if (reference is None or current is None or _is_inference_log(current)) and champion:
        windows: dict[str, Any] | None = champion_windows(settings)
    elif reference is None or current is None:
        raise DriftInputError(
            f"no champion model in {settings.workdir} to take the default windows from: give "
            "--reference and --current, or run `fitml pipeline run` first"
        )
    else:
        windows = None
    ref_frame = load_window(
        windows["reference"] if reference is None and windows else reference,  # type: ignore[arg-type]
        workdir=settings.workdir,
    )
    cur_frame = load_window(
        windows["current"] if current is None and windows else current,  # type: ignore[arg-type]
        workdir=settings.workdir,
    )
    quality = None
    quality_html = html_out.with_name(html_out.stem + "_quality.html")
    if windows is not None and _is_inference_log(current):
        quality = _quality_from_log(settings, Path(current), feedback, windows, quality_html)  # type: ignore[arg-type]
    verdict, snapshot = compare(
        ref_frame, cur_frame, quality=quality, timestamp=_window_end(cur_frame)
    )
    write_report(verdict, snapshot, ref_frame, cur_frame, html_out)
    verdict = replace(verdict, windows=save_windows(ref_frame, cur_frame, json_out))
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(verdict.to_json())
    if scheduled:
        record(settings, verdict, snapshot)
        if champion:
            paths = [json_out, html_out] + ([quality_html] if quality else [])
            log_to_mlflow(settings, verdict, paths, windows["run_id"] if windows else None)
    return verdict


def save_windows(reference: pd.DataFrame, current: pd.DataFrame, json_out: Path) -> dict[str, str]:
    """Write the two compared windows beside the verdict, for the notebook's drill-down.

    Returns:
        ``{"reference": path, "current": path}``, as the verdict records them.
    """
    folder = json_out.with_name(json_out.stem + "_windows")
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, frame in (("reference", reference), ("current", current)):
        path = folder / f"{name}.parquet"
        frame.to_parquet(path, index=False)
        out[name] = str(path.resolve())
    return out


def _window_end(frame: pd.DataFrame) -> datetime | None:
    if TIME_COLUMN not in frame or frame[TIME_COLUMN].isna().all():
        return None
    return pd.Timestamp(frame[TIME_COLUMN].max()).floor("s").to_pydatetime()


def record(settings: Settings, verdict: DriftVerdict, snapshot: Any) -> None:
    """Keep a scheduled check's result: the drift history and the analysts' workspace."""
    from evaluation import workspace
    from evaluation.drift_history import append_history, history_location

    append_history(history_location(settings), verdict)
    workspace.add_check(workspace.workspace_dir(settings), verdict, snapshot)


def scheduled_checks(
    settings: Settings,
    *,
    every: str = "14D",
    min_rows: int = 500,
) -> list[DriftVerdict]:
    """Scheduled checks of the champion over the window after its training window.

    The current window is cut into consecutive periods of ``every`` (by event time); each is
    compared with the champion's training window and recorded as a scheduled check (history
    and workspace; not MLflow, so a backfill does not flood the monitoring experiment). The
    demo runs this, so the analysts' page has checks over time from the first run; a
    recorded window is replaced, not duplicated, when checked again.

    Returns:
        The verdicts, oldest period first (periods under ``min_rows`` rows are skipped).
    """
    from evaluation.drift_history import rolling_windows

    windows = champion_windows(settings)
    reference = load_window(windows["reference"])
    current = load_window(windows["current"])
    verdicts = []
    start = pd.Timestamp(current[TIME_COLUMN].min())
    for _, rows in rolling_windows(current, start=start, freq=every):
        if len(rows) < min_rows:
            continue
        verdict, snapshot = compare(reference, rows, timestamp=_window_end(rows))
        record(settings, verdict, snapshot)
        verdicts.append(verdict)
    return verdicts


def _quality_from_log(
    settings: Settings,
    log: Path,
    feedback: Path | None,
    windows: dict[str, Any],
    html: Path,
) -> dict[str, Any] | None:
    from training import registry

    if feedback is not None:
        events = pd.read_parquet(feedback)
    else:
        events = pd.read_parquet(settings.offline_dir / "events.parquet")
    from serving.pseudonym import load_pseudonymizer

    joined = join_feedback(read_inference_log(log), events, load_pseudonymizer(settings))
    if len(joined) < MIN_FEEDBACK_ROWS:
        return None
    # score each logged request with the fit model version that answered it
    parts = []
    version_col = "model_versions.fit_model"
    for version, rows in joined.groupby(joined.get(version_col, pd.Series("", index=joined.index))):
        model = windows["fit_model"]
        if version and str(version) != windows["versions"]["fit_model"]:
            import mlflow

            registry.configure(settings)
            pyfunc = mlflow.pyfunc.load_model(f"models:/{settings.mlflow.fit_model_name}/{version}")
            model = pyfunc.unwrap_python_model().model  # type: ignore[attr-defined]
        parts.append(score_feedback(rows, model))
    current_scored = pd.concat(parts, ignore_index=True)
    split = windows["split"]
    test = windows["current"]
    reference_scored = test[test[TIME_COLUMN] >= split.test_start]
    return feedback_quality(reference_scored, current_scored, html=html)
