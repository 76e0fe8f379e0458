"""Which version holds an alias in the MLflow registry, asked without MLflow's client.

The prediction service asks the registry at every start which versions hold ``champion``
(and ``challenger``). Through ``mlflow.MlflowClient`` that costs importing MLflow and building
its SQLAlchemy store: 3.5 to 8 s on this project's 2-core machines, for one lookup whose answer
is almost always "the version already in the BentoML store". :func:`alias_version` asks the
same question of the registry directly:

- an MLflow tracking server (``http(s)://``, as compose and Kubernetes run it): its REST
  endpoint ``GET /api/2.0/mlflow/registered-models/alias`` (``GetModelVersionByAlias``),
  with ``MLFLOW_TRACKING_TOKEN`` or ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` as the
  client would send them;
- a SQLite registry (``sqlite:///``, the ``local`` profile): a read-only query of MLflow's
  ``registered_model_aliases`` table (default workspace).

Anything else, or any answer it does not recognise, is :data:`UNKNOWN`: the caller then asks
through MLflow's client as before. ``tests/unit/test_registry_alias.py`` holds the SQLite
answer to the client's.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Final

UNKNOWN: Final = "?"
"""The lookup could not tell (other backend, unreachable, unexpected answer)."""
DEFAULT_WORKSPACE: Final = "default"


def alias_version(registry_uri: str, name: str, alias: str, timeout_s: float = 5.0) -> str | None:
    """The version of ``name`` that holds ``alias``; None if none does; :data:`UNKNOWN`."""
    if os.environ.get("MLFLOW_ENABLE_WORKSPACES") or os.environ.get("MLFLOW_WORKSPACE"):
        return UNKNOWN  # workspaces: the client knows which one; ask it
    scheme = registry_uri.split(":", 1)[0].lower()
    if scheme in ("http", "https"):
        return _rest(registry_uri, name, alias, timeout_s)
    if scheme == "sqlite":
        return _sqlite(registry_uri, name, alias)
    return UNKNOWN


def _rest(base: str, name: str, alias: str, timeout_s: float) -> str | None:
    query = urllib.parse.urlencode({"name": name, "alias": alias})
    request = urllib.request.Request(
        f"{base.rstrip('/')}/api/2.0/mlflow/registered-models/alias?{query}"
    )
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    elif user:
        secret = f"{user}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(secret).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = json.loads(response.read())
        return str(body["model_version"]["version"])
    except urllib.error.HTTPError as exc:
        try:
            code = json.loads(exc.read()).get("error_code")
        except (ValueError, AttributeError):
            code = None
        return None if exc.code == 404 and code == "RESOURCE_DOES_NOT_EXIST" else UNKNOWN
    except (OSError, ValueError, KeyError, TypeError):
        return UNKNOWN


def _sqlite(uri: str, name: str, alias: str) -> str | None:
    # sqlite:///relative/path or sqlite:////absolute/path (SQLAlchemy's form, as MLflow reads it)
    path = uri.split(":///", 1)[1] if ":///" in uri else ""
    if not path or path.startswith(":memory:") or not Path(path).is_file():
        return UNKNOWN
    try:
        db = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return UNKNOWN
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(registered_model_aliases)")}
        if not {"name", "alias", "version"} <= columns:
            return UNKNOWN
        sql = "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?"
        args: tuple[str, ...] = (name, alias)
        if "workspace" in columns:
            sql += " AND workspace = ?"
            args += (DEFAULT_WORKSPACE,)
        row = db.execute(sql, args).fetchone()
    except sqlite3.Error:
        return UNKNOWN
    finally:
        db.close()
    return None if row is None else str(row[0])
