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
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.core.tables import ApiKey, ApiKeyScope, utcnow
from shared.keys.errors import KeyNotFound

KEY_PREFIX = "ner_"
PREFIX_LEN = len(KEY_PREFIX) + 8
MAX_KEY_LEN = 200  # anything longer is not one of ours; refuse before hashing it

# scrypt's cost: about 50 ms a verification. Verified keys are remembered per process (see
# ``_verified``), so a gateway pays it once per key, not once per request.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


@dataclass(frozen=True)
class CreatedKey:
    """A new key: ``plaintext`` exists only here and is shown once."""

    id: int
    prefix: str
    scope: ApiKeyScope
    name: str
    plaintext: str


@dataclass(frozen=True)
class AuthenticatedKey:
    id: int
    prefix: str
    scope: ApiKeyScope
    name: str


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


def create_key(*, session: Session, scope: ApiKeyScope | str, name: str = "") -> CreatedKey:
    """Create a key with ``scope``; the returned plaintext is never stored."""
    scope = ApiKeyScope(scope)
    prefix = KEY_PREFIX + secrets.token_hex(4)
    while session.scalar(select(ApiKey.id).where(ApiKey.prefix == prefix)) is not None:
        prefix = KEY_PREFIX + secrets.token_hex(4)  # 32 random bits: a collision is rare
    plaintext = f"{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(name=name, prefix=prefix, key_hash=hash_key(plaintext), scope=scope)
    session.add(row)
    session.commit()
    return CreatedKey(id=row.id, prefix=prefix, scope=scope, name=name, plaintext=plaintext)


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


def revoke_key(*, session: Session, ident: str) -> ApiKey:
    """Revoke the key named by id or prefix; revoking twice keeps the first time."""
    row = find_key(session=session, ident=ident)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    forget_verified(row.id)
    return row


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


def forget_verified(key_id: int) -> None:
    with _verified_lock:
        _verified.pop(key_id, None)


def authenticate(*, session: Session, plaintext: str) -> AuthenticatedKey | None:
    """The live key matching ``plaintext``, or None (unknown, wrong or revoked)."""
    prefix = parse_prefix(plaintext)
    if prefix is None:
        return None
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if row is None or row.revoked_at is not None:
        return None
    fast = hashlib.sha256(plaintext.encode()).digest()
    with _verified_lock:
        cached = _verified.get(row.id)
    ok = (
        cached is not None and cached[0] == row.key_hash and hmac.compare_digest(cached[1], fast)
    ) or check_hash(plaintext, row.key_hash)
    if not ok:
        return None
    with _verified_lock:
        if len(_verified) >= _VERIFIED_MAX:
            _verified.clear()
        _verified[row.id] = (row.key_hash, fast)
    return AuthenticatedKey(id=row.id, prefix=row.prefix, scope=row.scope, name=row.name)
