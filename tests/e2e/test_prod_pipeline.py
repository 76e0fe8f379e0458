"""The whole prod pipeline on empty databases, then `fitml serve --profile prod` from Redis.

MLflow and Optuna each migrate their tables with alembic; the prod profile gives each a
database of its own, so a fresh run must get through tuning and register a champion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from prodstack import ProdStack, private_prod_stack

from ml_pipeline.settings import load_settings
from serving.session.testing import ServiceProcess, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture
def prod_stack(postgres_dsn: str, redis_url: str, tmp_path: Path) -> Iterator[ProdStack]:
    """A private prod stack (own databases, Feast project, session tables); removed after."""
    with private_prod_stack(postgres_dsn, redis_url, tmp_path / "var") as stack:
        yield stack


def _tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def test_prod_pipeline_trains_on_empty_databases_and_serves_from_redis(
    prod_stack: ProdStack, tmp_path: Path
) -> None:
    workdir = tmp_path / "var"
    env = {**os.environ, **prod_stack.env}
    argv = [sys.executable, "-m", "ml_pipeline.cli", "pipeline", "run", "--profile", "prod"]
    argv += ["--workdir", str(workdir), "--users", "500", "--products", "40"]
    argv += ["--events", "6000", "--seed", "5", "--trials", "1"]
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"fitml serve --profile prod --workdir {workdir}" in run.stdout

    # Each component migrated its own database: one alembic_version table in each.
    mlflow_tables = _tables(_plain(prod_stack.env["FITML_MLFLOW_TRACKING_URI"]))
    optuna_tables = _tables(_plain(prod_stack.env["FITML_OPTUNA_STORAGE"]))
    assert {"alembic_version", "registered_models", "model_versions"} <= mlflow_tables
    assert {"alembic_version", "studies", "trials"} <= optuna_tables
    assert not {"studies", "trials"} & mlflow_tables

    settings = load_settings("prod", workdir, env=env)
    summary = json.loads((workdir / "reports" / "pipeline_summary.json").read_text())
    assert summary["metrics"]["fit_mean_auc"] > 0.6
    with psycopg.connect(_plain(prod_stack.env["FITML_MLFLOW_TRACKING_URI"])) as conn:
        aliases = conn.execute(
            "SELECT name FROM registered_model_aliases WHERE alias = 'champion'"
        ).fetchall()
    assert {r[0] for r in aliases} == {
        settings.mlflow.fit_model_name,
        settings.mlflow.size_model_name,
    }

    # The summary's serve command answers, with features read from Redis.
    port = free_port()
    service = ServiceProcess(
        ["serve", "--profile", "prod", "--workdir", str(workdir)],
        port,
        tmp_path / "serve.log",
        env=prod_stack.env,
        ready_timeout_s=180,
    )
    body = json.loads((workdir / "examples" / "recommend.jsonl").read_text().splitlines()[0])
    # The prod profile's secrets are in force: the service token (prod_stack's file) is checked.
    token = prod_stack.secret_files["FITML_SERVICE_TOKEN_FILE"].read_text().strip()
    with service:
        refused = httpx.post(f"{service.url}/recommend", json=body, timeout=10)
        answer = httpx.post(
            f"{service.url}/recommend",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
    assert refused.status_code == 401, refused.text
    assert answer.status_code == 200, answer.text
    assert answer.json()["recommended_size"]
    assert answer.json()["model_versions"]["fit_model"]
    assert "user_id" in body
    # A known shopper's profile came from the online store (no fallback for a missing user).
    assert "unknown user: no profile or fit history" not in answer.json()["fallbacks"]
