"""A token bucket per API key in Redis: one atomic Lua script, so gateway replicas share limits.

The script is the one implementation of the bucket: ``TokenBucket`` runs it with the blocking
client (CLI, threads), ``check_cost_async`` with ``redis.asyncio`` on the gateway's event loop (one
round trip, no thread hop); both size the call with ``_bucket_args`` and read it with ``_decision``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import redis
import redis.asyncio
from redis.commands.core import AsyncScript

from shared.core.redis import redis_client

logger = logging.getLogger(__name__)

# KEYS[1]: the bucket. ARGV: refill rate (tokens/s), capacity, cost. Redis's own clock is used,
# so gateways with skewed clocks agree. Returns {allowed, seconds until `cost` tokens, tokens left}
# (floats as strings: Lua numbers become integers on the way out).
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 1)
return {allowed, tostring(wait), tostring(tokens)}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: int  # whole seconds, at least 1 when refused (the Retry-After header)
    remaining: int


def _bucket_args(
    key: str, *, per_minute: int, burst: int | None, cost: int
) -> tuple[list[str], list[float | int]]:
    """The script's KEYS and ARGV for ``cost`` tokens of ``key``'s bucket (``burst`` tokens, else
    ``per_minute``, refilled at ``per_minute`` a minute).

    A cost above the bucket's size is charged as a full bucket: it can still pass, once the
    bucket is full, instead of never.
    """
    rate, capacity = per_minute / 60.0, burst or per_minute
    cost = max(1, min(cost, int(capacity)))
    return [f"ner:ratelimit:{key}"], [rate, capacity, cost]


def _decision(reply: Sequence[bytes | str | int]) -> Decision:
    """The script's ``{allowed, wait, tokens}`` as a ``Decision``."""
    allowed, wait, tokens = reply
    wait_s = float(wait)
    return Decision(
        allowed=bool(int(allowed)),
        retry_after_s=max(1, math.ceil(wait_s)) if not int(allowed) else 0,
        remaining=int(float(tokens)),
    )


class TokenBucket:
    """``per_minute`` requests a minute per key on average, up to ``burst`` at once."""

    def __init__(self, client: redis.Redis, *, per_minute: int, burst: int | None = None) -> None:
        self.client = client
        self.per_minute = per_minute
        self.burst = burst
        self._script = client.register_script(TOKEN_BUCKET_LUA)

    def take(self, key: str, cost: int = 1) -> Decision:
        """Spend ``cost`` tokens of ``key``'s bucket when it has them (see ``_bucket_args``)."""
        keys, args = _bucket_args(key, per_minute=self.per_minute, burst=self.burst, cost=cost)
        return _decision(self._script(keys=keys, args=args))


def check_rate(*, redis_url: str, key: str, per_minute: int, burst: int | None) -> Decision:
    """Take one token for ``key``; when Redis is down the request passes (limits fail open)."""
    return check_cost(redis_url=redis_url, key=key, per_minute=per_minute, burst=burst)


# KEYS: the failure counters (one per client address, one per key prefix). ARGV[1]: the limit.
# Returns the seconds until the fullest counter that reached the limit expires, or 0.
_AUTH_CHECK_LUA = """
local wait = 0
for _, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key) or '0')
  if count >= tonumber(ARGV[1]) then
    wait = math.max(wait, redis.call('TTL', key))
  end
end
return wait
"""
_AUTH_FAIL_LUA = """
for _, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then
    redis.call('EXPIRE', key, tonumber(ARGV[1]))
  end
end
return 0
"""


class AuthThrottle:
    """Failed key checks counted per client address and per key prefix, in fixed windows.

    Checked before the scrypt of a key check, so guessing secrets of a known prefix (or spraying
    unknown ones) costs a few scrypts a window, not one per request.
    """

    def __init__(self, client: redis.Redis, *, limit: int, window_s: int) -> None:
        self.client = client
        self.limit = limit
        self.window_s = window_s

    @staticmethod
    def _keys(address: str | None, prefix: str | None) -> list[str]:
        keys = [f"ner:authfail:addr:{address}"] if address else []
        return keys + ([f"ner:authfail:prefix:{prefix}"] if prefix else [])

    def retry_after(self, *, address: str | None, prefix: str | None) -> int:
        """Seconds until this address or prefix may try again; 0 when it may now."""
        keys = self._keys(address, prefix)
        if not keys:
            return 0
        try:
            wait = int(self.client.eval(_AUTH_CHECK_LUA, len(keys), *keys, self.limit))
        except (redis.RedisError, OSError) as exc:
            logger.warning("failed-auth throttle not checked, Redis unavailable: %s", type(exc).__name__)
            return 0
        return max(1, wait) if wait else 0

    def record_failure(self, *, address: str | None, prefix: str | None) -> None:
        keys = self._keys(address, prefix)
        if not keys:
            return
        try:
            self.client.eval(_AUTH_FAIL_LUA, len(keys), *keys, self.window_s)
        except (redis.RedisError, OSError) as exc:
            logger.warning("failed auth not counted, Redis unavailable: %s", type(exc).__name__)


def check_cost(*, redis_url: str, key: str, per_minute: int, burst: int | None, cost: int = 1) -> Decision:
    """Take ``cost`` tokens for ``key``; when Redis is down the request passes (limits fail open)."""
    bucket = TokenBucket(redis_client(redis_url), per_minute=per_minute, burst=burst)
    try:
        return bucket.take(key, cost)
    except (redis.RedisError, OSError) as exc:
        logger.warning("rate limit not checked, Redis unavailable: %s", type(exc).__name__)
        return Decision(allowed=True, retry_after_s=0, remaining=-1)


# One asyncio client (and its pool) per URL for the running event loop: a redis.asyncio connection
# belongs to the loop that opened it, and tests start several loops in one process.
_async_scripts: dict[str, tuple[asyncio.AbstractEventLoop, AsyncScript]] = {}


def _async_bucket_script(url: str) -> AsyncScript:
    loop = asyncio.get_running_loop()
    held = _async_scripts.get(url)
    if held is None or held[0] is not loop:
        # The same short timeouts as the blocking client: a slow Redis must not stall requests.
        client = redis.asyncio.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        _async_scripts[url] = held = (loop, client.register_script(TOKEN_BUCKET_LUA))
    return held[1]


async def check_cost_async(
    *, redis_url: str, key: str, per_minute: int, burst: int | None, cost: int = 1
) -> Decision:
    """``check_cost`` on the event loop: the same script in one round trip; fails open the same way."""
    keys, args = _bucket_args(key, per_minute=per_minute, burst=burst, cost=cost)
    try:
        return _decision(await _async_bucket_script(redis_url)(keys=keys, args=args))
    except (redis.RedisError, OSError) as exc:  # TimeoutError is an OSError
        logger.warning("rate limit not checked, Redis unavailable: %s", type(exc).__name__)
        return Decision(allowed=True, retry_after_s=0, remaining=-1)
