"""``fitml bento build``: package the prediction service and its champion models as a Bento.

Runs ``bentoml build`` on the repository's ``bentofile.yaml`` with the work directory's
settings (``FITML_WORKDIR``, ``FITML_PROFILE``) and BentoML store (``<workdir>/bentoml``), so
the champion models are synced from the MLflow registry and packed. The build prints only
the Bento's tag: no progress bars, and nothing is installed into the environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Final

from ml_pipeline.errors import FitmlError
from ml_pipeline.settings import Settings

REPO_ROOT: Final = Path(__file__).resolve().parents[1]
TAG_PREFIX: Final = "__tag__:"


class BentoBuildError(FitmlError):
    """``bentoml build`` failed; the message carries the end of its output."""


def build_env(settings: Settings) -> dict[str, str]:
    """The environment ``bentoml build`` runs in for ``settings``."""
    return {
        **os.environ,
        "FITML_WORKDIR": str(settings.workdir),
        "FITML_PROFILE": settings.profile,
        "BENTOML_HOME": str(settings.workdir / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
        "BENTOML_QUIET": "True",
        # The classic Bento layout (env/python/requirements.txt, env/docker/Dockerfile): the
        # image layout of BentoML 1.4 installs `uv` into the environment to freeze packages.
        "BENTOML_ENABLE_FEATURES": "no_image",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        # No terminal animations in captured output (rich and pip honour these).
        "TERM": "dumb",
        "NO_COLOR": "1",
    }


def build(settings: Settings) -> str:
    """Build the Bento of ``settings``' work directory; returns its tag (``fitml:<version>``).

    Raises:
        BentoBuildError: ``bentoml build`` failed (no champion registered, for instance).
    """
    argv = [sys.executable, "-m", "bentoml", "build", str(REPO_ROOT), "--output", "tag"]
    done = subprocess.run(
        argv, cwd=REPO_ROOT, env=build_env(settings), capture_output=True, text=True, check=False
    )
    tags = [line for line in done.stdout.splitlines() if line.startswith(TAG_PREFIX)]
    if done.returncode != 0 or not tags:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise BentoBuildError(
            f"bentoml build failed (exit {done.returncode}) for work directory "
            f"{settings.workdir}; train and promote a champion first (`make demo`):\n{tail}"
        )
    return tags[-1][len(TAG_PREFIX) :]
