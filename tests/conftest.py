"""Shared fixtures: seeds, the shared data folder, and service availability rules.

Tests that need PostgreSQL, Redis or ``../shared/data`` skip with a reason on a newcomer's
machine, and fail instead when ``FITML_REQUIRE_SERVICES=1`` (set by ``.ci/run``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FITML_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def services_required() -> bool:
    """Whether missing services/data must fail the test run (CI) rather than skip."""
    return os.environ.get("FITML_REQUIRE_SERVICES") == "1"


def data_required() -> bool:
    """Whether missing ``../shared/data`` must fail the run (default: as for services)."""
    return os.environ.get("FITML_REQUIRE_DATA", "1" if services_required() else "0") == "1"


def require(condition: bool, reason: str, *, strict: bool | None = None) -> None:
    """Skip (or, in CI, fail) the calling test unless ``condition`` holds."""
    if condition:
        return
    if services_required() if strict is None else strict:
        pytest.fail(f"{reason} (FITML_REQUIRE_SERVICES=1: this must be available)")
    pytest.skip(reason)


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def shared_data() -> Path:
    """The ../shared/data folder (skips, or fails in CI, when absent)."""
    require(
        SHARED_DATA.is_dir(), f"shared data folder {SHARED_DATA} not found", strict=data_required()
    )
    return SHARED_DATA


@pytest.fixture
def postgres_dsn() -> str:
    """DSN of the real PostgreSQL the integration tests use."""
    dsn = os.environ.get("FITML_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    require(port_open("127.0.0.1", 5432), "PostgreSQL is not reachable on 127.0.0.1:5432")
    return dsn


@pytest.fixture
def redis_url() -> str:
    """URL of the real Redis the integration tests use."""
    require(port_open("127.0.0.1", 6379), "Redis is not reachable on 127.0.0.1:6379")
    return os.environ.get("FITML_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(params=[0, 1, 2])
def seed(request: pytest.FixtureRequest) -> int:
    """A seed; tests using it must hold for every seed."""
    return int(request.param)


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work directory the real pipeline ran into (small data, one Optuna trial per model).

    Built once per test session: generate -> ingest -> Feast -> train (MLflow) -> promote ->
    drift. Tests must not change what is in it.
    """
    from ml_pipeline.pipeline import PipelineConfig, run_pipeline
    from ml_pipeline.settings import load_settings

    workdir = tmp_path_factory.mktemp("trained") / "var"
    settings = load_settings("local", workdir, env={**os.environ, "FITML_TRIALS": "1"})
    run_pipeline(
        settings,
        PipelineConfig(users=1500, products=120, events=20_000, seed=7, n_trials=1, timeout_s=60),
    )
    return settings.workdir
