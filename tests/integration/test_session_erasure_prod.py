"""Erasure in the ``prod`` profile's event store leaves no readable copy in PostgreSQL's files.

``VACUUM FULL`` copies a deleted row into the table's new file while a transaction that started
before the delete is still open in the database. The tests hold such a transaction and read the
bytes of the database's directory (``strings`` would find the same): the store waits for it to
end, or says that the erasure is incomplete, and which transaction holds it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from conftest import require

from serving.session.store import (
    ErasureIncomplete,
    FeedbackEvent,
    PostgresEventStore,
    SessionRecord,
)

pytestmark = [pytest.mark.integration]


def database_dir(dsn: str) -> Path:
    with psycopg.connect(dsn, autocommit=True) as conn:
        data = conn.execute("SHOW data_directory").fetchone()
        oid = conn.execute(
            "SELECT oid FROM pg_database WHERE datname = current_database()"
        ).fetchone()
    assert data is not None and oid is not None
    path = Path(data[0]) / "base" / str(oid[0])
    require(
        path.is_dir() and any(path.iterdir()),
        f"PostgreSQL's data directory {path} is not readable here (run as its owner or root)",
        strict=False,
    )
    return path


def files_holding(dsn: str, directory: Path, needles: tuple[str, ...]) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # what shared buffers hold goes to the files
    found = []
    for path in directory.iterdir():
        try:
            data = path.read_bytes()
        except OSError:  # removed while we read
            continue
        if any(n.encode() in data for n in needles):
            found.append(path.name)
    return found


@pytest.fixture
def stored(postgres_dsn: str) -> Iterator[tuple[PostgresEventStore, str, str]]:
    store = PostgresEventStore(postgres_dsn, f"fitml_tryon_x{uuid.uuid4().hex[:8]}")
    user, note = f"erase-{uuid.uuid4().hex[:12]}", f"note-{uuid.uuid4().hex[:12]}"
    now = datetime.now(UTC)
    store.save_session(SessionRecord(f"S-{user}", now, user, "P1", {"user_id": user}))
    store.add_events(
        [
            FeedbackEvent(
                f"{user}-{i}", f"S-{user}", user, "P1", "M", 3, "fit", now, {"chest": note}
            )
            for i in range(3)
        ]
    )
    try:
        yield store, user, note
    finally:
        store.drop()
        store.close()


def test_forget_waits_for_older_transactions_and_leaves_no_bytes(
    postgres_dsn: str, stored: tuple[PostgresEventStore, str, str]
) -> None:
    store, user, note = stored
    directory = database_dir(postgres_dsn)
    assert files_holding(postgres_dsn, directory, (user, note))  # the probe can see them
    reader = psycopg.connect(postgres_dsn)  # a report that started before the erasure
    reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    reader.execute("SELECT count(*) FROM pg_class").fetchone()  # its snapshot, no lock on ours
    try:
        assert store.forget_user(user) == {store.events: 3, store.sessions: 1}
        ends = threading.Timer(1.5, reader.rollback)
        ends.start()
        store.compact(wait_s=30)
        ends.join()
    finally:
        reader.close()
    assert files_holding(postgres_dsn, directory, (user, note)) == []


def test_an_older_transaction_that_stays_open_is_named_and_a_rerun_finishes(
    postgres_dsn: str, stored: tuple[PostgresEventStore, str, str]
) -> None:
    store, user, note = stored
    directory = database_dir(postgres_dsn)
    reader = psycopg.connect(postgres_dsn, application_name="fitml-report")
    reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    reader.execute("SELECT count(*) FROM pg_class").fetchone()  # its snapshot, no lock on ours
    try:
        store.forget_user(user)
        with pytest.raises(ErasureIncomplete, match=r"fitml-report.*forget-user"):
            store.compact(wait_s=1)
        assert files_holding(postgres_dsn, directory, (user, note))  # still readable: said so
        reader.rollback()
        store.compact(wait_s=1)
    finally:
        reader.close()
    assert files_holding(postgres_dsn, directory, (user, note)) == []


def test_a_transaction_holding_a_lock_does_not_hang_the_erasure(
    postgres_dsn: str, stored: tuple[PostgresEventStore, str, str]
) -> None:
    store, user, _ = stored
    holder = psycopg.connect(postgres_dsn)
    holder.execute(f"SELECT count(*) FROM {store.events}").fetchone()  # ACCESS SHARE until commit
    try:
        store.forget_user(user)
        with pytest.raises(ErasureIncomplete, match="lock"):
            store.compact(wait_s=1)
    finally:
        holder.close()
    store.compact(wait_s=1)


def test_forget_user_reports_an_incomplete_erasure_and_finishes_the_rest(
    postgres_dsn: str,
    stored: tuple[PostgresEventStore, str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ml_pipeline.settings import load_settings
    from serving.session.forget import forget_user

    store, user, _ = stored
    monkeypatch.setenv("FITML_PSEUDONYM_KEY", "k1:" + "p" * 40)
    settings = load_settings("prod", tmp_path / "var")
    log = settings.workdir / "inference_log" / "x.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text(f'{{"user_id": "{user}"}}\n{{"user_id": "someone-else"}}\n')
    reader = psycopg.connect(postgres_dsn, application_name="fitml-report")
    reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    reader.execute("SELECT count(*) FROM pg_class").fetchone()
    try:
        report = forget_user(settings, user, postgres_dsn, store.prefix)
    finally:
        reader.close()
    assert report.removed[f"event_store:{store.events}"] == 3
    assert report.removed["jsonl:inference_log/x.jsonl"] == 1  # the other stores were done
    assert len(report.incomplete) == 1 and "fitml-report" in report.incomplete[0]
    assert report.as_dict()["incomplete"] == report.incomplete
