"""Fault injection on the session service with the real prediction service, PostgreSQL, Redis.

- The prediction service is stopped mid-run: sessions keep answering (degraded, from the size
  chart), then answer from the models again once it is back; every feedback event sent is
  stored exactly once.
- PostgreSQL (the event store) and Redis (the rate limiter) are cut behind a TCP proxy:
  reading a session answers a clear 503 with Retry-After, starting sessions and recording
  feedback still work, and once they are back every event reaches PostgreSQL.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from ml_pipeline.settings import Settings
from serving.session.store import PostgresEventStore, SqliteEventStore
from serving.session.testing import (
    ServiceProcess,
    TcpProxy,
    clone_workdir,
    free_port,
    start_together,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = "fault-test-key"
API = "/api/v1/tryon"


def examples(settings: Settings) -> list[dict[str, Any]]:
    lines = (settings.workdir / "examples" / "recommend.jsonl").read_text().splitlines()
    return [b for b in map(json.loads, lines) if b.get("user_id")]


def wait_until(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s: {what}")


@pytest.fixture(scope="module")
def clone(trained_workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return clone_workdir(trained_workdir, tmp_path_factory.mktemp("faults") / "var")


class Driver:
    """A shopper loop: start a session, send one feedback with a client event id."""

    def __init__(self, base: str, bodies: list[dict[str, Any]]) -> None:
        self.http = httpx.Client(base_url=base, headers={"X-API-Key": KEY}, timeout=10)
        self.bodies = bodies
        self.sent: list[str] = []
        self.degraded: list[bool] = []
        self.i = 0

    def step(self) -> dict[str, Any]:
        body = self.bodies[self.i % len(self.bodies)]
        self.i += 1
        started = self.http.post(f"{API}/sessions", json=body)
        assert started.status_code == 201, started.text
        session = started.json()
        self.degraded.append(session["degraded"])
        event_id = f"ev-{uuid.uuid4().hex}"
        fb = {"event_id": event_id, "size": session["recommended_size"], "outcome": "fit"}
        accepted = self.http.post(f"{API}/sessions/{session['session_id']}/feedback", json=fb)
        assert accepted.status_code == 202, accepted.text
        self.sent.append(event_id)
        if len(self.sent) % 5 == 0:  # a client retry: the same event id again
            again = self.http.post(f"{API}/sessions/{session['session_id']}/feedback", json=fb)
            assert again.status_code == 202 and again.json()["status"] == "duplicate"
        return session


def test_prediction_service_stopped_mid_run(clone: Settings, tmp_path: Path) -> None:
    predict_port = free_port()
    prediction = ServiceProcess(
        ["serve", "--workdir", str(clone.workdir)], predict_port, tmp_path / "predict.log"
    )
    sessions = ServiceProcess(
        ["session-service", "--workdir", str(clone.workdir), "--prediction-url", prediction.url],
        free_port(),
        tmp_path / "session.log",
        env={"FITML_API_KEYS": KEY, "FITML_RATE_LIMIT": "1000", "FITML_RATE_BURST": "1000"},
    )
    with ExitStack() as stack:
        start_together(stack, prediction, sessions)
        driver = Driver(sessions.url, examples(clone))
        for _ in range(10):
            driver.step()
        assert not any(driver.degraded), "the prediction service was up"

        prediction.stop()  # mid-run
        for _ in range(15):
            session = driver.step()
            assert session["degraded"] and session["degraded_reason"]
            assert session["recommended_size"] in {s["size"] for s in session["sizes"]}

        prediction.start()
        recovered = wait_until(
            lambda: not driver.step()["degraded"], 60, "sessions answered by the model again"
        )
        assert recovered
        for _ in range(5):
            assert not driver.step()["degraded"]

        metrics = driver.http.get("/metrics").text
        assert "fitml_session_degraded_answers_total" in metrics
        wait_until(
            lambda: driver.http.get("/readyz").json()["outbox_pending"]["event"] == 0,
            30,
            "every feedback event delivered to the event store",
        )
    store = SqliteEventStore(clone.workdir / "session" / "events.db")
    stored = {e.event_id for e in store.all_events()}
    print(
        f"\nfault injection: {len(driver.sent)} feedback events sent, "
        f"{len(stored & set(driver.sent))} stored, {sum(driver.degraded)} degraded answers "
        f"of {len(driver.degraded)} sessions"
    )
    assert stored == set(driver.sent) and len(driver.sent) == store.count_events()


@pytest.fixture
def proxied(postgres_dsn: str, redis_url: str) -> Iterator[tuple[TcpProxy, TcpProxy, str]]:
    pg, rd = TcpProxy("127.0.0.1", 5432), TcpProxy("127.0.0.1", 6379)
    dsn = postgres_dsn.replace("127.0.0.1:5432", f"127.0.0.1:{pg.port}")
    try:
        yield pg, rd, dsn
    finally:
        pg.close()
        rd.close()


def test_postgres_and_redis_down(
    clone: Settings, tmp_path: Path, proxied: tuple[TcpProxy, TcpProxy, str], postgres_dsn: str
) -> None:
    pg, rd, dsn = proxied
    prefix = f"fitml_tryon_t{uuid.uuid4().hex[:8]}"
    sessions = ServiceProcess(
        [
            "session-service",
            "--workdir",
            str(clone.workdir),
            "--prediction-url",
            f"http://127.0.0.1:{free_port()}",
        ],  # down: degraded answers
        free_port(),
        tmp_path / "session.log",
        env={
            "FITML_API_KEYS": KEY,
            "FITML_SESSION_DB": dsn,
            "FITML_SESSION_TABLES": prefix,
            "FITML_SESSION_REDIS": f"redis://127.0.0.1:{rd.port}/0",
            "FITML_RATE_LIMIT": "1000",
        },
    )
    direct = PostgresEventStore(postgres_dsn, prefix)
    try:
        with sessions:
            driver = Driver(sessions.url, examples(clone))
            first = driver.step()
            read = driver.http.get(f"{API}/sessions/{first['session_id']}")
            assert read.status_code == 200 and len(read.json()["feedback"]) == 1

            pg.cut()
            rd.cut()
            for _ in range(8):  # sessions and feedback keep working: the outbox holds them
                driver.step()
            down = driver.http.get(f"{API}/sessions/{first['session_id']}")
            assert down.status_code == 503, down.text
            assert "event store" in down.json()["detail"] and down.headers["Retry-After"]
            pending = driver.http.get("/readyz").json()["outbox_pending"]
            assert pending["event"] + pending["session"] > 0

            pg.restore()
            rd.restore()
            wait_until(
                lambda: (
                    sum(driver.http.get("/readyz").json()["outbox_pending"].values()) == 0
                    or driver.http.get("/readyz").json()["outbox_pending"]["push"] > 0
                ),
                40,
                "outbox delivered to PostgreSQL after it came back",
            )
            wait_until(
                lambda: driver.http.get("/readyz").json()["outbox_pending"]["event"] == 0,
                40,
                "events delivered",
            )
            wait_until(  # the app's store breaker lets a trial call through within 5 s
                lambda: driver.http.get(f"{API}/sessions/{first['session_id']}").status_code == 200,
                15,
                "sessions readable again",
            )
        stored = {e.event_id for e in direct.all_events()}
        print(
            f"\npostgres/redis down: {len(driver.sent)} feedback events sent, "
            f"{len(stored & set(driver.sent))} stored in PostgreSQL"
        )
        assert stored == set(driver.sent)
    finally:
        direct.drop()
        direct.close()


def test_postgres_store_is_idempotent(postgres_dsn: str) -> None:
    from datetime import UTC, datetime

    from serving.session.store import FeedbackEvent

    store = PostgresEventStore(postgres_dsn, f"fitml_tryon_t{uuid.uuid4().hex[:8]}")
    try:
        e = FeedbackEvent("e1", "s1", "u1", "p1", "M", 3, "fit", datetime.now(UTC), {"chest": "x"})
        assert store.add_events([e]) == ["e1"]
        assert store.add_events([e]) == []
        assert store.all_events()[0].notes == {"chest": "x"}
        assert store.forget_user("u1")[f"{store.prefix}_events"] == 1
    finally:
        store.drop()
        store.close()
