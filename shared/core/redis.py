"""One pooled Redis client per URL and process (rate limits, queue depths, the watchdog's marker)."""

from __future__ import annotations

import threading

import redis

_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def redis_client(url: str) -> redis.Redis:
    """One pooled client per URL and process, with short timeouts: a slow Redis must not stall requests."""
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
            _clients[url] = client
        return client
