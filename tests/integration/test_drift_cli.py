"""``fitml drift`` end to end on generated data sets: verdict, report, exit code, history and
MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from evaluation.drift import DriftVerdict, detect_drift, load_window, log_to_mlflow
from evaluation.drift_history import history_location, read_history
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
    assert (tmp_path / "report.html").stat().st_size > 100_000
    # the run was kept in the work directory's history table
    settings = load_settings("local", tmp_path / "w")
    history = read_history(history_location(settings))
    assert history.loc[history["kind"] == "drift", "drifted"].astype(bool).any()


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
    assert run.data.tags["fitml.champion_run_id"] == "abc123"
    assert run.data.metrics["drift_detected"] == 1.0
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "drift")}
    assert {"drift/v.json", "drift/r.html", "drift/drift_verdict.json"} <= names
    assert run.info.artifact_uri.startswith((tmp_path / "w").resolve().as_uri())
    logged = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/drift/drift_verdict.json")
    assert DriftVerdict.from_dict(logged).drifted_columns == verdict.drifted_columns
