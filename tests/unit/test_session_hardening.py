"""Hostile clients and poison messages against the session service (in process, SQLite)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from test_session import grew

from serving.session.app import Services, create_app
from serving.session.charts import Chart, ChartBook
from serving.session.client import PredictionClient
from serving.session.config import ClientSettings, hash_key
from serving.session.delivery import Deliverer
from serving.session.observability import Metrics
from serving.session.security import KeyRing, LocalRateLimiter
from serving.session.store import (
    FeedbackEvent,
    Outbox,
    SqliteEventStore,
    StoreRejected,
    StoreUnavailable,
)

KEY = "hardening-key"
CHART = Chart(
    product_id="P1",
    dimension="chest",
    sizes=("S", "M", "L"),
    indices=(2, 3, 4),
    low=(80.0, 90.0, 100.0),
    high=(90.0, 100.0, 110.0),
)
FAST = ClientSettings(connect_timeout_s=0.05, read_timeout_s=0.1, retries=0, deadline_s=0.3)


def answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "recommended_size": "M",
            "confidence": 0.8,
            "runner_up": "L",
            "fit_note": "ok",
            "sizes": [
                {"size": s, "p_too_small": 0.1, "p_fit": 0.8, "p_too_large": 0.1}
                for s in CHART.sizes
            ],
            "model_versions": {"fit_model": "1", "size_model": "1"},
            "request_id": "r1",
            "fallbacks": [],
            "variant": "champion",
        },
    )


def services(tmp_path: Path, store: Any = None) -> Services:
    store = store or SqliteEventStore(tmp_path / "events.db")
    outbox = Outbox(tmp_path / "outbox.db")
    metrics = Metrics()
    return Services(
        client=PredictionClient("http://p", FAST, transport=httpx.MockTransport(answer)),
        charts=ChartBook(None, None, [CHART]),
        store=store,
        outbox=outbox,
        deliverer=Deliverer(outbox, store, lambda f: None, metrics, interval_s=60),
        limiter=LocalRateLimiter(1000, 1000),
        keys=KeyRing((hash_key(KEY),)),
        metrics=metrics,
    )


@pytest.fixture
def app_services(tmp_path: Path) -> Services:
    return services(tmp_path)


@pytest.fixture
def client(app_services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(app_services), headers={"X-API-Key": KEY}) as c:
        yield c


def start(client: TestClient) -> str:
    started = client.post("/api/v1/tryon/sessions", json={"user_id": "U1", "product_id": "P1"})
    assert started.status_code == 201, started.text
    return str(started.json()["session_id"])


def event(event_id: str, note: str = "fine") -> FeedbackEvent:
    return FeedbackEvent(
        event_id, "S1", "U1", "P1", "M", 3, "fit", datetime.now(UTC), {"chest": note}
    )


# -- poison messages --------------------------------------------------------------------


@pytest.mark.parametrize("note", ["a\x00b", "\ud800", "bell\x07", "\x1b[31m"])
def test_notes_a_store_cannot_hold_are_422_naming_the_field(client: TestClient, note: str) -> None:
    sid = start(client)
    body = {"event_id": "e-poison", "size": "M", "outcome": "fit", "notes": {"chest": note}}
    response = client.post(  # as JSON escapes (\ud800), the way a client sends what UTF-8 cannot
        f"/api/v1/tryon/sessions/{sid}/feedback",
        content=json.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "notes.chest" in detail and ("U+" in detail or "unicode" in detail)
    assert note not in detail


def test_plain_text_notes_with_newlines_and_accents_are_accepted(client: TestClient) -> None:
    sid = start(client)
    note = "tight across the chest,\n\tloose at the hem: très étroit 👗"
    response = client.post(
        f"/api/v1/tryon/sessions/{sid}/feedback",
        json={"event_id": "e-ok", "size": "M", "outcome": "fit", "notes": {"chest": note}},
    )
    assert response.status_code == 202, response.text


class RefusingStore(SqliteEventStore):
    """The real SQLite store that refuses (as PostgreSQL would) events with a marked note."""

    def add_events(self, events: Any) -> list[str]:
        if any("POISON" in e.notes.get("chest", "") for e in events):
            raise StoreRejected("refused: POISON")
        return super().add_events(events)


def test_a_poison_event_is_set_aside_and_the_rest_flows(tmp_path: Path) -> None:
    store = RefusingStore(tmp_path / "events.db")
    s = services(tmp_path, store)
    items = [("event", e.event_id, "U1", "S1", e.to_json()) for e in (event("a"), event("b"))]
    items.insert(1, ("event", "bad", "U1", "S1", event("bad", "POISON").to_json()))
    s.outbox.put(items)
    report = s.deliverer.deliver_once()
    assert {e.event_id for e in store.all_events()} == {"a", "b"}
    assert report.dead == {"event": 1}
    assert s.outbox.pending()["event"] == 0
    assert s.outbox.dead_letters()["event"] == 1
    dead = s.outbox.dead()
    assert dead[0]["key"] == "bad" and dead[0]["reason"].startswith("StoreRejected")
    with TestClient(create_app(s), headers={"X-API-Key": KEY}) as c:
        assert c.get("/readyz").json()["dead_letters"]["event"] == 1
        metrics = c.get("/metrics").text
        assert 'fitml_session_dead_letters_total{kind="event"} 1.0' in metrics
        assert 'fitml_session_dead_letter_items{kind="event"} 1.0' in metrics
    # Later feedback keeps flowing; the dead letter can be requeued once the cause is fixed.
    s.outbox.put([("event", "c", "U1", "S1", event("c").to_json())])
    s.deliverer.deliver_once()
    assert {e.event_id for e in store.all_events()} == {"a", "b", "c"}
    assert s.outbox.requeue([dead[0]["id"]]) == 1 and s.outbox.pending()["event"] == 1


def test_a_store_that_goes_down_mid_isolation_keeps_the_rest(tmp_path: Path) -> None:
    class Falling(SqliteEventStore):
        calls = 0

        def add_events(self, events: Any) -> list[str]:
            Falling.calls += 1
            if Falling.calls == 1:
                raise StoreRejected("batch refused")
            raise StoreUnavailable("down now")

    s = services(tmp_path, Falling(tmp_path / "events.db"))
    s.outbox.put([("event", i, "U1", "S1", event(i).to_json()) for i in ("a", "b", "c")])
    report = s.deliverer.deliver_once()
    assert s.outbox.dead_letters()["event"] == 0 and not report.dead
    assert s.outbox.pending()["event"] == 3


def test_an_unreadable_outbox_payload_is_set_aside(tmp_path: Path) -> None:
    s = services(tmp_path)
    s.outbox.put(
        [("event", "x", "U1", "S1", "{not json"), ("event", "a", "U1", "S1", event("a").to_json())]
    )
    s.deliverer.deliver_once()
    assert s.store.count_events() == 1 and s.outbox.dead_letters()["event"] == 1


# -- idempotency ------------------------------------------------------------------------


def test_feedback_without_an_idempotency_key_is_400(client: TestClient) -> None:
    sid = start(client)
    url = f"/api/v1/tryon/sessions/{sid}/feedback"
    missing = client.post(url, json={"size": "M", "outcome": "fit"})
    assert missing.status_code == 400, missing.text
    assert "event_id" in missing.json()["detail"] and "Idempotency-Key" in missing.json()["detail"]
    by_header = client.post(
        url, json={"size": "M", "outcome": "fit"}, headers={"Idempotency-Key": "hdr-1"}
    )
    assert by_header.status_code == 202 and by_header.json()["event_id"] == "hdr-1"
    again = client.post(url, json={"event_id": "hdr-1", "size": "M", "outcome": "fit"})
    assert again.json()["status"] == "duplicate"
    clash = client.post(
        url,
        json={"event_id": "a", "size": "M", "outcome": "fit"},
        headers={"Idempotency-Key": "b"},
    )
    assert clash.status_code == 400 and "differ" in clash.json()["detail"]
    bad = client.post(
        url, json={"size": "M", "outcome": "fit"}, headers={"Idempotency-Key": "has space"}
    )
    assert bad.status_code == 422 and "Idempotency-Key" in bad.json()["detail"]


def test_a_new_event_delivered_at_once_is_still_accepted_and_counted(tmp_path: Path) -> None:
    """Background delivery right after the outbox write must not turn the answer "duplicate"."""

    class EagerOutbox(Outbox):
        deliverer: Deliverer

        def put(self, items: Any) -> int:
            n = super().put(items)
            self.deliverer.deliver_once()
            return n

        def accept(self, *args: Any) -> bool:
            new = super().accept(*args)
            self.deliverer.deliver_once()
            return new

    s = services(tmp_path)
    s.outbox = EagerOutbox(tmp_path / "eager.db")
    s.deliverer = Deliverer(s.outbox, s.store, lambda f: None, s.metrics, interval_s=60)
    s.outbox.deliverer = s.deliverer
    s.metrics.feedback.labels("fit")  # a baseline: values may be shared (BentoML, multiprocess)
    with TestClient(create_app(s), headers={"X-API-Key": KEY}) as c:
        before = c.get("/metrics").text
        sid = start(c)
        url = f"/api/v1/tryon/sessions/{sid}/feedback"
        answers = [
            c.post(url, json={"event_id": f"n{i}", "size": "M", "outcome": "fit"}).json()
            for i in range(5)
        ]
        assert [a["status"] for a in answers] == ["accepted"] * 5
        resent = c.post(url, json={"event_id": "n0", "size": "M", "outcome": "fit"}).json()
        assert resent["status"] == "duplicate"
        after = c.get("/metrics").text
        assert grew(before, after, 'fitml_session_feedback_total{outcome="fit"}') == 5
    assert s.store.count_events() == 5


# -- erasure ----------------------------------------------------------------------------


def test_forget_user_leaves_no_readable_copy_on_disk(tmp_path: Path) -> None:
    """What `strings` would find in the files (free pages, write-ahead logs), not only rows."""
    from ml_pipeline.settings import load_settings
    from serving.session.forget import forget_user

    settings = load_settings("local", tmp_path / "var")
    state = settings.workdir / "session"
    store = SqliteEventStore(state / "events.db")
    outbox = Outbox(state / "outbox.db")
    secret_user, secret_note = "erase-me-7f3a", "private-note-x91q"
    now = datetime.now(UTC)
    events = [
        FeedbackEvent(
            f"ev{i}",
            f"s{i}",
            secret_user if i % 2 else "keep-u",
            "P1",
            "M",
            3,
            "fit",
            now,
            {"chest": f"{secret_note} {i}" if i % 2 else "kept note"},
        )
        for i in range(200)
    ]
    store.add_events(events)
    outbox.put([("event", f"p{i}", secret_user, "s1", events[1].to_json()) for i in range(50)])
    outbox.put([("event", "d1", secret_user, "s1", events[1].to_json())])
    outbox.bury([i.id for i in outbox.due("event") if i.key == "d1"], "StoreRejected: test")
    # The service keeps both files open while forget-user runs as another process.
    report = forget_user(settings, secret_user, "sqlite")
    assert report.removed["event_store:fitml_tryon_events"] == 100
    assert report.removed["outbox"] == 51
    assert {e.user_id for e in store.all_events()} == {"keep-u"}
    leftovers = {
        path.name: [m for m in (secret_user, secret_note) if m.encode() in path.read_bytes()]
        for path in state.iterdir()
        if path.is_file()
    }
    assert not any(leftovers.values()), leftovers
    assert any(b"kept note" in p.read_bytes() for p in state.iterdir() if p.is_file())
    store.close()
    outbox.close()


# -- hostile clients: auth before body, caps --------------------------------------------


def asgi_call(app: Any, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, int]:
    """One request straight through the ASGI app; returns the status and body reads."""
    import asyncio

    reads = 0
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if reads == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/tryon/sessions",
        "raw_path": b"/api/v1/tryon/sessions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"t"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "state": {},
    }
    asyncio.run(app(scope, receive, send))
    return statuses[0], reads


def test_no_key_is_401_before_the_body_is_read(app_services: Services) -> None:
    app = create_app(app_services)
    big = b'{"product_id": "' + b"x" * 60_000 + b'"}'
    status, reads = asgi_call(app, [(b"content-length", str(len(big)).encode())], big)
    assert status == 401 and reads == 0


def test_oversized_bodies_are_413_with_a_valid_key(app_services: Services) -> None:
    app = create_app(app_services)
    big = b'{"product_id": "' + b"x" * 200_000 + b'"}'
    key = [(b"x-api-key", KEY.encode())]
    status, reads = asgi_call(app, [*key, (b"content-length", str(len(big)).encode())], big)
    assert status == 413 and reads == 0
    status, _ = asgi_call(app, key, big)  # no declared length: counted while read
    assert status == 413
