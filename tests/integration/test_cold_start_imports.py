"""The prediction service's path to ready on a trained work dir imports only what it serves with.

Run as the service runs it, in fresh interpreters: the deployment's model resolution (in the
process that starts the workers), then a worker's start. Once the BentoML store holds the
registry's champion, neither imports MLflow; a worker imports neither scikit-learn nor Optuna
nor Evidently, and its Feast is not instrumented by typeguard (``serving/lean_imports.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from serving.session.testing import clone_workdir

REPO = Path(__file__).resolve().parents[2]

RESOLVE = """
import json, sys
import serving.service as s
inner = s.FitmlService.inner
tags = [str(m.resolve().tag) for m in (inner.fit_model, inner.size_model)]
loaded = {m: m in sys.modules for m in ("mlflow", "feast")}
print(json.dumps({"tags": tags, **loaded}))
"""

WORKER = """
import json, sys
import serving.service as s
inner = s.FitmlService.inner
service = inner.__new__(inner)
inner.__init__(service)
import feast.feature_view
init = feast.feature_view.FeatureView.__init__
print(json.dumps({
    "ready": service.__is_ready__(),
    "loaded": sorted(m for m in ("mlflow", "sklearn", "optuna", "evidently", "scipy.stats")
                     if m in sys.modules),
    "typeguard": any("typeguard" in n for n in init.__code__.co_names),
}))
service._close()
"""


def _run(code: str, env: dict[str, str]) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_the_path_to_ready_imports_no_mlflow_and_no_training_libraries(
    trained_workdir: Path, tmp_path: Path
) -> None:
    workdir = clone_workdir(trained_workdir, tmp_path / "var").workdir
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "FITML_WORKDIR": str(workdir),
        "FITML_PROFILE": "local",
        "BENTOML_HOME": str(workdir / "bentoml"),
        "FITML_MODEL_SOURCE": "registry",
        "BENTOML_DO_NOT_TRACK": "1",
    }
    first = _run(RESOLVE, env)  # an empty store: the champion is imported through MLflow
    assert first["mlflow"] is True
    again = _run(RESOLVE, env)  # what every later start does
    assert again == {"tags": first["tags"], "mlflow": False, "feast": False}
    tags = first["tags"]
    assert isinstance(tags, list)
    worker_env = {**env, "FITML_BENTO_TAG_FIT_CHAMPION": tags[0]}
    worker_env["FITML_BENTO_TAG_SIZE_CHAMPION"] = tags[1]
    assert _run(WORKER, worker_env) == {"ready": True, "loaded": [], "typeguard": False}
