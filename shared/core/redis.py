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


def wake_on_messages(url: str, channel: str, *, wake: threading.Event, stop: threading.Event) -> None:
    """Set ``wake`` on every message published to ``channel`` until ``stop``; reconnects with backoff.

    The listener thread of a poller: a message makes it poll now, polling covers Redis being down.
    """
    backoff = 1.0
    while not stop.is_set():
        try:
            client = redis.Redis.from_url(url, socket_connect_timeout=2)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(channel)
            backoff = 1.0
            while not stop.is_set():
                if pubsub.get_message(timeout=1.0) is not None:
                    wake.set()
            pubsub.close()
            client.close()
        except (redis.RedisError, OSError):
            stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)
