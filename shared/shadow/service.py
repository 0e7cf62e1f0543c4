"""Shadow traffic: which versions shadow live traffic, recording their comparisons, reading them back."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.core.config import Settings
from shared.core.tables import ShadowConfig, ShadowSample, ShadowStat
from shared.registry import service as registry
from shared.shadow import compare
from shared.shadow.errors import ShadowConflict, ShadowVersionNotFound
from shared.shadow.schemas import (
    DisagreementSample,
    ShadowComparison,
    ShadowTypeCount,
    ShadowView,
)

log = logging.getLogger(__name__)

# Redis pub/sub channel on which a change of the shadow configuration is announced to gateways.
SHADOW_CHANNEL = "ner:shadow"
TOTALS = ""  # the entity_type of a comparison's totals row
COUNTERS = ("texts", "texts_disagreeing", "failed", "added", "removed", "matched")
MAX_TYPE_CHARS = 100

# (version, texts) -> one answer (a list of entity dicts) per text.
Predict = Callable[[int, list[str]], Sequence[Sequence[Any]]]


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes; every stored time is UTC.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


# --- configuration -----------------------------------------------------------------------------


def set_shadow(*, session: Session, version: int, sample_rate: float, redis_url: str) -> ShadowConfig | None:
    """Shadow ``version`` at ``sample_rate`` (0 stops it); announces the change; None when stopped."""
    if registry.get_version(session=session, version=version) is None:
        raise ShadowVersionNotFound(f"model version {version} does not exist")
    if sample_rate <= 0:
        return stop_shadow(session=session, version=version, redis_url=redis_url)
    active = registry.get_active(session=session)
    if active is not None and active.version == version:
        raise ShadowConflict(
            f"version {version} is the active version: it already answers every request; "
            "shadow a candidate to compare it with the active version"
        )
    now = _now()
    # An UPSERT: two operators switching it on at once both succeed (the last rate wins).
    statement = _insert(session)(ShadowConfig).values(
        version=version, sample_rate=sample_rate, started_at=now, updated_at=now
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["version"], set_={"sample_rate": sample_rate, "updated_at": now}
        )
    )
    session.commit()
    announce(redis_url=redis_url)
    return session.get(ShadowConfig, version, populate_existing=True)


def stop_shadow(*, session: Session, version: int, redis_url: str) -> None:
    """Stop shadowing ``version`` (its statistics and samples stay); a no-op when it was not shadowed."""
    if registry.get_version(session=session, version=version) is None:
        raise ShadowVersionNotFound(f"model version {version} does not exist")
    session.execute(delete(ShadowConfig).where(ShadowConfig.version == version))
    session.commit()
    announce(redis_url=redis_url)


def forget(*, session: Session, version: int) -> int:
    """Delete the statistics and samples of ``version`` (texts that must go); returns the samples deleted."""
    if registry.get_version(session=session, version=version) is None:
        raise ShadowVersionNotFound(f"model version {version} does not exist")
    session.execute(delete(ShadowStat).where(ShadowStat.version == version))
    deleted = session.execute(delete(ShadowSample).where(ShadowSample.version == version)).rowcount
    session.commit()
    return int(deleted or 0)


def shadow_rates(*, session: Session) -> dict[int, float]:
    """Every shadowed version and its sample rate (what gateways cache)."""
    return {row.version: row.sample_rate for row in session.scalars(select(ShadowConfig))}


def announce(*, redis_url: str) -> bool:
    """Tell gateways to re-read the shadow configuration now (best effort: they also poll)."""
    try:
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.publish(SHADOW_CHANNEL, json.dumps({"changed": True}))
        finally:
            client.close()
        return True
    except (redis.RedisError, OSError) as exc:
        log.warning("could not announce the shadow configuration on %s: %s", SHADOW_CHANNEL, exc)
        return False


# --- recording (on a worker) -------------------------------------------------------------------


def _entity_dicts(answer: Sequence[Any]) -> list[dict[str, Any]]:
    return [e.model_dump() if hasattr(e, "model_dump") else dict(e) for e in answer]


def compare_texts(
    *,
    session: Session,
    settings: Settings,
    version: int,
    active_version: int,
    texts: list[str],
    predict: Predict,
) -> int:
    """Run ``texts`` through the active and the shadow version and record the comparison.

    Returns how many texts disagreed. A model that fails to load or run counts the texts as failed.
    """
    if not texts:
        return 0
    try:
        active = [_entity_dicts(a) for a in predict(active_version, texts)]
        shadow = [_entity_dicts(a) for a in predict(version, texts)]
    except Exception as exc:  # a model that does not load or run: counted, never re-tried blindly
        log.warning(
            "shadow v%s vs v%s: %d text(s) not compared: %s", version, active_version, len(texts), exc
        )
        _record(session, version=version, active_version=active_version, failed=len(texts))
        return 0
    return record_comparison(
        session=session,
        settings=settings,
        version=version,
        active_version=active_version,
        texts=texts,
        active_answers=active,
        shadow_answers=shadow,
    )


def record_comparison(
    *,
    session: Session,
    settings: Settings,
    version: int,
    active_version: int,
    texts: list[str],
    active_answers: list[list[dict[str, Any]]],
    shadow_answers: list[list[dict[str, Any]]],
) -> int:
    """Add one batch of answers to the counters (UPSERT) and keep samples of disagreements; returns them."""
    added: Counter[str] = Counter()
    removed: Counter[str] = Counter()
    matched: Counter[str] = Counter()
    samples: list[dict[str, Any]] = []
    disagreeing = 0
    now = _now()
    for text, active, shadow in zip(texts, active_answers, shadow_answers, strict=True):
        result = compare.agreement(active, shadow)
        added.update(result.added)
        removed.update(result.removed)
        matched.update(result.matched)
        if not result.disagrees:
            continue
        disagreeing += 1
        if len(samples) < settings.shadow_max_samples:
            sample = compare.excerpt(
                text,
                active,
                shadow,
                first_difference=result.first_difference or 0,
                max_chars=settings.shadow_excerpt_chars,
                store_text=settings.shadow_store_text,
            )
            samples.append(
                {
                    **sample,
                    "version": version,
                    "active_version": active_version,
                    "created_at": now,
                    "expires_at": now + timedelta(days=settings.retention_days),
                }
            )
    _record(
        session,
        version=version,
        active_version=active_version,
        texts=len(texts),
        disagreeing=disagreeing,
        added=added,
        removed=removed,
        matched=matched,
        samples=samples,
        max_samples=settings.shadow_max_samples,
    )
    return disagreeing


def _record(
    session: Session,
    *,
    version: int,
    active_version: int,
    texts: int = 0,
    disagreeing: int = 0,
    failed: int = 0,
    added: Counter[str] | None = None,
    removed: Counter[str] | None = None,
    matched: Counter[str] | None = None,
    samples: list[dict[str, Any]] | None = None,
    max_samples: int = 0,
) -> None:
    added, removed, matched = added or Counter(), removed or Counter(), matched or Counter()
    now = _now()
    rows: dict[str, dict[str, Any]] = {
        TOTALS: {
            "texts": texts,
            "texts_disagreeing": disagreeing,
            "failed": failed,
            "added": sum(added.values()),
            "removed": sum(removed.values()),
            "matched": sum(matched.values()),
        }
    }
    for name in set(added) | set(removed) | set(matched):
        key = str(name)[:MAX_TYPE_CHARS] or "?"
        row = rows.setdefault(key, dict.fromkeys(COUNTERS, 0))
        row["added"] += added[name]
        row["removed"] += removed[name]
        row["matched"] += matched[name]
    values = [
        {"version": version, "active_version": active_version, "entity_type": key, **counts, "first_at": now,
         "last_at": now}
        for key, counts in sorted(rows.items())  # one order everywhere: concurrent UPSERTs cannot deadlock
    ]  # fmt: skip
    try:
        session.execute(_upsert(session, values))
        if samples:
            session.execute(ShadowSample.__table__.insert(), samples)
            _trim_samples(session, version=version, keep=max_samples)
        session.commit()
    except IntegrityError:
        # The version was deleted while its texts were being compared: nothing to record.
        session.rollback()
        log.info("shadow v%s: the version no longer exists; comparison dropped", version)


def _insert(session: Session) -> Any:
    """The dialect's INSERT, which has ON CONFLICT DO UPDATE (PostgreSQL and SQLite alike)."""
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def _upsert(session: Session, values: list[dict[str, Any]]) -> Any:
    statement = _insert(session)(ShadowStat).values(values)
    excluded = statement.excluded
    updates: dict[str, Any] = {name: getattr(ShadowStat, name) + getattr(excluded, name) for name in COUNTERS}
    updates["last_at"] = excluded.last_at
    return statement.on_conflict_do_update(
        index_elements=["version", "active_version", "entity_type"], set_=updates
    )


def _trim_samples(session: Session, *, version: int, keep: int) -> None:
    """Keep the newest ``keep`` samples of ``version``."""
    threshold = session.scalar(
        select(ShadowSample.id)
        .where(ShadowSample.version == version)
        .order_by(ShadowSample.id.desc())
        .offset(keep)
        .limit(1)
    )
    if threshold is not None:
        session.execute(
            delete(ShadowSample).where(ShadowSample.version == version, ShadowSample.id <= threshold)
        )


def purge_expired_samples(*, session: Session, now: datetime | None = None) -> int:
    """Delete disagreement samples past their retention; returns how many."""
    deleted = session.execute(delete(ShadowSample).where(ShadowSample.expires_at < (now or _now()))).rowcount
    session.commit()
    return int(deleted or 0)


# --- reading -----------------------------------------------------------------------------------


def _ratio(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 6) if denominator else None


def _f1(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None:
        return None
    return round(2 * precision * recall / (precision + recall), 6) if precision + recall else 0.0


def _comparison(active_version: int, rows: list[ShadowStat]) -> ShadowComparison:
    totals = next((r for r in rows if r.entity_type == TOTALS), None)
    per_type = [
        ShadowTypeCount(
            type=r.entity_type,
            added=r.added,
            removed=r.removed,
            matched=r.matched,
            precision=_ratio(r.matched, r.matched + r.added),
            recall=_ratio(r.matched, r.matched + r.removed),
        )
        for r in rows
        if r.entity_type != TOTALS
    ]
    per_type.sort(key=lambda t: (-(t.added + t.removed), t.type))
    matched = totals.matched if totals else 0
    shadow_entities = matched + (totals.added if totals else 0)
    active_entities = matched + (totals.removed if totals else 0)
    precision, recall = _ratio(matched, shadow_entities), _ratio(matched, active_entities)
    return ShadowComparison(
        active_version=active_version,
        texts=totals.texts if totals else 0,
        texts_disagreeing=totals.texts_disagreeing if totals else 0,
        failed=totals.failed if totals else 0,
        active_entities=active_entities,
        shadow_entities=shadow_entities,
        matched=matched,
        precision=precision,
        recall=recall,
        f1=_f1(precision, recall),
        per_type=per_type,
        first_at=_utc(totals.first_at) if totals else None,
        last_at=_utc(totals.last_at) if totals else None,
    )


def _sample(row: ShadowSample, *, store_text: bool) -> DisagreementSample:
    # Samples kept before NER_SHADOW_STORE_TEXT was switched off are shown without their text too.
    def entities(stored: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return stored if store_text else [{**e, "word": None} for e in stored]

    return DisagreementSample.model_validate(
        {
            "id": row.id,
            "active_version": row.active_version,
            "created_at": _utc(row.created_at),
            "expires_at": _utc(row.expires_at),
            "text_chars": row.text_chars,
            "excerpt": row.excerpt if store_text else None,
            "excerpt_start": row.excerpt_start,
            "active_entities": entities(row.active_entities),
            "shadow_entities": entities(row.shadow_entities),
        }
    )


def shadow_view(*, session: Session, settings: Settings, version: int) -> ShadowView:
    """The shadow state of ``version``: on or off, its comparisons and its newest disagreements."""
    if registry.get_version(session=session, version=version) is None:
        raise ShadowVersionNotFound(f"model version {version} does not exist")
    config = session.get(ShadowConfig, version, populate_existing=True)
    active = registry.get_active(session=session)
    active_version = active.version if active is not None else None
    by_active: dict[int, list[ShadowStat]] = {}
    for row in session.scalars(select(ShadowStat).where(ShadowStat.version == version)):
        by_active.setdefault(row.active_version, []).append(row)
    comparisons = [_comparison(v, rows) for v, rows in by_active.items()]
    epoch = datetime.min.replace(tzinfo=UTC)
    comparisons.sort(key=lambda c: (c.active_version != active_version, -(c.last_at or epoch).timestamp()))
    samples = session.scalars(
        select(ShadowSample)
        .where(ShadowSample.version == version, ShadowSample.expires_at >= _now())
        .order_by(ShadowSample.id.desc())
        .limit(settings.shadow_max_samples)
    )
    return ShadowView(
        version=version,
        enabled=config is not None,
        sample_rate=config.sample_rate if config is not None else 0.0,
        started_at=_utc(config.started_at) if config is not None else None,
        active_version=active_version,
        store_text=settings.shadow_store_text,
        comparisons=comparisons,
        samples=[_sample(row, store_text=settings.shadow_store_text) for row in samples],
    )


def sample_count(*, session: Session, version: int) -> int:
    """How many disagreement samples ``version`` keeps now."""
    return int(session.scalar(select(func.count()).where(ShadowSample.version == version)) or 0)
