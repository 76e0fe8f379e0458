"""A cache of recommendations, addressed by everything the models see.

The key of an answer is a digest of the feature row the models score (after freshness and the
request's own measurements are applied, without the user id), the fallbacks, and the model
versions. Nothing has to be invalidated: when feedback is pushed for a shopper or a product,
its features change and so does the key; a new champion changes the versions. An entry can
only ever hold the answer the models would give again, so a hit is always right; a stale entry
is merely never asked for again and ages out.

Two tiers, chosen with ``FITML_RECO_CACHE``:

- ``local`` (default): a bounded LRU in the worker's memory (``FITML_RECO_CACHE_SIZE``
  entries, 4096 by default).
- ``redis``: the local LRU in front of Redis (``FITML_RECO_CACHE_REDIS``, default the
  ``FITML_REDIS`` online store's address), shared by every worker and replica, entries kept
  ``FITML_RECO_CACHE_TTL`` seconds (one day by default). Values are JSON, never pickles.
- ``off``: no cache.

Keys carry no user id (only a digest of feature values), so the cache holds nothing a
shopper's erasure would have to find.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, Final, Protocol

import orjson

from ml_pipeline.errors import ConfigError
from serving.recommend import Recommendation, SizeScore

# Bump when what a Recommendation holds, or how it is computed from the same inputs, changes:
# entries written by other code are then never read.
FORMAT: Final = "1"
DEFAULT_SIZE: Final = 4096
DEFAULT_TTL_S: Final = 86_400
_EXCLUDED: Final = frozenset({"user_id"})
_DUMP_OPTIONS: Final = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def answer_key(
    row: Mapping[str, Any], fallbacks: Sequence[str], versions: Mapping[str, str]
) -> bytes:
    """The digest of what the models see for one answer (16 bytes).

    NaN and None both serialise as JSON null; the names of NaN values go into the key too, so
    the two never share an entry.
    """
    values = {k: v for k, v in row.items() if k not in _EXCLUDED}
    nans = [k for k, v in values.items() if isinstance(v, float) and v != v]
    payload = orjson.dumps(
        (FORMAT, dict(versions), values, sorted(nans), list(fallbacks)),
        option=_DUMP_OPTIONS,
        default=_fallback_json,
    )
    return hashlib.blake2b(payload, digest_size=16).digest()


def _fallback_json(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays of object dtype
        return value.tolist()
    if isinstance(value, set | frozenset | tuple):
        return sorted(value, key=repr) if isinstance(value, set | frozenset) else list(value)
    raise TypeError(f"feature value {value!r} of type {type(value).__name__} has no cache key")


def encode(rec: Recommendation) -> bytes:
    """A recommendation as JSON (what the Redis tier stores)."""
    return orjson.dumps(asdict(rec))


def decode(raw: bytes) -> Recommendation:
    """The recommendation :func:`encode` wrote."""
    data = orjson.loads(raw)
    return Recommendation(
        recommended_size=data["recommended_size"],
        confidence=data["confidence"],
        runner_up=data["runner_up"],
        fit_note=data["fit_note"],
        sizes=tuple(SizeScore(**s) for s in data["sizes"]),
        expected_index=data["expected_index"],
        fallbacks=tuple(data["fallbacks"]),
    )


class AnswerCache(Protocol):
    """Where answers are kept, by :func:`answer_key`."""

    def get(self, key: bytes) -> Recommendation | None:
        """The answer kept under ``key``, or None."""

    def put(self, key: bytes, rec: Recommendation) -> None:
        """Keep ``rec`` under ``key``."""


class CacheStats:
    """Hits and misses since start (the prediction service exports them as metrics)."""

    __slots__ = ("hits", "misses")

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0

    @property
    def hit_rate(self) -> float:
        """Share of lookups answered from the cache (0 before any)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class LocalCache:
    """A bounded least-recently-used cache in this process."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 1:
            raise ConfigError(f"FITML_RECO_CACHE_SIZE {size} must be at least 1 entry")
        self.size = size
        self._entries: OrderedDict[bytes, Recommendation] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Recommendation | None:
        """The answer under ``key`` (now the most recently used), or None."""
        with self._lock:
            rec = self._entries.get(key)
            if rec is None:
                self.stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return rec

    def put(self, key: bytes, rec: Recommendation) -> None:
        """Keep ``rec``; the least recently used entry goes when the cache is full."""
        with self._lock:
            self._entries[key] = rec
            self._entries.move_to_end(key)
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)


class RedisCache:
    """The local LRU in front of a Redis shared by every worker and replica.

    A Redis that fails is a miss, never an error: the answer is computed as without a cache.
    """

    def __init__(
        self,
        client: Any,
        *,
        namespace: str = "fitml",
        ttl_s: int = DEFAULT_TTL_S,
        local: LocalCache | None = None,
    ) -> None:
        self.client = client
        self.prefix = f"{namespace}:reco:".encode()
        self.ttl_s = ttl_s
        self.local = local or LocalCache()
        self.stats = CacheStats()
        self.errors = 0

    def get(self, key: bytes) -> Recommendation | None:
        """From the local tier, else from Redis (then kept locally too)."""
        rec = self.local.get(key)
        if rec is None:
            try:
                raw = self.client.get(self.prefix + key.hex().encode())
            except Exception:  # the cache must never fail an answer
                self.errors += 1
                raw = None
            if raw is not None:
                rec = decode(raw)
                self.local.put(key, rec)
        if rec is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return rec

    def put(self, key: bytes, rec: Recommendation) -> None:
        """Keep ``rec`` in both tiers."""
        self.local.put(key, rec)
        try:
            self.client.set(self.prefix + key.hex().encode(), encode(rec), ex=self.ttl_s)
        except Exception:  # the cache must never fail an answer
            self.errors += 1


def _positive_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{name} {raw!r} is not a whole number; set it like {default}") from None
    if value < 1:
        raise ConfigError(f"{name} {value} must be at least 1; set it like {default}")
    return value


def cache_from_env(namespace: str = "fitml") -> LocalCache | RedisCache | None:
    """The cache ``FITML_RECO_CACHE`` asks for (``local`` by default; ``off`` for none)."""
    mode = os.environ.get("FITML_RECO_CACHE", "local").strip().lower() or "local"
    if mode == "off":
        return None
    local = LocalCache(_positive_int("FITML_RECO_CACHE_SIZE", DEFAULT_SIZE))
    if mode == "local":
        return local
    if mode != "redis":
        raise ConfigError(f"FITML_RECO_CACHE {mode!r} is not a cache mode; use local, redis or off")
    import redis

    address = os.environ.get("FITML_RECO_CACHE_REDIS") or os.environ.get(
        "FITML_REDIS", "127.0.0.1:6379"
    )
    url = address if "://" in address else f"redis://{address}"
    client = redis.Redis.from_url(url, socket_timeout=0.05, socket_connect_timeout=0.5)
    return RedisCache(
        client,
        namespace=namespace,
        ttl_s=_positive_int("FITML_RECO_CACHE_TTL", DEFAULT_TTL_S),
        local=local,
    )
