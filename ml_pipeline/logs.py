"""One logging setup for every fitml process: JSON lines for services and jobs, text on a terminal.

Each JSON line carries the time, level, logger, message, the service name, the request id
(:data:`REQUEST_ID`), the trace and span ids of the current OpenTelemetry span (when tracing
is on), the model versions that answered (:data:`MODEL_VERSIONS`, or the process-wide ones
given to :func:`configure_logging`), and the record's ``extra`` fields. Fields that would
carry personal data are never written: raw user ids, body measurements and free-text notes
are dropped by name (:data:`PERSONAL_FIELDS`; log ``user_hash`` instead), and the line says
which were dropped.

Nothing happens on import: :func:`configure_logging` is called by each process's entry point
(``fitml`` CLI, the session service, the prediction service's workers).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, TextIO

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("fitml_request_id", default="-")
"""The id of the request being served (``-`` outside a request)."""
MODEL_VERSIONS: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "fitml_model_versions", default=None
)
"""The model versions of the answer being served, when a request has them."""

LOG_FORMAT_ENV: Final = "FITML_LOG_FORMAT"
"""``json`` or ``text``; default: text on a terminal, JSON otherwise."""

PERSONAL_FIELDS: Final = re.compile(
    r"^(user_id|email|notes?|measurements?|"
    r"height(_cm)?|weight(_kg)?|bust(_cm)?|chest(_cm)?|waist(_cm)?|hips(_cm)?|inseam(_cm)?|"
    r"user_[a-z]+_cm|user_weight_kg)$"
)
"""``extra`` keys never written to a log line (personal data: identifiers, bodies, notes)."""

# LogRecord attributes that are not "extra" fields.
_STANDARD: Final = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; personal fields dropped, request and trace ids added.

    Args:
        service: the process's name in every line (``session``, ``prediction``, ``fitml``).
        static: fields of every line (e.g. the model versions a prediction worker loaded).
    """

    def __init__(self, service: str, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.service = service
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one JSON line."""
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "service": self.service,
            "request_id": REQUEST_ID.get(),
        }
        out.update(trace_ids())
        versions = MODEL_VERSIONS.get()
        if versions is not None:
            out["model_versions"] = dict(versions)
        out.update(self.static)
        dropped = []
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            if PERSONAL_FIELDS.match(key):
                dropped.append(key)
                continue
            out[key] = value
        if dropped:
            out["dropped_fields"] = sorted(dropped)
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """Short human lines for a terminal: ``level logger: message``."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")


def trace_ids() -> dict[str, str]:
    """The current span's trace and span ids (hex), or nothing when tracing is off.

    Never imports OpenTelemetry: when no part of the process loaded it, there is no span.
    """
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return {}
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def wants_json(stream: TextIO | None, env: Mapping[str, str] | None = None) -> bool:
    """JSON unless ``FITML_LOG_FORMAT=text`` or (unset) ``stream`` is a terminal.

    Raises:
        ValueError: ``FITML_LOG_FORMAT`` is neither ``json`` nor ``text``.
    """
    env = os.environ if env is None else env
    chosen = env.get(LOG_FORMAT_ENV, "").strip().lower()
    if chosen not in ("", "json", "text"):
        raise ValueError(f"{LOG_FORMAT_ENV}={chosen!r}: use 'json' or 'text' (or leave it unset)")
    if chosen:
        return chosen == "json"
    isatty = getattr(stream, "isatty", None)
    return not (isatty is not None and isatty())


def configure_logging(
    service: str,
    level: int = logging.INFO,
    *,
    json_lines: bool | None = None,
    static: Mapping[str, Any] | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) as JSON lines (or text on a terminal).

    Replaces the root logger's handlers and routes the servers' own loggers (uvicorn,
    BentoML) through it, so a process writes one format.

    Args:
        service: the name in every line.
        level: the root level.
        json_lines: force JSON (True) or text (False); default :func:`wants_json`.
        static: fields of every JSON line.
        stream: where to write (default ``sys.stderr``).

    Returns:
        The installed handler.
    """
    stream = sys.stderr if stream is None else stream
    as_json = wants_json(stream) if json_lines is None else json_lines
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(service, static) if as_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "bentoml"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # services log requests themselves
    return handler
