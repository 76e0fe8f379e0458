"""Hostile clients against the request guard and uvicorn's request-head deadline."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from serving.limits import Limits, RequestGuard, request_deadline_protocol, uvicorn_limits

LIMITS = Limits(
    max_body_bytes=1000, max_header_bytes=2000, body_timeout_s=0.5, header_timeout_s=0.5
)


async def echo(scope: Any, receive: Any, send: Any) -> None:
    """A tiny app: answers with the length of the body it read."""
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    out = str(len(body)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(out)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": out})


async def refuse_without_key(scope: Any) -> Any:
    if (b"x-api-key", b"k") in scope["headers"]:
        return None
    return 401, "missing key", {}


def call(
    app: Any,
    headers: list[tuple[bytes, bytes]],
    chunks: list[bytes],
    method: str = "POST",
    endless: bool = False,
) -> tuple[int, bytes, int]:
    """Run one request through ``app``; returns status, body and how often it read the body."""
    reads = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if reads <= len(chunks):
            return {
                "type": "http.request",
                "body": chunks[reads - 1],
                "more_body": endless or reads < len(chunks),
            }
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": "/api/x", "headers": headers}
    asyncio.run(app(scope, receive, send))
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, body, reads


def test_credentials_are_checked_before_the_body_is_read() -> None:
    app = RequestGuard(echo, LIMITS, refuse_without_key)
    status, body, reads = call(app, [(b"content-length", b"900")], [b"x" * 900])
    assert status == 401 and reads == 0 and b"missing key" in body
    status, body, reads = call(app, [(b"x-api-key", b"k")], [b"x" * 900])
    assert status == 200 and body == b"900"


def test_body_caps_declared_and_streamed() -> None:
    app = RequestGuard(echo, LIMITS)
    status, body, reads = call(app, [(b"content-length", b"20000000")], [b"x"])
    assert status == 413 and reads == 0 and b"1000" in body
    status, _, _ = call(app, [], [b"x" * 600, b"x" * 600])  # chunked, no length
    assert status == 413


def test_header_caps_and_ambiguous_headers() -> None:
    app = RequestGuard(echo, LIMITS)
    status, _, _ = call(app, [(b"x-big", b"y" * 3000)], [b""])
    assert status == 431
    two = [(b"content-type", b"multipart/form-data"), (b"content-type", b"application/json")]
    status, body, reads = call(app, two, [b"{}"])
    assert status == 400 and b"content-type" in body and reads == 0


def test_a_body_that_never_ends_is_408() -> None:
    app = RequestGuard(echo, LIMITS)
    started = time.monotonic()
    status, _, _ = call(app, [(b"content-length", b"100")], [b"x" * 10], endless=True)
    assert status == 408 and time.monotonic() - started < 3


@contextlib.contextmanager
def running(app: Any, **http: Any) -> Iterator[int]:
    """``app`` under uvicorn in a thread with the request-deadline protocol; yields its port.

    ``http`` goes to :func:`request_deadline_protocol`; :data:`LIMITS` sets the rest.
    """
    import uvicorn

    from serving.session.testing import free_port

    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        http=request_deadline_protocol(LIMITS.header_timeout_s, **http),
        **uvicorn_limits(LIMITS),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[int]:
    with running(RequestGuard(echo, LIMITS)) as port:
        yield port


def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float:
    """Seconds until the server closes ``sock`` while we trickle bytes (inf if it does not)."""
    sock.settimeout(0.1)
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < seconds:
        if trickle and i < len(trickle):
            try:
                sock.send(trickle[i : i + 1])
            except OSError:
                return time.monotonic() - started
            i += 1
        try:
            if sock.recv(1024) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    return float("inf")


def test_slow_request_heads_are_dropped(server: int) -> None:
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"z" * 200
    socks = [socket.create_connection(("127.0.0.1", server)) for _ in range(5)]
    try:
        times = [closed_within(s, 5, head) for s in socks[:1]]
        times += [closed_within(s, 5) for s in socks[1:]]  # silent connections too
    finally:
        for s in socks:
            s.close()
    assert all(t < 2.5 for t in times), times


def _post_and_read(s: socket.socket) -> bytes:
    """Send one 2-byte POST on ``s`` and read its whole answer (the echo server's ``2``)."""
    s.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab")
    reply = b""
    while not reply.endswith(b"\r\n\r\n2"):
        chunk = s.recv(4096)
        assert chunk, reply
        reply += chunk
    return reply


def test_keep_alive_requests_still_work_and_a_slow_second_head_is_dropped(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as s:
        for _ in range(3):
            reply = _post_and_read(s)
            assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"2"), reply
        assert closed_within(s, 5, b"POST /x HTTP/1.1\r\nHost: a\r\n" + b"X: y" * 50) < 2.5


def test_a_connection_is_closed_after_its_max_requests() -> None:
    """``max_requests_per_connection``: the N-th answer says close, then the server closes."""
    heads = []
    with (
        running(echo, max_requests_per_connection=3) as port,
        socket.create_connection(("127.0.0.1", port)) as s,
    ):
        for _ in range(3):
            heads.append(_post_and_read(s).split(b"\r\n\r\n")[0].lower())
        assert closed_within(s, 2) < 1.0
    assert [b"connection: close" in h for h in heads] == [False, False, True]
    assert all(h.startswith(b"http/1.1 200") for h in heads)


def test_max_requests_per_connection_from_the_environment() -> None:
    from ml_pipeline.errors import ConfigError
    from serving.prediction_guard import max_requests_per_connection

    assert max_requests_per_connection({}) == 0
    assert max_requests_per_connection({"FITML_MAX_REQUESTS_PER_CONNECTION": "100"}) == 100
    for bad in ("x", "-1", "2.5"):
        with pytest.raises(ConfigError, match="FITML_MAX_REQUESTS_PER_CONNECTION"):
            max_requests_per_connection({"FITML_MAX_REQUESTS_PER_CONNECTION": bad})
