"""The session service's FastAPI app: ``/api/v1/tryon`` sessions, feedback, probes, metrics.

:func:`create_app` takes its dependencies (:class:`Services`) ready-made, so tests and the
server build them their own way; :func:`serving.session.server.build_services` builds them
from the settings.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any, Final, TypeVar, get_args

import anyio
import orjson
from fastapi import Body, FastAPI, Header, HTTPException, Path, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import tracing
from serving.limits import Limits, RequestGuard
from serving.pseudonym import Pseudonymizer
from serving.schemas import Measurements, RecommendResponse
from serving.session.auth import JwtVerifier, Principal, SessionAuth
from serving.session.batching import GroupCommit
from serving.session.charts import Chart, ChartBook, chart_rule
from serving.session.client import (
    CircuitBreaker,
    PredictionClient,
    PredictionRejected,
    PredictionUnavailable,
    ProductNotFound,
)
from serving.session.delivery import Deliverer
from serving.session.observability import (
    REQUEST_ID,
    REQUEST_ID_HEADER,
    Metrics,
    request_id_from,
)
from serving.session.openapi_docs import add_docs
from serving.session.schemas import (
    EXAMPLE_PRODUCT,
    EXAMPLE_SESSION,
    FEEDBACK_EXAMPLES,
    ID_PATTERN,
    START_EXAMPLES,
    Area,
    ErrorBody,
    Feedback,
    FeedbackAccepted,
    FeedbackOut,
    Session,
    SizeOption,
    StartSession,
    error_example,
)
from serving.session.security import KeyRing, RateLimiter
from serving.session.store import (
    EventStore,
    FeedbackEvent,
    Outbox,
    SessionRecord,
    StoreUnavailable,
    save_sessions,
)

log = logging.getLogger("fitml.session")
T = TypeVar("T")

API_PREFIX: Final = "/api/v1/tryon"
API_KEY_HEADER: Final = "X-API-Key"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
STORE_RETRY_AFTER_S: Final = 5

api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="An API key.")
bearer_scheme = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    description="An OAuth2 client-credentials access token of the configured issuer.",
)


@dataclass
class Services:
    """Everything the app uses, built outside it."""

    client: PredictionClient
    charts: ChartBook
    store: EventStore
    outbox: Outbox
    deliverer: Deliverer
    limiter: RateLimiter
    keys: KeyRing
    metrics: Metrics
    store_breaker: CircuitBreaker = field(default_factory=lambda: CircuitBreaker(3, 5.0))
    """Stops calling a failing event store for a while (writes go to the outbox meanwhile)."""
    pseudonyms: Pseudonymizer = field(default_factory=Pseudonymizer.ephemeral)
    """Keyed pseudonyms of user ids in the logs (the deployment's keys: joinable)."""
    jwt: JwtVerifier | None = None
    """OAuth2 bearer tokens accepted beside API keys (None: API keys only)."""
    limits: Limits = field(default_factory=Limits)
    """Request header / body caps and timeouts."""
    session_writes: GroupCommit[SessionRecord] | None = None
    """New sessions, written to the store in batches (built on first use)."""


def _services(request: Request) -> Services:
    services: Services | None = request.app.state.services
    if services is None:
        raise HTTPException(503, "the session service is not configured")
    return services


async def authorize(
    request: Request,
    security_scopes: SecurityScopes,
    key: Annotated[str | None, Security(api_key_header)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)] = None,
) -> str:
    """Accept the authenticated caller if it holds the route's scope and is within its limit.

    :class:`~serving.session.auth.SessionAuth` authenticated it before the body was read;
    returns its id (safe to log).
    """
    services = _services(request)
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        raise HTTPException(
            401,
            f"missing or unknown API key: send a valid key in the {API_KEY_HEADER} header",
            headers={"WWW-Authenticate": API_KEY_HEADER},
        )
    missing = [s for s in security_scopes.scopes if s not in principal.scopes]
    if missing:
        raise HTTPException(
            403,
            f"the token lacks the scope {missing[0]!r} this route needs; ask the issuer for it",
            headers={"WWW-Authenticate": f'Bearer error="insufficient_scope" scope="{missing[0]}"'},
        )
    request.state.key_id = principal.subject
    decision = await services.limiter.hit(principal.subject)
    if not decision.allowed:
        services.metrics.rate_limited.inc()
        raise HTTPException(
            429,
            f"rate limit of this API key exceeded; retry after {decision.retry_after_s} s",
            headers={"Retry-After": str(decision.retry_after_s)},
        )
    return principal.subject


Authorized = Annotated[str, Security(authorize, scopes=["admin"])]
CanStart = Annotated[str, Security(authorize, scopes=["start-session"])]
CanRead = Annotated[str, Security(authorize, scopes=["read"])]
CanGiveFeedback = Annotated[str, Security(authorize, scopes=["feedback"])]
IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        min_length=1,
        max_length=128,
        pattern=ID_PATTERN,
        description="The event's idempotency key (or send it as event_id in the body).",
    ),
]


def idempotency_key(event_id: str | None, header: str | None) -> str:
    """The feedback's idempotency key: ``event_id`` or the ``Idempotency-Key`` header.

    Raises:
        HTTPException: 400 when neither is given, or both are given and differ.
    """
    if event_id and header and event_id != header:
        raise HTTPException(
            400,
            f"event_id and the {IDEMPOTENCY_HEADER} header differ; send one key, or the same "
            "key in both",
        )
    key = event_id or header
    if not key:
        raise HTTPException(
            400,
            f"event_id: missing idempotency key; send a unique event_id in the body or an "
            f"{IDEMPOTENCY_HEADER} header, and the same one again when you retry",
        )
    return key


SessionId = Annotated[
    str, Path(min_length=1, max_length=64, pattern=ID_PATTERN, examples=[EXAMPLE_SESSION])
]

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorBody,
        "description": "Missing or unknown API key or bearer token",
        **error_example(
            f"missing or unknown API key: send a valid key in the {API_KEY_HEADER} header"
        ),
    },
    403: {"model": ErrorBody, "description": "The bearer token lacks this route's scope"},
    413: {"model": ErrorBody, "description": "Request body too large"},
    422: {
        "model": ErrorBody,
        "description": "Invalid request: names the field and the problem",
        **error_example("body.product_id: String should have at least 1 character"),
    },
    429: {
        "model": ErrorBody,
        "description": "Rate limit exceeded (see Retry-After)",
        **error_example("rate limit of this API key exceeded; retry after 1 s"),
    },
}
UNKNOWN_SESSION: dict[str, Any] = {
    "model": ErrorBody,
    "description": "Unknown session",
    **error_example(f"session_id {EXAMPLE_SESSION!r} does not exist"),
}
STORE_DOWN: dict[str, Any] = {
    "model": ErrorBody,
    "description": "Event store unavailable (see Retry-After)",
    **error_example(
        f"the event store is unavailable right now; retry after {STORE_RETRY_AFTER_S} s"
    ),
}


def _unavailable(what: str) -> HTTPException:
    return HTTPException(
        503,
        f"{what} is unavailable right now; retry after {STORE_RETRY_AFTER_S} s",
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )


class Observe:
    """ASGI middleware: the request id, the request's metrics and its one log line.

    The request id comes from ``X-Request-ID`` (or is made), is set for the request's logs
    and goes back on the answer. A plain ASGI class rather than ``@app.middleware("http")``:
    Starlette's ``BaseHTTPMiddleware`` runs each request in a task group of its own and
    streams the answer through a queue, which cost 12% of the session service's CPU.

    Args:
        app: the wrapped app.
        metrics: where requests are counted (``None``: only logged).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics | None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request, then count and log it (also when the app raised)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            if self.metrics is not None:
                self.metrics.observe_request(route, request.method, status, seconds, request.state)
            if not route.endswith(("/livez", "/readyz", "/metrics")):
                log.info(
                    "request",
                    extra={
                        "method": request.method,
                        "route": route,
                        "status": status,
                        "ms": round(seconds * 1000, 2),
                        "key_id": getattr(request.state, "key_id", None),
                        # the models that answered: the session's, for its reads and
                        # feedback; {} when none did (size chart, refused, unknown session)
                        "model_versions": getattr(request.state, "model_versions", {}),
                    },
                )
            REQUEST_ID.reset(token)


def create_app(
    services: Services | None, *, cors_origins: tuple[str, ...] = (), docs: bool = True
) -> FastAPI:
    """The session service app (``services=None`` only to export the OpenAPI document).

    With ``docs`` the API is browsable without a key: ``/docs`` (Swagger UI, where
    "Authorize" takes the API key and "Try it out" sends the examples), ``/redoc`` and
    ``/openapi.json``; the pages' scripts and styles are served by the app too
    (:mod:`serving.session.openapi_docs`), so they work where no CDN can be reached.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if services is not None:
            services.deliverer.start()
        try:
            yield
        finally:
            if services is not None:
                await services.deliverer.stop()
                await services.client.close()
                close = getattr(services.limiter, "close", None)
                if close is not None:
                    await close()

    app = FastAPI(
        title="fitml try-on session service",
        version="1.0.0",
        description=(
            "Runs a shopper's try-on session: a size recommendation from the prediction "
            "service (or, marked degraded, from the size chart), and the shopper's fit "
            f"feedback. Every API route needs an API key in the {API_KEY_HEADER} header, or an "
            "OAuth2 client-credentials bearer token with the route's scope (start-session, "
            "read, feedback; admin for /metrics)."
        ),
        lifespan=lifespan,
        docs_url=None,  # served from the service itself, not a CDN: add_docs below
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    if docs:
        add_docs(app)
    app.state.services = services
    if services is not None:  # credentials and limits before any body is read
        app.add_middleware(
            RequestGuard,
            limits=services.limits,
            authenticate=SessionAuth(services.keys, services.jwt),
            protected=(API_PREFIX, "/metrics"),
        )
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=[
                API_KEY_HEADER,
                REQUEST_ID_HEADER,
                IDEMPOTENCY_HEADER,
                "Authorization",
                "Content-Type",
            ],
            expose_headers=[REQUEST_ID_HEADER, "Retry-After", "Location"],
        )

    app.add_middleware(Observe, metrics=None if services is None else services.metrics)

    if tracing.enabled():
        app.add_middleware(tracing.TraceRequests)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # A client's mistake: logged as where and what kind, never the value it sent.
        log.info(
            "request refused: invalid input",
            extra={
                "fields": [_field_of(err["loc"]) for err in exc.errors()],
                "errors": [err.get("type") for err in exc.errors()],
            },
        )
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        return JSONResponse({"detail": problems or "invalid request"}, status_code=422)

    @app.get("/livez", include_in_schema=False)
    async def livez() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        s = request.app.state.services
        if s is None or len(s.charts) == 0:
            return JSONResponse({"status": "not ready"}, status_code=503)
        return JSONResponse(
            {
                "status": "ready",
                "prediction_circuit": s.client.breaker.state,
                "outbox_pending": s.outbox.pending(),
                "dead_letters": s.outbox.dead_letters(),
            }
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request, _: Authorized) -> Response:
        # the key as X-API-Key, or as a bearer token (Prometheus): SessionAuth checked it
        s = _services(request)
        s.metrics.circuit_open.set(0 if s.client.breaker.state == "closed" else 1)
        return Response(generate_latest(s.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        f"{API_PREFIX}/sessions",
        status_code=201,
        response_model=Session,
        responses={
            **ERRORS,
            404: {
                "model": ErrorBody,
                "description": "Unknown product",
                **error_example(
                    f"product_id {EXAMPLE_PRODUCT!r} has no size chart; check the product id"
                ),
            },
        },
        summary="Start a try-on session and get a size recommendation",
    )
    async def start_session(
        body: Annotated[StartSession, Body(openapi_examples=START_EXAMPLES)],
        request: Request,
        _: CanStart,
    ) -> Response:
        s = _services(request)
        chart = s.charts.loaded(body.product_id)  # in memory: no thread hand-off
        if chart is None:
            chart = await anyio.to_thread.run_sync(s.charts.get, body.product_id)
        if chart is None:
            raise HTTPException(
                404, f"product_id {body.product_id!r} has no size chart; check the product id"
            )
        session_id = uuid.uuid4().hex
        called = time.perf_counter()
        try:
            answer = await s.client.recommend(body.model_dump(exclude_none=True, mode="json"))
        except ProductNotFound as exc:
            s.metrics.observe_prediction("not_found", time.perf_counter() - called)
            raise HTTPException(404, f"product_id {body.product_id!r}: {exc}") from None
        except PredictionRejected as exc:
            s.metrics.observe_prediction("rejected", time.perf_counter() - called)
            raise HTTPException(422, f"the prediction service refused the request: {exc}") from None
        except PredictionUnavailable as exc:
            if exc.reason != "circuit_open":  # not called: no latency to record
                s.metrics.observe_prediction(exc.reason, time.perf_counter() - called)
            session = await _degraded(s, session_id, body, chart, exc)
        else:
            s.metrics.observe_prediction("ok", time.perf_counter() - called)
            session = _from_model(session_id, body, chart, answer)
        document = session.model_dump(mode="json")  # once: stored and sent
        variant = "size_chart" if session.degraded else answer.variant
        request.state.tryon_status = "degraded" if session.degraded else "ok"
        request.state.model_versions = session.model_versions
        stored = {**{k: v for k, v in document.items() if k != "feedback"}, "variant": variant}
        traceparent = tracing.current_traceparent()
        if traceparent is not None:  # the feedback's delivery spans link this session's trace
            stored["traceparent"] = traceparent
        record = SessionRecord(
            session_id=session_id,
            created_at=session.created_at,
            user_id=body.user_id,
            product_id=body.product_id,
            body=stored,
        )
        try:
            await _save_session(s, record)
        except StoreUnavailable:
            await anyio.to_thread.run_sync(
                s.outbox.put,
                [("session", session_id, body.user_id, session_id, record.to_json())],
            )
            s.deliverer.wake()
        s.metrics.sessions.labels(str(session.degraded).lower()).inc()
        log.info(
            "session started",
            extra={
                "session_id": session_id,
                "user_hash": s.pseudonyms(body.user_id),
                "guest": body.user_id is None,
                "product_id": body.product_id,
                "recommended_size": session.recommended_size,
                "degraded": session.degraded,
                "variant": variant,
                "model_versions": session.model_versions,
            },
        )
        return Response(
            orjson.dumps(document),
            status_code=201,
            media_type="application/json",
            headers={"Location": f"{API_PREFIX}/sessions/{session_id}"},
        )

    @app.get(
        f"{API_PREFIX}/sessions/{{session_id}}",
        response_model=Session,
        responses={
            **ERRORS,
            404: UNKNOWN_SESSION,
            503: STORE_DOWN,
        },
        summary="Read a session, its recommendation and the feedback recorded so far",
    )
    async def read_session(session_id: SessionId, request: Request, _: CanRead) -> Session:
        s = _services(request)
        try:
            record = await _store(s, s.store.get_session, session_id)
            events = await _store(s, s.store.session_events, session_id)
        except StoreUnavailable:
            raise _unavailable("the event store") from None
        if record is None:
            pending = await anyio.to_thread.run_sync(s.outbox.find, "session", session_id)
            if pending is None:
                raise HTTPException(404, f"session_id {session_id!r} does not exist")
            record = SessionRecord.from_json(pending)
        request.state.model_versions = record.body.get("model_versions") or {}
        stored = {e.event_id for e in events}
        pending_events = [
            FeedbackEvent.from_json(p)
            for p in await anyio.to_thread.run_sync(s.outbox.of_session, "event", session_id)
        ]
        events += [e for e in pending_events if e.event_id not in stored]
        session = Session.model_validate(record.body)
        session.feedback = [
            FeedbackOut(
                event_id=e.event_id,
                size=e.size,
                outcome=e.outcome,  # type: ignore[arg-type]
                notes=e.notes,  # type: ignore[arg-type]
                event_timestamp=e.event_timestamp,
            )
            for e in sorted(events, key=lambda e: (e.event_timestamp, e.event_id))
        ]
        return session

    @app.post(
        f"{API_PREFIX}/sessions/{{session_id}}/feedback",
        status_code=202,
        response_model=FeedbackAccepted,
        responses={
            **ERRORS,
            400: {
                "model": ErrorBody,
                "description": "No idempotency key (event_id or Idempotency-Key), or two that "
                "differ",
            },
            404: UNKNOWN_SESSION,
            503: {
                "model": ErrorBody,
                "description": "Session unknown here and the event store "
                "is unavailable (see Retry-After)",
            },
        },
        summary="Record the shopper's feedback on a size they tried",
    )
    async def record_feedback(
        session_id: SessionId,
        body: Annotated[Feedback, Body(openapi_examples=FEEDBACK_EXAMPLES)],
        request: Request,
        _: CanGiveFeedback,
        idempotency: IdempotencyHeader = None,
    ) -> FeedbackAccepted:
        s = _services(request)
        idempotency_key(body.event_id, idempotency)  # a missing key is refused before any I/O
        record = await _find_session(s, session_id)
        request.state.model_versions = record.body.get("model_versions") or {}
        sizes = {o["size"]: int(o["size_index"]) for o in record.body.get("sizes", [])}
        if body.size not in sizes:
            raise HTTPException(
                422,
                f"size {body.size!r} is not a size of product {record.product_id!r}; "
                f"use one of {', '.join(sizes)}",
            )
        event_id = idempotency_key(body.event_id, idempotency)
        event = FeedbackEvent(
            event_id=event_id,
            session_id=session_id,
            user_id=record.user_id,
            product_id=record.product_id,
            size=body.size,
            size_index=sizes[body.size],
            outcome=body.outcome,
            event_timestamp=datetime.now(UTC),
            notes={str(k): v for k, v in body.notes.items()},
            traceparent=tracing.current_traceparent(),
            session_traceparent=record.body.get("traceparent"),
        )
        # A resend after the event left the outbox (perhaps through another replica) is found
        # in the store; otherwise one atomic insert into the outbox's accepted keys decides.
        try:
            duplicate = await _store(s, s.store.has_event, event_id)
        except StoreUnavailable:
            duplicate = False  # the outbox delivers it once, whatever the store holds
        if not duplicate:
            duplicate = not await anyio.to_thread.run_sync(
                s.outbox.accept, "event", event_id, record.user_id, session_id, event.to_json()
            )
        if not duplicate:
            s.metrics.feedback.labels(body.outcome).inc()
            s.metrics.observe_feedback(record.body, sizes, body.size, body.outcome)
        s.deliverer.wake()
        log.info(
            "feedback accepted",
            extra={
                "session_id": session_id,
                "event_id": event_id,
                "user_hash": s.pseudonyms(record.user_id),
                "outcome": body.outcome,
                "duplicate": duplicate,
            },
        )
        return FeedbackAccepted(
            event_id=event_id,
            session_id=session_id,
            status="duplicate" if duplicate else "accepted",
        )

    return app


_KNOWN_NAMES = frozenset(
    {"body", "path", "query", "header", "session_id", IDEMPOTENCY_HEADER.lower()}
    | set(StartSession.model_fields)
    | set(Feedback.model_fields)
    | set(Measurements.model_fields)
    | set(get_args(Area))
)


def _field_of(loc: Sequence[Any]) -> str:
    """A validation error's location fit for a log: names the client chose become ``?``."""
    return ".".join(
        str(p) if isinstance(p, int) or str(p).lower() in _KNOWN_NAMES else "?" for p in loc
    )


async def _store(s: Services, call: Callable[..., T], *args: Any) -> T:
    """Call the event store in a worker thread, through its circuit breaker.

    Raises:
        StoreUnavailable: the store failed, or failed recently (the breaker is open).
    """
    if not s.store_breaker.allow():
        raise StoreUnavailable("event store failing: circuit open, not called")
    try:
        with tracing.span(f"event_store.{getattr(call, '__name__', 'call')}"):
            result = await anyio.to_thread.run_sync(call, *args)
    except StoreUnavailable:
        s.store_breaker.failure()
        raise
    s.store_breaker.success()
    return result


async def _save_session(s: Services, record: SessionRecord) -> None:
    """Store a new session durably, batched with the sessions started meanwhile.

    Raises:
        StoreUnavailable: the store failed, or failed recently (the breaker is open).
    """
    if not s.store_breaker.allow():
        raise StoreUnavailable("event store failing: circuit open, not called")
    if s.session_writes is None:
        s.session_writes = GroupCommit(partial(save_sessions, s.store))
    try:
        with tracing.span("event_store.save_session"):
            await s.session_writes.submit(record)
    except StoreUnavailable:
        s.store_breaker.failure()
        raise
    s.store_breaker.success()


async def _find_session(s: Services, session_id: str) -> SessionRecord:
    """The session from the store, or pending in the outbox; 404 / 503 otherwise."""
    try:
        record = await _store(s, s.store.get_session, session_id)
    except StoreUnavailable:
        record, down = None, True
    else:
        down = False
    if record is not None:
        return record
    pending = await anyio.to_thread.run_sync(s.outbox.find, "session", session_id)
    if pending is not None:
        return SessionRecord.from_json(pending)
    if down:
        raise _unavailable("the event store (needed to find this session)")
    raise HTTPException(404, f"session_id {session_id!r} does not exist")


def _from_model(
    session_id: str, body: StartSession, chart: Chart, answer: RecommendResponse
) -> Session:
    probabilities = {p.size: p for p in answer.sizes}
    sizes = []
    for size, index in zip(chart.sizes, chart.indices, strict=True):
        p = probabilities.get(size)
        sizes.append(
            SizeOption(
                size=size,
                size_index=index,
                p_too_small=None if p is None else p.p_too_small,
                p_fit=None if p is None else p.p_fit,
                p_too_large=None if p is None else p.p_too_large,
            )
        )
    return Session(
        session_id=session_id,
        created_at=datetime.now(UTC),
        product_id=body.product_id,
        guest=body.user_id is None,
        recommended_size=answer.recommended_size,
        confidence=answer.confidence,
        runner_up=answer.runner_up,
        fit_note=answer.fit_note,
        sizes=sizes,
        degraded=False,
        fallbacks=list(answer.fallbacks),
        model_versions=dict(answer.model_versions),
        prediction_request_id=answer.request_id,
    )


async def _degraded(
    s: Services, session_id: str, body: StartSession, chart: Chart, exc: PredictionUnavailable
) -> Session:
    girth = None
    if body.measurements is not None:
        girth = getattr(body.measurements, f"{chart.dimension}_cm", None)
    if girth is None and body.user_id is not None:
        girth = await anyio.to_thread.run_sync(s.charts.girth, body.user_id, chart.dimension)
    answer = chart_rule(chart, girth)
    s.metrics.degraded.labels(exc.reason).inc()
    log.warning(
        "degraded answer: size chart rule",
        extra={"session_id": session_id, "reason": exc.reason, "detail": str(exc)},
    )
    return Session(
        session_id=session_id,
        created_at=datetime.now(UTC),
        product_id=body.product_id,
        guest=body.user_id is None,
        recommended_size=answer.size,
        confidence=None,
        runner_up=None,
        fit_note=answer.note,
        sizes=[
            SizeOption(size=z, size_index=i)
            for z, i in zip(chart.sizes, chart.indices, strict=True)
        ],
        degraded=True,
        degraded_reason=f"{exc.reason}: {exc}",
        fallbacks=["prediction service unavailable: size chart rule", *answer.fallbacks],
    )
