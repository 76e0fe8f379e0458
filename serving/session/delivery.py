"""Delivery of the outbox: sessions and events to the event store, feedback to Feast online.

Each pass (:meth:`Deliverer.deliver_once`) takes the due items of each kind in order:

1. ``session``: sessions the event store was down for -> ``EventStore.save_session``.
2. ``event``: feedback -> ``EventStore.add_events`` (once per event id). An event that is new,
   or stored but not yet pushed, gets a ``push`` item in the same outbox transaction.
3. ``push``: feedback of known shoppers -> the push function (``features.feedback
   .push_feedback``: updated history / product-stats rows, online and offline).
4. ``pushed``: mark the events pushed in the event store, so a resent event id is not
   pushed twice.

The ``event`` and ``push`` steps run in spans (``event_store.add_events``, ``feast.push``) that
continue the trace of the feedback request and link its session's start
(:func:`serving.tracing.delivery_span`; the ``traceparent`` travels with the event).

An item leaves the outbox only when its step succeeded; a failed step is retried with
exponential backoff. Nothing is lost while a store is down.

An item a store refuses (:class:`~serving.session.store.StoreRejected`, an unreadable payload,
a feature store that rejects its values) is found by delivering the batch item by item and set
aside in the outbox's dead-letter table with the reason (``fitml_session_dead_letters_total``,
``/readyz`` ``dead_letters``), so one poison message never holds back the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ml_pipeline.settings import Settings
from serving.session.observability import Metrics
from serving.session.store import (
    EventStore,
    FeedbackEvent,
    Outbox,
    OutboxItem,
    SessionRecord,
    StoreUnavailable,
    events_frame,
)
from serving.tracing import delivery_span

log = logging.getLogger(__name__)

PushFn = Callable[[pd.DataFrame], Any]
"""Pushes new feedback events (columns ``ml_pipeline.schema.EVENT_COLUMNS``) to the feature
store, online and offline, so the next online read of the shopper and product reflects them."""


class PushUnavailable(RuntimeError):
    """No push function is installed (``features.feedback.push_feedback`` is missing)."""


def feast_push(settings: Settings) -> PushFn:
    """The push function of the work directory: ``features.feedback.push_feedback``.

    The feature store is opened on the first push and kept (pushes come from one thread).
    ``push_feedback`` ignores events it has logged before (the event id is the key), so a
    push repeated after a crash does not count an event twice.

    Raises:
        PushUnavailable: when called, if ``features.feedback`` does not provide it (the pushes
            then wait in the outbox).
    """
    opened: list[Any] = []

    def push(events: pd.DataFrame) -> Any:
        try:
            from features.feedback import push_feedback
        except ImportError as exc:
            raise PushUnavailable(
                "features.feedback.push_feedback is not available; feedback waits in the outbox"
            ) from exc
        if not opened:
            from features.store import open_store

            opened.append(open_store(settings))
        return push_feedback(opened[0], events, settings=settings)

    return push


@dataclass
class DeliveryReport:
    """What one pass delivered and what failed, per kind."""

    delivered: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    dead: dict[str, int] = field(default_factory=dict)
    """Items set aside in the dead-letter table (the store refused them)."""


def _delivery_span(name: str, events: list[FeedbackEvent]) -> Any:
    """A span continuing the trace of the feedback request that queued ``events``.

    It also links the start of each event's session (a trace of its own, with the prediction
    service's spans), so the push of a session's feedback is found by the session's trace id.
    """
    return delivery_span(
        name,
        [e.traceparent for e in events],
        related=[e.session_traceparent for e in events],
        attributes={"fitml.events": len(events)},
    )


class Deliverer:
    """Delivers the outbox; runs as a background task of the app, or called directly."""

    def __init__(
        self,
        outbox: Outbox,
        store: EventStore,
        push: PushFn | None,
        metrics: Metrics | None = None,
        interval_s: float = 1.0,
        idempotency_window_s: float = 7 * 86_400,
    ) -> None:
        self.outbox = outbox
        self.idempotency_window_s = idempotency_window_s
        self._pruned_at = 0.0
        self.store = store
        self.push = push
        self.metrics = metrics
        self.interval_s = interval_s
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # -- one pass (blocking: runs in a worker thread) ------------------------------------
    def deliver_once(self) -> DeliveryReport:
        """Deliver every due item once, kind by kind."""
        report = DeliveryReport()
        if time.monotonic() - self._pruned_at > 60:
            self.outbox.prune_accepted(self.idempotency_window_s)
            self._pruned_at = time.monotonic()
        self._sessions(report)
        self._events(report)
        self._pushes(report)
        self._marks(report)
        if self.metrics is not None:
            for kind, n in self.outbox.pending().items():
                self.metrics.outbox_pending.labels(kind).set(n)
            for kind, n in self.outbox.dead_letters().items():
                self.metrics.dead_letter_items.labels(kind).set(n)
        return report

    def _count(self, report: DeliveryReport, kind: str, ok: int, failed: int) -> None:
        if ok:
            report.delivered[kind] = report.delivered.get(kind, 0) + ok
        if failed:
            report.failed[kind] = report.failed.get(kind, 0) + failed
        if self.metrics is not None:
            if ok:
                self.metrics.deliveries.labels(kind, "ok").inc(ok)
            if failed:
                self.metrics.deliveries.labels(kind, "failed").inc(failed)

    def _reason(self, exc: BaseException) -> str:
        """Why an item was set aside: the error's type and first line (no data echoed)."""
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]

    def _bury(self, kind: str, items: list[OutboxItem], exc: BaseException) -> None:
        """Set aside items no store will take, so the ones behind them flow."""
        self.outbox.bury([i.id for i in items], self._reason(exc))
        log.warning(
            "outbox item set aside in the dead-letter table",
            extra={"kind": kind, "items": len(items), "error": type(exc).__name__},
        )
        if self.metrics is not None:
            self.metrics.dead_letters.labels(kind).inc(len(items))

    def _deliver(
        self,
        kind: str,
        items: list[OutboxItem],
        step: Callable[[list[OutboxItem]], list[tuple[str, str, str | None, str | None, str]]],
        report: DeliveryReport,
    ) -> None:
        """Run ``step`` on the batch; on a refusal, item by item, setting refused ones aside.

        ``step`` returns the follow-up items of what it delivered. :class:`StoreUnavailable`
        (the store is down) keeps the items for a later pass; any other error of a single item
        (:class:`StoreRejected`, an unreadable payload, a refusal of the feature store) sends
        that item to the dead-letter table.
        """
        try:
            follow = step(items)
        except StoreUnavailable as exc:
            self.outbox.retry([i.id for i in items], str(exc))
            self._count(report, kind, 0, len(items))
            return
        except Exception as exc:
            if len(items) > 1:
                for i, item in enumerate(items):
                    before = report.failed.get(kind, 0)
                    self._deliver(kind, [item], step, report)
                    if report.failed.get(kind, 0) > before:  # the store went down: stop here
                        rest = items[i + 1 :]
                        if rest:
                            self.outbox.retry([r.id for r in rest], "store unavailable")
                            self._count(report, kind, 0, len(rest))
                        return
                return
            self._bury(kind, items, exc)
            report.dead[kind] = report.dead.get(kind, 0) + 1
            return
        self.outbox.replace([i.id for i in items], follow)
        self._count(report, kind, len(items), 0)

    def _sessions(self, report: DeliveryReport) -> None:
        items = self.outbox.due("session")
        if items:
            self._deliver("session", items, self._save_sessions, report)

    def _save_sessions(
        self, items: list[OutboxItem]
    ) -> list[tuple[str, str, str | None, str | None, str]]:
        for item in items:
            self.store.save_session(SessionRecord.from_json(item.payload))
        return []

    def _events(self, report: DeliveryReport) -> None:
        items = self.outbox.due("event")
        if items:
            self._deliver("event", items, self._add_events, report)

    def _add_events(
        self, items: list[OutboxItem]
    ) -> list[tuple[str, str, str | None, str | None, str]]:
        events = [FeedbackEvent.from_json(i.payload) for i in items]
        with _delivery_span("event_store.add_events", events):
            new = set(self.store.add_events(events))
        old = [e.event_id for e in events if e.event_id not in new]
        to_push = new | set(self.store.unpushed(old))
        return [
            ("push", e.event_id, e.user_id, e.session_id, e.to_json())
            for e in events
            if e.event_id in to_push and e.user_id
        ]

    def _pushes(self, report: DeliveryReport) -> None:
        items = self.outbox.due("push")
        if not items:
            return
        if self.push is None:
            self.outbox.retry([i.id for i in items], "no push function installed")
            self._count(report, "push", 0, len(items))
            return
        self._deliver("push", items, self._push, report)

    def _push(self, items: list[OutboxItem]) -> list[tuple[str, str, str | None, str | None, str]]:
        assert self.push is not None
        events = [FeedbackEvent.from_json(i.payload) for i in items]
        try:
            with _delivery_span("feast.push", events):
                self.push(events_frame(events))
        except (ValueError, KeyError, TypeError):
            raise  # the feature store refused the data: isolate, then set aside
        except Exception as exc:  # the feature store is down or failing: retry later
            log.warning(
                "push to the feature store failed; will retry",
                extra={"error": type(exc).__name__, "events": len(items)},
            )
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return [
            ("pushed", e.event_id, e.user_id, e.session_id, json.dumps(e.event_id)) for e in events
        ]

    def _marks(self, report: DeliveryReport) -> None:
        items = self.outbox.due("pushed")
        if items:
            self._deliver("pushed", items, self._mark, report)

    def _mark(self, items: list[OutboxItem]) -> list[tuple[str, str, str | None, str | None, str]]:
        self.store.mark_pushed([i.key for i in items])
        return []

    # -- background task -----------------------------------------------------------------
    def wake(self) -> None:
        """Start a pass now (new items were added)."""
        if self._wake is not None:
            self._wake.set()

    def start(self) -> None:
        """Run passes in the background: on :meth:`wake`, else every ``interval_s``."""
        self._wake = asyncio.Event()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="fitml-session-delivery")

    async def stop(self) -> None:
        """Stop the background task after a last pass."""
        self._stopping = True  # the loop ends even if a cancellation were lost in a wake-up
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # stop() itself was cancelled (a shutdown deadline), not just the loop
            self._task = None
        await asyncio.to_thread(self.deliver_once)

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancellation that
            # arrives as the event is set, and stop() would then wait for ever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                break
            try:
                await asyncio.to_thread(self.deliver_once)
            except Exception:  # never let the loop die; the items stay in the outbox
                log.exception("outbox delivery pass failed")


# -- dead letters, for operators (``fitml dead-letters list|replay``) --------------------


@dataclass
class ReplayReport:
    """What :func:`replay_dead_letters` put back, and where each item ended after a pass."""

    requeued: list[dict[str, Any]] = field(default_factory=list)
    """The dead-letter rows put back into the outbox (id, kind, key, reason, ...)."""
    delivered: list[str] = field(default_factory=list)
    """``kind:key`` of requeued items that left the outbox in the pass (delivered)."""
    dead_again: list[dict[str, Any]] = field(default_factory=list)
    """Requeued items a store refused again (back in the dead-letter table, new reason)."""
    pending: list[str] = field(default_factory=list)
    """``kind:key`` of requeued items still waiting (a store is down, or no pass was run)."""

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (printed as JSON by the CLI)."""
        return {
            "requeued": len(self.requeued),
            "delivered": self.delivered,
            "dead_again": self.dead_again,
            "pending": self.pending,
        }


def replay_dead_letters(
    outbox: Outbox,
    ids: list[int] | None = None,
    kind: str | None = None,
    deliverer: Deliverer | None = None,
) -> ReplayReport:
    """Put dead letters back into the outbox (after their cause was fixed); optionally deliver.

    Args:
        outbox: the session service's outbox.
        ids: the dead-letter ids to replay; None replays every one (of ``kind``, if given).
        kind: only items of this kind (``session``, ``event``, ``push``, ``pushed``).
        deliverer: run one delivery pass with it right away and say where each item ended;
            without it, the running service's delivery loop delivers them within a second.

    Raises:
        ValueError: an unknown kind, or an id that is not in the dead-letter table.
    """
    if kind is not None and kind not in Outbox.KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(Outbox.KINDS)}")
    rows = [d for d in outbox.dead(limit=1_000_000) if kind is None or d["kind"] == kind]
    if ids is not None:
        known = {d["id"]: d for d in rows}
        missing = [i for i in ids if i not in known]
        if missing:
            raise ValueError(
                f"dead-letter id(s) {missing} not found"
                + (f" among {kind} items" if kind else "")
                + "; list them with `fitml dead-letters list`"
            )
        rows = [known[i] for i in ids]
    report = ReplayReport(requeued=rows)
    outbox.requeue([d["id"] for d in rows])
    if deliverer is not None and rows:
        deliverer.deliver_once()
    waiting = {(d["kind"], d["key"]) for d in outbox.items()}
    dead = {(d["kind"], d["key"]): d for d in outbox.dead(limit=1_000_000)}
    for d in rows:
        at = (d["kind"], d["key"])
        if at in dead:
            report.dead_again.append(dead[at])
        elif at in waiting:
            report.pending.append(f"{d['kind']}:{d['key']}")
        else:
            report.delivered.append(f"{d['kind']}:{d['key']}")
    return report
