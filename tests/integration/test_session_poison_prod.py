"""Poison messages against the ``prod`` profile's event store: the real PostgreSQL.

- An event PostgreSQL refuses (a NUL in a JSONB note) is set aside in the dead-letter table
  with the reason, and every other event is stored.
- A fuzz of feedback notes through the API into PostgreSQL: a note is either refused at the
  API (422 naming the field) or stored and read back unchanged; nothing ends in the dead-letter
  table and nothing stays in the outbox.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.session.app import Services, create_app
from serving.session.charts import Chart, ChartBook
from serving.session.client import PredictionClient
from serving.session.config import ClientSettings, hash_key
from serving.session.delivery import Deliverer
from serving.session.observability import Metrics
from serving.session.security import KeyRing, LocalRateLimiter
from serving.session.store import FeedbackEvent, Outbox, PostgresEventStore

pytestmark = [pytest.mark.integration]

KEY = "poison-key"
CHART = Chart("P1", "chest", ("S", "M", "L"), (2, 3, 4), (80.0, 90.0, 100.0), (90.0, 100.0, 110.0))


def down(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("prediction service not needed here")


@pytest.fixture
def prod(postgres_dsn: str, tmp_path: Path) -> Iterator[Services]:
    store = PostgresEventStore(postgres_dsn, f"fitml_tryon_p{uuid.uuid4().hex[:8]}")
    outbox = Outbox(tmp_path / "outbox.db")
    metrics = Metrics()
    services = Services(
        client=PredictionClient(
            "http://p", ClientSettings(retries=0), transport=httpx.MockTransport(down)
        ),
        charts=ChartBook(None, None, [CHART]),
        store=store,
        outbox=outbox,
        deliverer=Deliverer(outbox, store, lambda f: None, metrics, interval_s=3600),
        limiter=LocalRateLimiter(100_000, 100_000),
        keys=KeyRing((hash_key(KEY),)),
        metrics=metrics,
    )
    try:
        yield services
    finally:
        store.drop()
        store.close()
        outbox.close()


def test_postgres_refusal_goes_to_the_dead_letter_table(prod: Services) -> None:
    now = datetime.now(UTC)
    events = [
        FeedbackEvent(f"e{i}", "S1", "U1", "P1", "M", 3, "fit", now, {"chest": note})
        for i, note in enumerate(["fine", "nul \x00 inside", "also fine", "\ud83d lone"])
    ]
    prod.outbox.put([("event", e.event_id, "U1", "S1", e.to_json()) for e in events])
    report = prod.deliverer.deliver_once()
    assert {e.event_id for e in prod.store.all_events()} == {"e0", "e2"}
    assert report.dead == {"event": 2} and prod.outbox.pending()["event"] == 0
    reasons = {d["key"]: d["reason"] for d in prod.outbox.dead()}
    assert set(reasons) == {"e1", "e3"}
    assert all(r.startswith("StoreRejected") for r in reasons.values())
    assert all("nul" not in r and "lone" not in r for r in reasons.values())


notes_text = st.text(
    alphabet=st.characters(codec=None, categories=None, exclude_categories=()), max_size=60
)


def test_fuzz_feedback_notes_into_postgres(prod: Services) -> None:
    with TestClient(create_app(prod), headers={"X-API-Key": KEY}) as client:
        started = client.post("/api/v1/tryon/sessions", json={"product_id": "P1", "user_id": "U1"})
        assert started.status_code == 201, started.text
        sid = started.json()["session_id"]
        accepted: dict[str, str] = {}

        @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
        @given(note=notes_text, area=st.sampled_from(["chest", "waist", "hips"]))
        def post(note: str, area: str) -> None:
            event_id = uuid.uuid4().hex
            body = {"event_id": event_id, "size": "M", "outcome": "fit", "notes": {area: note}}
            r = client.post(  # JSON escapes carry what UTF-8 cannot (lone surrogates)
                f"/api/v1/tryon/sessions/{sid}/feedback",
                content=json.dumps(body),
                headers={"Content-Type": "application/json"},
            )
            assert r.status_code in (202, 422), r.text
            if r.status_code == 422:
                assert f"notes.{area}" in r.json()["detail"]
            else:
                accepted[event_id] = note

        post()
        prod.deliverer.deliver_once()
    assert accepted, "the fuzz sent no storable note"
    assert prod.outbox.dead_letters()["event"] == 0
    assert prod.outbox.pending()["event"] == 0
    stored = {e.event_id: next(iter(e.notes.values()), None) for e in prod.store.all_events()}
    assert stored == accepted


def test_operators_list_and_replay_dead_letters_with_the_cli(
    postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fitml dead-letters list|replay --profile prod`` on the real PostgreSQL event store.

    A bad migration (a CHECK constraint) makes PostgreSQL refuse one event, a NUL note another;
    after the constraint is dropped, ``replay --all --deliver`` stores the first and sets the
    second aside again with its reason.
    """
    import psycopg
    from typer.testing import CliRunner

    from ml_pipeline.cli import app

    prefix = f"fitml_tryon_d{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("FITML_SESSION_DB", postgres_dsn)
    monkeypatch.setenv("FITML_SESSION_TABLES", prefix)
    store = PostgresEventStore(postgres_dsn, prefix)
    outbox = Outbox(tmp_path / "session" / "outbox.db")
    runner = CliRunner()
    where = ["--workdir", str(tmp_path), "--profile", "prod"]
    try:
        store.ensure()
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"ALTER TABLE {store.events} ADD CONSTRAINT no_xl CHECK (size <> 'XL')")
        now = datetime.now(UTC)
        events = [
            FeedbackEvent("e0", "S1", None, "P1", "M", 3, "fit", now, {"chest": "secret-a"}),
            FeedbackEvent("e1", "S1", None, "P1", "XL", 5, "fit", now, {"chest": "secret-b"}),
            FeedbackEvent("e2", "S1", None, "P1", "M", 3, "fit", now, {"chest": "se\x00cret-c"}),
            FeedbackEvent("e3", "S1", None, "P1", "L", 4, "fit", now, {}),
        ]
        outbox.put([("event", e.event_id, None, "S1", e.to_json()) for e in events])
        Deliverer(outbox, store, None, interval_s=3600).deliver_once()

        listed = runner.invoke(app, ["dead-letters", "list", *where, "--json"])
        assert listed.exit_code == 0, listed.output
        data = json.loads(listed.output)
        assert data["counts"]["event"] == 2
        reasons = {d["key"]: d["reason"] for d in data["items"]}
        assert set(reasons) == {"e1", "e2"}
        assert "no_xl" in reasons["e1"] and reasons["e2"].startswith("StoreRejected")
        assert "secret" not in listed.output  # no payload, no row data in a reason
        table = runner.invoke(app, ["dead-letters", "list", *where, "--kind", "event"])
        assert table.exit_code == 0 and "2 dead letter(s)" in table.output, table.output
        assert all(f" {k} " in table.output for k in ("e1", "e2"))

        unknown = runner.invoke(app, ["dead-letters", "replay", "9999", *where])
        assert unknown.exit_code == 2 and "9999" in unknown.output, unknown.output
        nothing = runner.invoke(app, ["dead-letters", "replay", *where])
        assert nothing.exit_code == 2 and "--all" in nothing.output, nothing.output
        assert outbox.dead_letters()["event"] == 2  # refused commands changed nothing

        with psycopg.connect(postgres_dsn, autocommit=True) as conn:  # the cause is fixed
            conn.execute(f"ALTER TABLE {store.events} DROP CONSTRAINT no_xl")
        replayed = runner.invoke(app, ["dead-letters", "replay", "--all", "--deliver", *where])
        assert replayed.exit_code == 0, replayed.output
        report = json.loads(replayed.output)
        assert report["requeued"] == 2 and report["delivered"] == ["event:e1"]
        assert [d["key"] for d in report["dead_again"]] == ["e2"] and report["pending"] == []
        assert {e.event_id for e in store.all_events()} == {"e0", "e1", "e3"}
        assert [d["key"] for d in outbox.dead()] == ["e2"]
        assert outbox.pending()["event"] == 0
    finally:
        store.drop()
        store.close()
        outbox.close()
