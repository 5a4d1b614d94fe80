"""Per-subject rate limits: requests per minute per route class, generated
tokens per minute.

Both are token buckets holding up to one minute's allowance and refilling
continuously. Requests take one unit each. Generated tokens are only known
after the fact, so a generation is admitted while its subject's bucket is
positive and its tokens are debited when it ends (the bucket may go negative,
delaying that subject's next generation until it refills).

State lives in memory by default; with a Redis URL every gateway replica shares
it, updated by one Lua script (atomic, using Redis's own clock so replicas'
clocks do not matter).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from lodestar.runtime.errors import ResourceExhausted
from lodestar.services.gateway.metrics import RATE_LIMIT_REJECTIONS

_log = logging.getLogger(__name__)


# A "need" every bucket meets: debits are taken whatever the level.
_ALWAYS = -1e18


class RouteClass(StrEnum):
    """Routes sharing a request budget and a default deadline."""

    GENERATE = "generate"
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class BucketState:
    allowed: bool
    level: float
    limit: int
    window_s: float = 60.0

    @property
    def per_second(self) -> float:
        return self.limit / self.window_s

    def seconds_until(self, level: float) -> float:
        return max(0.0, (level - self.level) / self.per_second)


@dataclass(frozen=True, slots=True)
class RateLimitDecision:
    """A bucket's state after a request, as RateLimit-* response headers."""

    limit: int
    remaining: int
    reset_s: int
    retry_after_s: int | None = None
    window_s: int = 60

    def headers(self) -> list[tuple[bytes, bytes]]:
        out = [
            (b"ratelimit-limit", str(self.limit).encode()),
            (b"ratelimit-remaining", str(self.remaining).encode()),
            (b"ratelimit-reset", str(self.reset_s).encode()),
            (b"ratelimit-policy", f"{self.limit};w={self.window_s}".encode()),
        ]
        # Retry-After is set by the 429 response itself.
        return out


class BucketStore(Protocol):
    """Where bucket levels live."""

    async def update(
        self, key: str, limit: int, window_s: float, *, need: float, cost: float
    ) -> BucketState:
        """Refill ``key``'s bucket (``limit`` per ``window_s``); if it holds
        ``need`` units, take ``cost`` from it."""

    async def close(self) -> None: ...


class MemoryBucketStore:
    """Buckets in this process (one gateway replica)."""

    _PRUNE_AT = 100_000

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float, float]] = {}

    async def update(
        self, key: str, limit: int, window_s: float, *, need: float, cost: float
    ) -> BucketState:
        now = time.monotonic()
        per_second = limit / window_s
        level, stamp, _ = self._buckets.get(key, (float(limit), now, window_s))
        level = min(float(limit), level + (now - stamp) * per_second)
        allowed = level >= need
        if allowed:
            level = max(level - cost, -float(limit))
        if len(self._buckets) >= self._PRUNE_AT:
            self._prune(now)
        self._buckets[key] = (level, now, window_s)
        return BucketState(allowed, level, limit, window_s)

    def _prune(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket.
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < v[2]}

    async def close(self) -> None:
        self._buckets.clear()


_TOKEN_BUCKET_LUA = """
local limit = tonumber(ARGV[1])
local need = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local per_ms = limit / tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'level', 'ts')
local level = tonumber(state[1])
local ts = tonumber(state[2])
if level == nil or ts == nil then
  level = limit
  ts = now
end
level = math.min(limit, level + math.max(0, now - ts) * per_ms)
local allowed = 0
if level >= need then
  allowed = 1
  level = math.max(level - cost, -limit)
end
redis.call('HSET', KEYS[1], 'level', tostring(level), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((limit - level) / per_ms) + 1000)
return {allowed, tostring(level)}
"""


class RedisBucketStore:
    """Buckets in Redis, shared by every gateway replica.

    If Redis cannot be reached, requests are let through (and the failure is
    logged): an outage of the limiter should not become an outage of the API.
    """

    def __init__(self, url: str, prefix: str) -> None:
        import redis.asyncio as redis_asyncio

        self._redis = redis_asyncio.Redis.from_url(url, socket_timeout=1.0)
        self._script = self._redis.register_script(_TOKEN_BUCKET_LUA)
        self._prefix = prefix
        self._last_warning = 0.0

    async def update(
        self, key: str, limit: int, window_s: float, *, need: float, cost: float
    ) -> BucketState:
        from redis.exceptions import RedisError

        window_ms = max(1, round(window_s * 1000))
        try:
            allowed, level = await self._script(
                keys=[self._prefix + key], args=[limit, need, cost, window_ms]
            )
        except (RedisError, OSError) as error:
            now = time.monotonic()
            if now - self._last_warning > 10:
                self._last_warning = now
                _log.warning("rate-limit store unavailable, not limiting: %s", error)
            return BucketState(True, float(limit), limit, window_s)
        return BucketState(bool(int(allowed)), float(level), limit, window_s)

    async def close(self) -> None:
        await self._redis.aclose()


class RateLimiter:
    """The gateway's rate-limit policy over a bucket store."""

    def __init__(
        self,
        store: BucketStore,
        requests_per_minute: dict[RouteClass, int],
        tokens_per_minute: int,
        window_s: float = 60.0,
    ) -> None:
        self.store = store
        self._requests = requests_per_minute
        self._tokens = tokens_per_minute
        self._window_s = window_s
        self._window_label = f"{window_s:g}s" if window_s != 60.0 else "minute"

    async def check_request(
        self, subject: str, route_class: RouteClass
    ) -> RateLimitDecision | None:
        """Take one request from the subject's budget; 429 when it is spent."""
        limit = self._requests.get(route_class, 0)
        if limit <= 0:
            return None
        state = await self.store.update(
            f"req:{route_class}:{subject}", limit, self._window_s, need=1, cost=1
        )
        return self._decide(
            state, "requests", f"{limit} {route_class} requests per {self._window_label}"
        )

    async def check_tokens(self, subject: str) -> RateLimitDecision | None:
        """Admit a generation while the subject's token budget is positive."""
        if self._tokens <= 0:
            return None
        state = await self.store.update(
            f"tok:{subject}", self._tokens, self._window_s, need=1, cost=0
        )
        return self._decide(
            state, "tokens", f"{self._tokens} generated tokens per {self._window_label}"
        )

    async def debit_tokens(self, subject: str, tokens: int) -> None:
        if self._tokens <= 0 or tokens <= 0:
            return
        await self.store.update(
            f"tok:{subject}", self._tokens, self._window_s, need=_ALWAYS, cost=tokens
        )

    def _decide(self, state: BucketState, limit_name: str, policy: str) -> RateLimitDecision:
        reset = math.ceil(state.seconds_until(state.limit))
        window = max(1, round(self._window_s))
        if state.allowed:
            return RateLimitDecision(
                state.limit, max(0, math.floor(state.level)), reset, window_s=window
            )
        RATE_LIMIT_REJECTIONS.labels(limit_name).inc()
        retry_after = max(1, math.ceil(state.seconds_until(1.0)))
        decision = RateLimitDecision(state.limit, 0, reset, retry_after, window)
        raise RateLimited(
            f"rate limit reached: {policy}; retry in {retry_after}s",
            decision,
            reason="RATE_LIMITED" if limit_name == "requests" else "TOKEN_RATE_LIMITED",
        )

    async def close(self) -> None:
        await self.store.close()


class RateLimited(ResourceExhausted):
    """A 429 that carries its RateLimit-* headers."""

    def __init__(self, message: str, decision: RateLimitDecision, *, reason: str) -> None:
        super().__init__(message, reason=reason, retry_after_s=float(decision.retry_after_s or 1))
        self.decision = decision


def create_rate_limiter(
    redis_url: str,
    key_prefix: str,
    requests_per_minute: dict[RouteClass, int],
    tokens_per_minute: int,
    window_s: float = 60.0,
) -> RateLimiter:
    store: BucketStore = (
        RedisBucketStore(redis_url, key_prefix) if redis_url else MemoryBucketStore()
    )
    return RateLimiter(store, requests_per_minute, tokens_per_minute, window_s)
