"""The recommendation cache against the real models and feature store of a trained work dir.

An answer from the cache must equal the answer the models give without it, for known users,
guests with measurements and new shoppers; Redis shares answers between predictors (workers).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ml_pipeline.settings import load_settings
from serving.predictor import Predictor
from serving.reco_cache import LocalCache, RedisCache
from serving.schemas import Measurements


def requests_of(workdir: Path, n: int = 150) -> list[dict[str, Any]]:
    """Known users on products they tried, guests with and without measurements, repeated."""
    events = pd.read_parquet(workdir / "offline" / "events.parquet").head(n)
    out: list[dict[str, Any]] = []
    for i, event in enumerate(events.itertuples()):
        out.append({"product_id": event.product_id, "user_id": event.user_id})
        if i % 3 == 0:
            out.append({"product_id": event.product_id})
        if i % 5 == 0:
            m = Measurements(height_cm=150 + i % 40, weight_kg=50 + i % 30)
            out.append({"product_id": event.product_id, "measurements": m})
    return out + out[: len(out) // 2]  # shoppers come back to the same product


def answers(predictor: Predictor, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for request in requests:
        body = predictor.recommend(**request, log=False).model_dump()
        body.pop("request_id")
        out.append(body)
    return out


@pytest.fixture(scope="module")
def settings(trained_workdir: Path) -> Any:
    return load_settings("local", trained_workdir)


def test_cached_answers_equal_the_models_answers(settings: Any, trained_workdir: Path) -> None:
    requests = requests_of(trained_workdir)
    uncached = Predictor(settings, cache=None)
    uncached.load()
    uncached.cache = None  # load() would take the environment's cache
    cache = LocalCache(size=10_000)
    cached = Predictor(settings, cache=cache).load()
    try:
        truth = answers(uncached, requests)
        assert answers(cached, requests) == truth
        first_hits = cache.stats.hits
        assert first_hits > 0  # the repeated half at least
        assert answers(cached, requests) == truth  # now every answer comes from the cache
        assert cache.stats.hits == first_hits + len(requests)
    finally:
        uncached.close()
        cached.close()


def test_redis_shares_answers_between_workers(
    settings: Any, trained_workdir: Path, redis_url: str
) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    namespace = f"fitml-test-{uuid.uuid4().hex[:8]}"
    requests = requests_of(trained_workdir, n=40)
    first = Predictor(settings, cache=RedisCache(client, namespace=namespace, ttl_s=60)).load()
    second_cache = RedisCache(client, namespace=namespace, ttl_s=60)
    second = Predictor(settings, cache=second_cache).load()
    try:
        truth = answers(first, requests)
        keys = client.keys(f"{namespace}:reco:*")
        assert keys and all(0 < client.ttl(k) <= 60 for k in keys)
        assert answers(second, requests) == truth
        assert second_cache.stats.misses == 0 and second_cache.errors == 0
    finally:
        first.close()
        second.close()
        for key in client.scan_iter(f"{namespace}:reco:*"):
            client.delete(key)
