"""Helpers for tests and benchmarks of the session service: real processes, real faults.

- :func:`clone_workdir`: a private copy of a trained work directory (its feature views
  re-registered on the copy's sources), so a test may write feedback into it.
- :class:`ServiceProcess`: a ``fitml`` server as a subprocess that can be stopped and
  started again (fault injection), ready when its ``/readyz`` answers 200;
  :func:`start_together` starts several at once.
- :class:`TcpProxy`: a loopback TCP forwarder that can cut every connection (PostgreSQL or
  Redis "down") and restore them.
- :func:`prod_env`: the environment the ``prod`` profile reads, for given servers.
- :class:`OtlpReceiver`: an OTLP/HTTP trace receiver keeping the spans services export.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

import httpx

from ml_pipeline.settings import Settings, load_settings


def prod_env(postgres_dsn: str, redis_url: str) -> dict[str, str]:
    """The ``prod`` profile's feature-store variables for a PostgreSQL DSN and a Redis URL.

    Args:
        postgres_dsn: ``postgresql://user@host:port/database``.
        redis_url: ``redis://host:port/db``.
    """
    redis = urlparse(redis_url)
    db = (redis.path or "/0").lstrip("/") or "0"
    return {
        "FITML_FEAST_REGISTRY_URL": postgres_dsn.replace(
            "postgresql://", "postgresql+psycopg://", 1
        ),
        "FITML_FEAST_OFFLINE_URL": postgres_dsn,
        "FITML_REDIS": f"{redis.hostname}:{redis.port or 6379},db={db}",
    }


def start_together(stack: contextlib.ExitStack, *services: ServiceProcess) -> None:
    """Start ``services`` at once, stop each when ``stack`` closes, wait until all are ready."""
    for service in services:
        service.start(wait=False)
        stack.callback(service.stop)
    for service in services:
        service.wait_ready()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clone_workdir(source: Path, target: Path) -> Settings:
    """Copy a trained ``local``-profile work directory; its feature views read the copy's files.

    Model artifacts are not copied: the registry in the copied MLflow database still refers
    to the originals, which are only read.
    """
    from features.definitions import build_definitions
    from features.store import feature_source_dir, open_store

    shutil.copytree(
        source, target, ignore=shutil.ignore_patterns("mlartifacts", "bentoml", "session")
    )
    settings = load_settings("local", target)
    definitions = build_definitions(feature_source_dir(settings))
    open_store(settings).apply(definitions.objects())
    return settings


class ServiceProcess:
    """A server subprocess (``python -m ml_pipeline.cli ...``) that can be stopped and restarted."""

    def __init__(
        self,
        args: Sequence[str],
        port: int,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        ready_timeout_s: float = 120.0,
        code: Path | None = None,
    ) -> None:
        """A server started with ``args``.

        ``code`` is another fitml checkout to run it from (an A/B benchmark's baseline); by
        default the server runs the code this process imports.
        """
        self.args = [sys.executable, "-m", "ml_pipeline.cli", *args, "--port", str(port)]
        self.code = code
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        if code is not None:
            self.env["PYTHONPATH"] = str(code)
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> ServiceProcess:
        """Start the process (and wait until it is ready)."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.code,
            start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Block until ``/readyz`` answers 200.

        Raises:
            RuntimeError: the process exited (with the end of its log).
            TimeoutError: not ready within ``ready_timeout_s``.
        """
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.args[3]} exited: " + self.log_path.read_text(errors="replace")[-3000:]
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(
            f"{self.args[3]} on port {self.port} not ready in {self.ready_timeout_s} s"
        )

    def stop(self) -> None:
        """Stop the process and its children (SIGTERM, then SIGKILL after 20 s)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; :meth:`cut` breaks it, :meth:`restore` heals.

    While cut, new connections are accepted and closed at once, and open ones are closed: to
    a client the service looks down.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._up = True
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tcp-proxy", daemon=True)
        self._thread.start()

    def cut(self) -> None:
        """Close every connection and refuse new ones."""
        with self._lock:
            self._up = False
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def restore(self) -> None:
        """Forward new connections again."""
        with self._lock:
            self._up = True

    def close(self) -> None:
        """Stop the proxy."""
        self._stop.set()
        self.cut()
        self._server.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        self._server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                up = self._up
            if not up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        try:
            selector.register(a, selectors.EVENT_READ, b)
            selector.register(b, selectors.EVENT_READ, a)
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.5):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            selector.close()
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()


class OtlpReceiver:
    """A minimal OTLP/HTTP trace receiver on 127.0.0.1 (``url``): decodes and keeps every span.

    Args:
        keep: keep the spans in ``spans`` (False: count them only, for benchmarks).
    """

    def __init__(self, keep: bool = True) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.spans: list[dict[str, Any]] = []
        self.received = 0
        lock = threading.Lock()
        receiver = self
        spans = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with lock:
                    receiver.received += sum(
                        len(s.spans) for r in request.resource_spans for s in r.scope_spans
                    )
                    if not keep:
                        request = ExportTraceServiceRequest()
                    for resource in request.resource_spans:
                        attrs = {a.key: a.value.string_value for a in resource.resource.attributes}
                        for scope in resource.scope_spans:
                            for s in scope.spans:
                                spans.append(
                                    {
                                        "service": attrs.get("service.name"),
                                        "name": s.name,
                                        "trace_id": s.trace_id.hex(),
                                        "span_id": s.span_id.hex(),
                                        "parent_id": s.parent_span_id.hex(),
                                        "links": [
                                            {
                                                "trace_id": link.trace_id.hex(),
                                                "span_id": link.span_id.hex(),
                                            }
                                            for link in s.links
                                        ],
                                    }
                                )
                payload = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
