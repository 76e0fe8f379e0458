"""`fitml bento export`: the registry's champions as a model folder that serves on its own.

What the champion image is built from (deploy/champion.Dockerfile): the export holds the
versions holding the champion alias, with their registry metadata, and the prediction service
pointed at it (FITML_MODEL_STORE) answers with those versions with no MLflow database at all.
tests/e2e/test_containers.py builds and runs the image itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import mlflow
import pytest
from conftest import start_service, stop_service

from ml_pipeline.settings import load_settings
from serving.session.testing import clone_workdir

BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]


def export(workdir: Path, out: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "1"}
    argv = [str(BIN / "fitml"), "bento", "export", "--workdir", str(workdir), "--out", str(out)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)


def test_export_holds_the_champions_and_serves_without_the_registry(
    trained_workdir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "champion"
    done = export(trained_workdir, out, tmp_path / "home")
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads(done.stdout)
    assert manifest == json.loads((out / "fitml-models.json").read_text())

    settings = load_settings("local", trained_workdir)
    uri = settings.mlflow.tracking_uri
    client = mlflow.MlflowClient(uri, registry_uri=uri)  # not the registry an earlier test set
    registered = {
        "fit_model": client.get_model_version_by_alias(settings.mlflow.fit_model_name, "champion"),
        "size_model": client.get_model_version_by_alias(
            settings.mlflow.size_model_name, "champion"
        ),
    }
    versions = {key: str(mv.version) for key, mv in registered.items()}
    for key, kind in (("fit_model", "fit"), ("size_model", "size")):
        entry = manifest["models"][f"{kind}_champion"]
        assert entry["version"] == versions[key]
        assert entry["run_id"] == registered[key].run_id
        assert entry["registered_name"] == registered[key].name
        stored = out / f"fitml-{kind}-champion" / f"v{versions[key]}"
        assert (stored / "model.yaml").is_file()
        assert (stored / "model" / "model.json").is_file()

    # A second export into the same folder is refused, naming it.
    again = export(trained_workdir, out, tmp_path / "home")
    assert again.returncode == 2
    assert str(out) in again.stderr and "not an empty folder" in again.stderr

    # A copy of the work dir without the MLflow database or artifacts: the service can only
    # take its models from the export.
    copy = clone_workdir(trained_workdir, tmp_path / "var").workdir
    (copy / "mlflow.db").unlink()
    service = start_service(copy, tmp_path / "serve.log", env={"FITML_MODEL_STORE": str(out)})
    try:
        body = json.loads((copy / "examples" / "recommend.jsonl").read_text().splitlines()[0])
        answer = httpx.post(f"{service.url}/recommend", json=body, timeout=30)
    finally:
        stop_service(service.process)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_versions"] == versions
    assert not (copy / "mlflow.db").exists()
    assert not list((copy / "bentoml" / "models").glob("*"))


def test_export_without_a_champion_says_so_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "champion"
    done = export(tmp_path / "empty", out, tmp_path / "home")
    assert done.returncode == 2
    assert "no version of the fit model holds the alias 'champion'" in done.stderr
    assert not out.exists()
