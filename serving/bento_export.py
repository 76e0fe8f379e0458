"""``fitml bento export``: the registry's champion models as a folder to bake into an image.

Writes a BentoML model store of its own (``<out>/fitml-<kind>-<alias>/v<version>/``, the very
layout the service reads) holding both champion models and, when the registry has them, both
challenger models, each with its registry metadata (registered name, alias, version, run,
registration time, tags); plus ``<out>/fitml-models.json``, a manifest of the same. A champion
image is then built FROM the prediction image with this folder copied in and
``FITML_MODEL_STORE`` pointing to it (``deploy/champion.Dockerfile``, ``make champion-image``):
it serves exactly these versions, without the MLflow registry.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Final

from ml_pipeline.errors import FitmlError
from ml_pipeline.settings import Settings

MANIFEST: Final = "fitml-models.json"
ALIASES: Final = ("champion", "challenger")


class ExportError(FitmlError):
    """The models cannot be exported (no champion, or the output folder is in use)."""


def _describe(tag: str) -> dict[str, Any]:
    import bentoml

    model = bentoml.models.get(tag)
    meta = dict(model.info.metadata)
    return {
        "bento_tag": tag,
        "registered_name": meta.get("registered_name"),
        "alias": meta.get("alias"),
        "version": meta.get("version"),
        "run_id": meta.get("run_id"),
        "registered_at": meta.get("registered_at"),
        "tags": meta.get("tags") or {},
    }


def export_models(settings: Settings, out: Path) -> dict[str, Any]:
    """Export the champion (and any challenger) models of ``settings``' registry to ``out``.

    Returns:
        The manifest written to ``out/fitml-models.json``.

    Raises:
        ExportError: ``out`` holds files already, or no version holds the champion alias.
    """
    from serving.bento_models import KINDS, import_alias, reset_model_store, use_model_store

    # BentoML's own home (not where the models go): the work directory's, as `fitml serve` uses.
    os.environ.setdefault("BENTOML_HOME", str(settings.workdir / "bentoml"))
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(
            f"--out {out} exists and is not an empty folder: remove it or choose another one"
        )
    out.mkdir(parents=True, exist_ok=True)
    models: dict[str, dict[str, Any]] = {}
    use_model_store(out)
    try:
        for alias in ALIASES:
            for kind in KINDS:
                tag = import_alias(settings, kind, alias)
                if tag is None and alias == "champion":
                    raise ExportError(
                        f"no version of the {kind} model holds the alias 'champion' in the "
                        f"MLflow registry at {settings.mlflow.tracking_uri.split('@')[-1]}; "
                        "train and promote one first (`fitml pipeline run`)"
                    )
                if tag is not None:
                    models[f"{kind}_{alias}"] = _describe(tag)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no half export left to build an image from
        raise
    finally:
        reset_model_store()
    manifest = {
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "profile": settings.profile,
        "models": models,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    for path in [out, *out.rglob("*")]:  # readable by any image user (the files stay root's)
        path.chmod(0o755 if path.is_dir() else 0o644)
    return manifest
