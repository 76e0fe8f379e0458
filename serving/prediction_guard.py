"""The prediction service's front door: request limits, the service token, client-error logs.

- :class:`PredictionGuard` (an ASGI middleware BentoML instantiates in each worker):
  :class:`serving.limits.RequestGuard` with the service token of ``FITML_SERVICE_TOKEN`` /
  ``FITML_SERVICE_TOKEN_FILE`` checked before the body is read (every route but ``/livez``,
  ``/readyz`` and ``/metrics``), a 1 MiB body cap (``FITML_MAX_BODY_BYTES``), header cap and
  body timeout.
- :func:`install_request_deadline`: uvicorn, which BentoML runs, drops clients that do not
  finish a request head within ``FITML_HEADER_TIMEOUT_S`` (default 10 s).
- :class:`ClientErrorLog`: BentoML logs every refused request at ERROR with the pydantic
  error, whose text holds the input values (raw ids, measurements); this filter turns such a
  record into one INFO line naming the fields and the error kinds, never the values.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Final

from ml_pipeline.errors import ConfigError
from serving.limits import Limits, Receive, RequestGuard, Scope, Send, request_deadline_protocol
from serving.service_auth import ServiceTokens

BENTOML_ERROR_LOGGER: Final = "bentoml._internal.server.http_app"
OPEN_PATHS: Final = ("/livez", "/readyz", "/metrics")
DEFAULT_MAX_REQUESTS_PER_CONNECTION: Final = 0


def limits_from_env(env: Mapping[str, str] | None = None) -> Limits:
    """The prediction service's request limits (``FITML_MAX_BODY_BYTES`` etc.).

    Raises:
        ConfigError: a value that is not a number.
    """
    env = os.environ if env is None else env

    def number(name: str, default: float) -> float:
        raw = env.get(name) or ""
        try:
            return float(raw) if raw else default
        except ValueError:
            raise ConfigError(f"{name} {raw!r} is not a number; set it like {default:g}") from None

    return Limits(
        max_body_bytes=int(number("FITML_MAX_BODY_BYTES", 1024 * 1024)),
        max_header_bytes=int(number("FITML_MAX_HEADER_BYTES", 16 * 1024)),
        body_timeout_s=number("FITML_BODY_TIMEOUT_S", 10.0),
        header_timeout_s=number("FITML_HEADER_TIMEOUT_S", 10.0),
    )


MAX_REQUESTS_ENV: Final = "FITML_MAX_REQUESTS_PER_CONNECTION"


def max_requests_per_connection(env: Mapping[str, str] | None = None) -> int:
    """Requests a keep-alive connection serves before it is closed (0: no limit).

    ``FITML_MAX_REQUESTS_PER_CONNECTION``: the workers share one listening socket and a
    keep-alive connection stays with the worker that accepted it, so a burst of connections
    can all land on one worker; closing each connection after this many requests makes its
    client connect again, to whichever worker is free to accept
    (``tests/benchmarks/bench_worker_balance.py``).

    Raises:
        ConfigError: a value that is not a whole number >= 0.
    """
    env = os.environ if env is None else env
    raw = env.get(MAX_REQUESTS_ENV) or ""
    try:
        value = int(raw) if raw else DEFAULT_MAX_REQUESTS_PER_CONNECTION
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"{MAX_REQUESTS_ENV} {raw!r} is not a whole number >= 0; set it like 100")
    return value


class PredictionGuard:
    """ASGI middleware: limits and the service token, configured from the environment."""

    def __init__(self, app: Any) -> None:
        tokens = ServiceTokens.from_env()
        self.inner = RequestGuard(
            app,
            limits_from_env(),
            tokens if tokens.configured else None,
            open_paths=OPEN_PATHS,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the request, then hand it to the service."""
        await self.inner(scope, receive, send)


def install_request_deadline(env: Mapping[str, str] | None = None) -> None:
    """Make uvicorn's ``auto`` HTTP protocol drop clients slow to send a request head.

    BentoML starts uvicorn with the default protocol and no way to pass another; uvicorn
    resolves ``auto`` when the server loads, after the service module is imported, so the
    service module calls this once.
    """
    import uvicorn.protocols.http.auto as auto

    if getattr(auto.AutoHTTPProtocol, "_fitml_deadline", False):
        return
    protocol = request_deadline_protocol(
        limits_from_env(env).header_timeout_s,
        max_requests_per_connection=max_requests_per_connection(env),
    )
    protocol._fitml_deadline = True
    auto.AutoHTTPProtocol = protocol


class ClientErrorLog(logging.Filter):
    """Rewrites BentoML's ERROR record of a refused request: fields and error kinds, at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record, without input values, when it is about a client's bad input."""
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        errors = _validation_errors(exc)
        if errors is None:
            return True
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args = "request refused: invalid input", ()
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.fields = [_field_of(e.get("loc", ())) for e in errors]
        record.errors = [str(e.get("type")) for e in errors]
        return True


def _field_of(loc: Any) -> str:
    """An error's location fit for a log: names a client chose (extra keys) become ``?``."""
    from serving.schemas import FitQuery, Measurements

    known = {"body", "product_id", "user_id", "measurements", "fit_preference", "queries"}
    known |= set(FitQuery.model_fields) | set(Measurements.model_fields)
    return ".".join(str(p) if isinstance(p, int) or p in known else "?" for p in loc)


def _validation_errors(exc: BaseException) -> list[dict[str, Any]] | None:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return exc.errors(include_input=False, include_context=False, include_url=False)  # type: ignore[return-value]
    from bentoml.exceptions import BentoMLException

    if isinstance(exc, BentoMLException) and 400 <= int(exc.error_code) < 500:
        return [{"loc": ("body",), "type": type(exc).__name__}]
    return None


def install_client_error_log() -> None:
    """Add :class:`ClientErrorLog` to BentoML's request-error logger (once)."""
    logger = logging.getLogger(BENTOML_ERROR_LOGGER)
    if not any(isinstance(f, ClientErrorLog) for f in logger.filters):
        logger.addFilter(ClientErrorLog())
