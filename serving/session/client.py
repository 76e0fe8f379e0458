"""The client of the prediction service: timeouts, bounded retries with backoff, a breaker.

:meth:`PredictionClient.recommend` either returns the service's answer, raises
:class:`ProductNotFound` (the service said 404), :class:`PredictionRejected` (another 4xx)
or raises :class:`PredictionUnavailable` with a short reason; the caller then answers from
the size-chart rule.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any, Literal

import aiohttp
import httpx

from serving import tracing
from serving.schemas import RecommendResponse
from serving.session.config import ClientSettings
from serving.session.observability import REQUEST_ID, REQUEST_ID_HEADER


class PredictionUnavailable(RuntimeError):
    """The prediction service did not give a usable answer (down, slow, failing, breaker open).

    Attributes:
        reason: a short category for metrics: ``timeout``, ``connection``, ``server_error``,
            ``bad_response`` or ``circuit_open``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class ProductNotFound(LookupError):
    """The prediction service does not know the product (HTTP 404)."""


class PredictionRejected(ValueError):
    """The prediction service refused the request (a 4xx other than 404)."""


State = Literal["closed", "open", "half_open"]

MAX_CONNECTIONS = 64
"""Connections to the prediction service open at once (a session waits for one beyond)."""


class CircuitBreaker:
    """A circuit breaker: stop calling a failing service for a while.

    Opens after ``failures`` failed calls in a row; lets one trial call through after
    ``reset_s``; closes again when a call succeeds.
    """

    def __init__(self, failures: int, reset_s: float, clock: Any = time.monotonic) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self._clock = clock
        self._count = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> State:
        """``closed``, ``open`` or ``half_open`` (open, but the reset time has passed)."""
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.reset_s:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """Whether a call may go out now (in half-open state: only one trial at a time)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial:
            self._trial = True
            return True
        return False

    def success(self) -> None:
        """Record a successful call: close."""
        self._count = 0
        self._opened_at = None
        self._trial = False

    def failure(self) -> None:
        """Record a failed call: open after enough in a row, or re-open after a failed trial."""
        self._count += 1
        if self._trial or self._count >= self.failures:
            self._opened_at = self._clock()
        self._trial = False


_HOP_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding"})


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx's requests sent over aiohttp's connection pool (one keep-alive pool per client).

    httpcore's pool, httpx's default, scans every connection and every waiting request and
    polls each idle socket whenever a request starts or ends: at 64 concurrent sessions that
    took 40% of the session service's CPU. aiohttp keeps a host's idle connections in a queue.
    Failures are raised as httpx's exceptions, so callers see one client library.

    Args:
        max_connections: the most connections open at once (more requests wait for one).
        connect_timeout_s: the limit on opening a connection.
        read_timeout_s: the limit on waiting for the next bytes of an answer.
    """

    def __init__(
        self, max_connections: int, connect_timeout_s: float, read_timeout_s: float
    ) -> None:
        self.max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(
            sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                timeout=self._timeout,
                auto_decompress=False,  # httpx decodes the body per its Content-Encoding
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and read the whole answer."""
        headers = [(k, v) for k, v in request.headers.multi_items() if k not in _HOP_HEADERS]
        try:
            async with self._open().request(
                request.method, str(request.url), data=request.content, headers=headers
            ) as answer:
                content = await answer.read()
        except TimeoutError as exc:  # aiohttp's timeouts are TimeoutErrors too
            raise httpx.ReadTimeout(str(exc) or "timed out", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise httpx.RemoteProtocolError(
                str(exc) or type(exc).__name__, request=request
            ) from exc
        return httpx.Response(
            answer.status,
            headers=[(k, v) for k, v in answer.raw_headers if k.lower() != b"transfer-encoding"],
            content=content,
            request=request,
        )

    async def aclose(self) -> None:
        """Close the pool's connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None


class PredictionClient:
    """Calls ``POST /recommend`` of the prediction service.

    ``token`` returns the service token to send now (so a rotated one is picked up), if any.
    """

    def __init__(
        self,
        base_url: str,
        settings: ClientSettings | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        token: Callable[[], str | None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.settings = settings = settings or ClientSettings()
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s)
        self._transport = transport
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            s = self.settings
            self._http = httpx.AsyncClient(
                base_url=self.base_url,
                timeout=httpx.Timeout(s.read_timeout_s, connect=s.connect_timeout_s),
                transport=self._transport
                or AiohttpTransport(MAX_CONNECTIONS, s.connect_timeout_s, s.read_timeout_s),
            )
        return self._http

    async def close(self) -> None:
        """Close the connection pool."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def recommend(self, body: dict[str, Any]) -> RecommendResponse:
        """Ask for a recommendation, retrying transient failures within the deadline.

        Raises:
            PredictionUnavailable: down, slow, 5xx, unreadable answer, or the breaker is open.
            ProductNotFound: the service answered 404.
            PredictionRejected: the service answered another 4xx.
        """
        if not self.breaker.allow():
            raise PredictionUnavailable(
                "circuit_open", "prediction service failing: circuit open, not called"
            )
        s = self.settings
        deadline = time.monotonic() + s.deadline_s
        headers = {REQUEST_ID_HEADER: REQUEST_ID.get()}
        token = self._token() if self._token is not None else None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        tracing.inject(headers)  # W3C traceparent of the current span (nothing when off)
        error = PredictionUnavailable("connection", "prediction service not called")
        for attempt in range(s.retries + 1):
            try:
                async with asyncio.timeout(max(0.05, deadline - time.monotonic())):
                    response = await self._client().post("/recommend", json=body, headers=headers)
            except (httpx.TimeoutException, TimeoutError):
                error = PredictionUnavailable("timeout", "prediction service timed out")
            except httpx.TransportError as exc:
                error = PredictionUnavailable(
                    "connection", f"prediction service unreachable ({type(exc).__name__})"
                )
            else:
                if response.status_code == 404:
                    self.breaker.success()
                    raise ProductNotFound(_detail(response))
                if 400 <= response.status_code < 500:
                    self.breaker.success()
                    raise PredictionRejected(_detail(response))
                if response.status_code >= 500:
                    error = PredictionUnavailable(
                        "server_error", f"prediction service answered {response.status_code}"
                    )
                else:
                    try:
                        answer = RecommendResponse.model_validate_json(response.content)
                    except ValueError:
                        self.breaker.failure()
                        raise PredictionUnavailable(
                            "bad_response", "prediction service answer did not validate"
                        ) from None
                    self.breaker.success()
                    return answer
            pause = s.backoff_s * (2**attempt) * (0.5 + random.random())
            if attempt == s.retries or time.monotonic() + pause >= deadline:
                break
            await asyncio.sleep(pause)
        self.breaker.failure()
        raise error


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        for key in ("detail", "error", "message"):
            if key in body:
                return str(body[key])[:300]
    return str(body)[:300]
