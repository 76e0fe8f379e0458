"""docker-compose.yml and the prod profile cannot drift apart (no Docker engine needed)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROFILES = (ROOT / "ml_pipeline/profiles/prod.yaml", ROOT / "features/profiles/prod.yaml")
VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")
RUNTIME = {"FITML_WORKDIR", "FITML_REPO", "FITML_TRIALS", "FITML_FEAST_PROJECT"}
SERVICE_OF = {
    "FITML_FEAST_REGISTRY_URL": "postgres",
    "FITML_FEAST_OFFLINE_URL": "postgres",
    "FITML_OPTUNA_STORAGE": "postgres",
    "FITML_REDIS": "redis",
    "FITML_MLFLOW_TRACKING_URI": "mlflow",
}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _profile_variables() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for path in PROFILES:
        for name, default in re.findall(
            r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}", path.read_text()
        ):
            found[name] = default or None
    return {k: v for k, v in found.items() if k not in RUNTIME}


def _host_port(value: str) -> tuple[str, int]:
    parsed = urlparse(value if "://" in value else f"redis://{value.split(',')[0]}")
    assert parsed.hostname and parsed.port, value
    return parsed.hostname, parsed.port


def _published(service: dict) -> set[int]:
    return {int(str(p).split(":")[-2] if str(p).count(":") else p) for p in service["ports"]}


def test_compose_defines_every_service_the_profile_needs() -> None:
    assert {"postgres", "redis", "mlflow"} <= set(_compose()["services"])


def test_compose_environment_names_exactly_what_the_profile_reads() -> None:
    assert set(_compose()["x-fitml-env"]) == set(_profile_variables())
    assert set(_profile_variables()) <= set(SERVICE_OF)


def test_addresses_match_published_ports_and_profile_defaults() -> None:
    compose = _compose()
    defaults = _profile_variables()
    for name, value in compose["x-fitml-env"].items():
        service = compose["services"][SERVICE_OF[name]]
        host, port = _host_port(value)
        assert host in ("127.0.0.1", "localhost")
        assert port in _published(service), (name, port, service["ports"])
        default = defaults[name]
        if default and SERVICE_OF[name] != "mlflow":
            assert _host_port(default)[1] == port, (name, default, value)


def test_postgres_database_and_user_match_the_profile() -> None:
    env = _compose()["services"]["postgres"]["environment"]
    for name in ("FITML_FEAST_REGISTRY_URL", "FITML_FEAST_OFFLINE_URL", "FITML_OPTUNA_STORAGE"):
        url = urlparse(_compose()["x-fitml-env"][name])
        assert url.path.lstrip("/") == env["POSTGRES_DB"], name
        assert url.username == env["POSTGRES_USER"], name
    assert env["POSTGRES_HOST_AUTH_METHOD"] == "trust"
    mlflow_command = _compose()["services"]["mlflow"]["command"]
    assert f"@postgres:5432/{env['POSTGRES_DB']}" in mlflow_command
