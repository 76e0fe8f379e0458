"""Unit tests of the recommendation cache: keys, the LRU, the Redis tier's failure modes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ml_pipeline.errors import ConfigError
from serving.reco_cache import (
    LocalCache,
    RedisCache,
    answer_key,
    cache_from_env,
    decode,
    encode,
)
from serving.recommend import Recommendation, SizeScore

ROW: dict[str, Any] = {
    "user_id": "u1",
    "product_id": "p1",
    "user_height_cm": 170.0,
    "hist_n": 3,
    "chart_sizes": ["S", "M", "L"],
    "chart_index": np.array([1, 2, 3]),
    "pstat_n": None,
}
VERSIONS = {"fit_model": "3", "size_model": "4"}


def rec(size: str = "M") -> Recommendation:
    return Recommendation(
        recommended_size=size,
        confidence=0.61,
        runner_up="L",
        fit_note="true to size",
        sizes=(
            SizeScore("S", 1, 0.7, 0.25, 0.05),
            SizeScore("M", 2, 0.2, 0.61, 0.19),
            SizeScore("L", 3, 0.05, 0.3, 0.65),
        ),
        expected_index=2.1,
        fallbacks=("new product: no fit feedback yet",),
    )


def test_the_key_ignores_the_user_id_and_follows_everything_the_models_see() -> None:
    key = answer_key(ROW, [], VERSIONS)
    assert answer_key({**ROW, "user_id": "someone else"}, [], VERSIONS) == key
    assert answer_key(dict(reversed(list(ROW.items()))), [], VERSIONS) == key
    changed = [
        answer_key({**ROW, "user_height_cm": 171.0}, [], VERSIONS),
        answer_key({**ROW, "hist_n": 4}, [], VERSIONS),
        answer_key({**ROW, "chart_index": np.array([1, 2, 4])}, [], VERSIONS),
        answer_key({**ROW, "product_id": "p2"}, [], VERSIONS),
        answer_key(ROW, ["guest: no fit history"], VERSIONS),
        answer_key(ROW, [], {**VERSIONS, "fit_model": "5"}),
    ]
    assert key not in changed and len(set(changed)) == len(changed)


def test_nan_and_none_never_share_a_key() -> None:
    assert answer_key({**ROW, "pstat_n": float("nan")}, [], VERSIONS) != answer_key(
        ROW, [], VERSIONS
    )


def test_a_value_without_a_stable_form_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="object"):
        answer_key({**ROW, "odd": object()}, [], VERSIONS)


def test_encode_decode_round_trip() -> None:
    assert decode(encode(rec())) == rec()


def test_local_cache_keeps_the_most_recently_used() -> None:
    cache = LocalCache(size=2)
    cache.put(b"a", rec("S"))
    cache.put(b"b", rec("M"))
    assert cache.get(b"a") == rec("S")  # a is now the most recent
    cache.put(b"c", rec("L"))
    assert cache.get(b"b") is None and cache.get(b"a") == rec("S") and len(cache) == 2
    assert (cache.stats.hits, cache.stats.misses) == (2, 1)


class BrokenRedis:
    def get(self, key: bytes) -> bytes:
        raise ConnectionError("redis is down")

    def set(self, key: bytes, value: bytes, ex: int) -> None:
        raise ConnectionError("redis is down")


def test_a_failing_redis_is_a_miss_never_an_error() -> None:
    cache = RedisCache(BrokenRedis())
    assert cache.get(b"k") is None
    cache.put(b"k", rec())
    assert cache.errors == 2
    assert cache.get(b"k") == rec()  # the local tier still holds it


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FITML_RECO_CACHE": "memcached"}, "use local, redis or off"),
        ({"FITML_RECO_CACHE_SIZE": "lots"}, "'lots' is not a whole number"),
        ({"FITML_RECO_CACHE_SIZE": "0"}, "must be at least 1"),
    ],
)
def test_bad_settings_are_named(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        cache_from_env()


def test_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FITML_RECO_CACHE", raising=False)
    assert isinstance(cache_from_env(), LocalCache)
    monkeypatch.setenv("FITML_RECO_CACHE", "off")
    assert cache_from_env() is None
    monkeypatch.setenv("FITML_RECO_CACHE", "redis")
    monkeypatch.setenv("FITML_RECO_CACHE_TTL", "60")
    cache = cache_from_env(namespace="shop")
    assert isinstance(cache, RedisCache) and cache.ttl_s == 60 and cache.prefix == b"shop:reco:"
