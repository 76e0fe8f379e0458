"""One typed settings object for a fitml run, loaded once from a profile and passed in.

A profile (``local`` or ``prod``) is a YAML file under ``ml_pipeline/profiles/``. Its values may
name environment variables as ``${NAME}`` or ``${NAME:-default}``; ``${FITML_WORKDIR}`` is
always the run's work directory. Unknown keys are rejected, and a bad file fails at start with
a message naming the file and the key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROFILE_DIR = Path(__file__).with_name("profiles")
DEFAULT_WORKDIR = Path("var")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class SettingsError(ValueError):
    """A profile file that cannot be read or does not validate."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MlflowSettings(_Strict):
    """Where experiments and registered models live."""

    tracking_uri: str
    registry_uri: str | None = None
    experiment: str = "fitml"
    artifact_location: str
    fit_model_name: str = "fitml-fit-model"
    size_model_name: str = "fitml-size-model"


class OptunaSettings(_Strict):
    """How tuning runs: storage (None for in-memory), trials and time budget."""

    storage: str | None = None
    n_trials: int = Field(default=20, ge=1)
    timeout_s: float | None = Field(default=None, gt=0)

    @field_validator("storage", "timeout_s", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        """An empty value (``${FITML_OPTUNA_STORAGE:-}`` unset) means in memory / no ceiling."""
        return None if isinstance(value, str) and not value.strip() else value


class TrainingSettings(_Strict):
    """LightGBM resources.

    One thread by default: on a shared 2-core machine OpenMP's spinning threads made
    two-thread training 40x slower than one thread under load.
    """

    num_threads: int = Field(default=1, ge=1)
    max_rounds: int = Field(default=1000, ge=1)
    max_trees: int | None = Field(default=None, ge=1)
    """Serving budget: the most trees a tuned model may have (rounds x trees per round; the
    fit model grows 3 per round). Tuning then searches within it, so the predict cost of the
    next champion is bounded. None: only ``max_rounds`` bounds it."""


class FeastSettings(_Strict):
    """The Feast feature store: its config file, project and the aggregate job's history.

    ``config_file`` is a ``feature_store.yaml``; ``history`` says how the aggregate job gives
    training rows their feedback history.
    """

    config_file: Path
    project: str = "fitml"
    history: Literal["point_in_time", "oof"] = "point_in_time"
    """``point_in_time`` (the default): every row sees the feedback strictly before it.
    ``oof``: out of fold, for data without a time order (the paper's random split): the
    labelled events are cut into ``folds`` folds and each of their rows sees the feedback of
    the other folds, earlier and later; a row not in the event log (a held-out test row) and
    serving see all of it (:mod:`features.aggregates`). Not for a time-based evaluation: a
    row would see feedback from after it."""
    folds: int = Field(default=5, ge=2, le=50)
    """Folds of the ``oof`` history."""


class ServingSettings(_Strict):
    """The prediction service."""

    host: str = "127.0.0.1"
    port: int = Field(default=3000, ge=1, le=65535)
    challenger_share: float = Field(default=0.0, ge=0.0, le=1.0)


class Settings(_Strict):
    """Everything a fitml stage needs to know about where things are."""

    profile: Literal["local", "prod"]
    workdir: Path
    seed: int = 0
    mlflow: MlflowSettings
    optuna: OptunaSettings = OptunaSettings()
    training: TrainingSettings = TrainingSettings()
    feast: FeastSettings
    serving: ServingSettings = ServingSettings()

    @model_validator(mode="after")
    def _own_databases(self) -> Settings:
        """MLflow and Optuna each keep an ``alembic_version`` table: never one database."""
        shared = database_of(self.mlflow.tracking_uri)
        if shared is not None and shared == database_of(self.optuna.storage):
            raise ValueError(
                f"mlflow.tracking_uri and optuna.storage name the same database ({shared}); "
                "MLflow and Optuna each migrate their own tables (alembic_version): give each "
                "a database of its own (FITML_MLFLOW_TRACKING_URI, FITML_OPTUNA_STORAGE)"
            )
        return self

    @property
    def offline_dir(self) -> Path:
        """Ingested tables and feature sources (parquet)."""
        return self.workdir / "offline"

    @property
    def feast_dir(self) -> Path:
        """Feast's registry and online store (local profile) live here."""
        return self.workdir / "feast"

    @property
    def reports_dir(self) -> Path:
        """Evaluation and drift reports."""
        return self.workdir / "reports"

    @property
    def inference_log_dir(self) -> Path:
        """Logged inferences of the prediction service."""
        return self.workdir / "inference_log"


def database_of(url: str | None) -> str | None:
    """``host:port/database`` of a SQL database URL (any driver), else None.

    SQLite files and non-database URLs (``http://``, ``file:``) give None.
    """
    from urllib.parse import urlparse

    if not url or "://" not in url:
        return None
    parsed = urlparse(url)
    if parsed.scheme.split("+")[0] not in ("postgresql", "postgres", "mysql"):
        return None
    host = (parsed.hostname or "localhost").replace("localhost", "127.0.0.1")
    return f"{host}:{parsed.port or ''}{parsed.path}"


def expand_env(value: Any, env: dict[str, str]) -> Any:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in every string of ``value`` from ``env``.

    Raises:
        SettingsError: naming the variable when it is unset and has no default.
    """
    if isinstance(value, dict):
        return {k: expand_env(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise SettingsError(f"environment variable {name} is not set and has no default")

    return _ENV_REF.sub(sub, value)


def load_settings(
    profile: str = "local",
    workdir: Path | str = DEFAULT_WORKDIR,
    *,
    env: dict[str, str] | None = None,
    profile_file: Path | None = None,
) -> Settings:
    """Load and validate the settings of ``profile`` for the work directory ``workdir``.

    Args:
        profile: ``local`` (embedded, no servers) or ``prod`` (PostgreSQL, Redis).
        workdir: where everything the run writes lives; made absolute.
        env: the environment to expand ``${...}`` from (default: ``os.environ``).
        profile_file: read this YAML instead of ``ml_pipeline/profiles/<profile>.yaml``.

    Raises:
        SettingsError: the profile is unknown, or its file is unreadable or invalid; the
            message names the file and the offending key.
    """
    path = profile_file or PROFILE_DIR / f"{profile}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
        raise SettingsError(f"unknown profile {profile!r} (no {path}); use one of: {known}")
    workdir = Path(workdir).expanduser().resolve()
    variables = dict(os.environ if env is None else env)
    variables["FITML_WORKDIR"] = str(workdir)
    variables.setdefault("FITML_REPO", str(Path(__file__).resolve().parents[1]))
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        data = expand_env(raw, variables)
    except (yaml.YAMLError, SettingsError) as exc:
        raise SettingsError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a mapping at the top level")
    data.setdefault("profile", profile)
    data["workdir"] = workdir
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"{path}: {problems}") from exc
