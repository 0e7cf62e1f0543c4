"""The "active version changed" message: gateways and workers swap at once instead of at the next poll."""

from __future__ import annotations

import json
import logging

import redis

log = logging.getLogger(__name__)

# Redis pub/sub channel on which a newly active version number is announced.
ACTIVE_CHANNEL = "ner:active-model"


def notify_active(*, redis_url: str, version: int) -> bool:
    """Announce the active version on ACTIVE_CHANNEL so gateways and workers swap now.

    Best effort: listeners also poll the database, so a broker hiccup only delays the swap.
    """
    try:
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.publish(ACTIVE_CHANNEL, json.dumps({"version": version}))
        finally:
            client.close()
        return True
    except (redis.RedisError, OSError) as exc:
        log.warning("could not announce active version %s on %s: %s", version, ACTIVE_CHANNEL, exc)
        return False
