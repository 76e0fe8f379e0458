"""Shared fixtures: seeds, the shared data folder, and service availability rules.

Tests that need PostgreSQL, Redis or ``../shared/data`` skip with a reason on a newcomer's
machine, and fail instead when ``FITML_REQUIRE_SERVICES=1`` (set by ``.ci/run``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
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


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_http(
    url: str, proc: subprocess.Popen[bytes], log: Path, what: str, timeout_s: float
) -> None:
    """Wait until ``url`` answers 200; fail with the server's log if it exits or never does."""
    started = time.monotonic()
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"{what} did not answer in {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


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
        PipelineConfig(users=1500, products=120, events=20_000, seed=7, n_trials=1),
    )
    return settings.workdir


# The real prediction service on a copy of the trained work dir (shared by e2e and
# integration tests: one server per test session).

BIN = Path(sys.executable).parent


@dataclass
class Served:
    """A running prediction service."""

    url: str
    workdir: Path
    process: subprocess.Popen[bytes]
    cold_start_s: float
    log: Path


def start_service(workdir: Path, log: Path, env: dict[str, str] | None = None) -> Served:
    """Start ``fitml serve`` on a free port and wait for ``/readyz``."""
    port = free_port()
    argv = [str(BIN / "fitml"), "serve", "--workdir", str(workdir), "--port", str(port)]
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    while time.perf_counter() - started < 180:
        if proc.poll() is not None:
            pytest.fail(f"fitml serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return Served(url, workdir, proc, time.perf_counter() - started, log)
        except OSError:
            pass
        time.sleep(0.1)
    stop_service(proc)
    pytest.fail(f"fitml serve not ready after 180 s:\n{log.read_text()[-4000:]}")


def stop_service(proc: subprocess.Popen[bytes]) -> None:
    """Stop a service started by :func:`start_service` (its process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def served(trained_workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The real BentoML service (``fitml serve``) on a private copy of the trained work dir.

    The copy takes what serving writes (inference log, BentoML model store), so the shared
    ``trained_workdir`` stays as the pipeline left it.
    """
    from serving.session.testing import clone_workdir

    root = tmp_path_factory.mktemp("serve")
    workdir = clone_workdir(trained_workdir, root / "var").workdir
    service = start_service(workdir, root / "serve.log")
    try:
        yield service
    finally:
        stop_service(service.process)


@pytest.fixture(autouse=True)
def _in_process_metric_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's Prometheus registries count on their own.

    Once BentoML has run in the test process, prometheus_client may keep every metric's value
    in its multiprocess files, shared by all registries of the process: a session test would
    then read the counts of the tests before it. The services run in processes of their own.
    """
    from prometheus_client import values

    monkeypatch.setattr(values, "ValueClass", values.MutexValue)
