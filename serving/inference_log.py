"""The inference log: every answer's features, prediction and model versions, off the hot path.

The request handler only appends a tuple to a deque (no lock, no thread wake-up: waking the
writer per record made it compete with the handler for the GIL); one background thread wakes
every ``interval`` seconds, converts and writes the records as JSON lines, one file per UTC
day (a new part once a file passes ``max_bytes``) under the log directory, so monitoring and
feedback can join on ``request_id``.
Nothing that identifies a shopper is written but the keyed pseudonym of the user id
(:mod:`serving.pseudonym`): the ``user_id`` and ``product_id`` join keys are dropped from the
features, and no free text (fit notes) is kept. The features hold body measurements, so day
files are kept ``keep_days`` (default 90, ``FITML_INFERENCE_LOG_DAYS``) and then deleted by the
writer: well within the feature store's own retention of a shopper's history (two years).
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

_STOP = object()
DEFAULT_KEEP_DAYS = 90
_DAY_FILE = re.compile(r"^inferences-(\d{4}-\d{2}-\d{2})(?:-\d+)?\.jsonl$")
_IDENTIFIERS = frozenset({"user_id", "product_id"})

OnRecord = Callable[[dict[str, Any], Any], None]
"""Called by the writer thread with each record and its ``shadow`` payload before writing."""


class InferenceLog:
    """A buffered, rotated JSON-lines log written by one background thread.

    Args:
        directory: where the ``inferences-<day>[-<part>].jsonl`` files go.
        max_queue: records waiting at most; more are dropped (and counted) rather than
            slowing requests down.
        max_bytes: start a new part of the day's file beyond this size.
        on_record: optional hook run in the writer thread (e.g. shadow scoring).
        interval: seconds between the writer's rounds.
        keep_days: day files older than this many days are deleted (None: kept).
    """

    def __init__(
        self,
        directory: Path,
        max_queue: int = 100_000,
        max_bytes: int = 64 * 2**20,
        on_record: OnRecord | None = None,
        interval: float = 0.2,
        keep_days: int | None = DEFAULT_KEEP_DAYS,
    ) -> None:
        self.directory = Path(directory)
        self.keep_days = keep_days
        self._pruned_day = ""
        self.max_bytes = max_bytes
        self.on_record = on_record
        self.interval = interval
        self._queue: deque[Any] = deque()
        self._max_queue = max_queue
        self._wake = threading.Event()
        self.dropped = 0
        self.written = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()

    def append(
        self,
        record: dict[str, Any],
        *,
        features: Mapping[str, Any] | None = None,
        shadow: Any = None,
    ) -> None:
        """Queue one record with the features it was answered from (converted later).

        Counts the record in ``dropped`` instead when the writer is ``max_queue`` behind.
        """
        if len(self._queue) >= self._max_queue:
            self.dropped += 1
            return
        self._queue.append((datetime.now(UTC), record, features, shadow))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every record queued so far is on disk; False on timeout."""
        done = threading.Event()
        self._queue.append(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self) -> None:
        """Write what is queued and stop the writer."""
        self._queue.append(_STOP)
        self._wake.set()
        self._thread.join(timeout=10)

    def path_for(self, day: str) -> Path:
        """The file records of ``day`` (``YYYY-MM-DD``) go to now."""
        part = 0
        while True:
            name = f"inferences-{day}.jsonl" if part == 0 else f"inferences-{day}-{part}.jsonl"
            path = self.directory / name
            if not path.exists() or path.stat().st_size < self.max_bytes:
                return path
            part += 1

    def prune(self, today: date | None = None) -> list[Path]:
        """Delete day files older than ``keep_days``; returns what was deleted."""
        if self.keep_days is None:
            return []
        today = today or datetime.now(UTC).date()
        cutoff = (today - timedelta(days=self.keep_days)).isoformat()
        gone = []
        for path in self.directory.glob("inferences-*.jsonl"):
            match = _DAY_FILE.match(path.name)
            if match and match.group(1) < cutoff:
                path.unlink(missing_ok=True)
                gone.append(path)
        return gone

    def _run(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            today = datetime.now(UTC).date()
            if today.isoformat() != self._pruned_day:  # at start, then once a day
                self._pruned_day = today.isoformat()
                try:
                    self.prune(today)
                except OSError:
                    self.errors += 1
            self._wake.wait(self.interval)
            self._wake.clear()
            batch = []
            while self._queue:
                batch.append(self._queue.popleft())
            lines: dict[str, list[str]] = {}
            for item in batch:
                if isinstance(item, tuple):
                    try:
                        day, line = self._line(*item)
                    except Exception:  # a record must never kill the writer
                        self.errors += 1
                        continue
                    lines.setdefault(day, []).append(line)
            for day, day_lines in lines.items():
                _append(self.path_for(day), "".join(day_lines).encode("utf-8"))
                self.written += len(day_lines)
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()
            if any(item is _STOP for item in batch):
                return

    def _line(
        self,
        at: datetime,
        record: dict[str, Any],
        features: Mapping[str, Any] | None,
        shadow: Any,
    ) -> tuple[str, str]:
        if self.on_record is not None:
            self.on_record(record, shadow)
        out = {"logged_at": at.isoformat(), **record}
        if features is not None:
            out["features"] = loggable(features)
        return at.date().isoformat(), json.dumps(out, default=_jsonable) + "\n"


def loggable(row: Mapping[str, Any]) -> dict[str, Any]:
    """Feature values fit for the inference log: no identifiers, plain JSON values."""
    return {k: _plain(v) for k, v in row.items() if k not in _IDENTIFIERS}


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _append(path: Path, data: bytes) -> None:
    """Append ``data`` with one ``write`` on an ``O_APPEND`` descriptor.

    The service runs one worker per core, all logging into the same daily file: a single
    appending write keeps each worker's batch of whole lines together.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
