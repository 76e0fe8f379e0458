"""OpenTelemetry tracing of the live path, configured by the standard ``OTEL_*`` variables.

Off by default: unless ``OTEL_TRACES_EXPORTER`` names an exporter, OpenTelemetry is not even
imported and :func:`span` returns one shared no-op context manager (a global read and a
call per span site). When on:

- ``OTEL_TRACES_EXPORTER``: ``otlp`` (OTLP over HTTP/protobuf to ``OTEL_EXPORTER_OTLP_ENDPOINT``
  or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, default ``http://localhost:4318``), ``console``,
  or both (comma-separated).
- ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``: the SDK's samplers (default
  ``parentbased_always_on``; e.g. ``parentbased_traceidratio`` with ``0.05``).
- ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``: the resource (default service name
  given by the process: ``fitml-session``, ``fitml-prediction``).
- ``OTEL_BSP_*``: the batch span processor's delay and queue sizes.

The W3C ``traceparent`` header carries the trace from the session service into the
prediction service (:func:`inject` on the client, :func:`server_span` on the server). Work
done later, off the request (the outbox's delivery to the event store and the Feast push),
keeps the ``traceparent`` of the request that queued it (:func:`current_traceparent`) and
runs in a span continuing it (:func:`delivery_span`).
The provider is kept here, not installed globally, so it cannot clash with a framework's own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any, Final

from ml_pipeline.errors import ConfigError

EXPORTER_ENV: Final = "OTEL_TRACES_EXPORTER"

_NULL: Final = contextlib.nullcontext()
_state: dict[str, Any] = {}
"""``tracer``, ``provider`` and ``propagator`` once :func:`configure_tracing` turned tracing on."""


def enabled() -> bool:
    """Whether this process records spans."""
    return "tracer" in _state


def configure_tracing(service_name: str, env: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on if the environment asks for it; returns whether it is on.

    Raises:
        ConfigError: an exporter or protocol this build does not support.
    """
    env = os.environ if env is None else env
    names = [n.strip().lower() for n in env.get(EXPORTER_ENV, "none").split(",") if n.strip()]
    if not names or names == ["none"] or env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    attributes = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in names:
        exporter: SpanExporter
        if name == "otlp":
            protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
            )
            if protocol != "http/protobuf":
                raise ConfigError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; "
                    "use http/protobuf (the collector's port 4318)"
                )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        elif name == "console":
            exporter = ConsoleSpanExporter()
        else:
            raise ConfigError(
                f"{EXPORTER_ENV}={name!r} is not supported; use otlp, console or none"
            )
        provider.add_span_processor(BatchSpanProcessor(exporter))
    _state.update(
        provider=provider,
        tracer=provider.get_tracer("fitml"),
        propagator=CompositePropagator([TraceContextTextMapPropagator()]),
    )
    return True


def shutdown_tracing() -> None:
    """Export what is buffered and turn tracing off."""
    provider = _state.pop("provider", None)
    _state.clear()
    if provider is not None:
        provider.shutdown()


def span(name: str, attributes: Mapping[str, Any] | None = None) -> Any:
    """A context manager for an internal span (a shared no-op when tracing is off)."""
    tracer = _state.get("tracer")
    if tracer is None:
        return _NULL
    return tracer.start_as_current_span(name, attributes=attributes)


def client_span(name: str, headers: MutableMapping[str, str]) -> Any:
    """A client span whose ``traceparent`` is written into ``headers`` (no-op when off)."""
    tracer = _state.get("tracer")
    if tracer is None:
        return _NULL
    return _client_span(tracer, name, headers)


@contextlib.contextmanager
def _client_span(tracer: Any, name: str, headers: MutableMapping[str, str]) -> Iterator[Any]:
    from opentelemetry.trace import SpanKind

    with tracer.start_as_current_span(name, kind=SpanKind.CLIENT) as current:
        _state["propagator"].inject(headers)
        yield current


def server_span(name: str, headers: Mapping[str, str]) -> Any:
    """A server span continuing the caller's ``traceparent`` (no-op when off)."""
    tracer = _state.get("tracer")
    if tracer is None:
        return _NULL
    from opentelemetry.trace import SpanKind

    context = _state["propagator"].extract(headers)
    return tracer.start_as_current_span(name, context=context, kind=SpanKind.SERVER)


def set_attributes(current: Any, attributes: Mapping[str, Any]) -> None:
    """Set attributes on a span returned by the helpers above (nothing when off)."""
    if current is not None:
        current.set_attributes(dict(attributes))


class TraceRequests:
    """ASGI middleware: one server span per HTTP request, continuing the caller's trace.

    Add it only when :func:`enabled` (the app then pays nothing when tracing is off). The
    span is named after the matched route template once routing has run.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve the request inside a server span."""
        if scope["type"] != "http" or not enabled():
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        status: list[int] = []

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        with server_span(f"{scope['method']} {scope['path']}", headers) as current:
            try:
                await self.app(scope, receive, send_status)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    current.update_name(f"{scope['method']} {route}")
                current.set_attribute("http.route", route or scope["path"])
                if status:
                    current.set_attribute("http.response.status_code", status[0])


def inject(headers: MutableMapping[str, str]) -> None:
    """Write the current span's W3C ``traceparent`` into ``headers`` (nothing when off)."""
    propagator = _state.get("propagator")
    if propagator is not None:
        propagator.inject(headers)


def current_traceparent() -> str | None:
    """The current span's W3C ``traceparent``, to store with queued work (None when off)."""
    propagator = _state.get("propagator")
    if propagator is None:
        return None
    carrier: dict[str, str] = {}
    propagator.inject(carrier)
    return carrier.get("traceparent")


def delivery_span(
    name: str,
    traceparents: Iterable[str | None],
    related: Iterable[str | None] = (),
    attributes: Mapping[str, Any] | None = None,
) -> Any:
    """A span for queued work delivered later, continuing the traces that queued it.

    A batch queued in one trace (the usual case: one feedback event) is a child of the span
    that queued it, so it shows in that trace; a batch queued in several traces starts a trace
    of its own. Either way the span links every queuing span and every ``related`` one (the
    OpenTelemetry messaging convention for batches). A no-op when tracing is off.

    Args:
        name: the span's name (``feast.push``, ``event_store.add_events``).
        traceparents: the ``traceparent`` stored with each item when it was queued (None:
            none was, e.g. tracing was off then).
        related: more spans to link, not to continue (e.g. the start of the feedback's
            session, a trace of its own).
        attributes: the span's attributes.
    """
    tracer = _state.get("tracer")
    if tracer is None:
        return _NULL
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, NonRecordingSpan, SpanKind, set_span_in_context

    queued = _span_contexts(traceparents)
    links = {**queued, **_span_contexts(related)}
    if len({c.trace_id for c in queued.values()}) == 1:
        context = set_span_in_context(NonRecordingSpan(next(iter(queued.values()))))
    else:
        context = Context()  # a root: not a child of whatever runs the delivery
    return tracer.start_as_current_span(
        name,
        context=context,
        kind=SpanKind.CONSUMER,
        links=[Link(c) for c in links.values()],
        attributes=attributes,
    )


def _span_contexts(traceparents: Iterable[str | None]) -> dict[str, Any]:
    """The valid span contexts of W3C ``traceparent`` values, by value (duplicates once)."""
    from opentelemetry.trace import get_current_span

    out: dict[str, Any] = {}
    for traceparent in traceparents:
        if not traceparent or traceparent in out:
            continue
        carrier = {"traceparent": traceparent}
        context = get_current_span(_state["propagator"].extract(carrier)).get_span_context()
        if context.is_valid:
            out[traceparent] = context
    return out
