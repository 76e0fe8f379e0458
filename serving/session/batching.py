"""Group commit: the sessions that arrive together are written to the event store together.

Every session must be in the event store (or the outbox) before its 201 goes out. Written one
by one, each session costs a transaction, a thread hand-off and (SQLite with
``synchronous=FULL``, PostgreSQL's commit) a flush to disk, and the writes queue behind the
store's one connection. :class:`GroupCommit` keeps the guarantee and pays once per batch:
while one batch is being written (in a worker thread), the sessions that arrive wait in a
list; when it is done they are written in the next batch, in one transaction. Each caller
awaits its own batch's outcome, so a failed write reaches every session it held (which then
go to the outbox, as before).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Final, Generic, TypeVar

import anyio

T = TypeVar("T")

MAX_BATCH: Final = 256


class GroupCommit(Generic[T]):
    """Writes items in batches with ``write`` (a blocking call, run in a worker thread).

    Args:
        write: stores a batch of items in one transaction; raises on failure.
        max_batch: the most items one call to ``write`` gets.
    """

    def __init__(self, write: Callable[[Sequence[T]], None], max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._write = write
        self.max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._writing = False
        self._drainer: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> None:
        """Return once ``item`` is written (raises what ``write`` raised for its batch)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if not self._writing:
            self._writing = True
            # held until done: the event loop keeps only a weak reference to its tasks
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                try:
                    await anyio.to_thread.run_sync(self._write, [item for item, _ in batch])
                except BaseException as exc:  # every waiter of this batch gets the failure
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    self.batches += 1
                    self.items += len(batch)
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
        finally:
            self._writing = False
