"""A token bucket per API key in Redis: one atomic Lua script, so gateway replicas share limits."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import redis

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


class TokenBucket:
    """``per_minute`` requests a minute per key on average, up to ``burst`` at once."""

    def __init__(self, client: redis.Redis, *, per_minute: int, burst: int | None = None) -> None:
        self.client = client
        self.rate = per_minute / 60.0
        self.capacity = burst or per_minute
        self._script = client.register_script(TOKEN_BUCKET_LUA)

    def take(self, key: str, cost: int = 1) -> Decision:
        """Spend ``cost`` tokens of ``key``'s bucket when it has them."""
        allowed, wait, tokens = self._script(
            keys=[f"ner:ratelimit:{key}"], args=[self.rate, self.capacity, cost]
        )
        wait_s = float(wait)
        return Decision(
            allowed=bool(int(allowed)),
            retry_after_s=max(1, math.ceil(wait_s)) if not int(allowed) else 0,
            remaining=int(float(tokens)),
        )


def check_rate(*, redis_url: str, key: str, per_minute: int, burst: int | None) -> Decision:
    """Take one token for ``key``; when Redis is down the request passes (limits fail open)."""
    bucket = TokenBucket(redis_client(redis_url), per_minute=per_minute, burst=burst)
    try:
        return bucket.take(key)
    except (redis.RedisError, OSError) as exc:
        logger.warning("rate limit not checked, Redis unavailable: %s", type(exc).__name__)
        return Decision(allowed=True, retry_after_s=0, remaining=-1)
