"""Integration fixtures: the real prediction service on the trained work dir.

``served`` starts ``fitml serve`` on a free loopback port against a copy of
``trained_workdir`` (the session fixture of ``tests/conftest.py``) and stops it after the
session.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    """A running prediction service."""

    url: str
    workdir: Path
    process: subprocess.Popen[bytes]
    cold_start_s: float
    log: Path


def start_service(workdir: Path, log: Path, env: dict[str, str] | None = None) -> Served:
    """Start ``fitml serve`` on a free port and wait for ``/readyz``."""
    port = free_port()
    argv = [str(BIN / "fitml"), "serve", "--workdir", str(workdir), "--port", str(port)]
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    while time.perf_counter() - started < 180:
        if proc.poll() is not None:
            pytest.fail(f"fitml serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return Served(url, workdir, proc, time.perf_counter() - started, log)
        except OSError:
            pass
        time.sleep(0.1)
    stop_service(proc)
    pytest.fail(f"fitml serve not ready after 180 s:\n{log.read_text()[-4000:]}")


def stop_service(proc: subprocess.Popen[bytes]) -> None:
    """Stop a service started by :func:`start_service` (its process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def served(trained_workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The real BentoML service (``fitml serve``) on a private copy of the trained work dir.

    The copy takes what serving writes (inference log, BentoML model store), so the shared
    ``trained_workdir`` stays as the pipeline left it.
    """
    from serving.session.testing import clone_workdir

    root = tmp_path_factory.mktemp("serve")
    workdir = clone_workdir(trained_workdir, root / "var").workdir
    service = start_service(workdir, root / "serve.log")
    try:
        yield service
    finally:
        stop_service(service.process)
