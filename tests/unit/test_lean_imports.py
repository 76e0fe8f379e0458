"""What the services import on their way to ready: the heavy libraries stay off it.

Each check runs in a fresh interpreter (``sys.modules`` of this test process is shared with
every other test). Figures for what each library costs a cold start: the README's
"Cold start" under Results and ``tests/benchmarks/bench_cold_start.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Imported by no service at import time: MLflow (the registry client: only when the store
# lacks the registry's version), Feast (only inside the workers' lean import, below),
# Optuna (tuning), Evidently and plotly (drift reports), scikit-learn and SciPy's statistics
# (LightGBM's optional estimator API), LightGBM itself (the workers load it with the models).
HEAVY = ("mlflow", "feast", "optuna", "evidently", "plotly", "sklearn", "scipy.stats", "lightgbm")


def _modules_after(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; which HEAVY modules it imported, and its result."""
    script = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json, sys
        print(json.dumps({{
            "loaded": sorted(m for m in {HEAVY!r} if m in sys.modules),
            "result": globals().get("result"),
        }}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(ROOT)},
    ).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_importing_the_prediction_service_imports_no_heavy_library() -> None:
    assert _modules_after("import serving.service")["loaded"] == []


def test_importing_the_session_service_imports_no_heavy_library() -> None:
    assert _modules_after("import serving.session.server")["loaded"] == []


def test_the_deployment_checks_import_neither_feast_nor_mlflow(tmp_path: Path) -> None:
    """What runs once before the workers start: the feature-store check, the alias lookup."""
    code = f"""
        from ml_pipeline.errors import FeatureStoreUnavailable
        from ml_pipeline.settings import load_settings
        from serving.online_features import check_reachable
        from serving.registry_alias import alias_version

        settings = load_settings("local", {str(tmp_path)!r})
        try:
            check_reachable(settings)
        except FeatureStoreUnavailable:
            pass
        result = alias_version(settings.mlflow.tracking_uri, "fitml-fit-model", "champion")
        """
    after = _modules_after(code)
    assert after["loaded"] == []
    assert after["result"] == "?"  # no registry database there: the caller asks MLflow


def test_lean_imports_skip_typeguard_and_scikit_learn_and_leave_both_usable() -> None:
    code = """
        import sys
        import typeguard
        from serving.lean_imports import serving_imports

        original = typeguard.typechecked
        with serving_imports():
            import lightgbm
            import feast.feature_view
        import lightgbm.compat

        init = feast.feature_view.FeatureView.__init__
        result = {
            "sklearn_during": "sklearn" in sys.modules,
            "lightgbm_sklearn": lightgbm.compat.SKLEARN_INSTALLED,
            "instrumented": any("typeguard" in n for n in init.__code__.co_names),
            "restored": typeguard.typechecked is original,
        }
        import sklearn  # importable again after the block

        result["sklearn_after"] = "sklearn" in sys.modules
        """
    result = _modules_after(code)["result"]
    assert result == {
        "sklearn_during": False,
        "lightgbm_sklearn": False,
        "instrumented": False,
        "restored": True,
        "sklearn_after": True,
    }


def test_without_lean_imports_feast_keeps_its_checks() -> None:
    """The jobs' Feast (definitions built by fitml and users) is type-checked as Feast ships it."""
    code = """
        import feast.feature_view

        init = feast.feature_view.FeatureView.__init__
        result = any("typeguard" in n for n in init.__code__.co_names)
        """
    assert _modules_after(code)["result"] is True
