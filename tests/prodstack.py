"""A private prod stack on the machine's PostgreSQL and Redis, for the prod e2e tests.

Use it as ``with private_prod_stack(postgres_dsn, redis_url, workdir) as stack: ...``.

Each use gets databases of its own for MLflow and Optuna (both migrate their tables with
alembic), its own Feast project (registry rows, offline tables ``<project>_<view>``, Redis
keys) and its own session tables, and removes all of them afterwards.
"""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg

from serving.session.testing import prod_env


@dataclass(frozen=True)
class ProdStack:
    """The environment of one private prod stack and what it created."""

    name: str
    env: dict[str, str]
    app_dsn: str
    """The shared application database (Feast registry and offline tables, session tables)."""
    databases: tuple[str, ...]
    """Databases created for this stack: MLflow's and Optuna's."""
    secret_files: dict[str, Path]
    """The deployment's secrets as files (what a container mounts): the variable naming each
    (``FITML_PSEUDONYM_KEY_FILE``, ``FITML_SERVICE_TOKEN_FILE``, ``FITML_API_KEYS_FILE``) to
    its path on this host; ``env`` points to them."""

    @property
    def project(self) -> str:
        """The Feast project."""
        return self.env["FITML_FEAST_PROJECT"]


def _with_database(dsn: str, database: str, scheme: str = "postgresql+psycopg") -> str:
    return urlunparse(urlparse(dsn)._replace(scheme=scheme, path=f"/{database}"))


def create_databases(dsn: str, names: tuple[str, ...]) -> None:
    """Create the databases ``names`` on the server of ``dsn``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')


def drop_databases(dsn: str, names: tuple[str, ...]) -> None:
    """Drop the databases ``names`` (closing their connections first)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def remove_stack(stack: ProdStack, workdir: Path) -> None:
    """Delete the stack's Feast project, session tables and databases."""
    from features import store as fs
    from ml_pipeline.settings import load_settings
    from serving.session.store import PostgresEventStore

    with contextlib.suppress(Exception):  # a run that failed early may have registered nothing
        fs.delete_project(load_settings("prod", workdir, env=stack.env))
    events = PostgresEventStore(stack.app_dsn, stack.env["FITML_SESSION_TABLES"])
    with contextlib.suppress(Exception):
        events.drop()
    events.close()
    drop_databases(stack.app_dsn, stack.databases)


def write_secrets(directory: Path) -> dict[str, Path]:
    """Random secrets of a prod deployment as files under ``directory`` (what ``make secrets``
    writes): a pseudonym key, a service token and one API key; variable name to path."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    values = {
        "FITML_PSEUDONYM_KEY_FILE": ("pseudonym_key", f"k1:{secrets.token_hex(32)}"),
        "FITML_SERVICE_TOKEN_FILE": ("service_token", secrets.token_hex(24)),
        "FITML_API_KEYS_FILE": ("api_keys", secrets.token_hex(24)),
    }
    files = {}
    for variable, (name, value) in values.items():
        path = directory / name
        path.write_text(f"{value}\n")
        path.chmod(0o644)  # the images run as the unprivileged user fitml (uid 10001)
        files[variable] = path
    return files


@contextlib.contextmanager
def private_prod_stack(postgres_dsn: str, redis_url: str, workdir: Path) -> Iterator[ProdStack]:
    """A private prod stack whose runs use the work directory ``workdir``; removed on exit."""
    name = f"fitml_e2e_{uuid.uuid4().hex[:10]}"
    databases = (f"{name}_mlflow", f"{name}_optuna")
    create_databases(postgres_dsn, databases)
    files = write_secrets(workdir.parent / f"{name}-secrets")
    env = {
        **prod_env(postgres_dsn, redis_url),
        "FITML_MLFLOW_TRACKING_URI": _with_database(postgres_dsn, databases[0]),
        "FITML_OPTUNA_STORAGE": _with_database(postgres_dsn, databases[1]),
        "FITML_FEAST_PROJECT": name,
        "FITML_SESSION_DB": postgres_dsn,
        "FITML_SESSION_TABLES": f"{name}_tryon",
        "FITML_SESSION_REDIS": redis_url,
        **{variable: str(path) for variable, path in files.items()},
    }
    stack = ProdStack(name, env, postgres_dsn, databases, files)
    try:
        yield stack
    finally:
        remove_stack(stack, workdir)
