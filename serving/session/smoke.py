r"""A deployment's smoke test: what a try-on front end does, once, against live services.

Both services ready -> ``POST /api/v1/tryon/sessions`` (a recommendation from the prediction
service, not the size-chart fallback) -> ``POST .../feedback`` accepted -> the session reads
back with the feedback. Only ``httpx`` and the standard library, so it runs from any
machine that reaches the services::

    python -m serving.session.smoke --session http://127.0.0.1:8000 \
        --prediction http://127.0.0.1:3000 --api-key "$KEY" --request '{"product_id": "p0001"}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

API = "/api/v1/tryon"


class SmokeTestFailed(RuntimeError):
    """A step of the smoke test did not give the answer a working deployment gives."""


@dataclass(frozen=True)
class SmokeResult:
    """What the smoke test did: the session, its recommendation and the feedback event."""

    session_id: str
    recommended_size: str
    event_id: str
    seconds: float


def wait_ready(url: str, timeout_s: float = 120.0) -> float:
    """Wait until ``url``/readyz answers 200; returns the seconds waited.

    Raises:
        SmokeTestFailed: not ready within ``timeout_s``.
    """
    started = time.monotonic()
    last = "no answer"
    while time.monotonic() - started < timeout_s:
        try:
            response = httpx.get(f"{url}/readyz", timeout=2)
            if response.status_code == 200:
                return time.monotonic() - started
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.25)
    raise SmokeTestFailed(f"{url}/readyz not ready after {timeout_s:.0f} s (last: {last})")


def _expect(response: httpx.Response, status: int, step: str) -> dict[str, Any]:
    if response.status_code != status:
        raise SmokeTestFailed(
            f"{step}: HTTP {response.status_code} (expected {status}): {response.text[:500]}"
        )
    body: dict[str, Any] = response.json()
    return body


def run_smoke(
    session_url: str,
    api_key: str,
    request: dict[str, Any],
    *,
    outcome: str = "fit",
    event_id: str | None = None,
    timeout_s: float = 20.0,
) -> SmokeResult:
    """Start a session for ``request``, send fit feedback on its size, read it back.

    Args:
        session_url: base URL of the session service.
        api_key: an API key the session service accepts.
        request: the session body (``product_id``, and ``user_id`` or ``measurements``).
        outcome: the feedback's outcome (``too_small``, ``fit``, ``too_large``).
        event_id: the feedback's idempotency key (default: a new one).
        timeout_s: per-request timeout.

    Raises:
        SmokeTestFailed: naming the step that failed and what the service said.
    """
    started = time.monotonic()
    event_id = event_id or f"smoke-{uuid.uuid4().hex}"
    with httpx.Client(
        base_url=session_url, headers={"X-API-Key": api_key}, timeout=timeout_s
    ) as http:
        session = _expect(http.post(f"{API}/sessions", json=request), 201, "start a session")
        if session.get("degraded"):
            raise SmokeTestFailed(
                "start a session: answered by the size-chart fallback, not the prediction "
                f"service ({session.get('degraded_reason')})"
            )
        size = str(session["recommended_size"])
        feedback = {"event_id": event_id, "size": size, "outcome": outcome}
        _expect(
            http.post(f"{API}/sessions/{session['session_id']}/feedback", json=feedback),
            202,
            "send feedback",
        )
        read = _expect(http.get(f"{API}/sessions/{session['session_id']}"), 200, "read back")
        if event_id not in [f["event_id"] for f in read.get("feedback", [])]:
            raise SmokeTestFailed(f"read back: feedback {event_id} is not in the session")
    return SmokeResult(session["session_id"], size, event_id, time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    """Command line: exit 0 when the deployment passes, 1 with the failed step otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--session", required=True, help="Session service base URL.")
    parser.add_argument("--prediction", help="Prediction service base URL (readiness only).")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--request", required=True, help="Session body as JSON.")
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    try:
        for url in filter(None, (args.prediction, args.session)):
            wait_ready(url.rstrip("/"), args.ready_timeout)
        result = run_smoke(args.session.rstrip("/"), args.api_key, json.loads(args.request))
    except (SmokeTestFailed, httpx.HTTPError, json.JSONDecodeError) as exc:
        print(f"smoke test failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.__dict__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
