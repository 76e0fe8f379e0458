"""Request limits for both services: a cheap pure-ASGI guard in front of the app.

:class:`RequestGuard`, per HTTP request, before the app sees it:

1. headers: more than ``max_header_bytes`` in all -> 431; several ``Content-Type`` or
   ``Content-Length`` headers -> 400 (a framework and a check could read different ones);
2. ``authenticate`` (optional): the caller's credentials, from the headers only -> its own
   answer (401 / 403) *before a byte of the body is read*;
3. body: a declared ``Content-Length`` over ``max_body_bytes`` -> 413 without reading it;
   otherwise the body is read (at most ``max_body_bytes``, else 413) within
   ``body_timeout_s`` (else 408, and the connection is closed) and replayed to the app.

Slow clients that never finish their headers are the server's to drop:
:func:`request_deadline_protocol` gives uvicorn (which both services run on) a deadline for
each request head, and :func:`uvicorn_limits` bounds idle keep-alive and header size.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Denial = tuple[int, str, dict[str, str]]
"""An answer instead of the app's: status, message, extra headers."""
Authenticate = Callable[[Scope], Awaitable[Denial | None]]
"""Checks a request's credentials from its headers; a :data:`Denial` refuses it."""

NO_BODY: Final = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


@dataclass(frozen=True)
class Limits:
    """How much and how slowly a client may send."""

    max_body_bytes: int = 64 * 1024
    max_header_bytes: int = 16 * 1024
    body_timeout_s: float = 10.0
    header_timeout_s: float = 10.0
    """For the server: a client must finish its request head within this (see uvicorn)."""


async def deny(
    send: Send,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    field: str | None = None,
    close: bool = False,
) -> None:
    """Answer with a JSON error body (``detail``, and ``error`` as BentoML's errors have)."""
    body: dict[str, Any] = {"detail": message, "error": message}
    if field is not None:
        body["detail"] = [{"loc": ["header", field], "msg": message, "type": "value_error"}]
    payload = json.dumps(body).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if close:
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class RequestGuard:
    """ASGI middleware: header and body limits, and authentication before the body is read.

    Args:
        app: the wrapped app.
        limits: the caps and timeouts.
        authenticate: optional credentials check (from the headers) for ``protected`` paths.
        protected: path prefixes ``authenticate`` applies to (default: every path but
            ``open_paths``).
        open_paths: paths never authenticated (probes).
    """

    def __init__(
        self,
        app: ASGIApp,
        limits: Limits | None = None,
        authenticate: Authenticate | None = None,
        protected: tuple[str, ...] = ("/",),
        open_paths: tuple[str, ...] = ("/livez", "/readyz"),
    ) -> None:
        self.app = app
        self.limits = limits or Limits()
        self.authenticate = authenticate
        self.protected = protected
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the request; pass it on with its body already read and bounded."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = self.limits
        size = 0
        content_types = 0
        lengths: list[bytes] = []
        for name, value in scope["headers"]:
            size += len(name) + len(value) + 4
            if name == b"content-type":
                content_types += 1
            elif name == b"content-length":
                lengths.append(value)
        if size > limits.max_header_bytes:
            await deny(
                send,
                431,
                f"request headers of {size} bytes; send at most {limits.max_header_bytes}",
                close=True,
            )
            return
        if content_types > 1 or len(lengths) > 1:
            name = "content-type" if content_types > 1 else "content-length"
            await deny(
                send,
                400,
                f"{content_types if name == 'content-type' else len(lengths)} "
                f"{name} headers; send exactly one",
                field=name,
            )
            return
        path = scope.get("path", "")
        if (
            self.authenticate is not None
            and path not in self.open_paths
            and path.startswith(self.protected)
        ):
            denial = await self.authenticate(scope)
            if denial is not None:
                status, reason, headers = denial
                await deny(send, status, reason, headers)
                return
        if scope.get("method", "GET") in NO_BODY and not lengths:
            await self.app(scope, receive, send)
            return
        declared = _length(lengths[0]) if lengths else None
        if declared is not None and declared > limits.max_body_bytes:
            await deny(
                send,
                413,
                f"request body of {declared} bytes; send at most {limits.max_body_bytes}",
                close=True,
            )
            return
        chunks: list[bytes] = []
        total = 0
        more = True
        try:
            async with asyncio.timeout(limits.body_timeout_s):  # cheaper than an anyio scope
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    total += len(chunk)
                    if total > limits.max_body_bytes:
                        await deny(
                            send,
                            413,
                            f"request body over {limits.max_body_bytes} bytes; send less",
                            close=True,
                        )
                        return
                    chunks.append(chunk)
                    more = bool(message.get("more_body", False))
        except TimeoutError:
            await deny(
                send,
                408,
                f"request body not received within {limits.body_timeout_s:g} s",
                close=True,
            )
            return
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _length(value: bytes) -> int | None:
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n >= 0 else None


def uvicorn_limits(limits: Limits) -> dict[str, Any]:
    """Uvicorn options that bound what a client can hold: idle keep-alive, header size (h11)."""
    return {
        "timeout_keep_alive": max(1, math.ceil(min(5.0, limits.header_timeout_s))),
        "h11_max_incomplete_event_size": limits.max_header_bytes,
    }


def request_deadline_protocol(
    header_timeout_s: float, base: Any = None, max_requests_per_connection: int = 0
) -> Any:
    """Uvicorn's HTTP protocol with a deadline for each request head.

    uvicorn has no such timeout: its keep-alive timer is reset by every byte received, so a
    client trickling a request head holds the connection (and a slot) for ever, and an ASGI
    middleware never sees the request. The returned protocol starts a timer when a connection
    opens and whenever the first bytes of a new request arrive, and closes the connection if
    the request's head is not complete within ``header_timeout_s``.

    With ``max_requests_per_connection`` set, the answer to a connection's N-th request says
    ``Connection: close`` (as nginx's ``keepalive_requests`` does): the client connects again,
    and the worker process that accepts it is whichever is free to (see
    :func:`serving.prediction_guard.install_request_deadline`).

    Args:
        header_timeout_s: seconds a client has to send a request line and headers.
        base: the protocol class to extend (default: uvicorn's ``auto`` choice).
        max_requests_per_connection: requests a keep-alive connection serves before it is
            closed (0: no limit). Only with uvicorn's httptools protocol (its ``auto`` choice).
    """
    if base is None:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol

        base = AutoHTTPProtocol

    class RequestDeadline(base):  # type: ignore[misc, valid-type]
        _head_timer: Any = None
        _requests = 0

        if max_requests_per_connection > 0 and hasattr(base, "on_headers_complete"):

            def on_headers_complete(self) -> None:
                super().on_headers_complete()
                self._requests += 1
                if self._requests >= max_requests_per_connection and self.cycle is not None:
                    self.cycle.keep_alive = False  # uvicorn adds `connection: close`, then closes

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(header_timeout_s, self._head_expired)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _waiting_for_head(self) -> bool:
            return self.cycle is None or bool(self.cycle.response_complete)

        def data_received(self, data: bytes) -> None:
            if self._waiting_for_head():
                self._arm()
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:  # a request head was parsed: the app has it now
                self._disarm()

        def _head_expired(self) -> None:
            self._head_timer = None
            if self._waiting_for_head() and not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    RequestDeadline.__name__ = f"RequestDeadline{base.__name__}"
    return RequestDeadline
