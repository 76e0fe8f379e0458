"""Unit tests of the session service: keys, limits, breaker, client, chart rule, stores, app."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from features.transforms import chart_pick
from ml_pipeline.errors import ConfigError
from serving.session.app import Services, create_app
from serving.session.charts import Chart, ChartBook, chart_rule
from serving.session.client import (
    CircuitBreaker,
    PredictionClient,
    PredictionUnavailable,
    ProductNotFound,
)
from serving.session.config import ClientSettings, hash_key, load_key_hashes
from serving.session.delivery import Deliverer
from serving.session.observability import REQUEST_ID, Metrics
from serving.session.openapi import OPENAPI_FILE, render
from serving.session.security import KeyRing, LocalRateLimiter
from serving.session.store import (
    FeedbackEvent,
    Outbox,
    SqliteEventStore,
    StoreUnavailable,
    events_frame,
)

KEY = "test-key-1"
CHART = Chart(
    product_id="P1",
    dimension="chest",
    sizes=("S", "M", "L"),
    indices=(2, 3, 4),
    low=(80.0, 90.0, 100.0),
    high=(90.0, 100.0, 110.0),
)
FAST = ClientSettings(
    connect_timeout_s=0.05,
    read_timeout_s=0.1,
    retries=1,
    backoff_s=0.0,
    deadline_s=0.5,
    breaker_failures=2,
    breaker_reset_s=60,
)


def model_answer(size: str = "M") -> dict[str, Any]:
    return {
        "recommended_size": size,
        "confidence": 0.8,
        "runner_up": "L",
        "fit_note": "ok",
        "sizes": [
            {"size": s, "p_too_small": 0.1, "p_fit": 0.8, "p_too_large": 0.1} for s in CHART.sizes
        ],
        "model_versions": {"fit_model": "1", "size_model": "1"},
        "request_id": "r1",
        "fallbacks": [],
        "variant": "champion",
    }


# -- keys and limits --------------------------------------------------------------------


def test_keys_come_hashed_from_env_and_file(tmp_path: Path) -> None:
    secrets = tmp_path / "keys"
    secrets.write_text(f"# comment\nplain-key\nsha256:{hash_key('pre-hashed')}\n")
    hashes = load_key_hashes({"FITML_API_KEYS": "a, b", "FITML_API_KEYS_FILE": str(secrets)})
    ring = KeyRing(hashes)
    for key in ("a", "b", "plain-key", "pre-hashed"):
        assert ring.identify(key) == hash_key(key)[:12]
    assert ring.identify("nope") is None and ring.identify(None) is None
    assert all(key not in hashes for key in ("a", "b", "plain-key"))


def test_no_keys_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="FITML_API_KEYS"):
        load_key_hashes({})


def test_token_bucket_refuses_with_retry_after_then_refills() -> None:
    limiter = LocalRateLimiter(rate_per_s=2, burst=3)
    assert all(limiter.hit_sync("k", now=0.0).allowed for _ in range(3))
    refused = limiter.hit_sync("k", now=0.0)
    assert not refused.allowed and refused.retry_after_s >= 1
    assert limiter.hit_sync("other", now=0.0).allowed
    assert limiter.hit_sync("k", now=1.0).allowed


# -- breaker and client -----------------------------------------------------------------


def test_breaker_opens_half_opens_and_closes() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=2, reset_s=5, clock=lambda: now[0])
    breaker.failure()
    assert breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 6.0
    assert breaker.state == "half_open"
    assert breaker.allow() and not breaker.allow()  # one trial at a time
    breaker.failure()
    assert breaker.state == "open"
    now[0] = 12.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_client_retries_a_5xx_and_forwards_the_request_id() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(503, json={"error": "busy"})
        return httpx.Response(200, json=model_answer())

    async def go() -> Any:
        REQUEST_ID.set("req-42")
        client = PredictionClient("http://p", FAST, transport=httpx.MockTransport(handler))
        try:
            return await client.recommend({"product_id": "P1"})
        finally:
            await client.close()

    answer = run(go())
    assert answer.recommended_size == "M" and len(calls) == 2
    assert calls[1].headers["X-Request-ID"] == "req-42"


def test_client_fails_fast_once_the_breaker_is_open() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("refused")

    async def go() -> list[str]:
        client = PredictionClient("http://p", FAST, transport=httpx.MockTransport(handler))
        reasons = []
        for _ in range(3):
            with pytest.raises(PredictionUnavailable) as info:
                await client.recommend({"product_id": "P1"})
            reasons.append(info.value.reason)
        return reasons

    reasons = run(go())
    assert reasons == ["connection", "connection", "circuit_open"]
    assert calls == 4  # two calls of two attempts each, then none


def test_client_maps_timeouts_and_404() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(1)
        return httpx.Response(200, json=model_answer())

    def missing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": "product_id: unknown"})

    async def go() -> None:
        client = PredictionClient("http://p", FAST, transport=httpx.MockTransport(slow))
        with pytest.raises(PredictionUnavailable) as info:
            await client.recommend({"product_id": "P1"})
        assert info.value.reason == "timeout"
        client = PredictionClient("http://p", FAST, transport=httpx.MockTransport(missing))
        with pytest.raises(ProductNotFound):
            await client.recommend({"product_id": "nope"})
        assert client.breaker.state == "closed"

    run(go())


# -- the chart rule ---------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.none(), st.floats(min_value=40, max_value=200)))
def test_chart_rule_is_chart_pick(girth: float | None) -> None:
    answer = chart_rule(CHART, girth)
    if girth is None:
        assert answer.size == "M" and answer.fallbacks
    else:
        pos = chart_pick(np.array([girth]), np.array(CHART.low), np.array(CHART.high))[0]
        assert answer.size == CHART.sizes[int(pos)] and not answer.fallbacks
    assert answer.size_index == CHART.index_of(answer.size)


def test_log_pseudonym_matches_the_prediction_services(tmp_path: Path) -> None:
    from ml_pipeline.settings import load_settings
    from serving.predictor import Predictor
    from serving.pseudonym import load_pseudonymizer

    settings = load_settings("local", tmp_path)
    session_side = load_pseudonymizer(settings)
    assert Predictor(settings)._pseudonym("U123") == session_side("U123")
    assert session_side(None) is None


# -- stores and delivery ----------------------------------------------------------------


def event(event_id: str, user: str | None = "U1", size: str = "M") -> FeedbackEvent:
    from datetime import UTC, datetime

    return FeedbackEvent(
        event_id=event_id,
        session_id="S1",
        user_id=user,
        product_id="P1",
        size=size,
        size_index=CHART.index_of(size) or 0,
        outcome="fit",
        event_timestamp=datetime.now(UTC),
        notes={"chest": "private words"},
    )


def test_event_store_writes_each_event_once_and_forgets(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "events.db")
    assert store.add_events([event("e1"), event("e2")]) == ["e1", "e2"]
    assert store.add_events([event("e1"), event("e3", user="U2")]) == ["e3"]
    assert store.count_events() == 3
    assert list(events_frame(store.all_events()).columns) == [
        "event_id",
        "user_id",
        "product_id",
        "size",
        "size_index",
        "outcome",
        "event_timestamp",
    ]
    assert store.forget_user("U1")["fitml_tryon_events"] == 2
    assert [e.event_id for e in store.all_events()] == ["e3"]


class FlakyStore(SqliteEventStore):
    """The real SQLite store, switched off and on."""

    down = False

    def add_events(self, events: Any) -> list[str]:
        if self.down:
            raise StoreUnavailable("down")
        return super().add_events(events)


def test_outbox_keeps_feedback_until_the_store_is_back_and_pushes_once(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "events.db")
    outbox = Outbox(tmp_path / "outbox.db")
    pushed: list[str] = []
    deliverer = Deliverer(outbox, store, lambda f: pushed.extend(f["event_id"]), Metrics())
    e = event("e1")
    store.down = True
    assert outbox.put([("event", "e1", "U1", "S1", e.to_json())]) == 1
    assert outbox.put([("event", "e1", "U1", "S1", e.to_json())]) == 0
    report = deliverer.deliver_once()
    assert report.failed == {"event": 1} and store.count_events() == 0
    assert outbox.pending()["event"] == 1
    store.down = False
    outbox.wake_all()
    deliverer.deliver_once()
    assert store.count_events() == 1 and pushed == ["e1"]
    assert sum(outbox.pending().values()) == 0
    outbox.put([("event", "e1", "U1", "S1", e.to_json())])  # the client resends it
    deliverer.deliver_once()
    assert store.count_events() == 1 and pushed == ["e1"]


def test_stop_ends_the_delivery_loop_when_it_was_just_woken(tmp_path: Path) -> None:
    # feedback wakes the loop and the service shuts down in the same tick: the
    # cancellation must not be lost in the wake-up, or shutdown waits for ever
    deliverer = Deliverer(
        Outbox(tmp_path / "outbox.db"),
        SqliteEventStore(tmp_path / "events.db"),
        lambda f: None,
        Metrics(),
        interval_s=3600,
    )

    async def wake_then_stop() -> None:
        deliverer.start()
        await asyncio.sleep(0)  # the loop is waiting for a wake-up
        deliverer.wake()
        async with asyncio.timeout(5):
            await deliverer.stop()

    run(wake_then_stop())


# -- the app ----------------------------------------------------------------------------


def make_services(tmp_path: Path, handler: Any, rate: float = 1000) -> Services:
    store = SqliteEventStore(tmp_path / "events.db")
    outbox = Outbox(tmp_path / "outbox.db")
    metrics = Metrics()
    return Services(
        client=PredictionClient("http://p", FAST, transport=httpx.MockTransport(handler)),
        charts=ChartBook(None, None, [CHART]),
        store=store,
        outbox=outbox,
        deliverer=Deliverer(outbox, store, lambda f: None, metrics, interval_s=0.05),
        limiter=LocalRateLimiter(rate, int(rate)),
        keys=KeyRing((hash_key(KEY),)),
        metrics=metrics,
    )


@pytest.fixture
def up(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(make_services(tmp_path, lambda r: httpx.Response(200, json=model_answer())))
    with TestClient(app, headers={"X-API-Key": KEY}) as client:
        yield client


def test_every_route_needs_a_key(up: TestClient) -> None:
    for method, path in (
        ("POST", "/api/v1/tryon/sessions"),
        ("GET", "/api/v1/tryon/sessions/abc"),
        ("POST", "/api/v1/tryon/sessions/abc/feedback"),
        ("GET", "/metrics"),
    ):
        response = up.request(method, path, headers={"X-API-Key": "wrong"}, json={})
        assert response.status_code == 401, (method, path)
        assert "X-API-Key" in response.json()["detail"]
    assert up.get("/readyz", headers={}).status_code == 200


def _count(client: TestClient, name: str, **labels: str) -> float:
    """A counter's value in the app's registry (0 before its first increment).

    Read before and after: a test process that ran a BentoML server in-process may share
    counter values between registries (prometheus_client's multiprocess mode).
    """
    registry = client.app.state.services.metrics.registry  # type: ignore[attr-defined]
    return float(registry.get_sample_value(name, labels) or 0.0)


def test_session_feedback_and_read_back(up: TestClient) -> None:
    sessions = _count(up, "fitml_session_sessions_started_total", degraded="false")
    too_small = _count(up, "fitml_session_feedback_total", outcome="too_small")
    started = up.post("/api/v1/tryon/sessions", json={"user_id": "U1", "product_id": "P1"})
    assert started.status_code == 201, started.text
    session = started.json()
    assert session["recommended_size"] == "M" and session["degraded"] is False
    assert session["confidence"] == 0.8 and started.headers["X-Request-ID"]
    sid = session["session_id"]
    feedback = {"event_id": "ev-1", "size": "M", "outcome": "too_small", "notes": {"chest": "x"}}
    first = up.post(f"/api/v1/tryon/sessions/{sid}/feedback", json=feedback)
    assert first.status_code == 202 and first.json()["status"] == "accepted"
    again = up.post(f"/api/v1/tryon/sessions/{sid}/feedback", json=feedback)
    assert again.status_code == 202 and again.json()["status"] == "duplicate"
    bad = up.post(
        f"/api/v1/tryon/sessions/{sid}/feedback",
        json={"event_id": "ev-2", "size": "XXL", "outcome": "fit"},
    )
    assert bad.status_code == 422 and "XXL" in bad.json()["detail"]
    read = up.get(f"/api/v1/tryon/sessions/{sid}")
    assert read.status_code == 200
    assert [f["event_id"] for f in read.json()["feedback"]] == ["ev-1"]
    assert up.get("/api/v1/tryon/sessions/nope").status_code == 404
    unknown = up.post("/api/v1/tryon/sessions", json={"user_id": "U1", "product_id": "P9"})
    assert unknown.status_code == 404 and "P9" in unknown.json()["detail"]
    metrics = up.get("/metrics").text
    assert 'fitml_session_sessions_started_total{degraded="false"}' in metrics, metrics
    assert 'fitml_session_feedback_total{outcome="too_small"}' in metrics, metrics
    assert _count(up, "fitml_session_sessions_started_total", degraded="false") == sessions + 1
    assert _count(up, "fitml_session_feedback_total", outcome="too_small") == too_small + 1


def test_degraded_answer_from_the_size_chart_when_prediction_is_down(tmp_path: Path) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    app = create_app(make_services(tmp_path, down))
    with TestClient(app, headers={"X-API-Key": KEY}) as client:
        guest = {"product_id": "P1", "measurements": {"chest_cm": 104.0}}
        response = client.post("/api/v1/tryon/sessions", json=guest)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["degraded"] is True and body["recommended_size"] == "L"
        assert body["degraded_reason"].startswith("connection") and body["confidence"] is None
        assert "degraded" in client.get("/metrics").text


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    app = create_app(make_services(tmp_path, lambda r: httpx.Response(200), rate=2))
    with TestClient(app, headers={"X-API-Key": KEY}) as client:
        codes = [client.get("/api/v1/tryon/sessions/x").status_code for _ in range(4)]
        assert codes[:2] == [404, 404] and codes[-1] == 429
        limited = client.get("/api/v1/tryon/sessions/x")
        assert int(limited.headers["Retry-After"]) >= 1


def test_logs_carry_no_raw_ids_measurements_or_notes(
    up: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    from serving.session.observability import JsonFormatter

    caplog.set_level(logging.INFO)
    started = up.post(
        "/api/v1/tryon/sessions",
        json={
            "user_id": "shopper-secret-77",
            "product_id": "P1",
            "measurements": {"chest_cm": 97.25},
        },
    )
    sid = started.json()["session_id"]
    up.post(
        f"/api/v1/tryon/sessions/{sid}/feedback",
        json={
            "event_id": "ev-log",
            "size": "M",
            "outcome": "fit",
            "notes": {"waist": "my private note"},
        },
    )
    lines = [JsonFormatter().format(r) for r in caplog.records]
    text = "\n".join(lines)
    assert "shopper-secret-77" not in text and "97.25" not in text
    assert "my private note" not in text
    assert str(up.app.state.services.pseudonyms("shopper-secret-77")) in text
    assert all(json.loads(line)["request_id"] for line in lines)


def test_openapi_export_is_current() -> None:
    assert OPENAPI_FILE.read_text() == render(), (
        "serving/session_openapi.json is stale: run `python -m serving.session.openapi`"
    )


def test_a_refused_event_does_not_hold_back_the_others(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "events.db")
    outbox = Outbox(tmp_path / "outbox.db")
    pushed: list[str] = []

    def push(frame: Any) -> None:
        if "bad" in set(frame["event_id"]):
            raise ValueError("size not on the chart")
        pushed.extend(frame["event_id"])

    deliverer = Deliverer(outbox, store, push, Metrics())
    outbox.put([("event", i, "U1", "S1", event(i).to_json()) for i in ("a", "bad", "b")])
    deliverer.deliver_once()
    assert sorted(pushed) == ["a", "b"] and store.count_events() == 3
    assert outbox.pending()["push"] == 0  # the refused one is set aside, with its error
    assert outbox.dead_letters()["push"] == 1 and outbox.dead()[0]["key"] == "bad"


def test_store_breaker_sends_writes_to_the_outbox(tmp_path: Path) -> None:
    class Down(SqliteEventStore):
        calls = 0

        def save_session(self, record: Any) -> None:
            Down.calls += 1
            raise StoreUnavailable("down")

        def save_sessions(self, records: Any) -> None:  # the batched write of new sessions
            Down.calls += 1
            raise StoreUnavailable("down")

        def get_session(self, session_id: str) -> Any:
            Down.calls += 1
            raise StoreUnavailable("down")

    services = make_services(tmp_path, lambda r: httpx.Response(200, json=model_answer()))

    class Quiet(Down):  # the deliverer's view of the same outage, not counted
        def save_session(self, record: Any) -> None:
            raise StoreUnavailable("down")

    services.store = Down(tmp_path / "down.db")
    services.deliverer.store = Quiet(tmp_path / "down.db")
    with TestClient(create_app(services), headers={"X-API-Key": KEY}) as client:
        ids = []
        for _ in range(6):
            started = client.post(
                "/api/v1/tryon/sessions", json={"user_id": "U1", "product_id": "P1"}
            )
            assert started.status_code == 201
            ids.append(started.json()["session_id"])
        assert Down.calls == 3  # the breaker opened after three failures
        assert services.outbox.pending()["session"] == 6
        fb = client.post(
            f"/api/v1/tryon/sessions/{ids[0]}/feedback",
            json={"event_id": "ev-b", "size": "M", "outcome": "fit"},
        )
        assert fb.status_code == 202  # the session is found in the outbox
        read = client.get(f"/api/v1/tryon/sessions/{ids[0]}")
        assert read.status_code == 503 and read.headers["Retry-After"]
