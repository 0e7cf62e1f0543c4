"""Job completion callbacks: a signed POST to the caller's URL when its job ends, retried, recorded.

A job with a ``callback_url`` is marked ``pending`` in the transaction that finishes it (the job
row is the outbox). The ``ner.jobs.send_callback`` task makes one attempt at a time (claimed under
the row lock), records it, and retries with exponential backoff until NER_CALLBACK_RETRY_FOR_S
after the job ended; the workers' watchdog sends the task again for a callback whose message was
lost. The job itself never waits for a receiver.

Safety (no SSRF): only hosts on NER_CALLBACK_HOSTS are accepted at submission; at send time the
host is resolved once, every address must be public or listed itself, the request goes to that
very address (no second lookup an attacker's DNS could answer differently), and redirects are not
followed.

Signature: ``X-NER-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``, as
Stripe's webhooks; a receiver recomputes it over the raw body and rejects old timestamps.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.core.config import Settings
from shared.core.db import session_scope
from shared.core.tables import Job, JobCallbackAttempt
from shared.jobs import lifecycle
from shared.jobs.errors import InvalidSubmission

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-NER-Signature"
MAX_URL_CHARS = 2000
MAX_BACKOFF_S = 900.0
# How long an attempt holds its claim: the next message for the job waits this out.
CLAIM_MARGIN_S = 30.0
PENDING, DELIVERED, FAILED = lifecycle.CALLBACK_PENDING, "delivered", "failed"
_DEFAULT_PORTS = {"http": 80, "https": 443}

Resolver = Callable[[str, int], Sequence[str]]


class CallbackRefused(Exception):
    """The URL may not be called (allow-list, address); no retry changes that."""


# --- signing ----------------------------------------------------------------------------------


def sign(*, body: bytes, secret: str, timestamp: int) -> str:
    """The ``X-NER-Signature`` value for ``body`` sent at ``timestamp`` (unix seconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(
    *, header: str, body: bytes, secret: str, tolerance_s: float = 300, now: float | None = None
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret``, sent within ``tolerance_s`` (a receiver's check)."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(body=body, secret=secret, timestamp=timestamp).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, given) for given in fields.get("v1", []))


# --- the allow-list -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # lower case, IPv6 without brackets
    port: int


def parse_target(url: str) -> Target:
    """Scheme, host and port of a callback URL; InvalidSubmission naming ``callback_url`` otherwise."""
    if not isinstance(url, str) or not url:
        raise InvalidSubmission("callback_url: must be an http:// or https:// URL")
    if len(url) > MAX_URL_CHARS:
        raise InvalidSubmission(f"callback_url: longer than {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidSubmission(f"callback_url: not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InvalidSubmission("callback_url: must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise InvalidSubmission("callback_url: must not carry a user name or password")
    if not parts.hostname:
        raise InvalidSubmission("callback_url: has no host")
    if any(char.isspace() or ord(char) < 32 for char in url):
        raise InvalidSubmission("callback_url: contains white space or control characters")
    return Target(scheme=scheme, host=parts.hostname.lower(), port=port or _DEFAULT_PORTS[scheme])


def _entry(entry: str) -> tuple[str, int | None]:
    """An allow-list entry as (host, port or None): ``host``, ``host:port``, ``[v6]:port``, ``v6``."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port) if port.isdigit() else None
    return entry, None


def host_allowed(target: Target, allowed: Sequence[str]) -> bool:
    """A bare host allows its scheme's default port; ``host:port`` that port."""
    for entry in allowed:
        host, port = _entry(entry.lower())
        if host == target.host and (port or _DEFAULT_PORTS[target.scheme]) == target.port:
            return True
    return False


def check_callback_url(url: Any, *, settings: Settings) -> str:
    """The URL, if its host is on NER_CALLBACK_HOSTS; 422 naming the field and the allowed hosts."""
    target = parse_target(url)
    allowed = settings.callback_hosts
    if not allowed:
        raise InvalidSubmission(
            "callback_url: callbacks are off on this service (the operator's NER_CALLBACK_HOSTS is empty)"
        )
    if not host_allowed(target, allowed):
        raise InvalidSubmission(
            f"callback_url: host {target.host}:{target.port} is not allowed; "
            f"allowed values (NER_CALLBACK_HOSTS): {', '.join(allowed)}"
        )
    return url


def _system_resolver(host: str, port: int) -> list[str]:
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def resolve_allowed(target: Target, allowed: Sequence[str], resolver: Resolver = _system_resolver) -> str:
    """The address to connect to; CallbackRefused when the host or any of its addresses is not allowed.

    An address must be public, or listed itself (an operator's receiver in a private network).
    """
    if not host_allowed(target, allowed):
        raise CallbackRefused(f"host {target.host}:{target.port} is no longer on NER_CALLBACK_HOSTS")
    listed = {_entry(entry.lower())[0] for entry in allowed}
    try:
        literal = ipaddress.ip_address(target.host)
    except ValueError:
        literal = None
    if literal is not None:
        return str(literal)  # listed itself (host_allowed)
    try:
        addresses = list(dict.fromkeys(resolver(target.host, target.port)))
    except OSError as exc:
        raise OSError(f"cannot resolve {target.host}: {exc}") from None
    if not addresses:
        raise OSError(f"cannot resolve {target.host}")
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global and str(ip) not in listed:
            raise CallbackRefused(
                f"{target.host} resolves to {ip}, a non-public address that NER_CALLBACK_HOSTS does not list"
            )
    return addresses[0]


# --- one attempt ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None = None
    error: str | None = None
    permanent: bool = False  # refused by policy: no retry

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def post(
    *,
    url: str,
    body: bytes,
    settings: Settings,
    resolver: Resolver = _system_resolver,
    transport: httpx.BaseTransport | None = None,
) -> AttemptResult:
    """POST ``body`` to ``url`` once, signed, to the checked address, following no redirect."""
    try:
        target = parse_target(url)
        address = resolve_allowed(target, settings.callback_hosts, resolver)
    except (CallbackRefused, InvalidSubmission) as exc:
        return AttemptResult(error=f"refused: {exc}", permanent=True)
    except OSError as exc:
        return AttemptResult(error=str(exc)[:500])
    timestamp = int(time.time())
    default_port = _DEFAULT_PORTS[target.scheme]
    host_header = target.host if target.port == default_port else f"{target.host}:{target.port}"
    if ":" in target.host:
        host_header = f"[{target.host}]" if target.port == default_port else f"[{target.host}]:{target.port}"
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "ner-service-callback/1",
        "Host": host_header,
        SIGNATURE_HEADER: sign(body=body, secret=settings.callback_secret or "", timestamp=timestamp),
    }
    # Connect to the address checked above; the Host header and TLS name stay the URL's host.
    pinned = httpx.URL(url).copy_with(host=address)
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        with httpx.Client(
            timeout=settings.callback_timeout_s, follow_redirects=False, transport=transport, trust_env=False
        ) as client:
            response = client.post(pinned, content=body, headers=headers, extensions=extensions)
    except httpx.HTTPError as exc:
        return AttemptResult(error=f"{type(exc).__name__}: {exc}"[:500])
    return AttemptResult(status_code=response.status_code)


def payload(job: Job, *, settings: Settings) -> dict[str, Any]:
    """What the receiver gets: the job's id, final status, counts and where its results are."""
    results_url = f"/jobs/{job.id}/results"
    if settings.public_url:
        results_url = settings.public_url.rstrip("/") + results_url
    return {
        "job_id": str(job.id),
        "status": job.status.value,
        "counts": {"total": job.total, "done": job.done, "failed": job.failed},
        "results_url": results_url,
    }


def next_delay(attempts: int, *, settings: Settings) -> float:
    """Seconds before attempt ``attempts + 1``: the base, doubled each time, at most 15 minutes."""
    return min(MAX_BACKOFF_S, settings.callback_backoff_s * 2.0 ** max(0, attempts - 1))


# --- the outbox ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    state: str  # skipped, delivered, retry, failed
    retry_in: float | None = None


def attempt(
    *,
    job_id: uuid.UUID,
    settings: Settings,
    send: Callable[..., AttemptResult] = post,
    clock: Callable[[], datetime] = lifecycle.utcnow,
) -> Outcome:
    """Make the job's next callback attempt if one is due and nobody else is making it; record it."""
    now = clock()
    with session_scope() as session:
        job = lifecycle.lock_job(session, job_id)
        if job is None or job.callback_state != PENDING or job.callback_url is None:
            return Outcome("skipped")
        due = lifecycle.as_utc(job.callback_next_at)
        if due is not None and due > now + timedelta(seconds=1):
            return Outcome("skipped")  # another message made (or is making) this attempt
        # Claimed: a duplicate message arriving meanwhile sees the attempt's time ahead and skips.
        job.callback_next_at = now + timedelta(seconds=settings.callback_timeout_s + CLAIM_MARGIN_S)
        url = job.callback_url
        body = json.dumps(payload(job, settings=settings), separators=(",", ":")).encode()
        finished = lifecycle.as_utc(job.finished_at) or now
    result = send(url=url, body=body, settings=settings)
    now = clock()
    with session_scope() as session:
        session.add(
            JobCallbackAttempt(job_id=job_id, at=now, status_code=result.status_code, error=result.error)
        )
        job = lifecycle.lock_job(session, job_id)
        if job is None:
            return Outcome("skipped")
        attempts = len(
            session.scalars(select(JobCallbackAttempt.id).where(JobCallbackAttempt.job_id == job_id)).all()
        )
        if result.delivered:
            job.callback_state, job.callback_next_at = DELIVERED, None
            return Outcome(DELIVERED)
        delay = next_delay(attempts, settings=settings)
        if (
            result.permanent
            or (now + timedelta(seconds=delay) - finished).total_seconds() > settings.callback_retry_for_s
        ):
            job.callback_state, job.callback_next_at = FAILED, None
            log.warning("job %s: callback given up after %d attempt(s): %s", job_id, attempts, _said(result))
            return Outcome(FAILED)
        job.callback_next_at = now + timedelta(seconds=delay)
    log.info("job %s: callback attempt %d failed (%s); next in %.1fs", job_id, attempts, _said(result), delay)
    return Outcome("retry", retry_in=delay)


def _said(result: AttemptResult) -> str:
    return f"HTTP {result.status_code}" if result.status_code is not None else str(result.error)


def claim_due(*, session: Session, now: datetime, grace_s: float, limit: int = 100) -> list[uuid.UUID]:
    """Jobs whose callback was due over ``grace_s`` ago and not made (a lost message): claimed, to send again.

    The grace (the watchdog passes NER_JOB_STALL_TIMEOUT_S) lets a message that is only waiting
    behind chunks arrive first; finished paths without a worker at hand (a revoked key's jobs)
    rely on this too.
    """
    rows = session.scalars(
        select(Job)
        .where(
            Job.callback_state == PENDING,
            Job.callback_next_at < now - timedelta(seconds=grace_s),
        )
        .order_by(Job.callback_next_at)
        .limit(limit)
        .with_for_update(**({"skip_locked": True} if session.get_bind().dialect.name == "postgresql" else {}))
    ).all()
    for job in rows:
        # The message sent now makes the attempt; its time is when it is due.
        job.callback_next_at = now
    return [job.id for job in rows]


def callback_view(*, session: Session, job: Job) -> dict[str, Any] | None:
    """``{url, state, delivered, attempts: [{at, status_code | error}]}``; None without a callback."""
    if not job.callback_url:
        return None
    attempts = session.scalars(
        select(JobCallbackAttempt).where(JobCallbackAttempt.job_id == job.id).order_by(JobCallbackAttempt.id)
    ).all()
    return {
        "url": job.callback_url,
        "state": job.callback_state or "waiting",
        "delivered": job.callback_state == DELIVERED,
        "attempts": [
            {"at": lifecycle.as_utc(row.at), "status_code": row.status_code, "error": row.error}
            for row in attempts
        ],
    }
