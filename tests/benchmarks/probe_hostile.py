"""Hostile-client probe of the session service: big unauthenticated bodies, slow heads.

``python -m tests.benchmarks.probe_hostile --workdir var [--json var/bench/hostile.json]``

Starts ``fitml session-service`` on a trained work directory (the prediction service is not
needed: sessions answer from the size chart) and measures, on loopback:

- ``/livez`` median latency alone, then while two clients keep posting 20 MB bodies without an
  API key, and the service's resident memory before and after;
- how many of 50 connections that send half a request head are still open 3 s after the
  header timeout (set to 2 s here);
- the cost of the request guard itself, in process (median per request, with and without).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from serving.session.testing import ServiceProcess, free_port

KEY = "probe-key"


def livez_ms(url: str, n: int) -> float:
    times = []
    with httpx.Client(timeout=30) as client:
        for _ in range(n):
            t = time.perf_counter()
            client.get(f"{url}/livez")
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def flood(url: str, stop: threading.Event, sent: list[int]) -> None:
    body = b"{" + b" " * (20 * 2**20 - 2) + b"}"
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            try:
                r = client.post(
                    f"{url}/api/v1/tryon/sessions",
                    content=body,
                    headers={"Content-Type": "application/json"},
                )
                sent.append(r.status_code)
            except httpx.HTTPError:
                sent.append(0)


def rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def slow_heads(port: int, n: int, header_timeout_s: float) -> int:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /api/v1/tryon/sessions HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        socks.append(s)
    time.sleep(header_timeout_s + 3)
    still_open = 0
    for s in socks:
        s.settimeout(0.05)
        try:
            if s.recv(1) != b"":
                still_open += 1
        except TimeoutError:
            still_open += 1
        except OSError:
            pass
        s.close()
    return still_open


def guard_cost_us(n: int = 20_000) -> dict[str, float]:
    from serving.limits import RequestGuard

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def auth(scope: Any) -> None:
        return None

    guarded = RequestGuard(app, authenticate=auth)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/tryon/sessions",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", b"60"),
            (b"x-api-key", b"k"),
            (b"host", b"a"),
        ],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"x" * 60, "more_body": False}

    async def send(message: Any) -> None:
        return None

    async def run(target: Any) -> float:
        t = time.perf_counter()
        for _ in range(n):
            await target(dict(scope), receive, send)
        return (time.perf_counter() - t) / n * 1e6

    bare = statistics.median(asyncio.run(run(app)) for _ in range(3))
    with_guard = statistics.median(asyncio.run(run(guarded)) for _ in range(3))
    return {
        "bare_us": round(bare, 2),
        "guarded_us": round(with_guard, 2),
        "guard_cost_us": round(with_guard - bare, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("var"))
    parser.add_argument("--json", type=Path, default=Path("var/bench/hostile.json"))
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    out: dict[str, Any] = {"load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        service = ServiceProcess(
            [
                "session-service",
                "--workdir",
                str(args.workdir),
                "--prediction-url",
                f"http://127.0.0.1:{free_port()}",
            ],
            free_port(),
            Path(tmp) / "session.log",
            env={"FITML_API_KEYS": KEY, "FITML_HEADER_TIMEOUT_S": "2"},
        )
        with service:
            assert service.proc is not None
            out["livez_ms_alone"] = round(livez_ms(service.url, 100), 2)
            out["rss_mb_before"] = round(rss_mb(service.proc.pid), 1)
            stop, sent = threading.Event(), []
            threads = [
                threading.Thread(target=flood, args=(service.url, stop, sent)) for _ in range(2)
            ]
            for t in threads:
                t.start()
            time.sleep(1)
            out["livez_ms_during_20mb_flood"] = round(livez_ms(service.url, 100), 2)
            time.sleep(max(0.0, args.seconds - 2))
            stop.set()
            for t in threads:
                t.join()
            out["flood_requests"] = len(sent)
            out["flood_statuses"] = sorted(set(sent))
            out["rss_mb_after"] = round(rss_mb(service.proc.pid), 1)
            out["slow_heads_open_of_50"] = slow_heads(service.port, 50, 2.0)
            out["livez_ms_after"] = round(livez_ms(service.url, 100), 2)
    out["guard"] = guard_cost_us()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
