"""What the prediction service tells the people on call: metrics, request context, traces, logs.

- :class:`PredictionMetrics`: the ``fitml_*`` series of the prediction service, on BentoML's
  ``/metrics``. The distributions (latency inside the model path, confidence, P(fit) of the
  recommended size, size shift) are observed in the inference log's writer thread, from the
  record each answer already logs, so a request pays nothing for them.
- :class:`RequestContext`: ASGI middleware; takes the caller's ``X-Request-ID`` for the logs
  and, when tracing is on, continues the caller's W3C trace with a server span.
- :func:`start_worker`: JSON logs, tracing from ``OTEL_*``, the model gauges; called once by
  each worker after its models are loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from ml_pipeline.logs import REQUEST_ID, configure_logging, wants_json
from serving import tracing

log = logging.getLogger("fitml.prediction")

REQUEST_ID_HEADER: Final = b"x-request-id"
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0)
SHIFT_BUCKETS: Final = (-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5)
"""Size steps between the recommended size and the size model's expected size."""
UNIT_BUCKETS: Final = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class PredictionMetrics:
    """The prediction service's Prometheus series (``bentoml.metrics``: one per worker, merged).

    - ``fitml_answers_total{endpoint, variant, outcome}``: answers (``ok``, ``fallback``,
      ``unknown_product``, ``unknown_size``).
    - ``fitml_prediction_seconds{endpoint, variant}``: feature read + scoring per answer.
    - ``fitml_recommendation_confidence{variant}``, ``fitml_recommended_p_fit{variant}``.
    - ``fitml_size_shift{variant}``: recommended size index minus the size model's expected
      index (the fit model moving the answer up or down).
    - ``fitml_model_registered_timestamp_seconds{model, variant, version}``: when each loaded
      model version was registered (the champion's age).
    - ``fitml_reco_cache_total{result}``: recommendation cache lookups (``hit``, ``miss``).
    """

    def __init__(self) -> None:
        import bentoml

        m = bentoml.metrics
        self.answers = m.Counter(
            name="fitml_answers_total",
            documentation="Answers by endpoint, model variant and outcome",
            labelnames=["endpoint", "variant", "outcome"],
        )
        self.latency = m.Histogram(
            name="fitml_prediction_seconds",
            documentation="Feature read and scoring time per answer",
            labelnames=["endpoint", "variant"],
            buckets=LATENCY_BUCKETS,
        )
        self.confidence = m.Histogram(
            name="fitml_recommendation_confidence",
            documentation="Confidence of each recommendation",
            labelnames=["variant"],
            buckets=UNIT_BUCKETS,
        )
        self.p_fit = m.Histogram(
            name="fitml_recommended_p_fit",
            documentation="The fit model's P(fit) of each recommended size",
            labelnames=["variant"],
            buckets=UNIT_BUCKETS,
        )
        self.shift = m.Histogram(
            name="fitml_size_shift",
            documentation="Recommended size index minus the size model's expected index",
            labelnames=["variant"],
            buckets=SHIFT_BUCKETS,
        )
        self.registered = m.Gauge(
            name="fitml_model_registered_timestamp_seconds",
            documentation="When the loaded model version was registered (Unix time)",
            labelnames=["model", "variant", "version"],
            multiprocess_mode="max",
        )
        self.cache = m.Counter(
            name="fitml_reco_cache_total",
            documentation="Recommendation cache lookups by result (hit, miss)",
            labelnames=["result"],
        )

    def count(self, endpoint: str, variant: str, outcome: str, n: int = 1) -> None:
        """Count ``n`` answers."""
        self.answers.labels(endpoint=endpoint, variant=variant, outcome=outcome).inc(n)

    def observe_record(self, record: Mapping[str, Any]) -> None:
        """Observe one inference-log record (runs in the log's writer thread)."""
        variant = str(record.get("variant", "champion"))
        endpoint = str(record.get("endpoint", "recommend"))
        if record.get("latency_ms") is not None:
            self.latency.labels(endpoint=endpoint, variant=variant).observe(
                float(record["latency_ms"]) / 1000
            )
        if endpoint != "recommend":
            return
        if record.get("cache") in ("hit", "miss"):
            self.cache.labels(result=record["cache"]).inc()
        if record.get("confidence") is not None:
            self.confidence.labels(variant=variant).observe(float(record["confidence"]))
        size = record.get("recommended_size")
        for row in record.get("sizes") or ():
            if row[0] == size and row[2] is not None:
                self.p_fit.labels(variant=variant).observe(float(row[2]))
                break
        recommended, expected = record.get("recommended_index"), record.get("expected_index")
        if recommended is not None and expected is not None:
            self.shift.labels(variant=variant).observe(float(recommended) - float(expected))

    def hook(
        self, previous: Callable[[dict[str, Any], Any], None] | None
    ) -> Callable[[dict[str, Any], Any], None]:
        """An inference-log ``on_record`` hook: observe the record, then call ``previous``."""

        def on_record(record: dict[str, Any], shadow: Any) -> None:
            try:
                self.observe_record(record)
            except (TypeError, ValueError, IndexError):  # never lose the record for a metric
                log.warning("inference record not observed", extra={"keys": sorted(record)})
            if previous is not None:
                previous(record, shadow)

        return on_record

    def models_loaded(
        self, versions: Mapping[str, str], registered: Mapping[str, float], variant: str
    ) -> None:
        """Set the registration time of each model (``fit_model``: version, Unix time)."""
        for model, version in versions.items():
            at = registered.get(model)
            if at is not None:
                self.registered.labels(
                    model=model.removesuffix("_model"), variant=variant, version=version
                ).set(at)


def registered_at(stored: Any) -> float:
    """When a stored BentoML model's version was registered in MLflow (else imported)."""
    info = stored.info
    at = (info.metadata or {}).get("registered_at")
    return float(at) if at is not None else info.creation_time.timestamp()


class RequestContext:
    """ASGI middleware: request id from ``X-Request-ID``; a server span when tracing is on."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve the request with its request id (and trace) as the current context."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "-"
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                request_id = value[:64].decode("latin-1")
                break
        token = REQUEST_ID.set(request_id)
        try:
            if tracing.enabled():
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
                with tracing.server_span(f"{scope['method']} {scope['path']}", headers):
                    await self.app(scope, receive, send)
            else:
                await self.app(scope, receive, send)
        finally:
            REQUEST_ID.reset(token)


def start_worker(
    predictor: Any, metrics: PredictionMetrics, champion_registered: Mapping[str, float]
) -> None:
    """Per worker, once models are loaded: JSON logs, tracing, model gauges, metric hook.

    Args:
        predictor: the loaded :class:`serving.predictor.Predictor`.
        metrics: the worker's metrics.
        champion_registered: when each champion model was registered (``fit_model``: time).
    """
    champion = predictor.variants_["champion"]
    configure_logging(
        "prediction",
        json_lines=wants_json(None),
        static={"model_versions": dict(champion.versions)},
    )
    tracing.configure_tracing("fitml-prediction")
    metrics.models_loaded(champion.versions, champion_registered, "champion")
    predictor.log_.on_record = metrics.hook(predictor.log_.on_record)
    log.info(
        "prediction worker ready",
        extra={"variants": sorted(predictor.variants_), "tracing": tracing.enabled()},
    )
