"""The alias lookup without MLflow's client answers what MLflow's client answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.registry_alias import UNKNOWN, alias_version


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite MLflow registry: model ``m`` with versions 1-3, ``champion`` on 2."""
    import mlflow

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("m")
    for _ in range(3):
        client.create_model_version("m", source=str(root / "artifacts"))
    client.set_registered_model_alias("m", "champion", "2")
    client.set_registered_model_alias("m", "challenger", "3")
    client.create_registered_model("other")
    return uri


def _client_answer(uri: str, name: str, alias: str) -> str | None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


@pytest.mark.parametrize(
    ("name", "alias"),
    [("m", "champion"), ("m", "challenger"), ("m", "nobody"), ("other", "champion"), ("x", "y")],
)
def test_sqlite_lookup_equals_the_client(registry: str, name: str, alias: str) -> None:
    assert alias_version(registry, name, alias) == _client_answer(registry, name, alias)


def test_a_moved_alias_is_seen(registry: str) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=registry, registry_uri=registry)
    client.set_registered_model_alias("m", "champion", "3")
    try:
        assert alias_version(registry, "m", "champion") == "3"
    finally:
        client.set_registered_model_alias("m", "champion", "2")


def test_what_it_cannot_read_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert alias_version(f"sqlite:///{tmp_path / 'absent.db'}", "m", "champion") == UNKNOWN
    assert alias_version("postgresql+psycopg://u@127.0.0.1:1/db", "m", "champion") == UNKNOWN
    assert alias_version("http://127.0.0.1:1", "m", "champion", timeout_s=1) == UNKNOWN
    (tmp_path / "empty.db").write_bytes(b"")
    assert alias_version(f"sqlite:///{tmp_path / 'empty.db'}", "m", "champion") == UNKNOWN
    monkeypatch.setenv("MLFLOW_WORKSPACE", "team-a")
    assert alias_version(f"sqlite:///{tmp_path / 'absent.db'}", "m", "champion") == UNKNOWN
