"""The whole loop: the pipeline's outputs, then the real prediction service over HTTP."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import mlflow
import pandas as pd
import pytest

from ml_pipeline.settings import load_settings

if TYPE_CHECKING:
    from tests.conftest import Served

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_pipeline_registers_both_models_as_champion(trained_workdir: Path) -> None:
    settings = load_settings("local", trained_workdir)
    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    mlflow.set_registry_uri(settings.mlflow.tracking_uri)  # not an earlier test's
    client = mlflow.MlflowClient()
    for name in (settings.mlflow.fit_model_name, settings.mlflow.size_model_name):
        version = client.get_model_version_by_alias(name, "champion")
        assert int(version.version) >= 1
    assert (trained_workdir / "mlflow.db").is_file()
    assert not Path("mlruns").exists() or Path("mlruns").stat().st_mtime < time.time() - 3600


def test_pipeline_writes_drift_report_and_examples(trained_workdir: Path) -> None:
    reports = list((trained_workdir / "reports").glob("*drift*.html"))
    assert reports and reports[0].stat().st_size > 10_000
    verdict = json.loads((trained_workdir / "reports" / "drift_verdict.json").read_text())
    assert isinstance(verdict["drift_detected"], bool)
    assert isinstance(verdict["drifted_columns"], list)
    lines = (trained_workdir / "examples" / "recommend.jsonl").read_text().splitlines()
    assert len(lines) >= 2
    for line in lines:
        assert "product_id" in json.loads(line)


def test_models_beat_the_size_chart_rule(trained_workdir: Path) -> None:
    summary = json.loads((trained_workdir / "reports" / "pipeline_summary.json").read_text())
    metrics = summary["metrics"]
    assert metrics["fit_mean_auc"] > 0.75
    assert metrics["rec_exact_accuracy"] > metrics["chart_exact_accuracy"]
    assert metrics["feedback_agreement"] > metrics["chart_feedback_agreement"]


def test_service_recommends_a_size_of_the_product(trained_workdir: Path, served: Served) -> None:
    server = served.url
    charts = pd.read_parquet(trained_workdir / "offline" / "size_charts.parquet")
    bodies = [
        json.loads(line)
        for line in (trained_workdir / "examples" / "recommend.jsonl").read_text().splitlines()
    ]
    for body in bodies:
        response = httpx.post(f"{server}/recommend", json=body, timeout=10)
        assert response.status_code == 200, response.text
        answer = response.json()
        sizes = set(charts.loc[charts["product_id"] == body["product_id"], "size"])
        assert answer["recommended_size"] in sizes
        assert {s["size"] for s in answer["sizes"]} == sizes
        for s in answer["sizes"]:
            total = s["p_too_small"] + s["p_fit"] + s["p_too_large"]
            assert total == pytest.approx(1.0, abs=1e-6)
        assert 0 <= answer["confidence"] <= 1
        assert answer["model_versions"]["fit_model"]
        assert answer["request_id"]


def test_service_rejects_bad_input_with_4xx(served: Served) -> None:
    server = served.url
    unknown = httpx.post(f"{server}/recommend", json={"product_id": "no-such-product"}, timeout=10)
    assert unknown.status_code == 404
    assert "product_id" in unknown.text
    missing = httpx.post(f"{server}/recommend", json={"user_id": "u1"}, timeout=10)
    assert 400 <= missing.status_code < 500
    assert "product_id" in missing.text
