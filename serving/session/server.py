"""Build the session service from settings and serve it (``fitml session-service``)."""

from __future__ import annotations

import threading

from fastapi import FastAPI

from serving.limits import Limits, request_deadline_protocol, uvicorn_limits
from serving.pseudonym import load_pseudonymizer
from serving.secrets import SecretFile
from serving.service_auth import ServiceTokens
from serving.session.app import Services, create_app
from serving.session.auth import JwtVerifier
from serving.session.charts import ChartBook, OnlineReader
from serving.session.client import PredictionClient
from serving.session.config import SessionConfig
from serving.session.delivery import Deliverer, PushFn, feast_push
from serving.session.observability import Metrics
from serving.session.security import KeyRing, LocalRateLimiter, RateLimiter, RedisRateLimiter
from serving.session.store import Outbox, open_event_store


def build_services(config: SessionConfig, push: PushFn | None = None) -> Services:
    """Open the stores and clients the app needs (charts read from the work directory).

    Args:
        config: the session service's settings.
        push: how feedback reaches the feature store (default: :func:`feast_push`).

    Raises:
        FileNotFoundError: the work directory has no feature tables yet.
    """
    settings = config.settings
    online = OnlineReader(settings)
    # The online store answers only the size-chart fallback (the prediction service down, a
    # product newer than the offline charts): open it (import Feast, read once) beside the
    # start instead of before it. A read that comes first waits for it on the reader's lock.
    threading.Thread(target=online.warm_up, name="online-store-warm-up", daemon=True).start()
    charts = ChartBook(settings, online).load()
    # The tables are created on the first connection: the store may be down at start.
    store = open_event_store(config.event_store, config.state_dir, config.table_prefix)
    outbox = Outbox(config.state_dir / "outbox.db")
    metrics = Metrics()
    limiter: RateLimiter
    if config.redis_url:
        limiter = RedisRateLimiter(config.redis_url, config.rate_per_s, config.rate_burst)
    else:
        limiter = LocalRateLimiter(config.rate_per_s, config.rate_burst)
    deliverer = Deliverer(
        outbox,
        store,
        feast_push(settings) if push is None else push,
        metrics,
        interval_s=config.delivery_interval_s,
    )
    keys_file = (
        SecretFile(config.api_keys_file, overlap_s=config.secret_overlap_s, what="API keys file")
        if config.api_keys_file
        else None
    )
    jwt = None
    if config.oauth_issuer is not None:
        jwt = JwtVerifier(
            config.oauth_issuer,
            str(config.oauth_audience),
            jwks_file=config.oauth_jwks_file,
            jwks_url=config.oauth_jwks_url,
            overlap_s=config.secret_overlap_s,
        )
    return Services(
        client=PredictionClient(
            config.prediction_url, config.client, token=service_tokens(config).current
        ),
        charts=charts,
        store=store,
        outbox=outbox,
        deliverer=deliverer,
        limiter=limiter,
        keys=KeyRing(config.api_key_hashes, keys_file),
        metrics=metrics,
        pseudonyms=load_pseudonymizer(settings),
        jwt=jwt,
        limits=limits_of(config),
    )


def limits_of(config: SessionConfig) -> Limits:
    """The request limits the configuration sets."""
    return Limits(
        max_body_bytes=config.max_body_bytes,
        max_header_bytes=config.max_header_bytes,
        body_timeout_s=config.body_timeout_s,
        header_timeout_s=config.header_timeout_s,
    )


def service_tokens(config: SessionConfig) -> ServiceTokens:
    """The token(s) the session service presents to the prediction service."""
    inline = tuple(t.strip() for t in (config.service_token or "").split(",") if t.strip())
    source = (
        SecretFile(
            config.service_token_file,
            overlap_s=config.secret_overlap_s,
            what="FITML_SERVICE_TOKEN_FILE",
        )
        if config.service_token_file
        else None
    )
    return ServiceTokens(inline, source)


def build_app(config: SessionConfig, push: PushFn | None = None) -> FastAPI:
    """The app with its services built from ``config``."""
    return create_app(
        build_services(config, push), cors_origins=config.cors_origins, docs=config.docs
    )


def serve(config: SessionConfig, port: int = 8000, host: str = "127.0.0.1") -> None:
    """Serve the session service until stopped (JSON logs on stderr, traces per ``OTEL_*``)."""
    import uvicorn

    from serving import tracing
    from serving.session.observability import configure_logging

    configure_logging()
    tracing.configure_tracing("fitml-session")  # off unless OTEL_TRACES_EXPORTER is set
    app = build_app(config)
    limits = limits_of(config)
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            http=request_deadline_protocol(limits.header_timeout_s),
            **uvicorn_limits(limits),
        )
    finally:
        tracing.shutdown_tracing()
