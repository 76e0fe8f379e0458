"""The alias lookup against a real MLflow tracking server answers what MLflow's client answers.

(The SQLite registry is held to the client in ``tests/unit/test_registry_alias.py``.)
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import stop_service, wait_for_http

from serving.registry_alias import UNKNOWN, alias_version
from serving.session.testing import free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on a SQLite registry: model ``m`` versions 1-3, champion on 2."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow-server")
    db = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=db, registry_uri=db)
    client.create_registered_model("m")
    for _ in range(3):
        client.create_model_version("m", source=str(root / "artifacts"))
    client.set_registered_model_alias("m", "champion", "2")
    port = free_port()
    log = (root / "server.log").open("wb")
    argv = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", db]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", proc, root / "server.log", "mlflow server", 120)
        yield url
    finally:
        stop_service(proc)


def _client_answer(url: str, name: str, alias: str) -> str | None:
    import mlflow

    try:
        return str(mlflow.MlflowClient(url, url).get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


@pytest.mark.parametrize(("name", "alias"), [("m", "champion"), ("x", "champion")])
def test_rest_lookup_equals_the_client(server: str, name: str, alias: str) -> None:
    assert alias_version(server, name, alias) == _client_answer(server, name, alias)


def test_an_alias_no_version_holds_is_left_to_the_client(server: str) -> None:
    """The server answers 400 with a message, not a not-found code: the client decides."""
    assert alias_version(server, "m", "nobody") == UNKNOWN
    assert _client_answer(server, "m", "nobody") is None
