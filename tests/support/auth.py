"""API keys and an auth-on environment for tests (the default test environment has NER_AUTH=off)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from shared.core.config import get_settings
from shared.core.db import get_sessionmaker
from shared.keys import service as keys


def create_key(scope: str, name: str = "test") -> str:
    """A real key in the configured database, committed; returns its plaintext."""
    with get_sessionmaker()() as session:
        return keys.create_key(session=session, scope=scope, name=name).plaintext


@contextmanager
def settings_env(values: Mapping[str, str]) -> Iterator[None]:
    """Set NER_* variables for in-process code (settings re-read), and put them back afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()
