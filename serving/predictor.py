"""The prediction path behind the service: online features + champion models + recommend().

:class:`Predictor` is plain Python (no web framework), so the BentoML service, the benchmark
floors and tests share it. Models come by registered name and alias: from the MLflow registry
(:meth:`Predictor.load`) or from the BentoML model store the service declares
(:mod:`serving.bento_models`), never from a file path.

The hot path works on numpy arrays end to end: the online row is read with
:class:`serving.online_features.OnlineReader`, expanded to one row per size and scored by
:func:`serving.recommend.recommend_rows` (the same code evaluation runs on frames).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np

from ml_pipeline.settings import Settings
from serving.inference_log import InferenceLog
from serving.pseudonym import Pseudonymizer, digest_of, load_pseudonymizer
from serving.reco_cache import AnswerCache, answer_key, cache_from_env
from serving.recommend import Recommendation, recommend_rows
from serving.schemas import (
    FitPrediction,
    FitQuery,
    Measurements,
    RecommendResponse,
    SizeProbabilities,
)
from serving.tracing import span

if TYPE_CHECKING:
    from serving.online_features import OnlineReader
    from training.models import FitModel, SizeModel

Variant = Literal["champion", "challenger"]
CHAMPION: Final = "champion"
CHALLENGER: Final = "challenger"


class UnknownProductError(KeyError):
    """The product is not in the feature store (or has no size chart)."""

    def __init__(self, product_id: str) -> None:
        super().__init__(product_id)
        self.product_id = product_id

    def __str__(self) -> str:
        return f"unknown product_id {self.product_id!r}: it has no size chart in the feature store"


class UnknownSizeError(ValueError):
    """A size the product does not offer."""


@dataclass
class LoadedModels:
    """The fit and size model of one variant, with their registered versions."""

    fit: FitModel
    size: SizeModel
    versions: dict[str, str]


def load_registered(settings: Settings, alias: str) -> LoadedModels | None:
    """Both models registered under ``alias`` in the MLflow registry (None if either lacks it).

    Imports MLflow: for tools, tests and the benchmark floors; the service itself loads from
    the BentoML model store.
    """
    from training import registry
    from training.models import FitModel, SizeModel

    registry.configure(settings)
    names = (settings.mlflow.fit_model_name, settings.mlflow.size_model_name)
    if any(registry.alias_version(name, alias) is None for name in names):
        return None
    fit, fit_version = registry.load_model(names[0], alias)
    size, size_version = registry.load_model(names[1], alias)
    if not isinstance(fit, FitModel) or not isinstance(size, SizeModel):
        raise TypeError(f"{names} @{alias} are not a fit and a size model")
    return LoadedModels(fit, size, {"fit_model": fit_version, "size_model": size_version})


class Predictor:
    """Answers recommendation and fit queries from the feature store and the loaded models.

    Args:
        settings: the run's settings (work directory, feature store, serving options).
        challenger_share: share of shoppers (sticky per hashed user id; guests per request)
            answered by the challenger; default from ``settings.serving``.
        shadow: score the challenger beside the champion for every request, off the hot path
            (in the inference-log writer), while the champion answers.
        now: the clock for feature freshness (tests pin it).
        pseudonyms: the keyed pseudonyms of user ids in the inference log (default: the
            deployment's keys, :func:`serving.pseudonym.load_pseudonymizer`, at :meth:`load`).
        cache: where answers are kept by what the models see (default: the one
            ``FITML_RECO_CACHE`` asks for, :func:`serving.reco_cache.cache_from_env`, at
            :meth:`load`; ``FITML_RECO_CACHE=off`` for none).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        challenger_share: float | None = None,
        shadow: bool = False,
        now: Any = None,
        pseudonyms: Pseudonymizer | None = None,
        cache: AnswerCache | None = None,
    ) -> None:
        self.settings = settings
        self.pseudonyms = pseudonyms
        self.cache = cache
        share = settings.serving.challenger_share if challenger_share is None else challenger_share
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"challenger_share must be within [0, 1], got {share}")
        self.challenger_share = share
        self.shadow = shadow
        self._now = now or (lambda: datetime.now(UTC))
        self._random = random.Random()

    def load(
        self,
        champion: LoadedModels | None = None,
        challenger: LoadedModels | None = None,
    ) -> Predictor:
        """Load the models (default: champion and challenger from the registry), open the store.

        Returns:
            ``self``.
        """
        from serving.lean_imports import feast_without_typechecks
        from serving.online_features import OnlineReader

        if champion is None:
            champion = load_registered(self.settings, CHAMPION)
            if champion is None:
                raise LookupError(
                    f"no champion of {self.settings.mlflow.fit_model_name} and "
                    f"{self.settings.mlflow.size_model_name}; run `fitml train` and promote"
                )
            if challenger is None and (self.challenger_share > 0 or self.shadow):
                challenger = load_registered(self.settings, CHALLENGER)
        if self.pseudonyms is None:
            self.pseudonyms = load_pseudonymizer(self.settings)
        if self.cache is None:
            self.cache = cache_from_env(namespace=self.settings.feast.project)
        self.variants_: dict[str, LoadedModels] = {CHAMPION: champion}
        if challenger is not None:
            self.variants_[CHALLENGER] = challenger
        # Feast (first imported here in the service) as `python -O` imports it: seconds faster.
        with feast_without_typechecks():
            from features.store import open_store

            self.store_ = open_store(self.settings, online_only=True)
            self.reader_: OnlineReader = OnlineReader(self.store_)
        self.log_ = InferenceLog(
            self.settings.inference_log_dir,
            on_record=self._shadow_score,
            keep_days=_keep_days(),
        )
        return self

    @property
    def champion_(self) -> LoadedModels:
        """The champion's models."""
        return self.variants_[CHAMPION]

    @property
    def ready(self) -> bool:
        """Whether models and the feature store are loaded."""
        return hasattr(self, "variants_") and hasattr(self, "reader_")

    def close(self) -> None:
        """Flush the inference log and stop its writer."""
        if hasattr(self, "log_"):
            self.log_.close()

    def warm_up(self, product_id: str | None = None, n: int = 20) -> None:
        """Run a few predictions so lazily built state exists before the first request."""
        if product_id is None:
            return
        for i in range(n):
            try:
                self.recommend(product_id, None if i % 2 else "warm-up", log=False)
            except UnknownProductError:
                return

    # -- features ---------------------------------------------------------------------------

    def feature_row(
        self,
        user_id: str | None,
        product_id: str,
        measurements: Measurements | None,
        fit_preference: str | None,
    ) -> tuple[dict[str, Any], list[str]]:
        """Online features for one (shopper, product), request values applied, and fallbacks.

        Values of a view older than its maximum age are dropped as if missing, and the answer
        says so (:func:`features.freshness.enforce_freshness`, the rule training's join uses).

        Raises:
            UnknownProductError: the product has no size chart online.
        """
        from features.freshness import enforce_freshness

        read = self.reader_.read(user_id, product_id)
        row, fallbacks = enforce_freshness(read.values, self._now(), read.event_times)
        if not row.get("chart_index"):
            raise UnknownProductError(product_id)
        stale = list(fallbacks)
        if measurements is not None:
            for name, value in measurements.model_dump().items():
                if value is not None:
                    row[f"user_{name}"] = value
        if fit_preference is not None:
            row["user_fit_preference"] = fit_preference
        if not user_id:
            fallbacks.append("guest: no fit history")
        elif row.get("user_height_cm") is None and row.get("hist_n") is None and not stale:
            fallbacks.append("unknown user: no profile or fit history")
        elif row.get("hist_n") is None and not any("fit history" in f for f in stale):
            fallbacks.append("new user: no fit history")
        dimension = row.get("chart_dimension")
        if dimension and row.get(f"user_{dimension}_cm") is None:
            fallbacks.append(f"no {dimension} measurement: size chart not used")
        if row.get("pstat_n") is None and not any("product fit" in f for f in stale):
            fallbacks.append("new product: no fit feedback yet")
        return row, fallbacks

    # -- answers ----------------------------------------------------------------------------

    def variant_for(self, user_hash: str | None) -> Variant:
        """Which variant answers: sticky per hashed user, random per request for guests."""
        if CHALLENGER not in self.variants_ or self.shadow or self.challenger_share <= 0:
            return CHAMPION
        sticky = user_hash is not None
        draw = (
            int(digest_of(user_hash)[:8], 16) / 0xFFFFFFFF  # type: ignore[arg-type]
            if sticky
            else self._random.random()
        )
        return CHALLENGER if draw < self.challenger_share else CHAMPION

    def recommend(
        self,
        product_id: str,
        user_id: str | None = None,
        measurements: Measurements | None = None,
        fit_preference: str | None = None,
        *,
        log: bool = True,
    ) -> RecommendResponse:
        """Recommend a size of ``product_id`` for a shopper (known user or guest).

        Raises:
            UnknownProductError: the product has no size chart online.
        """
        started = time.perf_counter()
        with span("features.online_read"):
            row, fallbacks = self.feature_row(user_id, product_id, measurements, fit_preference)
        user_hash = self._pseudonym(user_id)
        variant = self.variant_for(user_hash)
        models = self.variants_[variant]
        key = rec = None
        if self.cache is not None:
            key = answer_key(row, fallbacks, models.versions)
            rec = self.cache.get(key)
        cached = "off" if key is None else "miss" if rec is None else "hit"
        if rec is None:
            with span("model.recommend", {"fitml.variant": variant}):
                rec = recommend_rows(_columns([row]), models.fit, models.size, [fallbacks])[0]
            if rec is None:  # the product has a chart: feature_row checked
                raise UnknownProductError(product_id)
            if key is not None:
                self.cache.put(key, rec)  # type: ignore[union-attr]
        response = to_response(rec, models.versions, uuid.uuid4().hex, variant)
        if log:
            self.log_.append(
                {
                    "request_id": response.request_id,
                    "endpoint": "recommend",
                    "user_hash": user_hash,
                    "product_id": product_id,
                    "variant": variant,
                    "model_versions": models.versions,
                    "recommended_size": rec.recommended_size,
                    "recommended_index": rec.recommended_index,
                    "expected_index": rec.expected_index,
                    "confidence": rec.confidence,
                    "fallbacks": list(rec.fallbacks),
                    "sizes": [[s.size, s.p_too_small, s.p_fit, s.p_too_large] for s in rec.sizes],
                    "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                    "cache": cached,
                },
                features=row,
                shadow=_columns([row]) if self.shadow and CHALLENGER in self.variants_ else None,
            )
        return response

    def predict_fit(self, queries: Sequence[FitQuery]) -> list[FitPrediction]:
        """Probabilities of too small / fit / too large for each (shopper, product, size).

        Raises:
            UnknownProductError: a product has no size chart online.
            UnknownSizeError: a size the product does not offer (naming the row).
        """
        from features.transforms import request_features

        if not queries:
            return []
        rows = []
        for i, query in enumerate(queries):
            row, _ = self.feature_row(query.user_id, query.product_id, query.measurements, None)
            sizes = [str(v) for v in row["chart_sizes"]]
            if query.size not in sizes:
                raise UnknownSizeError(
                    f"[{i}].size: {query.size!r} is not offered for product "
                    f"{query.product_id!r}; use one of {', '.join(sizes)}"
                )
            rows.append({**row, "size_index": float(row["chart_index"][sizes.index(query.size)])})
        champion = self.champion_
        proba = champion.fit.predict_proba(request_features(_columns(rows)))
        request_id = uuid.uuid4().hex
        for query, row, p in zip(queries, rows, proba, strict=True):
            self.log_.append(
                {
                    "request_id": request_id,
                    "endpoint": "predict_fit",
                    "user_hash": self._pseudonym(query.user_id),
                    "product_id": query.product_id,
                    "size": query.size,
                    "variant": CHAMPION,
                    "model_versions": champion.versions,
                    "p": [float(v) for v in p],
                },
                features=row,
            )
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

    def _pseudonym(self, user_id: str | None) -> str | None:
        if self.pseudonyms is None:  # not loaded: tests that call parts directly
            self.pseudonyms = load_pseudonymizer(self.settings)
        return self.pseudonyms(user_id)

    def _shadow_score(self, record: dict[str, Any], shadow: Any) -> None:
        """Score the challenger for a logged request (runs in the log writer thread)."""
        if shadow is None or CHALLENGER not in self.variants_:
            return
        models = self.variants_[CHALLENGER]
        rec = recommend_rows(shadow, models.fit, models.size, [record["fallbacks"]])[0]
        if rec is not None:
            record["shadow"] = {
                "variant": CHALLENGER,
                "model_versions": models.versions,
                "recommended_size": rec.recommended_size,
                "confidence": rec.confidence,
            }


def _keep_days() -> int | None:
    """Days the inference log keeps (``FITML_INFERENCE_LOG_DAYS``; 0 keeps it for ever)."""
    import os

    from serving.inference_log import DEFAULT_KEEP_DAYS

    raw = os.environ.get("FITML_INFERENCE_LOG_DAYS", "")
    try:
        days = int(raw) if raw else DEFAULT_KEEP_DAYS
    except ValueError:
        from ml_pipeline.errors import ConfigError

        raise ConfigError(
            f"FITML_INFERENCE_LOG_DAYS {raw!r} is not a whole number of days; set it like 90"
        ) from None
    return days or None


def _columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Rows of feature values as a dict of 1-D object arrays (lists stay one cell each)."""
    out: dict[str, np.ndarray] = {}
    n = len(rows)
    for name in rows[0]:
        column = np.empty(n, dtype=object)
        for i, row in enumerate(rows):
            column[i] = row.get(name)
        out[name] = column
    return out


def to_response(
    rec: Recommendation,
    versions: Mapping[str, str],
    request_id: str,
    variant: Variant = CHAMPION,
) -> RecommendResponse:
    """The HTTP body of a recommendation."""
    return RecommendResponse.model_construct(
        recommended_size=rec.recommended_size,
        confidence=rec.confidence,
        runner_up=rec.runner_up,
        fit_note=rec.fit_note,
        sizes=[
            SizeProbabilities.model_construct(
                size=s.size, p_too_small=s.p_too_small, p_fit=s.p_fit, p_too_large=s.p_too_large
            )
            for s in rec.sizes
        ],
        model_versions=dict(versions),
        request_id=request_id,
        fallbacks=list(rec.fallbacks),
        variant=variant,
    )
