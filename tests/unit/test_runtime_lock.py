"""The images' runtime lock pins exactly what requirements.lock pins, and nothing it lacks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;#]+)", re.MULTILINE)


def _pins(name: str) -> dict[str, str]:
    text = (ROOT / name).read_text()
    return {re.sub(r"[-_.]+", "-", m[0]).lower(): m[2] for m in PIN.findall(text)}


def _requirements(name: str) -> set[str]:
    names = set()
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.sub(r"[-_.]+", "-", re.split(r"[\[=<>~! ]", line, maxsplit=1)[0]).lower())
    return names


def test_runtime_pins_equal_the_main_lock() -> None:
    main, runtime = _pins("requirements.lock"), _pins("requirements-runtime.lock")
    assert len(runtime) > 150
    assert set(runtime) <= set(main), set(runtime) - set(main)
    differ = {n: (v, main[n]) for n, v in runtime.items() if main[n] != v}
    assert not differ


def test_runtime_lock_holds_what_the_packages_import_and_no_test_tooling() -> None:
    runtime = _pins("requirements-runtime.lock")
    assert _requirements("requirements-runtime.in") <= set(runtime)
    for needed in ("feast", "bentoml", "mlflow", "evidently", "optuna", "lightgbm", "psycopg"):
        assert needed in runtime
    for tool in ("pytest", "ruff", "playwright", "hypothesis", "bandit", "pip-audit"):
        assert tool not in runtime
    project = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"dependencies = \[(.*?)\]", project, re.DOTALL)
    assert deps
    for dep in re.findall(r'"([A-Za-z0-9_.-]+)', deps.group(1)):
        assert re.sub(r"[-_.]+", "-", dep).lower() in runtime, dep


JOB_ONLY = ("evidently", "plotly", "statsmodels", "nltk", "distributed", "litestar")

JOB_ONLY_REQUIREMENTS = {
    "dask": "training on a Dask cluster (fitml train --engine dask)",
    "evidently": "drift reports and the analysts' monitoring UI",
    "matplotlib": "evaluation and drift plots",
}
"""The runtime requirements the service images leave out, each with what only the jobs run."""


def test_every_runtime_requirement_is_in_the_service_images_or_declared_job_only() -> None:
    """A package added to the runtime lock must also go to the serving lock, or be named here.

    (A package the session service needed reached only the job image once: its image then
    failed at start.)
    """
    left_out = _requirements("requirements-runtime.in") - _requirements("requirements-serving.in")
    assert left_out == set(JOB_ONLY_REQUIREMENTS), (
        f"in requirements-runtime.in but not requirements-serving.in: {sorted(left_out)}; add "
        "them to requirements-serving.in (and `make lock`) or to JOB_ONLY_REQUIREMENTS"
    )


def test_serving_lock_is_the_runtime_lock_without_the_jobs_packages() -> None:
    main, runtime = _pins("requirements.lock"), _pins("requirements-runtime.lock")
    serving = _pins("requirements-serving.lock")
    assert len(serving) > 150
    assert set(serving) <= set(runtime), set(serving) - set(runtime)
    assert not {n: v for n, v in serving.items() if main[n] != v}
    assert _requirements("requirements-serving.in") <= set(serving)
    for needed in ("feast", "bentoml", "mlflow", "lightgbm", "optuna", "psycopg", "redis"):
        assert needed in serving
    for left_out in (*JOB_ONLY, "mypy", "pytest"):
        assert left_out not in serving, left_out


def test_the_services_import_without_the_jobs_packages() -> None:
    """What the prediction and session images run imports with the jobs' packages absent."""
    blocked = ", ".join(repr(name) for name in JOB_ONLY)
    program = f"""
import importlib, importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ({blocked}):
            raise ImportError(f"{{name}} is not in the service images")
sys.meta_path.insert(0, Absent())
for module in ("serving.service", "serving.session.server", "training.models",
               "training.registry", "serving.bento_export", "ml_pipeline.cli"):
    importlib.import_module(module)
"""
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
