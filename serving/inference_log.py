"""The inference log: every answer's features, prediction and model versions, off the hot path.

Records are queued by the request handler and written by a background thread as JSON lines,
one file per UTC day under the log directory, so monitoring and feedback can join on
``request_id``. Nothing that identifies a shopper is written but the hashed user id.
"""

from __future__ import annotations

import json
import queue
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_STOP = object()


class InferenceLog:
    """A buffered, daily-rotated JSON-lines log written by one background thread."""

    def __init__(self, directory: Path, max_queue: int = 100_000) -> None:
        self.directory = Path(directory)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()

    def append(self, record: dict[str, Any]) -> None:
        """Queue one record (stamped now); counts it in ``dropped`` if the queue is full."""
        record = {"logged_at": datetime.now(UTC).isoformat(), **record}
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every queued record is on disk."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self) -> None:
        """Write what is queued and stop the writer."""
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            item = self._queue.get()
            batch = [item]
            while not self._queue.empty() and len(batch) < 1000:
                batch.append(self._queue.get_nowait())
            records = [b for b in batch if isinstance(b, dict)]
            if records:
                day = records[0]["logged_at"][:10]
                with (self.directory / f"inferences-{day}.jsonl").open("a") as handle:
                    for record in records:
                        handle.write(json.dumps(record, default=str) + "\n")
            for b in batch:
                if isinstance(b, threading.Event):
                    b.set()
            if any(b is _STOP for b in batch):
                return
