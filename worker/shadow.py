"""Celery tasks of the shadow queue: comparing sampled live texts, and purging old samples (issue 15).

``ner worker`` imports this module and consumes the ``shadow`` queue beside ``inference``.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.core.celery_app import celery_app
from shared.core.config import get_settings
from shared.core.db import session_scope
from shared.predict.schemas import Entity
from shared.shadow import service
from worker import runtime


def _predict(version: int, texts: list[str]) -> Sequence[Sequence[Entity]]:
    """The answers of one registry version, from this process's model cache (loaded if needed)."""
    return runtime.runtime().provider.get(version).engine.predict(texts)


# Not acks_late: a comparison is counted when it runs (the counters are not idempotent); a lost
# message is a lost sample, which statistics over a sample of traffic can afford.
@celery_app.task(name="ner.shadow.compare", acks_late=False, time_limit=600, soft_time_limit=590)
def compare(version: int, active_version: int, texts: list[str]) -> int:
    """Run sampled live texts through the active and the shadow version; record the agreement."""
    with session_scope() as session:
        return service.compare_texts(
            session=session,
            settings=get_settings(),
            version=int(version),
            active_version=int(active_version),
            texts=[str(t) for t in texts],
            predict=_predict,
        )


@celery_app.task(name="ner.shadow.purge_samples", acks_late=True)
def purge_samples() -> int:
    """Delete disagreement samples past their retention (beat)."""
    with session_scope() as session:
        return service.purge_expired_samples(session=session)
