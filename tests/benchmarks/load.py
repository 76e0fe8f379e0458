"""A closed-loop HTTP load generator for the benchmarks: asyncio + uvloop, raw HTTP/1.1.

Each of ``concurrency`` clients holds one keep-alive connection, sends ``POST path``, reads
the whole answer and sends the next request, until the time is up (as wrk does, and in one
process: a full HTTP client library would cost more CPU per request than the servers it
measures, on the same two cores). Answers that are not 2xx are counted, and so are answers
whose body contains ``flag`` (e.g. a degraded session).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class LoadResult:
    """One closed-loop run against one endpoint at one concurrency."""

    server: str
    concurrency: int
    seconds: float
    requests: int
    non_2xx: int
    errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    reconnects: int = 0
    """Connections the server closed (``Connection: close``) that the client opened again."""
    flagged: int = 0
    """2xx answers whose body contains the run's ``flag``."""


def request_bytes(
    port: int, path: str, body: bytes, headers: Mapping[str, str] | None = None
) -> bytes:
    """One keep-alive ``POST`` request with a JSON body, as bytes on the wire."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"{extra}Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


async def _client(
    port: int,
    requests: Sequence[bytes],
    offset: int,
    deadline: float,
    latencies: list[float],
    counts: dict[str, int],
    flag: bytes | None,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while time.perf_counter() < deadline:
            payload = requests[i % len(requests)]
            i += 1
            started = time.perf_counter()
            if writer.is_closing():  # the server closed the last one: connect again (as wrk)
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                counts["reconnects"] += 1
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            chunked = False
            close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                lname = name.strip().lower()
                if lname == b"content-length":
                    length = int(value)
                elif lname == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif lname == b"connection" and b"close" in value.lower():
                    close = True
            body = b""
            if chunked:
                parts = []
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                    parts.append((await reader.readexactly(size + 2))[:size])
                    if size == 0:
                        break
                body = b"".join(parts)
            elif length:
                body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if close:
                writer.close()
            if not 200 <= status < 300:
                counts["non_2xx"] += 1
            elif flag is not None and flag in body:
                counts["flagged"] += 1
    except (OSError, asyncio.IncompleteReadError, ValueError):
        counts["errors"] += 1
    finally:
        writer.close()


async def _load(
    port: int,
    requests: Sequence[bytes],
    concurrency: int,
    seconds: float,
    flag: bytes | None,
) -> tuple[list[float], dict[str, int], float]:
    latencies: list[float] = []
    counts = {"non_2xx": 0, "errors": 0, "reconnects": 0, "flagged": 0}
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(
        *(
            _client(port, requests, k * 7919, deadline, latencies, counts, flag)
            for k in range(concurrency)
        )
    )
    return latencies, counts, time.perf_counter() - started


def run_load(
    server: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    concurrency: int,
    seconds: float,
    warmup: float = 1.0,
    *,
    headers: Mapping[str, str] | None = None,
    flag: bytes | None = None,
) -> LoadResult:
    """Drive ``POST path`` closed-loop with ``concurrency`` keep-alive clients.

    Args:
        bodies: the JSON request bodies, sent in turn (each client from its own offset).
        warmup: seconds of the same load before the measured run (not counted).
        headers: extra request headers (e.g. an API key).
        flag: count the 2xx answers whose body contains these bytes.
    """
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    requests = [request_bytes(port, path, b, headers) for b in bodies]
    if warmup > 0:
        runner(_load(port, requests, concurrency, warmup, flag))
    latencies, counts, elapsed = runner(_load(port, requests, concurrency, seconds, flag))
    ms = sorted(x * 1000 for x in latencies) or [float("nan")]

    def q(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(p * len(ms)))], 3)

    return LoadResult(
        server=server,
        concurrency=concurrency,
        seconds=round(elapsed, 2),
        requests=len(latencies),
        non_2xx=counts["non_2xx"],
        errors=counts["errors"],
        rps=round(len(latencies) / elapsed, 1),
        p50_ms=q(0.50),
        p90_ms=q(0.90),
        p99_ms=q(0.99),
        max_ms=round(ms[-1], 3),
        reconnects=counts["reconnects"],
        flagged=counts["flagged"],
    )
