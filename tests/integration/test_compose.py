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
    assert {"train", "prediction", "session"} <= set(_compose()["services"])


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


def _database(url: str) -> str:
    return urlparse(url).path.lstrip("/")


def _option(command: list[str], name: str) -> str:
    return next(a.split("=", 1)[1] for a in command if a.startswith(f"--{name}="))


def test_postgres_database_and_user_match_the_profile() -> None:
    compose = _compose()
    env = compose["services"]["postgres"]["environment"]
    for name in ("FITML_FEAST_REGISTRY_URL", "FITML_FEAST_OFFLINE_URL"):
        for block in ("x-fitml-env", "x-fitml-service-env"):
            url = urlparse(compose[block][name])
            assert url.path.lstrip("/") == env["POSTGRES_DB"], (block, name)
            assert url.username == env["POSTGRES_USER"], (block, name)
    assert "POSTGRES_HOST_AUTH_METHOD" not in env
    assert env["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_mlflow_and_optuna_have_databases_of_their_own_as_in_the_profile() -> None:
    """Both migrate their tables with alembic: one database each, created at first start."""
    compose = _compose()
    defaults = _profile_variables()
    mlflow_db = _database(_option(compose["services"]["mlflow"]["command"], "backend-store-uri"))
    optuna_db = _database(compose["x-fitml-env"]["FITML_OPTUNA_STORAGE"])
    assert _database(compose["x-fitml-service-env"]["FITML_OPTUNA_STORAGE"]) == optuna_db
    assert mlflow_db == _database(defaults["FITML_MLFLOW_TRACKING_URI"] or "")
    assert optuna_db == _database(defaults["FITML_OPTUNA_STORAGE"] or "")
    app_db = compose["services"]["postgres"]["environment"]["POSTGRES_DB"]
    assert len({mlflow_db, optuna_db, app_db}) == 3
    init = (ROOT / "deploy/compose/postgres-init.sql").read_text()
    created = set(re.findall(r"^CREATE DATABASE (\w+);", init, re.MULTILINE))
    assert created == {mlflow_db, optuna_db}
    mounts = compose["services"]["postgres"]["volumes"]
    assert any(
        m.startswith("./deploy/compose/postgres-init.sql:/docker-entrypoint-initdb.d/")
        for m in mounts
    )


def test_the_containers_read_every_variable_the_profile_reads() -> None:
    service_env = _compose()["x-fitml-service-env"]
    assert set(_profile_variables()) <= set(service_env)
    assert service_env["FITML_PROFILE"] == "prod"
    for name, value in service_env.items():
        if name in SERVICE_OF:
            assert _host_port(value)[0] == SERVICE_OF[name], (name, value)


def _dockerfile_targets() -> set[str]:
    text = (ROOT / "Dockerfile").read_text()
    return set(re.findall(r"^FROM \S+ AS (\w+)", text, re.MULTILINE))


def test_fitml_services_are_built_from_the_dockerfile_and_started_in_order() -> None:
    services = _compose()["services"]
    fitml = {n: s for n, s in services.items() if "build" in s}
    assert set(fitml) >= {"mlflow", "train", "prediction", "session"}
    for name, service in fitml.items():
        assert service["build"]["target"] in _dockerfile_targets(), name
        assert service["build"]["context"] == "."
        target = service["build"]["target"]
        assert service["image"].startswith(f"fitml-{target}:"), name
    # The MLflow server runs from the job image: its MLflow is the client's, pinned by the lock.
    assert services["mlflow"]["build"]["target"] == "job"
    assert services["mlflow"]["entrypoint"] == ["mlflow"]
    assert services["train"]["restart"] == "no"
    depends = services["prediction"]["depends_on"]
    assert depends["train"]["condition"] == "service_completed_successfully"
    assert services["session"]["depends_on"]["prediction"]["condition"] == "service_healthy"
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            done = dependency == "train"
            wanted = "service_completed_successfully" if done else "service_healthy"
            assert rule["condition"] == wanted, (name, dependency)
            if wanted == "service_healthy":
                assert "healthcheck" in services[dependency], dependency


def test_long_running_services_have_health_checks_restart_policies_and_limits() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        if name == "train":
            continue
        assert "healthcheck" in service, name
        assert service["restart"] == "unless-stopped", name
        limits = service["deploy"]["resources"]["limits"]
        assert limits["cpus"] and limits["memory"], name
    for name in ("prediction", "session"):
        test = " ".join(services[name]["healthcheck"]["test"])
        port = str(services[name]["environment"]["FITML_PORT"])
        assert f"127.0.0.1:{port}/readyz" in test, name


def test_secrets_come_from_the_environment_or_secret_files_never_literals() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    compose = _compose()
    referenced = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", example, re.MULTILINE))
    assert referenced <= documented, referenced - documented
    for url in re.findall(r"postgresql\S*://[^@\s]+@", text):
        assert ":${POSTGRES_PASSWORD}@" in url, url
    session = compose["services"]["session"]
    assert session["environment"]["FITML_API_KEYS_FILE"] == "/run/secrets/fitml_api_keys"
    assert "fitml_api_keys" in session["secrets"]
    assert ".env" in (ROOT / ".gitignore").read_text().split()


SECRET_FILES = {
    "FITML_PSEUDONYM_KEY_FILE": "fitml_pseudonym_key",
    "FITML_SERVICE_TOKEN_FILE": "fitml_service_token",
    "FITML_API_KEYS_FILE": "fitml_api_keys",
}
"""The secrets the services read (README "Security"): variable -> compose secret."""

OBSERVABILITY_SECRETS = {
    "FITML_METRICS_KEY_FILE": "fitml_metrics_key",
    "GRAFANA_ADMIN_PASSWORD_FILE": "grafana_admin_password",
}
"""Prometheus's scrape key (also a session API key) and Grafana's admin password."""


def _runs(service: dict, command: str) -> bool:
    """Whether ``service`` runs ``fitml <command>`` (its image's CMD or its own command)."""
    target = service.get("build", {}).get("target")
    dockerfile = (ROOT / "Dockerfile").read_text()
    stage = re.search(rf"^FROM \S+ AS {target}$(.*?)(?=^FROM |\Z)", dockerfile, re.M | re.S)
    cmd = " ".join(map(str, service.get("command") or []))
    if not cmd and stage:
        cmd = " ".join(re.findall(r"^CMD (.*)$", stage.group(1), re.MULTILINE))
    return bool(re.search(rf"(^|\s|\"){command}(\s|\"|$)", cmd))


def _needs(service: dict) -> set[str]:
    """The secrets a fitml service cannot start without under the prod profile."""
    if _runs(service, "session-service"):
        return set(SECRET_FILES)
    if _runs(service, "serve"):  # binds 0.0.0.0: refused without the service token
        return {"FITML_PSEUDONYM_KEY_FILE", "FITML_SERVICE_TOKEN_FILE"}
    if _runs(service, "pipeline") or _runs(service, "drift"):  # drift joins logged pseudonyms
        return {"FITML_PSEUDONYM_KEY_FILE"}
    return set()


def test_services_get_the_pseudonym_key_service_token_and_api_keys_as_secrets() -> None:
    services = _compose()["services"]
    needs = {name: _needs(s) for name, s in services.items()}
    assert needs["prediction"] == {"FITML_PSEUDONYM_KEY_FILE", "FITML_SERVICE_TOKEN_FILE"}
    assert needs["session"] == set(SECRET_FILES)
    assert needs["train"] == {"FITML_PSEUDONYM_KEY_FILE"}
    for name, wanted in needs.items():
        service = services[name]
        env = service.get("environment", {})
        mounted = set(service.get("secrets", []))
        for variable in wanted:
            secret = SECRET_FILES[variable]
            assert env.get(variable) == f"/run/secrets/{secret}", (name, variable)
            assert secret in mounted, (name, secret)
        # no secret inline in the environment
        assert not {"FITML_PSEUDONYM_KEY", "FITML_SERVICE_TOKEN", "FITML_API_KEYS"} & set(env)


def test_secret_files_are_git_ignored_and_made_by_make_secrets() -> None:
    compose = _compose()
    makefile = (ROOT / "Makefile").read_text()
    example = (ROOT / ".env.example").read_text()
    ignored = (ROOT / ".gitignore").read_text().split()
    every = {**SECRET_FILES, **OBSERVABILITY_SECRETS}
    assert set(compose["secrets"]) == set(every.values())
    for variable, secret in every.items():
        source = compose["secrets"][secret]["file"]
        match = VARIABLE.fullmatch(source)
        assert match and match.group(1) == variable, source
        default = Path(match.group(2) or "")
        assert default.parent == Path(".secrets") and ".secrets/" in ignored, source
        assert f"$(SECRETS_DIR)/{default.name}" in makefile, default
        assert f"{variable}=./.secrets/{default.name}" in example, variable


def test_make_secrets_writes_keys_the_services_accept(tmp_path: Path) -> None:
    import subprocess

    from ml_pipeline.settings import load_settings
    from serving.pseudonym import load_pseudonymizer
    from serving.service_auth import ServiceTokens, check_bind

    argv = ["make", "-s", "-C", str(ROOT), "secrets", f"SECRETS_DIR={tmp_path / 's'}"]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    first = {p.name: p.read_text() for p in (tmp_path / "s").iterdir()}
    assert set(first) == {
        "pseudonym_key",
        "service_token",
        "api_keys",
        "metrics_key",
        "grafana_admin_password",
    }
    assert first["metrics_key"] in first["api_keys"].splitlines(keepends=True)
    subprocess.run(argv, check=True, capture_output=True, timeout=60)  # kept, not rotated
    assert {p.name: p.read_text() for p in (tmp_path / "s").iterdir()} == first
    env = {
        "FITML_PSEUDONYM_KEY_FILE": str(tmp_path / "s/pseudonym_key"),
        "FITML_SERVICE_TOKEN_FILE": str(tmp_path / "s/service_token"),
    }
    settings = load_settings("local", tmp_path / "w")
    assert load_pseudonymizer(settings, env)("shopper-1")
    check_bind("0.0.0.0", ServiceTokens.from_env(env))  # nosec B104: the containers' bind


def test_podman_compose_accepts_the_file(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    tool = shutil.which("podman-compose") or str(Path(sys.executable).parent / "podman-compose")
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "POSTGRES_PASSWORD": "example",
    }
    for variable, secret in SECRET_FILES.items():
        (tmp_path / secret).write_text("example\n")
        env[variable] = str(tmp_path / secret)
    done = subprocess.run(
        [tool, "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True, text=True, env=env, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rendered = yaml.safe_load(done.stdout)
    assert set(rendered["services"]) >= {
        "postgres",
        "redis",
        "mlflow",
        "train",
        "prediction",
        "session",
    }
    assert "example@postgres:5432/fitml_optuna" in done.stdout
    missing = subprocess.run(
        [tool, "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True, text=True, env={"PATH": env["PATH"]}, timeout=60, check=False,
        cwd=ROOT,
    )  # fmt: skip
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stdout + missing.stderr
