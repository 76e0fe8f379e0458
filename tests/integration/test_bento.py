"""A built Bento, as its users run it: `fitml bento build`, then `bentoml serve fitml:latest`.

The Bento must serve the models packed into it without any setting (no MLflow registry read,
nothing written into the Bento), declare each environment variable once, build without
installing anything or drawing progress bars, and stop once, with a message naming the
feature store, when it cannot read that store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from serving.session.testing import clone_workdir, free_port

BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def bento_env(workdir: Path, **extra: str) -> dict[str, str]:
    """A user's environment: the Bento store of the work dir, no fitml variables set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITML_")}
    return {**env, "BENTOML_HOME": str(workdir / "bentoml"), "BENTOML_DO_NOT_TRACK": "1", **extra}


def serve(env: dict[str, str], cwd: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "bentoml"), "serve", "fitml:latest", "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, port


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.timeout(1800)  # the shared trained work dir is built first when run alone
def test_built_bento_serves_its_models_and_fails_once_without_features(
    trained_workdir: Path, tmp_path: Path
) -> None:
    workdir = clone_workdir(trained_workdir, tmp_path / "var").workdir
    uv_before = (BIN / "uv").exists()
    built = subprocess.run(
        [str(BIN / "fitml"), "bento", "build", "--workdir", str(workdir)],
        env={k: v for k, v in os.environ.items() if not k.startswith("BENTOML_")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    output = built.stdout + built.stderr
    assert "━" not in output and "\r" not in output, output  # no progress bars
    assert (BIN / "uv").exists() == uv_before, "bentoml build installed uv"
    tag = built.stdout.strip().splitlines()[-1]
    assert tag.startswith("fitml:"), output
    bento_dir = workdir / "bentoml" / "bentos" / "fitml" / tag.split(":")[1]
    info = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    names = [e["name"] for e in info["envs"]]
    assert sorted(names) == sorted(set(names)) and "FITML_PROFILE" in names, names
    models = [*info.get("models", []), *(m for s in info["services"] for m in s["models"])]
    packed = {str(m.get("tag", m.get("name", ""))).split(":")[0] for m in models}
    assert packed >= {"fitml-fit-champion", "fitml-size-champion"}, info

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    process, port = serve(
        bento_env(workdir, FITML_WORKDIR=str(workdir)), elsewhere, tmp_path / "serve.log"
    )
    try:
        deadline = time.monotonic() + 180
        ready = False
        while time.monotonic() < deadline and process.poll() is None and not ready:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.3)
        log = (tmp_path / "serve.log").read_text()
        assert ready, log[-4000:]
        example = json.loads((workdir / "examples" / "recommend.jsonl").read_text().split("\n")[0])
        answer = httpx.post(f"http://127.0.0.1:{port}/recommend", json=example, timeout=30)
    finally:
        stop(process)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_versions"]["fit_model"]
    assert not list(bento_dir.rglob("mlflow.db")), "the Bento read an MLflow registry"

    empty = tmp_path / "empty"
    empty.mkdir()
    started = time.monotonic()
    process, _ = serve(bento_env(workdir, FITML_WORKDIR=str(empty)), elsewhere, tmp_path / "x.log")
    try:
        code = process.wait(120)
    finally:
        stop(process)
    log = (tmp_path / "x.log").read_text()
    assert code != 0 and time.monotonic() - started < 120
    assert "feature store of work directory" in log and "FITML_WORKDIR" in log, log[-3000:]
    assert log.count("cannot be read") == 1, log[-3000:]
