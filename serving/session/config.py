"""Settings of the session service: one typed object, built once at start and passed in.

Values come from the fitml profile (work directory, feature store, prediction port) and the
environment (secrets and deployment knobs):

- ``FITML_API_KEYS``: comma-separated API keys, and/or ``FITML_API_KEYS_FILE``: a file with
  one key per line (``sha256:<hex>`` lines are already hashed; ``#`` starts a comment).
  Only the SHA-256 of each key is kept in memory.
- ``FITML_SESSION_DB``: the event store, a ``postgresql://`` DSN (default for the ``prod``
  profile: the local PostgreSQL) or ``sqlite`` (default for ``local``: under the work dir).
- ``FITML_SESSION_TABLES``: prefix of the event store's tables (default ``fitml_tryon``).
- ``FITML_SESSION_REDIS``: Redis URL for the shared rate limiter (``prod`` default:
  ``redis://127.0.0.1:6379/0``; ``local``: none, an in-process limiter).
- ``FITML_RATE_LIMIT``: requests per second per API key (default 50), and
  ``FITML_RATE_BURST`` (default 100).
- ``FITML_CORS_ORIGINS``: comma-separated allowed origins (default: none).
- ``FITML_OAUTH_ISSUER``, ``FITML_OAUTH_AUDIENCE`` and ``FITML_OAUTH_JWKS_FILE`` (or
  ``FITML_OAUTH_JWKS_URL``): accept OAuth2 client-credentials JWT bearer tokens of that issuer
  beside API keys (scopes ``start-session``, ``feedback``, ``read``, ``admin``).
- ``FITML_SERVICE_TOKEN`` / ``FITML_SERVICE_TOKEN_FILE``: the bearer token sent to the
  prediction service (the file's last line; re-read when it changes).
- ``FITML_SECRET_OVERLAP_S``: how long a key removed from a secrets file is still accepted
  (default 3600).
- ``FITML_MAX_BODY_BYTES`` (default 65536), ``FITML_MAX_HEADER_BYTES`` (16384),
  ``FITML_BODY_TIMEOUT_S`` and ``FITML_HEADER_TIMEOUT_S`` (10): request limits.

Files named by ``*_FILE`` variables are re-read when they change (see :mod:`serving.secrets`).
- ``FITML_SESSION_DOCS``: ``0`` turns off the browsable API docs (``/docs``, ``/redoc``,
  ``/openapi.json``; on by default).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ml_pipeline.errors import ConfigError
from ml_pipeline.settings import Settings

HASH_PREFIX = "sha256:"


class ClientSettings(BaseModel):
    """How the session service calls the prediction service."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect_timeout_s: float = Field(default=0.5, gt=0)
    read_timeout_s: float = Field(default=1.5, gt=0)
    retries: int = Field(default=2, ge=0, le=5)
    backoff_s: float = Field(default=0.05, ge=0)
    deadline_s: float = Field(default=3.0, gt=0)
    breaker_failures: int = Field(default=3, ge=1)
    breaker_reset_s: float = Field(default=5.0, gt=0)


class SessionConfig(BaseModel):
    """Everything the session service needs to know (secrets only as hashes)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    settings: Settings
    prediction_url: str
    api_key_hashes: tuple[str, ...] = ()
    """Keys given inline (``FITML_API_KEYS``), hashed; the keys file is ``api_keys_file``."""
    api_keys_file: str | None = None
    oauth_issuer: str | None = None
    oauth_audience: str | None = None
    oauth_jwks_file: str | None = None
    oauth_jwks_url: str | None = None
    service_token: str | None = None
    service_token_file: str | None = None
    secret_overlap_s: float = Field(default=3600.0, ge=0)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    body_timeout_s: float = Field(default=10.0, gt=0)
    header_timeout_s: float = Field(default=10.0, gt=0)
    event_store: str = "sqlite"
    table_prefix: str = Field(default="fitml_tryon", pattern=r"^[a-z][a-z0-9_]{0,40}$")
    redis_url: str | None = None
    rate_per_s: float = Field(default=50.0, gt=0)
    rate_burst: int = Field(default=100, ge=1)
    cors_origins: tuple[str, ...] = ()
    client: ClientSettings = ClientSettings()
    delivery_interval_s: float = Field(default=1.0, gt=0)
    docs: bool = True

    @property
    def state_dir(self) -> Path:
        """Where the local event store and the delivery outbox live."""
        return self.settings.workdir / "session"


def hash_key(key: str) -> str:
    """The SHA-256 of an API key, as stored and compared."""
    return hashlib.sha256(key.encode()).hexdigest()


def load_key_hashes(env: Mapping[str, str]) -> tuple[str, ...]:
    """Read the API keys from ``FITML_API_KEYS`` and ``FITML_API_KEYS_FILE``, hashed.

    Raises:
        ConfigError: no key is given, or the keys file cannot be read.
    """
    hashes: list[str] = []
    for key in env.get("FITML_API_KEYS", "").split(","):
        if key.strip():
            hashes.append(hash_key(key.strip()))
    path = env.get("FITML_API_KEYS_FILE")
    if path:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(
                f"FITML_API_KEYS_FILE {path!r} cannot be read ({exc}); point it to a file "
                "with one API key (or sha256:<hex>) per line"
            ) from exc
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            hashes.append(
                line[len(HASH_PREFIX) :] if line.startswith(HASH_PREFIX) else hash_key(line)
            )
    if not hashes:
        raise ConfigError(
            "no API keys: set FITML_API_KEYS (comma-separated) or FITML_API_KEYS_FILE "
            "(one key per line) before starting the session service"
        )
    return tuple(dict.fromkeys(hashes))


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} {raw!r} is not a number; set it like {default}") from None


def event_store_spec(settings: Settings, env: Mapping[str, str] | None = None) -> str:
    """The event store to use: ``sqlite`` or a PostgreSQL DSN (``FITML_SESSION_DB``).

    Raises:
        ConfigError: ``FITML_SESSION_DB`` is neither.
    """
    env = os.environ if env is None else env
    default = (
        "postgresql://postgres@127.0.0.1:5432/test" if settings.profile == "prod" else "sqlite"
    )
    store = env.get("FITML_SESSION_DB") or default
    if store != "sqlite" and not store.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"FITML_SESSION_DB {store!r} is neither 'sqlite' nor a postgresql:// DSN; "
            "unset it for the profile's default"
        )
    return store


def table_prefix(env: Mapping[str, str] | None = None) -> str:
    """The prefix of the event store's tables (``FITML_SESSION_TABLES``, default fitml_tryon)."""
    env = os.environ if env is None else env
    return env.get("FITML_SESSION_TABLES") or "fitml_tryon"


def load_session_config(
    settings: Settings,
    prediction_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> SessionConfig:
    """Build the session service's settings from the profile and the environment.

    Args:
        settings: the fitml settings (work directory, profile, feature store).
        prediction_url: base URL of the prediction service (default: the profile's port on
            127.0.0.1).
        env: the environment (default ``os.environ``).

    Raises:
        ConfigError: a missing key or a malformed value, named.
    """
    env = os.environ if env is None else env
    prod = settings.profile == "prod"
    store = event_store_spec(settings, env)
    issuer = env.get("FITML_OAUTH_ISSUER") or None
    audience = env.get("FITML_OAUTH_AUDIENCE") or None
    jwks_file = env.get("FITML_OAUTH_JWKS_FILE") or None
    jwks_url = env.get("FITML_OAUTH_JWKS_URL") or None
    if issuer is None and (audience or jwks_file or jwks_url):
        raise ConfigError(
            "FITML_OAUTH_AUDIENCE / FITML_OAUTH_JWKS_* are set without FITML_OAUTH_ISSUER; set "
            "the issuer too, or unset them"
        )
    if issuer is not None and (not audience or (jwks_file is None) == (jwks_url is None)):
        raise ConfigError(
            "FITML_OAUTH_ISSUER needs FITML_OAUTH_AUDIENCE and exactly one of "
            "FITML_OAUTH_JWKS_FILE or FITML_OAUTH_JWKS_URL"
        )
    if issuer is None:
        load_key_hashes(env)  # at least one API key, the file readable: else a ConfigError
    inline = tuple(
        dict.fromkeys(
            hash_key(k.strip()) for k in env.get("FITML_API_KEYS", "").split(",") if k.strip()
        )
    )
    redis_url = env.get("FITML_SESSION_REDIS") or ("redis://127.0.0.1:6379/0" if prod else None)
    origins = tuple(o.strip() for o in env.get("FITML_CORS_ORIGINS", "").split(",") if o.strip())
    return SessionConfig(
        settings=settings,
        prediction_url=(
            prediction_url or f"http://{settings.serving.host}:{settings.serving.port}"
        ).rstrip("/"),
        api_key_hashes=inline,
        api_keys_file=env.get("FITML_API_KEYS_FILE") or None,
        oauth_issuer=issuer,
        oauth_audience=audience,
        oauth_jwks_file=jwks_file,
        oauth_jwks_url=jwks_url,
        service_token=env.get("FITML_SERVICE_TOKEN") or None,
        service_token_file=env.get("FITML_SERVICE_TOKEN_FILE") or None,
        secret_overlap_s=_number(env, "FITML_SECRET_OVERLAP_S", 3600.0),
        max_body_bytes=int(_number(env, "FITML_MAX_BODY_BYTES", 64 * 1024)),
        max_header_bytes=int(_number(env, "FITML_MAX_HEADER_BYTES", 16 * 1024)),
        body_timeout_s=_number(env, "FITML_BODY_TIMEOUT_S", 10.0),
        header_timeout_s=_number(env, "FITML_HEADER_TIMEOUT_S", 10.0),
        event_store=store,
        table_prefix=table_prefix(env),
        redis_url=redis_url,
        rate_per_s=_number(env, "FITML_RATE_LIMIT", 50.0),
        rate_burst=int(_number(env, "FITML_RATE_BURST", 100)),
        cors_origins=origins,
        docs=env.get("FITML_SESSION_DOCS", "1").strip().lower() not in ("0", "false", "no", "off"),
    )
