"""Structured JSON logs with a request id, Prometheus metrics.

Identifiers appear in logs only as keyed pseudonyms (:mod:`serving.pseudonym`).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import uuid
from datetime import UTC, datetime
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("fitml_request_id", default="-")
REQUEST_ID_HEADER: Final = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

# LogRecord attributes that are not "extra" fields.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def request_id_from(header: str | None) -> str:
    """The caller's request id if it is well formed, else a new one."""
    if header and _VALID_REQUEST_ID.match(header):
        return header
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as JSON."""
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": REQUEST_ID.get(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key != "color_message":
                out[key] = value
        if record.exc_info:
            out["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return json.dumps(out, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """Send every log record to stderr as JSON (called by the server at start, not on import)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the app logs each request itself


class Metrics:
    """The session service's Prometheus metrics, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.sessions = Counter(
            "fitml_session_sessions_started", "Sessions started", ["degraded"], registry=r
        )
        self.feedback = Counter(
            "fitml_session_feedback", "Feedback events accepted", ["outcome"], registry=r
        )
        self.degraded = Counter(
            "fitml_session_degraded_answers",
            "Answers from the size-chart rule, by why the model was not used",
            ["reason"],
            registry=r,
        )
        self.latency = Histogram(
            "fitml_session_request_seconds",
            "Request latency",
            ["route", "method", "status"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.prediction_latency = Histogram(
            "fitml_session_prediction_seconds",
            "Latency of calls to the prediction service (with retries)",
            ["result"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.circuit_open = Gauge(
            "fitml_session_circuit_open", "1 while the prediction circuit is open", registry=r
        )
        self.rate_limited = Counter(
            "fitml_session_rate_limited", "Requests refused with 429", registry=r
        )
        self.deliveries = Counter(
            "fitml_session_deliveries",
            "Outbox deliveries by kind and result",
            ["kind", "result"],
            registry=r,
        )
        self.outbox_pending = Gauge(
            "fitml_session_outbox_pending", "Outbox items not yet delivered", ["kind"], registry=r
        )
        self.dead_letters = Counter(
            "fitml_session_dead_letters",
            "Outbox items a store refused, set aside in the dead-letter table",
            ["kind"],
            registry=r,
        )
        self.dead_letter_items = Gauge(
            "fitml_session_dead_letter_items",
            "Items in the dead-letter table (alert when above 0)",
            ["kind"],
            registry=r,
        )
