"""The Feast CLI on the work directory's feature repository, for both profiles.

`fitml features apply` writes `<workdir>/feast/feature_store.yaml` and the definitions module
the CLI reads. Every command a Feast user runs there (`plan`, `apply`,
`materialize-incremental`, `serve`, `ui`) runs as a subprocess, as they would run it, and
nothing fitml registered is lost. The prod case uses its own Feast project on the machine's
PostgreSQL and Redis and deletes it afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
import pytest

from features import store as fs
from features.definitions import FEATURE_SERVICE, VIEW_FIELDS
from ml_pipeline.ingest import ingest_synthetic
from ml_pipeline.settings import Settings, load_settings
from ml_pipeline.synth import generate
from serving.session.testing import free_port, prod_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FEAST = str(Path(sys.executable).parent / "feast")


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("raw")
    generate(folder, users=60, products=8, events=600, seed=3)
    return folder


@pytest.fixture(params=["local", "prod"])
def applied(
    request: pytest.FixtureRequest, raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Settings, dict[str, str]]]:
    env = dict(os.environ)
    if request.param == "prod":
        postgres = request.getfixturevalue("postgres_dsn")
        redis = request.getfixturevalue("redis_url")
        project = f"fitml_cli_{uuid.uuid4().hex[:10]}"
        env.update(prod_env(postgres, redis), FITML_FEAST_PROJECT=project)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
    ingest_synthetic(raw, tmp_path / "w")
    settings = load_settings(request.param, tmp_path / "w", env=env)
    fs.apply(settings)
    try:
        yield settings, env
    finally:
        if request.param == "prod":
            fs.delete_project(settings)


def feast(settings: Settings, env: dict[str, str], *args: str) -> str:
    """Run `feast -c <workdir>/feast ARGS` from an unrelated directory; its output."""
    done = subprocess.run(
        [FEAST, "-c", str(settings.feast_dir), *args],
        cwd=settings.workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"feast {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def registered(settings: Settings) -> tuple[set[str], str]:
    store = fs.open_store(settings)
    store.refresh_registry()
    views = {v.name for v in store.list_feature_views()}
    return views, store.get_feature_service(FEATURE_SERVICE).name


def a_user(settings: Settings) -> str:
    return str(fs.read_offline(settings, "users")["user_id"].iloc[0])


def started(argv: list[str], env: dict[str, str], url: str, cwd: Path) -> subprocess.Popen[str]:
    """A server subprocess, once `url` answers 200 (within 300 s: the machine may be busy)."""
    process = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out = process.stdout.read() if process.stdout else ""
            pytest.fail(f"{' '.join(argv)} exited {process.returncode}:\n{out}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    pytest.fail(f"{' '.join(argv)}: {url} did not answer within 300 s")


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.mark.timeout(1800)  # eight Feast CLI start-ups; each imports Feast (~4 s idle)
def test_plan_apply_materialize_serve_and_ui_keep_everything(
    applied: tuple[Settings, dict[str, str]],
) -> None:
    settings, env = applied
    before = registered(settings)
    assert before == (set(VIEW_FIELDS), FEATURE_SERVICE)

    plan = feast(settings, env, "plan")
    assert "Deleted" not in plan and "No changes to registry" in plan, plan
    applied_out = feast(settings, env, "apply")
    assert "Deleted" not in applied_out, applied_out
    assert registered(settings) == before

    user = a_user(settings)
    product = str(fs.read_offline(settings, "products")["product_id"].iloc[0])
    online = fs.online_features(fs.open_store(settings), user, product)
    assert online["product_category"] is None  # nothing materialised yet
    # A first load up to before any product existed, then the incremental load of the rest
    # (a view's first `materialize-incremental` alone starts at now - ttl, or a year ago).
    attrs = pd.read_parquet(fs.feature_source_dir(settings) / "product_attrs.parquet")
    cut = attrs["event_timestamp"].min() - pd.Timedelta(seconds=1)
    feast(settings, env, "materialize", "1970-01-02T00:00:00", cut.strftime("%Y-%m-%dT%H:%M:%S"))
    online = fs.online_features(fs.open_store(settings), user, product)
    assert online["product_category"] is None
    feast(settings, env, "materialize-incremental", datetime.now(UTC).isoformat())
    online = fs.online_features(fs.open_store(settings), user, product)
    assert online["user_sex"] is not None and online["product_category"] is not None

    port = free_port()
    server = started(
        [FEAST, "-c", str(settings.feast_dir), "serve", "-h", "127.0.0.1", "-p", str(port)],
        env,
        f"http://127.0.0.1:{port}/health",
        settings.workdir,
    )
    try:
        answer = httpx.post(
            f"http://127.0.0.1:{port}/get-online-features",
            json={
                "feature_service": FEATURE_SERVICE,
                "entities": {"user_id": [user], "product_id": [product]},
            },
            timeout=30,
        )
    finally:
        stop(server)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    names = body["metadata"]["feature_names"]
    values = dict(zip(names, (r["values"][0] for r in body["results"]), strict=True))
    assert values["user_id"] == user and values["user_sex"] == online["user_sex"]

    port = free_port()
    ui = started(
        [FEAST, "-c", str(settings.feast_dir), "ui", "-h", "127.0.0.1", "-p", str(port)],
        env,
        f"http://127.0.0.1:{port}/",
        settings.workdir,
    )
    try:
        projects = httpx.get(f"http://127.0.0.1:{port}/projects-list.json", timeout=30)
    finally:
        stop(ui)
    assert projects.status_code == 200
    assert settings.feast.project in projects.text
    assert registered(settings) == before
