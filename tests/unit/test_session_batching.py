"""Group commit of new sessions: batched writes, each caller told its own batch's outcome."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from serving.session.batching import GroupCommit
from serving.session.store import (
    SessionRecord,
    SqliteEventStore,
    StoreUnavailable,
    save_sessions,
)


def test_sessions_started_together_are_written_in_few_batches() -> None:
    written: list[list[int]] = []
    gate = threading.Event()

    def write(items: Sequence[int]) -> None:
        gate.wait(5)  # the first batch is slow: the others queue behind it meanwhile
        written.append(list(items))

    async def main() -> GroupCommit[int]:
        group: GroupCommit[int] = GroupCommit(write)
        first = asyncio.create_task(group.submit(0))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(group.submit(i)) for i in range(1, 50)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, *rest)
        return group

    group = asyncio.run(main())
    assert sorted(i for batch in written for i in batch) == list(range(50))  # each once
    assert written[0] == [0] and len(written) == 2  # 49 sessions, one transaction
    assert (group.batches, group.items) == (2, 50)


def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_still_runs() -> None:
    calls = 0

    def write(items: Sequence[str]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StoreUnavailable("down")

    async def main() -> list[BaseException | None]:
        group: GroupCommit[str] = GroupCommit(write)
        results = await asyncio.gather(
            *(group.submit(x) for x in ("a", "b", "c")), return_exceptions=True
        )
        await group.submit("d")  # the store is back: written
        return list(results)

    results = asyncio.run(main())
    assert all(isinstance(r, StoreUnavailable) for r in results)
    assert calls == 2


def test_batched_sessions_are_stored_once_each(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "events.db", "t_batch")
    now = datetime.now(UTC)
    records = [SessionRecord(f"s{i}", now, f"u{i}", "p1", {"i": i}) for i in range(5)]
    save_sessions(store, records)
    save_sessions(store, records[:2])  # a retried batch stores nothing twice
    assert [store.get_session(f"s{i}").body for i in range(5)] == [{"i": i} for i in range(5)]  # type: ignore[union-attr]
    with store._cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM t_batch_sessions")
        assert cur.fetchone()[0] == 5
    store.close()


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        GroupCommit(lambda items: None, max_batch=0)
