"""The prediction path behind the service: online features + champion models + recommend().

:class:`Predictor` is plain Python (no web framework), so the BentoML service, benchmarks and
tests share it. It loads the models by registered name and alias, never by file path.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.store import online_features, open_store
from features.transforms import request_features
from ml_pipeline.settings import Settings
from serving.inference_log import InferenceLog
from serving.recommend import Recommendation, recommend_frame
from serving.schemas import (
    FitPrediction,
    FitQuery,
    Measurements,
    RecommendResponse,
    SizeProbabilities,
)
from training import registry
from training.models import FitModel, SizeModel


class UnknownProductError(KeyError):
    """The product is not in the feature store (or has no size chart)."""

    def __init__(self, product_id: str) -> None:
        super().__init__(product_id)
        self.product_id = product_id

    def __str__(self) -> str:
        return f"unknown product_id {self.product_id!r}: it has no size chart in the feature store"


class UnknownSizeError(ValueError):
    """A size the product does not offer."""


def hash_user(user_id: str | None) -> str | None:
    """The user id as it may appear in logs: a truncated SHA-256."""
    if not user_id:
        return None
    return hashlib.sha256(user_id.encode()).hexdigest()[:16]


@dataclass
class LoadedModels:
    """The fit and size model of one variant, with their registered versions."""

    fit: FitModel
    size: SizeModel
    versions: dict[str, str]


class Predictor:
    """Answers recommendation and fit queries from the feature store and the champion models."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def load(self) -> Predictor:
        """Load the champion models and open the feature store; returns ``self``."""
        registry.configure(self.settings)
        fit, fit_version = registry.load_model(self.settings.mlflow.fit_model_name)
        size, size_version = registry.load_model(self.settings.mlflow.size_model_name)
        assert isinstance(fit, FitModel) and isinstance(size, SizeModel)
        self.champion_ = LoadedModels(
            fit, size, {"fit_model": fit_version, "size_model": size_version}
        )
        self.store_ = open_store(self.settings)
        self.log_ = InferenceLog(self.settings.inference_log_dir)
        return self

    @property
    def ready(self) -> bool:
        """Whether models and the feature store are loaded."""
        return hasattr(self, "champion_") and hasattr(self, "store_")

    def close(self) -> None:
        """Flush the inference log."""
        if hasattr(self, "log_"):
            self.log_.close()

    def feature_row(
        self,
        user_id: str | None,
        product_id: str,
        measurements: Measurements | None,
        fit_preference: str | None,
    ) -> tuple[dict[str, Any], list[str]]:
        """Online features for one (shopper, product), request values applied, and fallbacks.

        Raises:
            UnknownProductError: the product has no size chart online.
        """
        row = online_features(self.store_, user_id, product_id)
        if not row.get("chart_index"):
            raise UnknownProductError(product_id)
        fallbacks: list[str] = []
        if measurements is not None:
            for name, value in measurements.model_dump().items():
                if value is not None:
                    row[f"user_{name}"] = value
        if fit_preference is not None:
            row["user_fit_preference"] = fit_preference
        if not user_id:
            fallbacks.append("guest: no fit history")
        elif row.get("user_height_cm") is None and row.get("hist_n") is None:
            fallbacks.append("unknown user: no profile or fit history")
        elif row.get("hist_n") is None:
            fallbacks.append("new user: no fit history")
        dimension = row.get("chart_dimension")
        if dimension and row.get(f"user_{dimension}_cm") is None:
            fallbacks.append(f"no {dimension} measurement: size chart not used")
        if row.get("pstat_n") is None:
            fallbacks.append("new product: no fit feedback yet")
        return row, fallbacks

    def recommend(
        self,
        product_id: str,
        user_id: str | None = None,
        measurements: Measurements | None = None,
        fit_preference: str | None = None,
    ) -> RecommendResponse:
        """Recommend a size of ``product_id`` for a shopper (known user or guest)."""
        row, fallbacks = self.feature_row(user_id, product_id, measurements, fit_preference)
        models = self.champion_
        frame = pd.DataFrame([row])
        rec = recommend_frame(frame, models.fit, models.size, [fallbacks])[0]
        assert rec is not None  # the product has a chart: feature_row checked
        response = to_response(rec, models.versions, uuid.uuid4().hex)
        self.log_.append(
            {
                "request_id": response.request_id,
                "user_hash": hash_user(user_id),
                "product_id": product_id,
                "features": _loggable(row),
                "recommended_size": rec.recommended_size,
                "confidence": rec.confidence,
                "fallbacks": fallbacks,
                "model_versions": models.versions,
                "variant": response.variant,
            }
        )
        return response

    def predict_fit(self, queries: list[FitQuery]) -> list[FitPrediction]:
        """Probabilities of too small / fit / too large for each (shopper, product, size)."""
        rows = []
        for query in queries:
            row, _ = self.feature_row(query.user_id, query.product_id, query.measurements, None)
            sizes = [str(v) for v in row["chart_sizes"]]
            if query.size not in sizes:
                raise UnknownSizeError(
                    f"size {query.size!r} is not offered for product {query.product_id!r}; "
                    f"use one of {', '.join(sizes)}"
                )
            rows.append({**row, "size_index": row["chart_index"][sizes.index(query.size)]})
        proba = self.champion_.fit.predict_proba(request_features(pd.DataFrame(rows)))
        return [
            FitPrediction(
                product_id=q.product_id,
                size=q.size,
                p_too_small=float(p[0]),
                p_fit=float(p[1]),
                p_too_large=float(p[2]),
            )
            for q, p in zip(queries, proba, strict=True)
        ]


def to_response(
    rec: Recommendation, versions: Mapping[str, str], request_id: str
) -> RecommendResponse:
    """The HTTP body of a recommendation."""
    return RecommendResponse(
        recommended_size=rec.recommended_size,
        confidence=rec.confidence,
        runner_up=rec.runner_up,
        fit_note=rec.fit_note,
        sizes=[
            SizeProbabilities(
                size=s.size, p_too_small=s.p_too_small, p_fit=s.p_fit, p_too_large=s.p_too_large
            )
            for s in rec.sizes
        ],
        model_versions=dict(versions),
        request_id=request_id,
        fallbacks=list(rec.fallbacks),
    )


def _loggable(row: Mapping[str, Any]) -> dict[str, Any]:
    """Feature values fit for the inference log: no identifiers, arrays as lists."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in ("user_id", "product_id"):
            continue
        if isinstance(value, np.ndarray):
            value = value.tolist()
        out[key] = value
    return out
