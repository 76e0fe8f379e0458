"""Service-to-service authentication: a shared bearer token from the session service.

Both services read the same variables:

- ``FITML_SERVICE_TOKEN``: tokens, comma-separated (the last one is the one sent), or
- ``FITML_SERVICE_TOKEN_FILE``: one token per line, re-read when it changes (the last line is
  sent; a line removed from it is still accepted for ``FITML_SECRET_OVERLAP_S``).

The prediction service then answers every route but ``/livez`` and ``/readyz`` only for a
request with ``Authorization: Bearer <token>``; the session service sends it. Without a token
the prediction service serves loopback only: :func:`check_bind` refuses any other address.
Rotation: append the new token on the prediction side's file (both are accepted), give the
session side the new one, then remove the old line.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Mapping

from ml_pipeline.errors import ConfigError
from serving.limits import Denial, Scope
from serving.secrets import SecretFile, secret_source

MIN_TOKEN_CHARS = 24


class ServiceTokens:
    """The tokens accepted from (and sent to) the other service."""

    def __init__(self, inline: tuple[str, ...] = (), source: SecretFile | None = None) -> None:
        self._inline = inline
        self._source = source
        for token in self._all():
            if len(token) < MIN_TOKEN_CHARS:
                raise ConfigError(
                    f"a service token is {len(token)} characters; use at least "
                    f"{MIN_TOKEN_CHARS} random ones (e.g. `openssl rand -hex 32`)"
                )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceTokens:
        """The tokens of ``FITML_SERVICE_TOKEN`` / ``FITML_SERVICE_TOKEN_FILE``.

        Raises:
            ConfigError: an unreadable file or a token too short.
        """
        env = os.environ if env is None else env
        inline, source = secret_source(env, "FITML_SERVICE_TOKEN", what="service token")
        return cls(inline, source)

    def _all(self) -> tuple[str, ...]:
        return self._inline + (self._source.accepted() if self._source is not None else ())

    @property
    def configured(self) -> bool:
        """Whether any token is set (then the prediction service requires one)."""
        return bool(self._inline) or self._source is not None

    def current(self) -> str | None:
        """The token to send: the file's last line, else the last inline one."""
        if self._source is not None:
            lines = self._source.current()
            if lines:
                return lines[-1]
        return self._inline[-1] if self._inline else None

    def accepts(self, token: str) -> bool:
        """Whether ``token`` is one of the accepted tokens (constant time per token)."""
        digest = hashlib.sha256(token.encode()).digest()
        found = False
        for known in self._all():
            found |= hmac.compare_digest(digest, hashlib.sha256(known.encode()).digest())
        return found

    async def __call__(self, scope: Scope) -> Denial | None:
        """The check :class:`serving.limits.RequestGuard` runs: 401 without a valid token."""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and self.accepts(token.strip()):
                    return None
                break
        return (
            401,
            "missing or invalid service token: send Authorization: Bearer <FITML_SERVICE_TOKEN>",
            {"WWW-Authenticate": 'Bearer realm="fitml-prediction"'},
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds to this machine only (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, tokens: ServiceTokens) -> None:
    """Refuse to serve the prediction service beyond loopback without a service token.

    Raises:
        ConfigError: ``host`` is not a loopback address and no token is configured.
    """
    if not is_loopback(host) and not tokens.configured:
        raise ConfigError(
            f"refusing to serve the prediction service on {host!r} without authentication: set "
            "FITML_SERVICE_TOKEN_FILE (or FITML_SERVICE_TOKEN) here and in the session service, "
            "or bind 127.0.0.1"
        )
