"""``fitml drift`` end to end on generated data sets: verdict, report, exit code; ad-hoc checks
write only their files, scheduled checks keep history, workspace and MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from evaluation import workspace
from evaluation.drift import DriftVerdict, detect_drift, load_window
from evaluation.drift_history import history_location, read_history
from evaluation.monitoring import log_to_mlflow, monitoring_experiment
from ml_pipeline.cli import app
from ml_pipeline.settings import load_settings
from ml_pipeline.synth import generate

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("worlds")
    out = {}
    for scenario in ("baseline", "unit_bug"):
        generate(
            root / scenario, users=4000, products=400, events=60_000, seed=7, scenario=scenario
        )
        out[scenario] = root / scenario
    return out


def _drift(tmp_path: Path, reference: Path, current: Path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "verdict.json"
    result = CliRunner().invoke(
        app,
        [
            "drift",
            "--reference",
            str(reference),
            "--current",
            str(current),
            "--workdir",
            str(tmp_path / "w"),
            "--json",
            str(out),
            "--html",
            str(tmp_path / "report.html"),
            *extra,
        ],
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(out.read_text())


def test_unit_bug_fails_the_check(tmp_path: Path, worlds: dict[str, Path]) -> None:
    code, verdict = _drift(tmp_path, worlds["baseline"], worlds["unit_bug"], "--fail-on-drift")
    assert code == 3
    assert verdict["drift_detected"] is True
    assert {"user_chest_cm", "user_waist_cm", "user_hips_cm"} <= set(verdict["drifted_columns"])
    assert {c["column"]: c["method"] for c in verdict["columns"]}["user_chest_cm"] == "wasserstein"
    # the report opens on the verdict, then the summary table with the drifted columns first
    html = (tmp_path / "report.html").read_text()
    assert html.index("Drift detected in 3 of") < html.index("<h2>Summary</h2>")
    rows = [html.index(f"<td>{c['column']}</td>") for c in verdict["columns"]]
    drifted = [r for r, c in zip(rows, verdict["columns"], strict=True) if c["drifted"]]
    assert max(drifted) < min(r for r in rows if r not in drifted)
    assert "share of rows per category" in html and "over event time" in html
    assert (tmp_path / "report_evidently.html").stat().st_size > 100_000
    # the compared windows are saved beside the verdict, for the notebook's drill-down
    current = pd.read_parquet(verdict["windows"]["current"])
    assert len(current) == verdict["n_current"]
    # an ad-hoc check is kept out of the history and the analysts' workspace
    settings = load_settings("local", tmp_path / "w")
    assert read_history(history_location(settings)).empty
    assert workspace.latest_verdict(workspace.workspace_dir(settings)) is None


def test_a_scheduled_check_is_kept_over_time(tmp_path: Path, worlds: dict[str, Path]) -> None:
    code, verdict = _drift(tmp_path, worlds["baseline"], worlds["unit_bug"], "--scheduled")
    assert code == 0
    settings = load_settings("local", tmp_path / "w")
    history = read_history(history_location(settings))
    assert history.loc[history["kind"] == "drift", "drifted"].astype(bool).any()
    latest = workspace.latest_verdict(workspace.workspace_dir(settings))
    assert latest is not None and latest["drift_detected"] is True
    assert latest["window"] == verdict["current_window"]["end"]
    # checking the same window again replaces its snapshot instead of adding one
    _drift(tmp_path, worlds["baseline"], worlds["unit_bug"], "--scheduled")
    ws, project = workspace.project(workspace.workspace_dir(settings))
    assert len(ws.list_runs(project.id)) == 1


def test_same_window_passes(tmp_path: Path, worlds: dict[str, Path]) -> None:
    code, verdict = _drift(tmp_path, worlds["baseline"], worlds["baseline"], "--fail-on-drift")
    assert code == 0
    assert verdict["drift_detected"] is False and verdict["drifted_columns"] == []


def test_no_champion_and_no_windows_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["drift", "--workdir", str(tmp_path)])
    assert result.exit_code != 0
    assert "no champion model" in str(result.exception)


def test_verdict_and_report_are_logged_to_mlflow(tmp_path: Path, worlds: dict[str, Path]) -> None:
    settings = load_settings("local", tmp_path / "w")
    html, js = tmp_path / "r.html", tmp_path / "v.json"
    verdict = detect_drift(
        load_window(worlds["baseline"]), load_window(worlds["unit_bug"]), html=html
    )
    js.write_text(verdict.to_json())
    run_id = log_to_mlflow(settings, verdict, [js, html], champion_run_id="abc123")
    run = mlflow.get_run(run_id)
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.name == monitoring_experiment(settings) == "fitml-monitoring"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "Drift detected" in run.data.tags["mlflow.note.content"]
    assert run.data.tags["fitml.champion_run_id"] == "abc123"
    assert run.data.metrics["drift_detected"] == 1.0
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "drift")}
    assert {"drift/v.json", "drift/r.html", "drift/drift_verdict.json"} <= names
    assert run.info.artifact_uri.startswith((tmp_path / "w").resolve().as_uri())
    logged = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/drift/drift_verdict.json")
    assert DriftVerdict.from_dict(logged).drifted_columns == verdict.drifted_columns
