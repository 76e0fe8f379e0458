"""``mlflow ui`` as an ML engineer opens it after a run: on the training runs, not on GenAI.

On a copy of the trained work directory with a scheduled drift check logged (``fitml drift
--scheduled``, as the nightly job runs it), the real ``mlflow ui`` (the pinned MLflow) is
started and Debian's headless chromium, a fresh profile with nothing remembered, opens the
link the pipeline prints. The landing view must be the experiment's runs table in MLflow's
model-training views, holding the train and promote runs and no drift check; the drift checks
are in the monitoring experiment.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from conftest import BIN, REPO_ROOT, free_port, require, stop_service, wait_for_http

from serving.session.testing import clone_workdir
from training import registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def store(trained_workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained work directory with one scheduled drift check logged."""
    settings = clone_workdir(trained_workdir, tmp_path_factory.mktemp("mlflow-ui") / "var")
    out = subprocess.run(
        [str(BIN / "fitml"), "drift", "--scheduled", "--workdir", str(settings.workdir)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return settings.workdir


@pytest.fixture(scope="module")
def mlflow_ui(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow ui`` on the store, as the pipeline's summary says to start it."""
    port = free_port()
    log = tmp_path_factory.mktemp("mlflow-ui-log") / "ui.log"
    backend = f"sqlite:///{store}/mlflow.db"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "ui", "--backend-store-uri", backend, "--port", str(port)],
            cwd=store,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", proc, log, "mlflow ui", 180)
        yield url
    finally:
        stop_service(proc)  # type: ignore[arg-type]


def _runs_table(url: str, shot: Path) -> tuple[str, str]:
    """Open ``url`` in a fresh headless chromium; the final address and the runs table's text."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_context(viewport={"width": 1500, "height": 1000}).new_page()
            page.goto(url, wait_until="load", timeout=120_000)
            page.get_by_text("Run Name").first.wait_for(timeout=90_000)  # the runs table
            page.get_by_text(re.compile(r"\d+ matching runs?")).first.wait_for(timeout=90_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(shot))
            return page.url, page.inner_text("body")
        finally:
            browser.close()


def _run_names(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines()}


def test_mlflow_ui_opens_the_experiment_on_its_training_runs(
    store: Path, mlflow_ui: str, tmp_path: Path
) -> None:
    require(CHROMIUM is not None, "chromium is not installed (apt-get install chromium)")
    summary = json.loads((store / "reports" / "pipeline_summary.json").read_text())
    printed = summary["paths"]["mlflow_runs"]  # the link the run's summary prints
    assert printed.startswith(registry.MLFLOW_UI + "/#/experiments/")
    url = printed.replace(registry.MLFLOW_UI, mlflow_ui)

    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    client = mlflow.MlflowClient()
    training = client.get_experiment_by_name("fitml")
    assert training.tags[registry.EXPERIMENT_KIND_TAG] == registry.MODEL_TRAINING
    monitoring = client.get_experiment_by_name("fitml-monitoring")
    drift_runs = {r.info.run_name for r in client.search_runs([monitoring.experiment_id])}
    assert drift_runs and all(name.startswith("drift ") for name in drift_runs)

    shot = tmp_path / "mlflow_ui_training_runs.png"
    landed, text = _runs_table(url, shot)
    keep = REPO_ROOT / "var" / "test-artifacts"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, keep / shot.name)  # for a person to look at after the run

    assert f"/experiments/{training.experiment_id}/runs" in landed
    assert "workflowType=machine_learning" in landed
    names = _run_names(text)
    assert {"train", "promote"} <= names
    assert not any(name.startswith("drift ") for name in names), "drift runs mixed in"
    assert "Traces\n0" not in text and "No data available" not in text  # not GenAI's overview

    monitoring_url = registry.runs_url(str(monitoring.experiment_id), mlflow_ui)
    _, text = _runs_table(monitoring_url, tmp_path / "mlflow_ui_monitoring.png")
    assert drift_runs <= _run_names(text) and "train" not in _run_names(text)
