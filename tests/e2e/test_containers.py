"""The images, built from the repo and run for real (podman, host network).

The job image trains a small champion into the machine's PostgreSQL and Redis as the prod
profile says (MLflow and Optuna in databases of their own, a Feast project of its own); the
prediction and session images then serve it: health checks pass, a session is started as a
try-on front end would, and its feedback reaches PostgreSQL and the Redis online store.
Then the job image exports the champion models (``fitml bento export``), a champion image is
built FROM the prediction image with them inside (``deploy/champion.Dockerfile``), and it
answers /recommend with the champion's versions with the MLflow backend out of reach.
Everything the test creates is removed afterwards except the three images, which are the
build cache of the next run (tagged by a hash of what they were built from).

Needs podman and the local base image: ``eval "$(../shared/tools/containers.sh env)"`` and
``../shared/tools/containers.sh base`` (``.ci/run`` does both).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conftest import REPO_ROOT, require
from prodstack import ProdStack, private_prod_stack

from features.store import online_features, open_store
from ml_pipeline.settings import load_settings
from serving.session.smoke import run_smoke
from serving.session.testing import free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.integration,
    pytest.mark.containers,
    pytest.mark.slow,
    pytest.mark.timeout(2400),  # image builds (cached: seconds) + a training run + three starts
]

TARGETS = ("prediction", "session", "job")
BASE_IMAGE = os.environ.get("FITML_BASE_IMAGE", "localhost/python:3.11-bookworm")
CONTEXT = (
    "Dockerfile",
    ".dockerignore",
    "requirements-runtime.lock",
    "requirements-serving.lock",
    "pyproject.toml",
    "README.md",
    "ml_pipeline",
    "features",
    "training",
    "serving",
    "evaluation",
)
WORKDIR = "/var/lib/fitml"
SECRETS = "/run/secrets/fitml"
TRAIN_ARGS = ["pipeline", "run", "--profile", "prod", "--users", "400", "--products", "30"]
TRAIN_ARGS += ["--events", "5000", "--seed", "11", "--trials", "1"]


@pytest.fixture
def prod_stack(postgres_dsn: str, redis_url: str, tmp_path: Path) -> Iterator[ProdStack]:
    """A private prod stack (own databases, Feast project, session tables); removed after."""
    with private_prod_stack(postgres_dsn, redis_url, tmp_path / "var") as stack:
        yield stack


def podman(*args: str, timeout: float = 120, check: bool = True) -> str:
    """Run podman; its stdout (raises with its stderr when ``check`` and it fails)."""
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} ... failed: {done.stderr[-3000:]}")
    return done.stdout


def context_digest() -> str:
    """A hash of every file the images are built from (the image tag)."""
    digest = hashlib.sha256(BASE_IMAGE.encode())
    for name in CONTEXT:
        path = REPO_ROOT / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts:
                continue
            digest.update(str(file.relative_to(REPO_ROOT)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class Images:
    """The built images and how long each build took."""

    tags: dict[str, str]
    build_seconds: dict[str, float]


@pytest.fixture(scope="session")
def images() -> Images:
    """The three images, built once per test session (podman's layer cache makes reruns fast)."""
    require(shutil.which("podman") is not None, "podman is not installed (containers.sh env)")
    os.environ.setdefault("CONTAINERS_CONF", "/etc/fitml-containers.conf")
    exists = subprocess.run(["podman", "image", "exists", BASE_IMAGE], check=False)
    require(exists.returncode == 0, f"base image {BASE_IMAGE} missing (containers.sh base)")
    digest = context_digest()
    tags, seconds = {}, {}
    for target in TARGETS:
        tag = f"localhost/fitml-{target}:test-{digest}"
        started = time.perf_counter()
        podman(
            "build", "--format", "docker", "--layers", "--target", target,
            "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", tag,
            "-f", str(REPO_ROOT / "Dockerfile"), str(REPO_ROOT),
            timeout=1800,
        )  # fmt: skip
        tags[target], seconds[target] = tag, time.perf_counter() - started
    return Images(tags, seconds)


@dataclass
class Containers:
    """Containers started by a test, removed at the end whatever happened."""

    prefix: str
    names: list[str]
    images: list[str] = field(default_factory=list)
    """Images built by the test (removed with the containers)."""

    def run(self, role: str, image: str, args: list[str], *, detach: bool, **kw: Any) -> str:
        name = f"{self.prefix}-{role}"
        self.names.append(name)
        argv = ["run", "--name", name, "--network", "host", "--read-only"]
        argv += ["--tmpfs", "/home/fitml:rw,mode=1777"]
        for key, value in kw.get("env", {}).items():
            argv += ["-e", f"{key}={value}"]
        for host, inside in kw.get("volumes", {}).items():
            argv += ["-v", f"{host}:{inside}"]
        argv += ["-d"] if detach else []
        return podman(*argv, image, *args, timeout=kw.get("timeout", 120))

    def logs(self, role: str) -> str:
        done = subprocess.run(
            ["podman", "logs", f"{self.prefix}-{role}"], capture_output=True, text=True, check=False
        )
        return (done.stdout + done.stderr)[-4000:]

    def wait_healthy(self, role: str, port: int, since: float, timeout_s: float = 240) -> float:
        """Seconds from ``since`` (``time.perf_counter()`` before ``podman run``) until
        ``/readyz`` answers 200, polled every 0.25 s from the host; the container's own
        HEALTHCHECK must then pass too. Fails with the container's log otherwise."""
        name = f"{self.prefix}-{role}"
        started = since
        while time.perf_counter() - started < timeout_s:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    ready_s = time.perf_counter() - started
                    check = subprocess.run(
                        ["podman", "healthcheck", "run", name], capture_output=True, check=False
                    )
                    assert check.returncode == 0, f"{role}: HEALTHCHECK fails once ready"
                    return ready_s
            except httpx.HTTPError:
                pass
            state = podman("inspect", "--format", "{{.State.Running}}", name, check=False)
            if state.strip() != "true":
                pytest.fail(f"{role} container exited:\n{self.logs(role)}")
            time.sleep(0.25)
        pytest.fail(f"{role} container not ready after {timeout_s} s:\n{self.logs(role)}")

    def remove(self) -> None:
        for name in self.names:
            podman("rm", "-f", "-t", "5", name, check=False, timeout=60)
        for image in self.images:
            podman("rmi", "-f", image, check=False, timeout=60)


@pytest.fixture
def containers() -> Iterator[Containers]:
    started = Containers(f"fitml-e2e-{uuid.uuid4().hex[:8]}", [])
    try:
        yield started
    finally:
        started.remove()
        left = podman("ps", "-a", "--format", "{{.Names}}", check=False)
        assert started.prefix not in left
        tags = podman("images", "--format", "{{.Repository}}:{{.Tag}}", check=False)
        assert started.prefix not in tags


def _poll(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def test_images_train_serve_and_take_feedback(
    images: Images,
    containers: Containers,
    prod_stack: ProdStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in prod_stack.env.items():
        monkeypatch.setenv(name, value)
    workdir = tmp_path / "var"
    workdir.mkdir()
    workdir.chmod(0o777)  # the images run as the unprivileged user fitml (uid 10001)
    # The deployment's secrets (pseudonym key, service token, API keys) mounted read-only at
    # /run/secrets/fitml, as the compose file and the Kubernetes manifests mount them.
    secrets_dir = prod_stack.secret_files["FITML_API_KEYS_FILE"].parent
    api_key = prod_stack.secret_files["FITML_API_KEYS_FILE"].read_text().strip()
    volumes = {str(workdir): WORKDIR, str(secrets_dir): f"{SECRETS}:ro"}
    env = {
        **prod_stack.env,
        **{var: f"{SECRETS}/{path.name}" for var, path in prod_stack.secret_files.items()},
    }

    # The job image trains a champion (tiny data, one trial) into PostgreSQL and Redis.
    containers.run(
        "train",
        images.tags["job"],
        [*TRAIN_ARGS, "--workdir", WORKDIR],
        detach=False,
        env=env,
        volumes=volumes,
        timeout=900,
    )
    assert (workdir / "examples" / "recommend.jsonl").is_file()
    for path in workdir.rglob("*"):  # what the container wrote belongs to the image's user
        assert path.stat().st_uid == 10001, path
        break

    prediction_port, session_port = free_port(), free_port()
    prediction_started = time.perf_counter()
    containers.run(
        "prediction",
        images.tags["prediction"],
        [],
        detach=True,
        env={**env, "FITML_PORT": str(prediction_port)},
        volumes=volumes,
    )
    prediction_ready_s = containers.wait_healthy("prediction", prediction_port, prediction_started)
    session_started = time.perf_counter()
    containers.run(
        "session",
        images.tags["session"],
        [],
        detach=True,
        env={
            **env,
            "FITML_PORT": str(session_port),
            "FITML_PREDICTION_URL": f"http://127.0.0.1:{prediction_port}",
        },
        volumes=volumes,
    )
    session_ready_s = containers.wait_healthy("session", session_port, session_started)
    for role in ("prediction", "session"):
        assert podman("exec", f"{containers.prefix}-{role}", "id", "-u").strip() == "10001"

    examples = (workdir / "examples" / "recommend.jsonl").read_text().splitlines()
    body = next(b for b in map(json.loads, examples) if b.get("user_id"))
    user, product = body["user_id"], body["product_id"]
    settings = load_settings("prod", workdir, env=dict(os.environ))
    before = online_features(open_store(settings), user, product)

    result = run_smoke(f"http://127.0.0.1:{session_port}", api_key, body, outcome="too_small")

    # The feedback is in the PostgreSQL event store ...
    table = f"{prod_stack.env['FITML_SESSION_TABLES']}_events"
    with psycopg.connect(prod_stack.app_dsn) as conn:
        row = conn.execute(
            f"SELECT user_id, product_id, outcome FROM {table} WHERE event_id = %s",
            (result.event_id,),
        ).fetchone()
    assert row == (user, product, "too_small")
    # ... and in the Redis online store: the shopper's fit history counts it.
    _poll(
        lambda: (
            online_features(open_store(settings), user, product)["hist_n"]
            == (before["hist_n"] or 0) + 1
        ),
        30,
        "the feedback in the online store",
    )

    # The champion image: the job image exports the registry's champions, an image is built
    # FROM the prediction image with them inside, and it serves them with MLflow out of reach.
    token = prod_stack.secret_files["FITML_SERVICE_TOKEN_FILE"].read_text().strip()
    registered = _champion_versions(prod_stack, settings)
    champion_tag, champion_build_s = _build_champion(images, containers, env, volumes)
    manifest = json.loads((workdir / "champion" / "fitml-models.json").read_text())
    exported = {
        "fit_model": manifest["models"]["fit_champion"]["version"],
        "size_model": manifest["models"]["size_champion"]["version"],
    }
    assert exported == registered
    assert manifest["models"]["fit_champion"]["run_id"]
    labels = json.loads(podman("image", "inspect", "--format", "{{json .Labels}}", champion_tag))
    assert labels["ai.fitml.fit-model.version"] == registered["fit_model"]
    # A work directory of its own (no MLflow artifacts, no BentoML store) and a tracking URI
    # that refuses connections: the models can only come from the image.
    champion_workdir = tmp_path / "champion-var"
    champion_workdir.mkdir()
    champion_workdir.chmod(0o777)
    champion_port = free_port()
    champion_started = time.perf_counter()
    containers.run(
        "champion",
        champion_tag,
        [],
        detach=True,
        env={
            **env,
            "FITML_PORT": str(champion_port),
            "FITML_MLFLOW_TRACKING_URI": "postgresql+psycopg://postgres@127.0.0.1:9/no_mlflow",
        },
        volumes={str(champion_workdir): WORKDIR, str(secrets_dir): f"{SECRETS}:ro"},
    )
    champion_ready_s = containers.wait_healthy("champion", champion_port, champion_started)
    answer = httpx.post(
        f"http://127.0.0.1:{champion_port}/recommend",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_versions"] == registered
    assert answer.json()["recommended_size"]
    assert not list((champion_workdir / "bentoml" / "models").glob("*"))  # nothing imported
    report = {
        "build_seconds": {**images.build_seconds, "champion": champion_build_s},
        "ready_seconds": {
            "prediction": prediction_ready_s,
            "session": session_ready_s,
            "champion": champion_ready_s,
        },
    }
    print(json.dumps(report))


def _champion_versions(stack: ProdStack, settings: Any) -> dict[str, str]:
    """The versions holding the champion alias in the stack's MLflow registry."""
    dsn = stack.env["FITML_MLFLOW_TRACKING_URI"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        rows = dict(
            conn.execute(
                "SELECT name, version FROM registered_model_aliases WHERE alias = 'champion'"
            ).fetchall()
        )
    return {
        "fit_model": str(rows[settings.mlflow.fit_model_name]),
        "size_model": str(rows[settings.mlflow.size_model_name]),
    }


def _build_champion(
    images: Images, containers: Containers, env: dict[str, str], volumes: dict[str, str]
) -> tuple[str, float]:
    """Export the champions with the job image and build the champion image; its tag, seconds.

    The image is removed when the test's containers are (its tag is unique to this test).
    """
    containers.run(
        "export",
        images.tags["job"],
        [
            "bento",
            "export",
            "--profile",
            "prod",
            "--workdir",
            WORKDIR,
            "--out",
            f"{WORKDIR}/champion",
        ],
        detach=False,
        env=env,
        volumes=volumes,
        timeout=300,
    )
    workdir = next(host for host, inside in volumes.items() if inside == WORKDIR)
    tag = f"localhost/fitml-prediction-champion:{containers.prefix}"
    containers.images.append(tag)
    manifest = json.loads((Path(workdir) / "champion" / "fitml-models.json").read_text())
    started = time.perf_counter()
    podman(
        "build", "--format", "docker", "-f", str(REPO_ROOT / "deploy" / "champion.Dockerfile"),
        "--build-arg", f"PREDICTION_IMAGE={images.tags['prediction']}",
        "--build-arg", f"FIT_VERSION={manifest['models']['fit_champion']['version']}",
        "--build-arg", f"SIZE_VERSION={manifest['models']['size_champion']['version']}",
        "-t", tag, str(Path(workdir) / "champion"),
        timeout=600,
    )  # fmt: skip
    return tag, time.perf_counter() - started
