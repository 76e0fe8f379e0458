"""Request ids, Prometheus metrics; JSON logs (``ml_pipeline.logs``).

Identifiers appear in logs only as keyed pseudonyms (:mod:`serving.pseudonym`).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ml_pipeline import logs
from ml_pipeline.logs import REQUEST_ID

__all__ = ["REQUEST_ID", "REQUEST_ID_HEADER", "JsonFormatter", "Metrics", "configure_logging"]

REQUEST_ID_HEADER: Final = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2.5, 5)
"""Request latency buckets; 0.2 s is the session API's latency objective (p99 < 200 ms)."""


def request_id_from(header: str | None) -> str:
    """The caller's request id if it is well formed, else a new one."""
    if header and _VALID_REQUEST_ID.match(header):
        return header
    return uuid.uuid4().hex


def scrape_key(headers: Mapping[str, str]) -> str | None:
    """The API key of a metrics scrape: ``X-API-Key``, or ``Authorization: Bearer <key>``.

    Prometheus sends a bearer token (``authorization.credentials_file``), not custom headers.
    """
    key = headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class JsonFormatter(logs.JsonFormatter):
    """The JSON lines of the session service (:class:`ml_pipeline.logs.JsonFormatter`)."""

    def __init__(self, service: str = "session", static: Mapping[str, Any] | None = None) -> None:
        super().__init__(service, static)


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr for the session service (``FITML_LOG_FORMAT=text`` for text)."""
    logs.configure_logging("session", level, json_lines=logs.wants_json(None))


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
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prediction_latency = Histogram(
            "fitml_session_prediction_seconds",
            "Latency of the session service's calls to the prediction service (retries "
            "included), by result: ok, not_found, rejected, or why no usable answer came "
            "(timeout, connection, server_error, bad_response); not while the circuit is open",
            ["result"],
            buckets=LATENCY_BUCKETS,
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
        # The try-on SLIs (names from the production-readiness review) and the feedback loop.
        self.tryon_sessions = Counter(
            "tryon_sessions",
            "Session starts by outcome: ok, degraded (size chart), not_found, invalid, "
            "unauthorized, rate_limited, unavailable, error",
            ["status"],
            registry=r,
        )
        self.tryon_duration = Histogram(
            "tryon_session_duration_seconds",
            "Time to answer a session start, by outcome",
            ["status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tryon_feedback = Counter(
            "tryon_feedback",
            "Feedback accepted, by outcome, the variant that recommended the session's size "
            "(champion, challenger, size_chart) and whether it agrees with the recommended size",
            ["outcome", "variant", "agrees"],
            registry=r,
        )
        for status in ("ok", "degraded"):  # the degraded share exists from the first scrape
            self.tryon_sessions.labels(status)
        self.prediction_latency.labels("ok")

    def observe_prediction(self, result: str, seconds: float) -> None:
        """Record one call to the prediction service (``fitml_session_prediction_seconds``).

        Args:
            result: ``ok``, ``not_found``, ``rejected``, or the reason of a
                :class:`~serving.session.client.PredictionUnavailable` (but
                ``circuit_open``: no call was made).
            seconds: from the call to its answer or failure, retries included.
        """
        self.prediction_latency.labels(result).observe(seconds)

    def observe_request(
        self, route: str, method: str, status: int, seconds: float, state: Any
    ) -> None:
        """Record one request; session starts also count in ``tryon_sessions_total``.

        Args:
            route: the matched route template (``unmatched`` when none matched).
            method: the HTTP method.
            status: the response's status code.
            seconds: how long the answer took.
            state: the request's ``state``; the session-start handler leaves ``tryon_status``
                (``ok`` or ``degraded``) there when it answered.
        """
        self.latency.labels(route, method, str(status)).observe(seconds)
        if route == SESSIONS_ROUTE and method == "POST":
            outcome = getattr(state, "tryon_status", None) or _STATUS_OUTCOME.get(
                status, "error" if status >= 500 else "invalid"
            )
            self.tryon_sessions.labels(outcome).inc()
            self.tryon_duration.labels(outcome).observe(seconds)

    def observe_feedback(
        self, session_body: Mapping[str, Any], sizes: Mapping[str, int], size: str, outcome: str
    ) -> None:
        """Count new feedback by outcome, variant and agreement with the recommended size."""
        from serving.recommend import feedback_agrees

        variant = str(session_body.get("variant") or "unknown")
        recommended = sizes.get(str(session_body.get("recommended_size")))
        agrees = (
            "unknown"
            if recommended is None
            else str(bool(feedback_agrees(recommended, sizes[size], outcome))).lower()
        )
        self.tryon_feedback.labels(outcome, variant, agrees).inc()


SESSIONS_ROUTE: Final = "/api/v1/tryon/sessions"
_STATUS_OUTCOME: Final = {
    404: "not_found",
    401: "unauthorized",
    403: "unauthorized",
    429: "rate_limited",
    503: "unavailable",
}
