"""The BentoML prediction service: ``POST /recommend``, ``POST /predict_fit``, probes, metrics.

Start it with ``fitml serve`` (or ``bentoml serve serving.service:FitmlService``); it reads
the work directory and profile from ``FITML_WORKDIR`` / ``FITML_PROFILE``. BentoML provides
``/livez``, ``/readyz`` (200 only once :meth:`FitmlService.__is_ready__` is true: models and
feature store loaded) and ``/metrics`` (Prometheus).
"""

from __future__ import annotations

import gc
import os
from http import HTTPStatus

import bentoml
from bentoml.exceptions import BentoMLException

from ml_pipeline.settings import load_settings
from serving.predictor import Predictor, UnknownProductError, UnknownSizeError
from serving.schemas import FitPrediction, FitPreference, FitQuery, Measurements, RecommendResponse


class ClientError(BentoMLException):
    """A 4xx answer whose JSON body says what was wrong with which field."""

    def __init__(self, message: str, status: HTTPStatus) -> None:
        super().__init__(message, error_code=status)


@bentoml.service(
    name="fitml",
    workers=1,
    traffic={"timeout": 10},
    logging={"access": {"enabled": False}},
)
class FitmlService:
    """Size recommendations for live try-on sessions."""

    def __init__(self) -> None:
        settings = load_settings(
            os.environ.get("FITML_PROFILE", "local"), os.environ.get("FITML_WORKDIR", "var")
        )
        self.predictor = Predictor(settings).load()
        # Everything loaded so far lives as long as the worker: keep it out of the cyclic
        # collector's generations so collections stay short.
        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        """Ready once the models and the feature store are loaded."""
        return self.predictor.ready

    @bentoml.api(route="/recommend")
    def recommend(
        self,
        product_id: str,
        user_id: str | None = None,
        measurements: Measurements | None = None,
        fit_preference: FitPreference | None = None,
    ) -> RecommendResponse:
        """Recommend a size of ``product_id`` for a known user or a guest with measurements."""
        try:
            return self.predictor.recommend(product_id, user_id, measurements, fit_preference)
        except UnknownProductError as exc:
            raise ClientError(f"product_id: {exc}", HTTPStatus.NOT_FOUND) from None

    @bentoml.api(route="/predict_fit")
    def predict_fit(self, queries: list[FitQuery]) -> list[FitPrediction]:
        """P(too small, fit, too large) for each (shopper, product, size) of a batch."""
        if len(queries) > 1000:
            raise ClientError(
                f"queries: {len(queries)} rows; send at most 1000 per request",
                HTTPStatus.BAD_REQUEST,
            )
        try:
            return self.predictor.predict_fit(queries)
        except UnknownProductError as exc:
            raise ClientError(f"product_id: {exc}", HTTPStatus.NOT_FOUND) from None
        except UnknownSizeError as exc:
            raise ClientError(f"size: {exc}", HTTPStatus.BAD_REQUEST) from None
