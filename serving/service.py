"""The BentoML prediction service: ``POST /recommend``, ``POST /predict_fit``, probes, metrics.

Start it with ``fitml serve`` (or ``bentoml serve serving.service:FitmlService``); it reads
the work directory and profile from ``FITML_WORKDIR`` / ``FITML_PROFILE``. BentoML provides
``/livez``, ``/readyz`` (200 only once :meth:`FitmlService.__is_ready__` is true: models and
feature store loaded) and ``/metrics`` (Prometheus, with ``fitml_*`` series by variant).

Latency notes (see ``tests/benchmarks/bench_serving.py`` for the numbers):

- ``/recommend`` is an ``async`` handler that computes inline: the work is ~1 ms of CPU, and
  handing it to a thread pool costs more than it saves (thread wake-ups, GIL hand-offs).
- The worker's tail came from Python's cyclic GC walking every long-lived object (models,
  Feast registry, pydantic schemas). Everything loaded is frozen out of the collector after a
  warm-up, again after the first requests (which build the HTTP stack's lazy state), and the
  young-generation threshold is raised so collections are rarer; requests create few cycles.
- Access logging is off, and BentoML's OpenTelemetry middleware skips every URL: fitml traces
  its own requests (:mod:`serving.telemetry`).
"""

from __future__ import annotations

import gc
import os
from typing import Annotated, Any, Final, cast

import bentoml
from pydantic import Field
from starlette.responses import JSONResponse

from serving.bento_models import RegistryModel, load_stored, settings_from_env
from serving.prediction_guard import (
    PredictionGuard,
    install_client_error_log,
    install_request_deadline,
)
from serving.schemas import (
    ID_PATTERN,
    FitPrediction,
    FitPreference,
    FitQuery,
    Measurements,
    RecommendResponse,
)
from serving.telemetry import PredictionMetrics, RequestContext, registered_at, start_worker

MAX_BATCH: Final = 1000
GC_THRESHOLD: Final = (20_000, 50, 100)
"""Young-generation threshold raised from 700: fewer collections, each still short."""
REFREEZE_AFTER: Final = 2_000
"""Requests after which objects that survived them are frozen out of the collector."""

UserId = Annotated[
    str | None,
    Field(default=None, min_length=1, max_length=128, pattern=ID_PATTERN, examples=["u000123"]),
]
ProductId = Annotated[
    str, Field(min_length=1, max_length=128, pattern=ID_PATTERN, examples=["p0030"])
]


def error_response(status: int, field: str, message: str) -> Any:
    """A 4xx JSON body shaped like BentoML's own validation errors: what, where, why."""
    return JSONResponse(
        {
            "error": message,
            "detail": [
                {
                    "loc": ["header" if field == "content-type" else "body", *field.split(".")],
                    "msg": message,
                    "type": "value_error",
                }
            ],
        },
        status_code=status,
    )


@bentoml.service(
    name="fitml",
    # One worker per core of the 2-core target machine: at 8 concurrent clients this took
    # /recommend from ~540 to ~900 req/s at a p99 near 20-25 ms (tests/benchmarks).
    workers=2,
    threads=1,
    traffic={"timeout": 10, "max_concurrency": 256},
    logging={"access": {"enabled": False}},
    metrics={"enabled": True},
    # fitml traces its own requests (serving/telemetry.py, per the OTEL_* variables); BentoML's
    # OpenTelemetry middleware would open an unsampled span per request, 8% of the worker's CPU
    tracing={"sample_rate": 0.0, "excluded_urls": ["/"]},
    envs=[
        {"name": "FITML_PROFILE", "value": "local"},
        {"name": "FITML_WORKDIR", "value": "var"},
    ],
)
class FitmlService:
    """Size recommendations for live try-on sessions."""

    fit_model = RegistryModel.of("fit", "champion")
    size_model = RegistryModel.of("size", "champion")

    def __init__(self) -> None:
        from serving.lean_imports import serving_imports
        from serving.predictor import LoadedModels, Predictor
        from serving.service_auth import ServiceTokens, check_bind

        check_bind(os.environ.get("FITML_SERVE_HOST", "127.0.0.1"), ServiceTokens.from_env())
        install_client_error_log()
        settings = settings_from_env()
        # The models import LightGBM, and Feast for their feature lists: without scikit-learn
        # and typeguard (serving/lean_imports.py), seconds off every worker's start. The
        # predictor opens the online store the same way.
        with serving_imports():
            fit, fit_version = load_stored(self.fit_model)
            size, size_version = load_stored(self.size_model)
        champion = LoadedModels(fit, size, {"fit_model": fit_version, "size_model": size_version})
        shadow = os.environ.get("FITML_CHALLENGER_MODE", "split") == "shadow"
        share = float(os.environ.get("FITML_CHALLENGER_SHARE", settings.serving.challenger_share))
        challenger = None
        if share > 0 or shadow:
            challenger = _load_challenger()
        self.predictor = Predictor(settings, challenger_share=share, shadow=shadow).load(
            champion, challenger
        )
        self.predictor.warm_up(_any_product(settings))
        self._metrics = PredictionMetrics()
        start_worker(
            self.predictor,
            self._metrics,
            {
                "fit_model": registered_at(self.fit_model),
                "size_model": registered_at(self.size_model),
            },
        )
        self._served = 0
        # Everything loaded so far lives as long as the worker: keep it out of the cyclic
        # collector's generations so collections stay short, and collect young ones rarely.
        gc.collect()
        gc.freeze()
        threshold = os.environ.get("FITML_GC_THRESHOLD")
        gc.set_threshold(*(tuple(map(int, threshold.split(","))) if threshold else GC_THRESHOLD))

    @bentoml.on_deployment
    def _check_feature_store() -> None:  # type: ignore[misc]
        """Once, before any worker starts: stop with a clear message if features are unreadable.

        Workers that cannot read the feature store would fail at start and be restarted
        forever; this fails the deployment once instead.
        """
        from ml_pipeline.errors import FeatureStoreUnavailable
        from serving.online_features import check_reachable

        try:
            check_reachable(settings_from_env())
        except FeatureStoreUnavailable as exc:
            raise SystemExit(f"fitml: error: {exc}") from None

    def __is_ready__(self) -> bool:
        """Ready once the models and the feature store are loaded."""
        return self.predictor.ready

    @bentoml.on_shutdown
    def _close(self) -> None:
        self.predictor.close()

    def _after_request(self) -> None:
        self._served += 1
        if self._served == REFREEZE_AFTER:
            gc.collect(1)
            gc.freeze()

    @bentoml.api(route="/recommend")
    async def recommend(
        self,
        product_id: ProductId,
        user_id: UserId = None,
        measurements: Measurements | None = None,
        fit_preference: FitPreference | None = None,
    ) -> RecommendResponse:
        """Recommend a size of ``product_id`` for a known user or a guest with measurements.

        Unknown product: 404. A shopper the store does not know is answered from the request's
        measurements (or the product alone), with the reasons in ``fallbacks``.
        """
        from serving.predictor import UnknownProductError

        try:
            response = self.predictor.recommend(product_id, user_id, measurements, fit_preference)
        except UnknownProductError as exc:
            self._metrics.count("recommend", "none", "unknown_product")
            return error_response(404, "product_id", str(exc))  # type: ignore[no-any-return]
        self._metrics.count(
            "recommend", response.variant, "fallback" if response.fallbacks else "ok"
        )
        self._after_request()
        return response

    @bentoml.api(route="/predict_fit")
    def predict_fit(self, queries: list[FitQuery]) -> list[FitPrediction]:
        """P(too small, fit, too large) for each (shopper, product, size) of a batch."""
        from serving.predictor import UnknownProductError, UnknownSizeError

        if len(queries) > MAX_BATCH:
            return error_response(  # type: ignore[no-any-return]
                400, "queries", f"{len(queries)} rows; send at most {MAX_BATCH} per request"
            )
        try:
            out = self.predictor.predict_fit(queries)
        except UnknownProductError as exc:
            self._metrics.count("predict_fit", "none", "unknown_product")
            return error_response(404, "queries.product_id", str(exc))  # type: ignore[no-any-return]
        except UnknownSizeError as exc:
            self._metrics.count("predict_fit", "none", "unknown_size")
            return error_response(400, "queries.size", str(exc))  # type: ignore[no-any-return]
        self._metrics.count("predict_fit", "champion", "ok", len(out))
        return out


class JsonOnly:
    """ASGI middleware: the prediction endpoints take JSON only; anything else is a 415.

    BentoML would otherwise try its multipart / form parsers on a body a client labelled so,
    and a malformed one ends in a 500 (found by ``tests/integration/test_fuzz_service.py``).
    """

    def __init__(self, app: Any, paths: tuple[str, ...] = ("/recommend", "/predict_fit")) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Answer a non-JSON POST to the prediction endpoints with 415, pass the rest on."""
        if scope["type"] == "http" and scope["path"] in self.paths:
            media = b""
            for name, value in scope["headers"]:
                if name == b"content-type":  # the first one: what Starlette (BentoML) reads
                    media = value.split(b";")[0].strip().lower()
                    break
            if media not in (b"", b"application/json"):
                response = error_response(
                    415,
                    "content-type",
                    f"Content-Type {media.decode('latin-1')!r} is not supported; "
                    "send application/json",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# The guard first (outermost): credentials and limits before anything reads the body; then
# the request id and trace context (they read headers only), so refusals past the guard are
# traced too.
cast(Any, FitmlService).add_asgi_middleware(PredictionGuard)
cast(Any, FitmlService).add_asgi_middleware(RequestContext)
cast(Any, FitmlService).add_asgi_middleware(JsonOnly)
# uvicorn (run by BentoML in this process) resolves its HTTP protocol after this import.
install_request_deadline()


def _load_challenger() -> Any:
    from bentoml.exceptions import NotFound

    from serving.predictor import LoadedModels

    try:
        fit, fit_version = load_stored(RegistryModel.of("fit", "challenger").resolve())
        size, size_version = load_stored(RegistryModel.of("size", "challenger").resolve())
    except NotFound:
        return None
    return LoadedModels(fit, size, {"fit_model": fit_version, "size_model": size_version})


def _any_product(settings: Any) -> str | None:
    """A product id to warm up with (None when the offline tables are not there)."""
    path = settings.offline_dir / "products.parquet"
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["product_id"])
    return str(table.column(0)[0]) if table.num_rows else None
