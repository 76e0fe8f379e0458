"""Who may call the session API: API keys, or OAuth2 client-credentials JWT bearer tokens.

:class:`SessionAuth` runs in :class:`serving.limits.RequestGuard`, before the request body is
read: a request to ``/api/...`` or ``/metrics`` without valid credentials is answered 401 at
the cost of a header lookup. It leaves a :class:`Principal` in the request's state; each route
then requires one scope (:data:`SCOPES`) and rate-limits the principal
(:func:`serving.session.app.authorize`).

- ``X-API-Key``: compared as a SHA-256 hash (:class:`~serving.session.security.KeyRing`); a
  key has every scope.
- ``Authorization: Bearer <JWT>``: an access token from the configured OAuth2 issuer
  (client-credentials grant), verified by :class:`JwtVerifier`: signature by one of the
  issuer's keys (a JWKS file, re-read when it changes, or a JWKS URL), ``iss``, ``aud``,
  ``exp`` (required), ``nbf``; its scopes from ``scope`` (space-separated) or ``scp``.
- ``/metrics`` only: an API key as ``Authorization: Bearer <key>`` (a Prometheus scrape sends
  its credentials file as a bearer token, not custom headers).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import anyio

from ml_pipeline.errors import ConfigError
from serving.limits import Denial, Scope
from serving.session.security import KeyRing

log = logging.getLogger(__name__)

SCOPES: Final = ("start-session", "feedback", "read", "admin")
ALGORITHMS: Final = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")
API_KEY_HEADER: Final = b"x-api-key"
METRICS_PATH: Final = "/metrics"
"""The one path where an API key is also accepted as ``Authorization: Bearer <key>``."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: an id safe to log, how it was authenticated, its scopes."""

    subject: str
    kind: Literal["api_key", "jwt"]
    scopes: frozenset[str]


class InvalidToken(ValueError):
    """A bearer token that is not accepted (the message says why, never echoing it)."""


class JwtVerifier:
    """Verifies access tokens of one OAuth2 issuer for one audience.

    Args:
        issuer: the ``iss`` every token must carry.
        audience: the ``aud`` every token must carry (this API's identifier).
        jwks_file: the issuer's JSON Web Key Set as a file, re-read when it changes; a key
            removed from it is still accepted for ``overlap_s`` (rotation).
        jwks_url: or its JWKS URL (``https://<issuer>/.well-known/jwks.json``): fetched,
            cached for ``cache_s``, refetched at once for a key id it does not hold (a rotated
            key), at most every ``refetch_s`` (so tokens with made-up key ids cannot make this
            service hammer the issuer); a fetch that fails keeps the last keys.
        leeway_s: clock skew allowed on ``exp`` / ``nbf``.
        overlap_s: seconds a key removed from the set is still accepted.

    Raises:
        ConfigError: neither or both of ``jwks_file`` and ``jwks_url``; an unreadable file.
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        jwks_file: Path | str | None = None,
        jwks_url: str | None = None,
        leeway_s: float = 30.0,
        overlap_s: float = 3600.0,
        cache_s: float = 300.0,
        refetch_s: float = 10.0,
        fetch_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (jwks_file is None) == (jwks_url is None):
            raise ConfigError(
                "OAuth2: set exactly one of FITML_OAUTH_JWKS_FILE and FITML_OAUTH_JWKS_URL"
            )
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s
        self.overlap_s = overlap_s
        self._clock = clock
        self._file = Path(jwks_file) if jwks_file is not None else None
        self._stamp: tuple[int, int] | None = None
        self._checked = -1e18
        self._keys: dict[str, Any] = {}
        self._retired: dict[str, tuple[Any, float]] = {}
        self._url = jwks_url
        self.cache_s = cache_s
        self.refetch_s = refetch_s
        self.fetch_timeout_s = fetch_timeout_s
        self._fetched_at = -1e18  # last successful fetch of the URL
        self._tried_at = -1e18  # last attempt
        self._fetch_lock = threading.Lock()
        self.fetches = 0
        """Fetches of the JWKS URL so far (successful or not)."""
        if self._url is not None and not self._url.startswith(("https://", "http://")):
            raise ConfigError(
                f"FITML_OAUTH_JWKS_URL {self._url!r} is not an http(s) URL; give the issuer's "
                "JWKS endpoint, like https://issuer.example/.well-known/jwks.json"
            )
        if self._file is not None:
            try:
                self._reload(force=True)
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"FITML_OAUTH_JWKS_FILE {str(self._file)!r} is not a readable JSON Web Key "
                    f"Set ({exc})"
                ) from exc

    @property
    def remote(self) -> bool:
        """Whether keys come over the network (verify off the event loop)."""
        return self._url is not None

    def _install(self, jwks: Any, now: float) -> None:
        """Make ``jwks`` (a parsed JWKS document) the current keys; retire the removed ones."""
        import jwt

        try:
            keys = {k.key_id or "": k for k in jwt.PyJWKSet.from_dict(jwks).keys}
        except jwt.PyJWTError as exc:
            raise ValueError(f"not a usable JSON Web Key Set ({exc})") from None
        for kid, key in self._keys.items():
            if kid not in keys:
                self._retired[kid] = (key, now + self.overlap_s)
        for kid in keys:
            self._retired.pop(kid, None)
        self._keys = keys

    def _reload(self, force: bool = False) -> None:
        assert self._file is not None
        now = self._clock()
        if not force and now - self._checked < 1.0:
            return
        self._checked = now
        st = self._file.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        self._install(json.loads(self._file.read_text()), now)
        self._stamp = stamp

    def _fetch(self, kid: str) -> None:
        """Refetch the JWKS URL when the cache is stale, or for an unknown key id (throttled)."""
        import httpx

        assert self._url is not None
        with self._fetch_lock:
            now = self._clock()
            if now - self._tried_at < self.refetch_s:
                return  # fetched (or tried) a moment ago: whatever the token says
            known = kid in self._keys or kid in self._retired
            if known and now - self._fetched_at < self.cache_s:
                return
            self._tried_at = now
            self.fetches += 1
            try:
                response = httpx.get(self._url, timeout=self.fetch_timeout_s)
                response.raise_for_status()
                self._install(response.json(), now)
            except (httpx.HTTPError, ValueError) as exc:
                log.warning(
                    "JWKS URL could not be fetched; keeping its last keys",
                    extra={"error": type(exc).__name__, "keys": len(self._keys)},
                )
                return
            self._fetched_at = now

    def _key_for(self, token: str) -> Any:
        import jwt

        try:
            kid = jwt.get_unverified_header(token).get("kid") or ""
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token ({exc})") from None
        if self._url is not None:
            self._fetch(kid)
            if not self._keys and not self._retired:
                raise InvalidToken(
                    "the issuer's keys could not be fetched from its JWKS URL; try again later"
                )
        else:
            try:
                self._reload()
            except (OSError, ValueError) as exc:  # keep the last good keys
                log.warning(
                    "JWKS file unreadable; keeping its last keys", extra={"error": str(exc)}
                )
        now = self._clock()
        if kid in self._keys:
            return self._keys[kid].key
        retired = self._retired.get(kid)
        if retired is not None and retired[1] > now:
            return retired[0].key
        if not kid and len(self._keys) == 1:
            return next(iter(self._keys.values())).key
        raise InvalidToken(f"unknown signing key id {kid!r}; the issuer's keys do not hold it")

    def verify(self, token: str) -> Principal:
        """The principal of a valid token.

        Raises:
            InvalidToken: bad signature, wrong issuer or audience, expired, not yet valid,
                or missing claims.
        """
        import jwt

        key = self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        raw = claims.get("scope", claims.get("scp", ""))
        scopes = raw.split() if isinstance(raw, str) else [str(s) for s in raw]
        subject = str(claims.get("client_id") or claims.get("azp") or claims["sub"])[:64]
        return Principal(f"jwt:{subject}", "jwt", frozenset(scopes) & frozenset(SCOPES))


class SessionAuth:
    """The session API's credentials check (for :class:`serving.limits.RequestGuard`)."""

    def __init__(self, keys: KeyRing, jwt: JwtVerifier | None = None) -> None:
        self.keys = keys
        self.jwt = jwt

    async def __call__(self, scope: Scope) -> Denial | None:
        """Leave a :class:`Principal` in ``scope["state"]``, or say why not (401)."""
        key = bearer = None
        for name, value in scope["headers"]:
            if name == API_KEY_HEADER:
                key = value.decode("latin-1")
            elif name == b"authorization":
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    bearer = credentials.strip()
        principal: Principal | None = None
        scraper = (
            self.keys.identify(bearer)
            if bearer and not key and scope.get("path") == METRICS_PATH
            else None
        )
        if key:
            key_id = self.keys.identify(key)
            if key_id is None:
                return _unauthorized("unknown API key: send a valid key in the X-API-Key header")
            principal = Principal(key_id, "api_key", frozenset(SCOPES))
        elif scraper is not None:  # Prometheus sends its API key as a bearer token
            principal = Principal(scraper, "api_key", frozenset(SCOPES))
        elif bearer is not None and self.jwt is not None:
            try:
                if self.jwt.remote:
                    principal = await anyio.to_thread.run_sync(self.jwt.verify, bearer)
                else:
                    principal = self.jwt.verify(bearer)
            except InvalidToken as exc:
                return (
                    401,
                    f"invalid bearer token: {exc}",
                    {"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
        else:
            how = "an X-API-Key header" + (
                " or an OAuth2 bearer token (Authorization: Bearer ...)" if self.jwt else ""
            )
            return _unauthorized(f"missing credentials: send {how}")
        scope.setdefault("state", {})["principal"] = principal
        return None


def _unauthorized(message: str) -> Denial:
    return 401, message, {"WWW-Authenticate": "X-API-Key, Bearer"}
