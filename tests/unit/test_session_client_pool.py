"""The session service's client of the prediction service over real loopback connections.

:class:`serving.session.client.AiohttpTransport` is the client's default transport; these
tests run it against a small aiohttp server on a free port (the other client tests replace
the transport with httpx's mock).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from serving.session.client import MAX_CONNECTIONS, PredictionClient, PredictionUnavailable
from serving.session.config import ClientSettings
from serving.session.observability import REQUEST_ID

FAST = ClientSettings(
    connect_timeout_s=0.2,
    read_timeout_s=0.2,
    retries=0,
    backoff_s=0.0,
    deadline_s=1.0,
    breaker_failures=10,
    breaker_reset_s=60.0,
)
ROOMY = FAST.model_copy(
    update={"connect_timeout_s": 10.0, "read_timeout_s": 10.0, "deadline_s": 20.0}
)
"""For tests of the pool, not of timeouts: a busy machine must not turn a wait into a failure."""
ANSWER = {
    "recommended_size": "M",
    "confidence": 0.8,
    "runner_up": "L",
    "fit_note": "ok",
    "sizes": [{"size": s, "p_too_small": 0.1, "p_fit": 0.8, "p_too_large": 0.1} for s in "SML"],
    "model_versions": {"fit_model": "1", "size_model": "1"},
    "request_id": "r1",
    "fallbacks": [],
    "variant": "champion",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[tuple[str, set[Any]]]:
    """A loopback HTTP server answering ``POST /recommend``; yields its URL and connections."""
    peers: set[Any] = set()

    async def recommend(request: web.Request) -> web.StreamResponse:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        return await handler(request)

    app = web.Application()
    app.router.add_post("/recommend", recommend)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", peers
    finally:
        await runner.cleanup()


def test_the_answer_comes_back_with_the_request_headers_and_body_sent() -> None:
    seen: list[tuple[dict[str, str], Any]] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.json()))
        return web.json_response(ANSWER)

    async def go() -> Any:
        async with server(answer) as (url, _):
            client = PredictionClient(url, ROOMY, token=lambda: "t" * 32)
            REQUEST_ID.set("req-7")
            try:
                return await client.recommend({"product_id": "P1", "user_id": "u1"})
            finally:
                await client.close()

    result = asyncio.run(go())
    assert result.recommended_size == "M" and [s.size for s in result.sizes] == list("SML")
    headers, body = seen[0]
    assert body == {"product_id": "P1", "user_id": "u1"}
    assert headers["X-Request-ID"] == "req-7"
    assert headers["Authorization"] == "Bearer " + "t" * 32
    assert headers["Content-Type"] == "application/json"


def test_a_compressed_answer_is_decoded_once() -> None:
    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(json.dumps(ANSWER).encode()),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    async def go() -> Any:
        async with server(gzipped) as (url, _):
            client = PredictionClient(url, ROOMY)
            try:
                return await client.recommend({"product_id": "P1"})
            finally:
                await client.close()

    assert asyncio.run(go()).recommended_size == "M"


def test_sequential_and_concurrent_calls_reuse_a_bounded_set_of_connections() -> None:
    async def answer(request: web.Request) -> web.Response:
        await asyncio.sleep(0.01)
        return web.json_response(ANSWER)

    async def go() -> tuple[int, int]:
        async with server(answer) as (url, peers):
            client = PredictionClient(url, ROOMY)
            try:
                for _ in range(20):
                    await client.recommend({"product_id": "P1"})
                sequential = len(peers)
                await asyncio.gather(
                    *(client.recommend({"product_id": "P1"}) for _ in range(2 * MAX_CONNECTIONS))
                )
                return sequential, len(peers)
            finally:
                await client.close()

    sequential, total = asyncio.run(go())
    assert sequential == 1  # keep-alive: one connection for calls one after another
    assert total <= MAX_CONNECTIONS  # twice as many concurrent calls wait for a connection


def test_a_refused_connection_and_a_silent_server_are_unavailable_with_their_reason() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"

    async def silent(request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.json_response(ANSWER)

    async def go() -> list[str]:
        reasons = []
        client = PredictionClient(closed, FAST)
        with pytest.raises(PredictionUnavailable) as info:
            await client.recommend({"product_id": "P1"})
        reasons.append(info.value.reason)
        await client.close()
        async with server(silent) as (url, _):
            client = PredictionClient(url, FAST)
            with pytest.raises(PredictionUnavailable) as info:
                await client.recommend({"product_id": "P1"})
            reasons.append(info.value.reason)
            await client.close()
        return reasons

    assert asyncio.run(go()) == ["connection", "timeout"]


def test_a_server_error_status_reaches_the_caller_as_unavailable() -> None:
    async def failing(request: web.Request) -> web.Response:
        return web.json_response({"error": "boom"}, status=503)

    async def go() -> str:
        async with server(failing) as (url, _):
            client = PredictionClient(url, ROOMY)
            try:
                with pytest.raises(PredictionUnavailable) as info:
                    await client.recommend({"product_id": "P1"})
                return info.value.reason
            finally:
                await client.close()

    assert asyncio.run(go()) == "server_error"
