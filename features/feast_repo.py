"""The work directory's Feast feature repository, for the Feast CLI.

``fitml features apply`` writes ``<workdir>/feast/feature_store.yaml`` and
``<workdir>/feast/fitml_features.py`` next to the registry (local profile) and the online
store, so that ``feast -c <workdir>/feast plan | apply | materialize-incremental | serve | ui``
see exactly what fitml registered: the same project, stores and definitions. The Python file
only builds :func:`features.definitions.build_definitions` for this work directory's sources
(parquet files, or the project's PostgreSQL tables) and binds every object at module level,
where the Feast CLI looks for them; the definitions themselves stay in
:mod:`features.definitions`.

The profile's YAML may say ``${NAME:-default}``, which the Feast CLI does not expand (it uses
``os.path.expandvars``). The written YAML keeps ``${NAME}`` for a variable set in the
environment when it was written (so a secret in a URL stays in the environment; set the same
variables before calling ``feast``), and the default otherwise; the work directory, the
repository and the project are written out.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

import yaml

from ml_pipeline.settings import Settings

REPO_MODULE: Final = "fitml_features.py"
CONFIG_FILE: Final = "feature_store.yaml"
LITERAL_VARIABLES: Final = ("FITML_WORKDIR", "FITML_REPO", "FITML_FEAST_PROJECT")
_ENV_REF: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

_MODULE_TEMPLATE: Final = '''"""The Feast CLI's view of this work directory's feature repository.

Written by `fitml features apply` ({profile} profile); the definitions live in
features/definitions.py (edit them there). Use: feast -c {feast_dir} plan
"""

from pathlib import Path

from features.definitions import build_definitions

_definitions = build_definitions({arguments})
globals().update({{obj.name: obj for obj in _definitions.objects()}})
'''


def _cli_yaml(settings: Settings, env: dict[str, str]) -> str:
    """The profile's feature_store.yaml with references the Feast CLI can expand."""
    literals = {
        "FITML_WORKDIR": str(settings.workdir),
        "FITML_REPO": str(Path(__file__).resolve().parents[1]),
        "FITML_FEAST_PROJECT": settings.feast.project,
    }

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in literals:
            return literals[name]
        if name in env:
            return f"${{{name}}}"
        return default if default is not None else match.group(0)

    text = _ENV_REF.sub(sub, settings.feast.config_file.read_text())
    data = yaml.safe_load(text)
    data["project"] = settings.feast.project
    header = (
        f"# Written by `fitml features apply` from {settings.feast.config_file.name} of the "
        f"{settings.profile} profile.\n# The Feast CLI reads it: feast -c {settings.feast_dir} "
        "plan (set the same FITML_* variables first, if any are referenced below).\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False)


def write_repo(
    settings: Settings, source_dir: Path | None, *, env: dict[str, str] | None = None
) -> Path:
    """Write the Feast CLI's repository files into ``<workdir>/feast``; returns the folder.

    Args:
        settings: the run's settings.
        source_dir: the folder of the views' parquet sources, or None when they are the
            project's PostgreSQL tables.
        env: the environment the profile was expanded from (default ``os.environ``).
    """
    folder = settings.feast_dir
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ if env is None else env)
    (folder / CONFIG_FILE).write_text(_cli_yaml(settings, env))
    if source_dir is None:
        arguments = f"table_prefix={settings.feast.project!r}"
    else:
        arguments = f"Path({str(source_dir.resolve())!r})"
    (folder / REPO_MODULE).write_text(
        _MODULE_TEMPLATE.format(profile=settings.profile, feast_dir=folder, arguments=arguments)
    )
    return folder
