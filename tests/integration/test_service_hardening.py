"""Hostile clients against the real prediction service (BentoML), and its service token.

- Header combinations fuzzed on the wire (duplicate and conflicting ``Content-Type`` /
  ``Content-Length``, ``Transfer-Encoding``, ``Expect``, odd names and values): never a 5xx.
- A 20 MB body is refused (413) before it is read; refused input is logged without its values
  and not at ERROR.
- With ``FITML_SERVICE_TOKEN``: no token -> 401, the session service's calls carry it; without
  a token the CLI refuses a non-loopback bind; clients slow to send a request head are dropped.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.session.testing import ServiceProcess, clone_workdir, free_port, start_together

Served = Any  # the `served` fixture of conftest.py

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "t0ken-" + "9" * 40


def raw_request(
    url: str, path: str, headers: list[tuple[str, str]], body: bytes, timeout: float = 20
) -> tuple[int, bytes]:
    """Send exactly these headers and body; return the status and the response body."""
    host, port = url.removeprefix("http://").split(":")
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        with contextlib.suppress(OSError):  # the server may answer and close before the end
            s.sendall(head.encode("latin-1") + body)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
    if not data:
        return 0, b""  # the server closed without answering (e.g. h11 refused the head)
    status = int(data.split(b" ", 2)[1])
    head, _, body = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        out = b""
        while body:
            size_line, _, rest = body.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out, body = out + rest[:size], rest[size + 2 :]
        body = out
    return status, body


def first_product(workdir: Path) -> str:
    import pandas as pd

    return str(pd.read_parquet(workdir / "offline" / "products.parquet")["product_id"].iloc[0])


def test_two_content_types_are_a_clear_400_not_a_500(served: Served) -> None:
    body = json.dumps({"product_id": first_product(served.workdir)}).encode()
    status, answer = raw_request(
        served.url,
        "/recommend",
        [
            ("Content-Type", "multipart/form-data; boundary=x"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ],
        body,
    )
    assert status == 400, answer
    assert "content-type" in answer.decode().lower()


header_values = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "multipart/form-data",
        "multipart/form-data; boundary=--x",
        "application/x-www-form-urlencoded",
        "text/plain",
        "application/vnd.bentoml+pickle",
        "",
        "\tjson",
        "*/*",
    ]
)
header = st.one_of(
    st.tuples(st.just("Content-Type"), header_values),
    st.tuples(st.just("Content-Length"), st.sampled_from(["0", "5", "-1", "abc", "99999999"])),
    st.tuples(st.just("Transfer-Encoding"), st.sampled_from(["chunked", "gzip", "identity"])),
    st.tuples(st.just("Expect"), st.just("100-continue")),
    st.tuples(st.just("Content-Encoding"), st.sampled_from(["gzip", "br"])),
    st.tuples(
        st.from_regex(r"\AX-[A-Za-z]{1,8}\Z"),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
    ),
)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(headers=st.lists(header, max_size=5), valid=st.booleans())
def test_header_combinations_never_5xx(
    served: Served, headers: list[tuple[str, str]], valid: bool
) -> None:
    product = first_product(served.workdir)
    body = json.dumps({"product_id": product}).encode() if valid else b'{"product_id": 7'
    if not any(k == "Content-Length" for k, _ in headers) and not any(
        k == "Transfer-Encoding" for k, _ in headers
    ):
        headers = [*headers, ("Content-Length", str(len(body)))]
    for path in ("/recommend", "/predict_fit"):
        status, answer = raw_request(served.url, path, headers, body, timeout=10)
        assert status < 500, (status, headers, answer[:300])
        if status >= 400 and answer != b"Invalid HTTP request received.":
            json.loads(answer)  # every refusal but uvicorn's own protocol 400 is JSON


def test_a_20mb_body_is_413_before_it_is_read(served: Served) -> None:
    started = time.monotonic()
    status, answer = raw_request(
        served.url,
        "/recommend",
        [("Content-Type", "application/json"), ("Content-Length", str(20 * 2**20))],
        b"{" + b" " * 65536,  # the server answers without waiting for the rest
    )
    assert status == 413 and b"at most" in answer
    assert time.monotonic() - started < 5
    assert httpx.get(f"{served.url}/livez", timeout=5).status_code == 200


def test_refused_input_is_logged_without_its_values(served: Served) -> None:
    marker = "u-SECRET-9931"
    bad = {"product_id": "p1", "user_id": marker + " ", "measurements": {"chest_cm": 4242.4242}}
    r = httpx.post(f"{served.url}/recommend", json=bad, timeout=30)
    assert r.status_code == 400 and "user_id" in r.text
    time.sleep(1.0)  # let the worker's log reach the file
    log = served.log.read_text(errors="replace")
    assert marker not in log and "4242.4242" not in log
    refusals = [line for line in log.splitlines() if "invalid input" in line]
    assert refusals and not any("ERROR" in line for line in refusals), refusals[-3:]


def test_cli_refuses_a_public_bind_without_a_token(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ml_pipeline.cli",
            "serve",
            "--host",
            "0.0.0.0",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in __import__("os").environ.items() if "SERVICE_TOKEN" not in k},
    )
    assert done.returncode == 2 and "FITML_SERVICE_TOKEN" in done.stderr


@pytest.fixture(scope="module")
def tokened(
    trained_workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    root = tmp_path_factory.mktemp("tokened")
    clone = clone_workdir(trained_workdir, root / "var")
    token_file = root / "service.token"
    token_file.write_text(TOKEN + "\n")
    env = {"FITML_SERVICE_TOKEN_FILE": str(token_file), "FITML_HEADER_TIMEOUT_S": "1"}
    prediction = ServiceProcess(
        ["serve", "--workdir", str(clone.workdir)], free_port(), root / "predict.log", env=env
    )
    sessions = ServiceProcess(
        ["session-service", "--workdir", str(clone.workdir), "--prediction-url", prediction.url],
        free_port(),
        root / "session.log",
        env={**env, "FITML_API_KEYS": "hardening-key"},
    )
    with ExitStack() as stack:
        start_together(stack, prediction, sessions)
        yield prediction, sessions


def test_the_service_token_is_required_and_sent(
    tokened: tuple[ServiceProcess, ServiceProcess], trained_workdir: Path
) -> None:
    prediction, sessions = tokened
    product = first_product(trained_workdir)
    body = {"product_id": product}
    assert httpx.post(f"{prediction.url}/recommend", json=body).status_code == 401
    wrong = httpx.post(
        f"{prediction.url}/recommend", json=body, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401
    ok = httpx.post(
        f"{prediction.url}/recommend", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert ok.status_code == 200, ok.text
    assert httpx.get(f"{prediction.url}/readyz").status_code == 200  # probes stay open
    started = httpx.post(
        f"{sessions.url}/api/v1/tryon/sessions",
        json={**body, "measurements": {"chest_cm": 95}},
        headers={"X-API-Key": "hardening-key"},
        timeout=20,
    )
    assert started.status_code == 201 and started.json()["degraded"] is False, started.text


def test_slow_request_heads_are_dropped_by_the_prediction_service(
    tokened: tuple[ServiceProcess, ServiceProcess],
) -> None:
    prediction, _ = tokened
    port = prediction.port
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    try:
        for s in socks:
            s.sendall(b"POST /recommend HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            s.settimeout(0.2)
        started = time.monotonic()
        open_ = set(range(len(socks)))
        while open_ and time.monotonic() - started < 8:
            for i in list(open_):
                try:
                    if socks[i].recv(1024) == b"":
                        open_.discard(i)
                except TimeoutError:
                    continue
                except OSError:
                    open_.discard(i)
        assert not open_, f"{len(open_)} slow connections still open after 8 s"
        assert time.monotonic() - started < 5
    finally:
        for s in socks:
            s.close()
    assert httpx.get(f"{prediction.url}/livez", timeout=5).status_code == 200
