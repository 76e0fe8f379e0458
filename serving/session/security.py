"""API keys (compared as SHA-256 hashes) and per-key rate limits (Redis or in-process)."""

from __future__ import annotations

import hmac
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from serving.secrets import SecretFile
from serving.session.config import HASH_PREFIX, hash_key

log = logging.getLogger(__name__)


class KeyRing:
    """The accepted API keys, held only as SHA-256 hashes.

    Args:
        hashes: keys given inline (``FITML_API_KEYS``), hashed.
        source: the keys file (``FITML_API_KEYS_FILE``: keys or ``sha256:<hex>`` lines),
            re-read when it changes; a key removed from it is accepted for the file's overlap
            window more, so keys rotate without a restart and without refusing anyone.
    """

    def __init__(self, hashes: tuple[str, ...], source: SecretFile | None = None) -> None:
        self._static = tuple(h.lower() for h in hashes)
        self._source = source
        self._lines: tuple[str, ...] | None = None
        self._hashes = self._static

    def _current(self) -> tuple[str, ...]:
        if self._source is not None:
            lines = self._source.accepted()
            if lines != self._lines:
                self._lines = lines
                self._hashes = self._static + tuple(
                    (
                        line[len(HASH_PREFIX) :] if line.startswith(HASH_PREFIX) else hash_key(line)
                    ).lower()
                    for line in lines
                )
        return self._hashes

    def identify(self, key: str | None) -> str | None:
        """The key's id (a prefix of its hash, safe to log) if the key is accepted, else None."""
        if not key:
            return None
        digest = hash_key(key)
        found = False
        for known in self._current():  # compare against every hash: no early exit on a match
            found |= hmac.compare_digest(digest, known)
        return digest[:12] if found else None


@dataclass(frozen=True)
class Decision:
    """Whether a request may go ahead, and if not, after how many seconds it may."""

    allowed: bool
    retry_after_s: int = 0


class RateLimiter(Protocol):
    """Decides, per API key, whether one more request is allowed now."""

    async def hit(self, key_id: str) -> Decision:
        """Count one request of ``key_id``."""
        ...


class LocalRateLimiter:
    """A token bucket per key, in this process (the local profile, and Redis' fallback)."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    async def hit(self, key_id: str) -> Decision:
        """Take one token from ``key_id``'s bucket."""
        return self.hit_sync(key_id)

    def hit_sync(self, key_id: str, now: float | None = None) -> Decision:
        """Take one token from ``key_id``'s bucket at ``now`` (monotonic seconds)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(key_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return Decision(True)
            self._buckets[key_id] = (tokens, now)
            return Decision(False, max(1, math.ceil((1.0 - tokens) / self.rate)))


class RedisRateLimiter:
    """A fixed one-second window per key in Redis, shared by every replica.

    At most ``ceil(rate_per_s)`` requests per key and second (``burst`` applies only to the
    in-process fallback).

    When Redis does not answer, requests are limited by a :class:`LocalRateLimiter` instead
    (the limit holds per replica): rate limiting does not need Redis badly enough to refuse
    shoppers.
    """

    def __init__(self, url: str, rate_per_s: float, burst: int, prefix: str = "fitml:rl") -> None:
        import redis.asyncio as aioredis

        self.limit = max(1, math.ceil(rate_per_s))
        self.prefix = prefix
        self.fallback = LocalRateLimiter(rate_per_s, burst)
        self.degraded = False
        self._client: Any = aioredis.from_url(
            url, socket_timeout=0.25, socket_connect_timeout=0.25, retry_on_timeout=False
        )

    async def hit(self, key_id: str) -> Decision:
        """Count one request of ``key_id`` in the current one-second window."""
        now = time.time()
        window = int(now)
        name = f"{self.prefix}:{key_id}:{window}"
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.incr(name)
                pipe.expire(name, 2)
                count, _ = await pipe.execute()
        except Exception as exc:  # redis down or slow: limit in-process instead
            if not self.degraded:
                log.warning(
                    "rate limiter: Redis unavailable, limiting in-process",
                    extra={"error": type(exc).__name__},
                )
            self.degraded = True
            return self.fallback.hit_sync(key_id)
        self.degraded = False
        if int(count) <= self.limit:
            return Decision(True)
        return Decision(False, 1)

    async def close(self) -> None:
        """Close the Redis connection pool."""
        await self._client.aclose()
