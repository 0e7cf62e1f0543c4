"""API keys: created once in plaintext, stored as a salted scrypt hash, looked up by a short prefix.

A key reads ``ner_<8 hex>_<43 url-safe chars>``. The first 12 characters (``ner_<8 hex>``) are its
prefix: not secret, unique, shown by ``ner keys list`` and used to find the row. The rest carries
256 random bits and is never stored; only ``scrypt(key, salt)`` is.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.core.tables import ApiKey, ApiKeyScope, utcnow
from shared.jobs import service as jobs
from shared.keys.errors import InvalidKeySettings, KeyNotFound
from shared.training import service as training

KEY_PREFIX = "ner_"
PREFIX_LEN = len(KEY_PREFIX) + 8
MAX_KEY_LEN = 200  # anything longer is not one of ours; refuse before hashing it

# scrypt's cost: about 50 ms a verification. Verified keys are remembered per process (see
# ``_verified``), so a gateway pays it once per key, not once per request.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MAX_RATE_LIMIT = 10_000_000


@dataclass(frozen=True)
class CreatedKey:
    """A new key: ``plaintext`` exists only here and is shown once."""

    id: int
    prefix: str
    scope: ApiKeyScope
    name: str
    plaintext: str
    rate_limit_per_minute: int | None = None


@dataclass(frozen=True)
class AuthenticatedKey:
    id: int
    prefix: str
    scope: ApiKeyScope
    name: str
    rate_limit_per_minute: int | None = None  # None: NER_RATE_LIMIT_PER_MINUTE


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_key(plaintext: str, *, salt: bytes | None = None, n: int = SCRYPT_N) -> str:
    """``scrypt$n$r$p$salt$hash``: self-describing, so the cost can rise without a migration."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(plaintext.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_hash(plaintext: str, stored: str) -> bool:
    """Whether ``plaintext`` hashes to ``stored``; the digests are compared in constant time."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        candidate = hashlib.scrypt(
            plaintext.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(candidate, _unb64(digest))


def parse_prefix(plaintext: str) -> str | None:
    """The lookup prefix of something shaped like one of our keys, else None."""
    if (
        len(plaintext) > MAX_KEY_LEN
        or not plaintext.startswith(KEY_PREFIX)
        or len(plaintext) <= PREFIX_LEN + 1
        or plaintext[PREFIX_LEN] != "_"
    ):
        return None
    prefix = plaintext[:PREFIX_LEN]
    if any(ch not in "0123456789abcdef" for ch in prefix[len(KEY_PREFIX) :]):
        return None
    return prefix


def create_key(
    *, session: Session, scope: ApiKeyScope | str, name: str = "", rate_limit_per_minute: int | None = None
) -> CreatedKey:
    """Create a key with ``scope`` (and its own rate limit); the returned plaintext is never stored."""
    scope = ApiKeyScope(scope)
    if rate_limit_per_minute is not None and not 1 <= rate_limit_per_minute <= MAX_RATE_LIMIT:
        raise InvalidKeySettings(f"rate limit: must be 1 to {MAX_RATE_LIMIT} requests a minute")
    prefix = KEY_PREFIX + secrets.token_hex(4)
    while session.scalar(select(ApiKey.id).where(ApiKey.prefix == prefix)) is not None:
        prefix = KEY_PREFIX + secrets.token_hex(4)  # 32 random bits: a collision is rare
    plaintext = f"{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(
        name=name,
        prefix=prefix,
        key_hash=hash_key(plaintext),
        scope=scope,
        rate_limit_per_minute=rate_limit_per_minute,
    )
    session.add(row)
    session.commit()
    return CreatedKey(
        id=row.id,
        prefix=prefix,
        scope=scope,
        name=name,
        plaintext=plaintext,
        rate_limit_per_minute=rate_limit_per_minute,
    )


def find_key(*, session: Session, ident: str) -> ApiKey:
    """The key whose id, prefix or (for convenience) full plaintext is ``ident``."""
    ident = ident.strip()
    prefix = parse_prefix(ident) or ident
    row = None
    if ident.isdigit():
        row = session.get(ApiKey, int(ident))
    if row is None:
        row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if row is None:
        raise KeyNotFound(f"no API key with id or prefix {prefix!r}")
    return row


def key_name(*, session: Session, key_id: int) -> str:
    """The name a key was created with (empty when none, or when the key is gone)."""
    return session.scalar(select(ApiKey.name).where(ApiKey.id == key_id)) or ""


def revoke_key(*, session: Session, ident: str) -> ApiKey:
    """Revoke the key named by id or prefix; revoking twice keeps the first time."""
    row = find_key(session=session, ident=ident)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    forget_verified(row.id)
    _cancel_work_of(session=session, key_id=row.id)
    return row


def _cancel_work_of(*, session: Session, key_id: int) -> None:
    """A revoked key's queued and running jobs and training runs stop (processed results stay).

    Workers and the trainer check revocation too, for keys revoked any other way.
    """
    jobs.cancel_key_jobs(session=session, api_key_id=key_id)
    training.cancel_key_runs(session=session, api_key_id=key_id)


def list_keys(*, session: Session) -> list[ApiKey]:
    """Every key, newest first (hashes stay in the database; callers show prefixes)."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id.desc())))


def revoke_named(*, session: Session, name: str) -> int:
    """Revoke every live key called ``name``; returns how many."""
    rows = session.scalars(select(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None))).all()
    now: datetime = utcnow()
    for row in rows:
        row.revoked_at = now
        forget_verified(row.id)
    session.commit()
    return len(rows)


# key id -> (stored hash, sha256 of the plaintext that matched it). A fast digest of a verified
# key stands in for scrypt on later requests; a changed or revoked row is re-checked.
_verified: dict[int, tuple[str, bytes]] = {}
_verified_lock = threading.Lock()
_VERIFIED_MAX = 10_000

# sha256 of a plaintext -> (its key as the database had it, monotonic time it was read). Lets the
# gateway admit a key it checked against the database within ``RECENT_TTL_S`` without a thread hop
# or a query; past that the row is read again, so a revocation made elsewhere (another process,
# SQL) takes effect within this many seconds, and at once in the process that revoked it.
RECENT_TTL_S = 1.0
_recent: dict[bytes, tuple[AuthenticatedKey, float]] = {}


def forget_verified(key_id: int) -> None:
    with _verified_lock:
        _verified.pop(key_id, None)
        for digest in [d for d, (key, _) in _recent.items() if key.id == key_id]:
            del _recent[digest]


def recently_verified(plaintext: str) -> AuthenticatedKey | None:
    """The live key ``plaintext`` matched in the last ``RECENT_TTL_S`` here; no I/O, so an event
    loop may call it. None: ask ``authenticate``."""
    digest = hashlib.sha256(plaintext.encode()).digest()
    with _verified_lock:
        held = _recent.get(digest)
    if held is None or time.monotonic() - held[1] > RECENT_TTL_S:
        return None
    return held[0]


def _remember(row: ApiKey, fast: bytes) -> AuthenticatedKey:
    """Note a key just verified against its row (both caches) and return it."""
    key = _authenticated(row)
    with _verified_lock:
        if len(_verified) >= _VERIFIED_MAX:
            _verified.clear()
        if len(_recent) >= _VERIFIED_MAX:
            _recent.clear()
        _verified[row.id] = (row.key_hash, fast)
        _recent[fast] = (key, time.monotonic())
    return key


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    # Hashed once per process with the same cost as real keys: unknown and revoked keys spend the
    # same scrypt as a wrong secret, so answer times do not tell which prefixes exist.
    return hash_key(KEY_PREFIX + "00000000_" + secrets.token_urlsafe(32))


def authenticate(
    *, session: Session, plaintext: str, before_scrypt: Callable[[str], None] | None = None
) -> AuthenticatedKey | None:
    """The live key matching ``plaintext``, or None (unknown, wrong or revoked).

    Unknown, revoked and wrong-secret keys take the same time (one scrypt each). ``before_scrypt``
    is called with the prefix just before that scrypt (a throttle raises there); a key verified
    recently by this process skips both.
    """
    prefix = parse_prefix(plaintext)
    if prefix is None:
        return None  # not shaped like a key at all: nothing to hide, nothing hashed
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    live = row is not None and row.revoked_at is None
    fast = hashlib.sha256(plaintext.encode()).digest()
    if live:
        assert row is not None
        with _verified_lock:
            cached = _verified.get(row.id)
        if cached is not None and cached[0] == row.key_hash and hmac.compare_digest(cached[1], fast):
            return _remember(row, fast)
    if before_scrypt is not None:
        before_scrypt(prefix)
    if not live:
        check_hash(plaintext, _dummy_hash())
        return None
    assert row is not None
    if not check_hash(plaintext, row.key_hash):
        return None
    return _remember(row, fast)


def _authenticated(row: ApiKey) -> AuthenticatedKey:
    return AuthenticatedKey(
        id=row.id,
        prefix=row.prefix,
        scope=row.scope,
        name=row.name,
        rate_limit_per_minute=row.rate_limit_per_minute,
    )
