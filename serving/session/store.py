"""The event store (sessions and feedback events) and the durable delivery outbox.

- :class:`SqliteEventStore` (local profile, under ``<workdir>/session/``) and
  :class:`PostgresEventStore` (prod) hold the tables ``<prefix>_sessions`` and
  ``<prefix>_events``; events are keyed by ``event_id``, so writing one twice stores it once.
- :class:`Outbox` is a SQLite file on local disk (synchronous=FULL) of writes not yet
  delivered: sessions and events for the event store, pushes for the online feature store.
  Feedback is written here first, so nothing is lost while a store is down.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from ml_pipeline.errors import FitmlError
from ml_pipeline.schema import EVENT_COLUMNS

DEFAULT_PREFIX = "fitml_tryon"


class StoreUnavailable(RuntimeError):
    """The event store did not answer (down, unreachable, or refused the connection)."""


class StoreRejected(ValueError):
    """The event store answered but refused this data: sending it again will not help."""


class ErasureIncomplete(FitmlError, RuntimeError):
    """Deleted rows are still readable in a store's files (the message says why and what to do)."""


@dataclass(frozen=True)
class SessionRecord:
    """A stored session: its keys and the session body (the API's ``Session`` as JSON)."""

    session_id: str
    created_at: datetime
    user_id: str | None
    product_id: str
    body: dict[str, Any]

    def to_json(self) -> str:
        """The record as one JSON document (for the outbox)."""
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> SessionRecord:
        """Rebuild a record written by :meth:`to_json`."""
        data = json.loads(text)
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        return cls(**data)


@dataclass(frozen=True)
class FeedbackEvent:
    """One try-on feedback event (the event contract plus its session and notes)."""

    event_id: str
    session_id: str
    user_id: str | None
    product_id: str
    size: str
    size_index: int
    outcome: str
    event_timestamp: datetime
    notes: dict[str, str] = field(default_factory=dict)
    traceparent: str | None = field(default=None, compare=False)
    """The W3C ``traceparent`` of the request that accepted it: its delivery (event store,
    Feast push) continues that trace. Travels in the outbox only, never stored."""
    session_traceparent: str | None = field(default=None, compare=False)
    """The ``traceparent`` of its session's start, which the delivery spans link to."""

    def to_json(self) -> str:
        """The event as one JSON document (for the outbox)."""
        data = asdict(self)
        data["event_timestamp"] = self.event_timestamp.isoformat()
        for key in ("traceparent", "session_traceparent"):  # absent while tracing is off
            if data[key] is None:
                del data[key]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> FeedbackEvent:
        """Rebuild an event written by :meth:`to_json`."""
        data = json.loads(text)
        data["event_timestamp"] = datetime.fromisoformat(data["event_timestamp"])
        return cls(**data)


def events_frame(events: Iterable[FeedbackEvent]) -> pd.DataFrame:
    """Events as a frame with exactly the contract's columns (``ml_pipeline.schema``)."""
    rows = [
        {
            "event_id": e.event_id,
            "user_id": e.user_id,
            "product_id": e.product_id,
            "size": e.size,
            "size_index": int(e.size_index),
            "outcome": e.outcome,
            "event_timestamp": e.event_timestamp,
        }
        for e in events
    ]
    frame = pd.DataFrame(rows, columns=list(EVENT_COLUMNS))
    frame["size_index"] = frame["size_index"].astype("int64")
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame


class EventStore(Protocol):
    """What the session service needs of an event store."""

    def ensure(self) -> None:
        """Create the tables if they do not exist."""
        ...

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store answers."""
        ...

    def save_session(self, record: SessionRecord) -> None:
        """Store a session (once: a second write of the same id is ignored)."""
        ...

    def get_session(self, session_id: str) -> SessionRecord | None:
        """The stored session, or None."""
        ...

    def add_events(self, events: Sequence[FeedbackEvent]) -> list[str]:
        """Store events; returns the ids that were new (the others were stored before)."""
        ...

    def has_event(self, event_id: str) -> bool:
        """Whether the event is stored."""
        ...

    def unpushed(self, event_ids: Sequence[str]) -> list[str]:
        """Of ``event_ids``, those stored but not yet marked as pushed online."""
        ...

    def mark_pushed(self, event_ids: Sequence[str]) -> None:
        """Record that the events were pushed to the online store."""
        ...

    def session_events(self, session_id: str) -> list[FeedbackEvent]:
        """The events of a session, oldest first."""
        ...

    def all_events(self) -> list[FeedbackEvent]:
        """Every stored event, oldest first."""
        ...

    def count_events(self) -> int:
        """How many events are stored."""
        ...

    def forget_user(self, user_id: str) -> dict[str, int]:
        """Delete the user's sessions and events; returns rows deleted per table."""
        ...

    def compact(self) -> None:
        """Leave no readable copy of deleted rows in the store's files (after forgetting)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class _SqlEventStore:
    """The SQL both stores share; subclasses give the connection and dialect."""

    placeholder = "?"

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not prefix.replace("_", "").isalnum():
            raise ValueError(f"table prefix {prefix!r}: use letters, digits and underscores")
        self.prefix = prefix
        self.sessions = f"{prefix}_sessions"
        self.events = f"{prefix}_events"

    # -- dialect hooks -------------------------------------------------------------------
    def _ddl(self) -> list[str]:
        raise NotImplementedError

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        raise NotImplementedError
        yield

    def _ts_in(self, value: datetime) -> Any:
        return value

    def _ts_out(self, value: Any) -> datetime:
        return value if isinstance(value, datetime) else datetime.fromisoformat(value)

    # -- the store -----------------------------------------------------------------------
    def _sql(self, text: str) -> str:
        return text.replace("?", self.placeholder)

    def ensure(self) -> None:
        """Create the tables if they do not exist (done on every new connection anyway)."""
        with self._cursor():
            pass

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store answers."""
        with self._cursor() as cur:
            cur.execute("SELECT 1")

    def save_session(self, record: SessionRecord) -> None:
        """Store a session (once)."""
        with self._cursor() as cur:
            cur.execute(
                self._sql(
                    f"INSERT INTO {self.sessions} (session_id, created_at, user_id, product_id, "
                    "body) VALUES (?, ?, ?, ?, ?) ON CONFLICT (session_id) DO NOTHING"
                ),
                (
                    record.session_id,
                    self._ts_in(record.created_at),
                    record.user_id,
                    record.product_id,
                    json.dumps(record.body),
                ),
            )

    def save_sessions(self, records: Sequence[SessionRecord]) -> None:
        """Store sessions in one transaction (each once), as :meth:`save_session` does."""
        with self._cursor() as cur:
            cur.executemany(
                self._sql(
                    f"INSERT INTO {self.sessions} (session_id, created_at, user_id, product_id, "
                    "body) VALUES (?, ?, ?, ?, ?) ON CONFLICT (session_id) DO NOTHING"
                ),
                [
                    (
                        r.session_id,
                        self._ts_in(r.created_at),
                        r.user_id,
                        r.product_id,
                        json.dumps(r.body),
                    )
                    for r in records
                ],
            )

    def get_session(self, session_id: str) -> SessionRecord | None:
        """The stored session, or None."""
        with self._cursor() as cur:
            cur.execute(
                self._sql(
                    f"SELECT session_id, created_at, user_id, product_id, body FROM "
                    f"{self.sessions} WHERE session_id = ?"
                ),
                (session_id,),
            )
            row = cur.fetchone()
        if row is None:
            return None
        body = row[4] if isinstance(row[4], dict) else json.loads(row[4])
        return SessionRecord(row[0], self._ts_out(row[1]), row[2], row[3], body)

    def add_events(self, events: Sequence[FeedbackEvent]) -> list[str]:
        """Store events once each; returns the ids that were new."""
        new: list[str] = []
        now = self._ts_in(datetime.now(UTC))
        with self._cursor() as cur:
            for e in events:
                cur.execute(
                    self._sql(
                        f"INSERT INTO {self.events} (event_id, session_id, user_id, product_id, "
                        "size, size_index, outcome, notes, event_timestamp, stored_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING "
                        "RETURNING event_id"
                    ),
                    (
                        e.event_id,
                        e.session_id,
                        e.user_id,
                        e.product_id,
                        e.size,
                        int(e.size_index),
                        e.outcome,
                        json.dumps(e.notes),
                        self._ts_in(e.event_timestamp),
                        now,
                    ),
                )
                if cur.fetchone() is not None:
                    new.append(e.event_id)
        return new

    def has_event(self, event_id: str) -> bool:
        """Whether the event is stored."""
        with self._cursor() as cur:
            cur.execute(self._sql(f"SELECT 1 FROM {self.events} WHERE event_id = ?"), (event_id,))
            return cur.fetchone() is not None

    def unpushed(self, event_ids: Sequence[str]) -> list[str]:
        """Of ``event_ids``, those stored but not yet pushed online."""
        out = []
        with self._cursor() as cur:
            for event_id in event_ids:
                cur.execute(
                    self._sql(
                        f"SELECT 1 FROM {self.events} WHERE event_id = ? AND pushed_at IS NULL"
                    ),
                    (event_id,),
                )
                if cur.fetchone() is not None:
                    out.append(event_id)
        return out

    def mark_pushed(self, event_ids: Sequence[str]) -> None:
        """Record that the events were pushed online."""
        now = self._ts_in(datetime.now(UTC))
        with self._cursor() as cur:
            for event_id in event_ids:
                cur.execute(
                    self._sql(f"UPDATE {self.events} SET pushed_at = ? WHERE event_id = ?"),
                    (now, event_id),
                )

    def _select_events(self, where: str, args: tuple[Any, ...]) -> list[FeedbackEvent]:
        with self._cursor() as cur:
            cur.execute(
                self._sql(
                    f"SELECT event_id, session_id, user_id, product_id, size, size_index, "
                    f"outcome, event_timestamp, notes FROM {self.events} {where} "
                    "ORDER BY event_timestamp, event_id"
                ),
                args,
            )
            rows = cur.fetchall()
        return [
            FeedbackEvent(
                event_id=r[0],
                session_id=r[1],
                user_id=r[2],
                product_id=r[3],
                size=r[4],
                size_index=int(r[5]),
                outcome=r[6],
                event_timestamp=self._ts_out(r[7]),
                notes=r[8] if isinstance(r[8], dict) else json.loads(r[8] or "{}"),
            )
            for r in rows
        ]

    def session_events(self, session_id: str) -> list[FeedbackEvent]:
        """The events of a session, oldest first."""
        return self._select_events(self._sql("WHERE session_id = ?"), (session_id,))

    def all_events(self) -> list[FeedbackEvent]:
        """Every stored event, oldest first."""
        return self._select_events("", ())

    def count_events(self) -> int:
        """How many events are stored."""
        with self._cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {self.events}")
            return int(cur.fetchone()[0])

    def forget_user(self, user_id: str) -> dict[str, int]:
        """Delete the user's sessions and events; returns rows deleted per table."""
        removed = {}
        with self._cursor() as cur:
            for table in (self.events, self.sessions):
                cur.execute(self._sql(f"DELETE FROM {table} WHERE user_id = ?"), (user_id,))
                removed[table] = int(cur.rowcount)
        return removed

    def drop(self) -> None:
        """Drop both tables (tests clean up with this)."""
        with self._cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {self.events}")
            cur.execute(f"DROP TABLE IF EXISTS {self.sessions}")


class SqliteEventStore(_SqlEventStore):
    """The event store of the local profile: one SQLite file (WAL, synchronous=FULL)."""

    def __init__(self, path: Path, prefix: str = DEFAULT_PREFIX) -> None:
        super().__init__(prefix)
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten, not freed
            with conn:
                for statement in self._ddl():
                    conn.execute(statement)
            self._conn = conn
        return self._conn

    def _ddl(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.sessions} (session_id TEXT PRIMARY KEY, "
            "created_at TEXT NOT NULL, user_id TEXT, product_id TEXT NOT NULL, body TEXT NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {self.sessions}_user ON {self.sessions} (user_id)",
            f"CREATE TABLE IF NOT EXISTS {self.events} (event_id TEXT PRIMARY KEY, "
            "session_id TEXT NOT NULL, user_id TEXT, product_id TEXT NOT NULL, size TEXT NOT NULL, "
            "size_index INTEGER NOT NULL, outcome TEXT NOT NULL, notes TEXT NOT NULL, "
            "event_timestamp TEXT NOT NULL, stored_at TEXT NOT NULL, pushed_at TEXT)",
            f"CREATE INDEX IF NOT EXISTS {self.events}_session ON {self.events} (session_id)",
            f"CREATE INDEX IF NOT EXISTS {self.events}_user ON {self.events} (user_id)",
        ]

    def _ts_in(self, value: datetime) -> Any:
        return value.astimezone(UTC).isoformat()

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        with self._lock:
            try:
                conn = self._connect()
                with conn:
                    yield conn.cursor()
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"SQLite event store {self.path}: {exc}") from exc
            except (sqlite3.DataError, sqlite3.IntegrityError, UnicodeError) as exc:
                raise StoreRejected(f"SQLite event store refused the data: {exc}") from exc

    def compact(self) -> None:
        """Rewrite the file without free pages and empty its write-ahead log."""
        with self._lock:
            try:
                scrub_sqlite(self._connect())
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"SQLite event store {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def scrub_sqlite(conn: sqlite3.Connection) -> None:
    """Leave no deleted row readable in a SQLite database's files.

    ``secure_delete`` overwrites what later deletes free; ``VACUUM`` rewrites the file without
    free pages (where rows deleted earlier still sit); ``wal_checkpoint(TRUNCATE)`` copies the
    write-ahead log into the file and truncates it to zero bytes (old frames hold old rows).
    """
    conn.commit()
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("VACUUM")
    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy:
        raise sqlite3.OperationalError(
            "write-ahead log not truncated: another connection is reading; run again"
        )


class PostgresEventStore(_SqlEventStore):
    """The event store of the prod profile: PostgreSQL, one connection re-opened on failure."""

    placeholder = "%s"

    def __init__(self, dsn: str, prefix: str = DEFAULT_PREFIX, connect_timeout_s: int = 2) -> None:
        super().__init__(prefix)
        self.dsn = dsn
        self.connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._conn: Any = None

    def _ddl(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.sessions} (session_id TEXT PRIMARY KEY, "
            "created_at TIMESTAMPTZ NOT NULL, user_id TEXT, product_id TEXT NOT NULL, "
            "body JSONB NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {self.sessions}_user ON {self.sessions} (user_id)",
            f"CREATE TABLE IF NOT EXISTS {self.events} (event_id TEXT PRIMARY KEY, "
            "session_id TEXT NOT NULL, user_id TEXT, product_id TEXT NOT NULL, size TEXT NOT NULL, "
            "size_index INTEGER NOT NULL, outcome TEXT NOT NULL, notes JSONB NOT NULL, "
            "event_timestamp TIMESTAMPTZ NOT NULL, stored_at TIMESTAMPTZ NOT NULL, "
            "pushed_at TIMESTAMPTZ)",
            f"CREATE INDEX IF NOT EXISTS {self.events}_session ON {self.events} (session_id)",
            f"CREATE INDEX IF NOT EXISTS {self.events}_user ON {self.events} (user_id)",
        ]

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        import psycopg

        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    conn = psycopg.connect(
                        self.dsn, connect_timeout=self.connect_timeout_s, autocommit=False
                    )
                    with conn.transaction(), conn.cursor() as cur:
                        for statement in self._ddl():
                            cur.execute(statement)
                    self._conn = conn
                with self._conn.transaction(), self._conn.cursor() as cur:
                    yield cur
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                raise StoreUnavailable(f"PostgreSQL event store: {exc}".strip()) from exc
            except (psycopg.DataError, psycopg.IntegrityError, UnicodeError) as exc:
                # The transaction was rolled back; the connection is still good.
                raise StoreRejected(f"PostgreSQL event store refused the data: {exc}") from exc

    def compact(self, wait_s: float = 30.0) -> None:
        """``VACUUM FULL`` both tables: rewritten into new files without the deleted rows.

        ``VACUUM FULL`` copies a deleted row into the new file while any transaction that
        started before the delete is still open in this database (it might still read it), so
        this first waits up to ``wait_s`` for such transactions to end, then checks what
        ``VACUUM`` reports it had to keep. It locks the tables while it runs (writes wait; the
        session service's outbox holds feedback meanwhile). PostgreSQL's own write-ahead log
        and backups are out of reach here: they age out with the server's WAL retention and
        backup policy.

        Raises:
            ErasureIncomplete: a transaction older than the delete stayed open (named by pid
                and application), so deleted rows were kept; end it and compact again
                (``fitml forget-user`` again).
            StoreUnavailable: PostgreSQL is unreachable.
        """
        import psycopg

        try:
            with psycopg.connect(
                self.dsn, connect_timeout=self.connect_timeout_s, autocommit=True
            ) as conn:
                row = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
                horizon = row[0] if row else "0"
                deadline = time.monotonic() + wait_s
                while True:
                    older = conn.execute(
                        "SELECT pid, COALESCE(NULLIF(application_name, ''), '?'), "
                        "COALESCE(state, '?') FROM pg_stat_activity WHERE datname = "
                        "current_database() AND pid <> pg_backend_pid() AND backend_xmin IS NOT "
                        "NULL AND age(backend_xmin) > age(xid(%s::xid8)) ORDER BY xact_start",
                        (horizon,),
                    ).fetchall()
                    if not older or time.monotonic() >= deadline:
                        break
                    time.sleep(0.5)
                notes: list[str] = []
                conn.add_notice_handler(
                    lambda d: notes.append(f"{d.message_primary} {d.message_detail or ''}")
                )
                conn.execute(f"SET lock_timeout = {max(1000, int(wait_s * 1000))}")
                for table in (self.events, self.sessions):
                    conn.execute(f"VACUUM (FULL, VERBOSE) {table}")
        except psycopg.errors.LockNotAvailable:
            raise ErasureIncomplete(
                f"VACUUM FULL of {self.events} / {self.sessions} waited {wait_s:g} s for a "
                "transaction holding a lock on them; the deleted rows may still be readable in "
                "the files: end that transaction and run `fitml forget-user` again to compact"
            ) from None
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL event store: {exc}".strip()) from exc
        kept = sum(
            int(n) for note in notes for n in re.findall(r"(\d+) dead row versions? cannot", note)
        )
        if kept:
            holders = ", ".join(f"pid {pid} ({app}, {state})" for pid, app, state in older[:5])
            raise ErasureIncomplete(
                f"PostgreSQL kept {kept} deleted row version(s) of {self.events} / "
                f"{self.sessions} in its files: transaction(s) older than the erasure are still "
                f"open ({holders or 'not visible to this user'}); end them (or wait for them to "
                "finish) and run `fitml forget-user` again to compact"
            )

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def save_sessions(store: EventStore, records: Sequence[SessionRecord]) -> None:
    """Store sessions in one transaction where the store can, else one by one."""
    batch = getattr(store, "save_sessions", None)
    if batch is not None:
        batch(records)
        return
    for record in records:
        store.save_session(record)


def open_event_store(spec: str, state_dir: Path, prefix: str = DEFAULT_PREFIX) -> EventStore:
    """The event store ``spec`` names: ``sqlite`` (under ``state_dir``) or a PostgreSQL DSN."""
    if spec == "sqlite":
        return SqliteEventStore(Path(state_dir) / "events.db", prefix)
    return PostgresEventStore(spec, prefix)


@dataclass(frozen=True)
class OutboxItem:
    """One write not yet delivered."""

    id: int
    kind: str
    key: str
    payload: str
    attempts: int


class Outbox:
    """Durable, local queue of writes to deliver (SQLite, synchronous=FULL).

    An item is unique per (kind, key) while pending; it leaves the outbox only once delivered.
    """

    KINDS = ("session", "event", "push", "pushed")

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA secure_delete=ON")  # delivered payloads are overwritten
        with self._conn:
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "kind TEXT NOT NULL, key TEXT NOT NULL, user_id TEXT, session_id TEXT, "
                "payload TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, due REAL NOT NULL, "
                "last_error TEXT, created REAL NOT NULL, UNIQUE (kind, key))"
            )
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS accepted (key TEXT PRIMARY KEY, at REAL NOT NULL)"
            )
            self._conn.execute("CREATE INDEX IF NOT EXISTS accepted_at ON accepted (at)")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS dead_letter (id INTEGER PRIMARY KEY, "
                "kind TEXT NOT NULL, key TEXT NOT NULL, user_id TEXT, session_id TEXT, "
                "payload TEXT NOT NULL, attempts INTEGER NOT NULL, reason TEXT NOT NULL, "
                "created REAL NOT NULL, dead_at REAL NOT NULL)"
            )

    def put(self, items: Sequence[tuple[str, str, str | None, str | None, str]]) -> int:
        """Add (kind, key, user_id, session_id, payload) items in one transaction.

        Returns:
            How many were new (an item already pending is not added twice).
        """
        now = time.time()
        with self._lock, self._conn:
            before = self._conn.total_changes
            self._conn.executemany(
                "INSERT OR IGNORE INTO outbox (kind, key, user_id, session_id, payload, due, "
                "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(k, key, u, s, p, now, now) for k, key, u, s, p in items],
            )
            return self._conn.total_changes - before

    def accept(
        self, kind: str, key: str, user_id: str | None, session_id: str, payload: str
    ) -> bool:
        """Add an item unless its key was accepted before, in one transaction.

        The answer to "is this a new event?" comes from this one atomic check of the
        ``accepted`` table (kept for :meth:`prune_accepted`'s window), not from the outbox or
        the event store, whose contents move while the background delivery runs.

        Returns:
            True if the key is new (the item was added), False if it was accepted before.
        """
        now = time.time()
        with self._lock, self._conn:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO accepted (key, at) VALUES (?, ?)", (f"{kind}:{key}", now)
            )
            if cur.rowcount == 0:
                return False
            self._conn.execute(
                "INSERT OR IGNORE INTO outbox (kind, key, user_id, session_id, payload, due, "
                "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (kind, key, user_id, session_id, payload, now, now),
            )
            return True

    def prune_accepted(self, max_age_s: float) -> int:
        """Forget accepted keys older than ``max_age_s`` (the idempotency window)."""
        with self._lock, self._conn:
            cur = self._conn.execute(
                "DELETE FROM accepted WHERE at < ?", (time.time() - max_age_s,)
            )
            return int(cur.rowcount)

    def find(self, kind: str, key: str) -> str | None:
        """The payload of a pending item, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT payload FROM outbox WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
        return None if row is None else str(row[0])

    def of_session(self, kind: str, session_id: str) -> list[str]:
        """Payloads of pending items of a session."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT payload FROM outbox WHERE kind = ? AND session_id = ? ORDER BY id",
                (kind, session_id),
            ).fetchall()
        return [str(r[0]) for r in rows]

    def due(self, kind: str, limit: int = 500, now: float | None = None) -> list[OutboxItem]:
        """Items of ``kind`` whose next attempt is due."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, kind, key, payload, attempts FROM outbox WHERE kind = ? AND due <= ? "
                "ORDER BY id LIMIT ?",
                (kind, now, limit),
            ).fetchall()
        return [OutboxItem(*r) for r in rows]

    def done(self, ids: Sequence[int]) -> None:
        """Remove delivered items."""
        with self._lock, self._conn:
            self._conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    def replace(
        self, ids: Sequence[int], items: Sequence[tuple[str, str, str | None, str | None, str]]
    ) -> None:
        """Remove delivered items and add their follow-ups in one transaction."""
        now = time.time()
        with self._lock, self._conn:
            self._conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
            self._conn.executemany(
                "INSERT OR IGNORE INTO outbox (kind, key, user_id, session_id, payload, due, "
                "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(k, key, u, s, p, now, now) for k, key, u, s, p in items],
            )

    def retry(self, ids: Sequence[int], error: str, max_backoff_s: float = 30.0) -> None:
        """Schedule failed items again, backing off exponentially per attempt."""
        now = time.time()
        with self._lock, self._conn:
            for i in ids:
                self._conn.execute(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ?, "
                    "due = ? + MIN(?, 0.25 * (1 << MIN(attempts, 10))) WHERE id = ?",
                    (error[:500], now, max_backoff_s, i),
                )

    def bury(self, ids: Sequence[int], reason: str) -> int:
        """Move items no store will accept to the dead-letter table, with the reason.

        They leave the outbox (so the items behind them flow) but are kept, payload and all,
        for an operator to inspect, fix and :meth:`requeue`; ``forget-user`` deletes them too.

        Returns:
            How many items were moved.
        """
        now = time.time()
        with self._lock, self._conn:
            moved = 0
            for i in ids:
                cur = self._conn.execute(
                    "INSERT INTO dead_letter (kind, key, user_id, session_id, payload, attempts, "
                    "reason, created, dead_at) SELECT kind, key, user_id, session_id, payload, "
                    "attempts + 1, ?, created, ? FROM outbox WHERE id = ?",
                    (reason[:500], now, i),
                )
                moved += int(cur.rowcount)
                self._conn.execute("DELETE FROM outbox WHERE id = ?", (i,))
            return moved

    def dead_letters(self) -> dict[str, int]:
        """Dead-letter items per kind."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT kind, COUNT(*) FROM dead_letter GROUP BY kind"
            ).fetchall()
        counts = dict.fromkeys(self.KINDS, 0)
        counts.update({str(k): int(n) for k, n in rows})
        return counts

    def dead(self, limit: int = 100) -> list[dict[str, Any]]:
        """The oldest dead-letter items (id, kind, key, session_id, reason, attempts, dead_at).

        The payload (feedback notes, user ids) is not returned: what an operator needs is
        which item and why.
        """
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, kind, key, session_id, reason, attempts, dead_at FROM dead_letter "
                "ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        names = ("id", "kind", "key", "session_id", "reason", "attempts", "dead_at")
        return [dict(zip(names, r, strict=True)) for r in rows]

    def items(self) -> list[dict[str, Any]]:
        """Pending items (id, kind, key, attempts, last_error), oldest first, without payloads."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, kind, key, attempts, last_error FROM outbox ORDER BY id"
            ).fetchall()
        names = ("id", "kind", "key", "attempts", "last_error")
        return [dict(zip(names, r, strict=True)) for r in rows]

    def requeue(self, ids: Sequence[int]) -> int:
        """Put dead-letter items back into the outbox (after the cause was fixed)."""
        now = time.time()
        with self._lock, self._conn:
            moved = 0
            for i in ids:
                cur = self._conn.execute(
                    "INSERT OR IGNORE INTO outbox (kind, key, user_id, session_id, payload, "
                    "due, created) SELECT kind, key, user_id, session_id, payload, ?, created "
                    "FROM dead_letter WHERE id = ?",
                    (now, i),
                )
                moved += int(cur.rowcount)
                self._conn.execute("DELETE FROM dead_letter WHERE id = ?", (i,))
            return moved

    def wake_all(self) -> None:
        """Make every pending item due now (after a dependency is known to be back)."""
        with self._lock, self._conn:
            self._conn.execute("UPDATE outbox SET due = ?", (time.time(),))

    def pending(self) -> dict[str, int]:
        """Pending items per kind."""
        with self._lock:
            rows = self._conn.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind").fetchall()
        counts = dict.fromkeys(self.KINDS, 0)
        counts.update({str(k): int(n) for k, n in rows})
        return counts

    def forget_user(self, user_id: str) -> int:
        """Delete the user's pending and dead-letter items; returns how many."""
        with self._lock, self._conn:
            n = 0
            for table in ("outbox", "dead_letter"):
                cur = self._conn.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))
                n += int(cur.rowcount)
            return n

    def compact(self) -> None:
        """Rewrite the file without free pages and empty its write-ahead log."""
        with self._lock:
            scrub_sqlite(self._conn)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._conn.close()
