"""The demo as its users run it: a small ``fitml pipeline run`` gives the same figures twice,
shows stage headers and one tuning line per model, and leaves MLflow readable: training runs
apart from monitoring, descriptions and the gate's decision on runs and model versions, and
``fitml evaluate`` / ``mlflow run . -e evaluate`` printing and logging the evaluation."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from conftest import BIN, REPO_ROOT

from ml_pipeline.console import LOGGER, ConsoleHandler
from ml_pipeline.pipeline import PipelineConfig, run_pipeline
from ml_pipeline.settings import load_settings

# Two small pipelines run in the set-up (about 1.5 min each on an idle machine).
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]

SAME_AS_TRAINED = PipelineConfig(users=1500, products=120, events=20_000, seed=7, n_trials=1)
"""The configuration of the session's ``trained_workdir`` (tests/conftest.py)."""


@pytest.fixture(scope="module")
def second_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The same small pipeline again, into its own work directory, with the console captured."""
    workdir = tmp_path_factory.mktemp("again") / "var"
    settings = load_settings("local", workdir, env={**os.environ, "FITML_TRIALS": "1"})
    stream = io.StringIO()
    logger = logging.getLogger(LOGGER)
    handler = ConsoleHandler(stream)
    old = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        run_pipeline(settings, SAME_AS_TRAINED)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old[0])
        logger.propagate = old[1]
    yield settings.workdir, stream.getvalue()


def _metrics(workdir: Path) -> dict:
    return json.loads((workdir / "reports" / "pipeline_summary.json").read_text())["metrics"]


def test_the_same_run_gives_identical_figures(
    trained_workdir: Path, second_run: tuple[Path, str]
) -> None:
    first, second = _metrics(trained_workdir), _metrics(second_run[0])
    assert first.keys() == second.keys()
    differ = {k: (first[k], second[k]) for k in first if first[k] != second[k]}
    assert not differ  # exactly equal, not approximately


def test_the_run_shows_stages_and_one_tuning_line_per_model(second_run: tuple[Path, str]) -> None:
    text = second_run[1]
    headers = re.findall(r"^\[(\d)/7\] .* \.\.\.$", text, flags=re.M)
    assert headers == [str(i) for i in range(1, 8)]
    assert len(re.findall(r"^\[\d/7\] \w+ done in \d+\.\d s$", text, flags=re.M)) == 7
    for model in ("fit model", "size model"):
        lines = [line for line in text.splitlines() if line.startswith(f"tuning {model}:")]
        assert len(lines) == 1, lines
        # the budget shows only with a time ceiling (FITML_TUNING_TIMEOUT_S; none by default)
        assert re.fullmatch(
            rf"tuning {model}: trial 1/1, best \w+ [\d.]+, \d+ s(, budget left \d+ s)?",
            lines[0],
        )
    assert "Trial 0 finished" not in text  # Optuna's own lines stay out


CONSOLE_LINE = re.compile(
    r"^(fitml pipeline into .* \(loading the libraries \.\.\.\)"
    r"|\[\d/7\] .* \.\.\."
    r"|\[\d/7\] \w+ done in \d+\.\d s"
    r"|tuning (fit|size) model: trial \d+/\d+, .*)$"
)
"""The lines ``fitml pipeline run`` shows before its closing summary: its own, nothing else."""


def test_the_console_shows_only_fitml_lines_until_the_summary(tmp_path: Path) -> None:
    """``fitml pipeline run`` as a user runs it: stdout and stderr on one terminal, in order."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # a terminal's order, not a pipe's buffering
    small = ["--users", "300", "--products", "40", "--events", "3000", "--trials", "2"]
    out = subprocess.run(
        [str(BIN / "fitml"), "pipeline", "run", "--workdir", str(tmp_path / "var"), *small],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
        cwd=REPO_ROOT,
        env=env,
    )
    assert out.returncode == 0, out.stdout[-3000:]
    before, summary = out.stdout.split("\nfitml pipeline: done in ", 1)
    lines = [line for line in before.splitlines() if line.strip()]
    foreign = [line for line in lines if not CONSOLE_LINE.match(line)]
    assert not foreign, foreign  # e.g. Feast's "Materializing 4 feature views ..."
    assert len([line for line in lines if line.startswith("[3/7] ")]) == 2
    assert "Materializing" not in out.stdout and "Downloading artifacts" not in out.stdout
    assert "fit model: P(too small, fit, too large)" in summary


def test_mlflow_shows_training_apart_with_descriptions_and_the_gate(
    second_run: tuple[Path, str],
) -> None:
    settings = load_settings("local", second_run[0])
    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    mlflow.set_registry_uri(settings.mlflow.tracking_uri)  # not an earlier test's
    client = mlflow.MlflowClient()
    training = client.get_experiment_by_name(settings.mlflow.experiment)
    assert training.tags["mlflow.experimentKind"] == "custom_model_development"
    monitoring = client.get_experiment_by_name(settings.mlflow.experiment + "-monitoring")
    runs = client.search_runs([training.experiment_id])
    kinds = {
        r.data.tags.get("fitml.kind") for r in runs if not r.data.tags.get("mlflow.parentRunId")
    }
    assert kinds <= {"train", "promote", "evaluate"}  # no drift runs among the training runs
    if monitoring is not None:
        assert all(
            r.data.tags["fitml.kind"] == "drift"
            for r in client.search_runs([monitoring.experiment_id])
        )
    train = next(r for r in runs if r.data.tags.get("fitml.kind") == "train")
    assert "mean AUC" in train.data.tags["mlflow.note.content"]
    assert train.data.tags["fitml.gate"] == "promoted"
    version = client.get_model_version_by_alias(settings.mlflow.fit_model_name, "champion")
    assert version.tags["fitml.gate"] == "promoted"
    assert "Gate: promoted to champion" in version.description
    promote = next(r for r in runs if r.data.tags.get("fitml.kind") == "promote")
    assert "Promotion gate" in promote.data.tags["mlflow.note.content"]


def test_evaluate_prints_the_tables_and_logs_them(second_run: tuple[Path, str]) -> None:
    workdir = second_run[0]
    out = subprocess.run(
        [str(BIN / "fitml"), "evaluate", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert re.search(
        r"^fit model: P\(too small, fit, too large\)\s+mean AUC\s+log loss$", text, re.M
    )
    assert re.search(r"^fitml LightGBM \(Optuna-tuned\)\s+0\.\d{3}\s+0\.\d{3}$", text, re.M)
    assert "by slice" in text and "category=" in text and "user=new" in text
    run_id = re.search(r"logged to MLflow run (\w+)", text).group(1)
    settings = load_settings("local", workdir)
    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    mlflow.set_registry_uri(settings.mlflow.tracking_uri)  # not an earlier test's
    run = mlflow.get_run(run_id)
    assert run.data.tags["fitml.kind"] == "evaluate"
    assert run.data.metrics["fit_mean_auc"] == pytest.approx(_metrics(workdir)["fit_mean_auc"])
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "evaluation")}
    assert "evaluation/summary.txt" in names


def test_mlflow_run_evaluate_logs_to_the_project_store(second_run: tuple[Path, str]) -> None:
    workdir = second_run[0]
    settings = load_settings("local", workdir)
    # as from a fresh shell: the experiment and run this process may have set are not theirs
    launcher = ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")
    env = {
        **{k: v for k, v in os.environ.items() if k not in launcher},
        "MLFLOW_TRACKING_URI": settings.mlflow.tracking_uri,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }
    out = subprocess.run(
        [
            str(BIN / "mlflow"),
            "run",
            ".",
            "-e",
            "evaluate",
            "--env-manager",
            "local",
            "--experiment-name",
            settings.mlflow.experiment,
            "-P",
            f"workdir={workdir}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
        env=env,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    mlflow.set_registry_uri(settings.mlflow.tracking_uri)  # not an earlier test's
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(settings.mlflow.experiment)
    launched = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("mlflow.project.entryPoint") == "evaluate"
    ]
    assert len(launched) == 1
    assert launched[0].data.metrics["fit_mean_auc"] == pytest.approx(
        _metrics(workdir)["fit_mean_auc"]
    )
    assert launched[0].data.tags["fitml.kind"] == "evaluate"
