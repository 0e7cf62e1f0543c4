"""How far training runs are: progress, ETA, and the "first model is training" message for /predict/.

Kept in ``shared`` (no torch, no trainer imports) so the gateway's model provider can ask it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.core.tables import RunStatus, TrainingRun


def progress(run: TrainingRun) -> float:
    """Fraction of the run's optimizer steps done (0 before the first step is counted)."""
    if run.status == RunStatus.succeeded:
        return 1.0
    return min(1.0, run.step / run.total_steps) if run.total_steps else 0.0


def eta_seconds(run: TrainingRun, now: datetime | None = None) -> float | None:
    """Seconds left at the pace since the run (re)started; None until there is a pace to go by."""
    if run.status != RunStatus.running or not run.started_at or not run.total_steps or run.step <= 0:
        return None
    now = now or datetime.now(UTC)
    started = run.started_at if run.started_at.tzinfo else run.started_at.replace(tzinfo=UTC)
    elapsed = (now - started).total_seconds()
    done_since_start = run.step - int((run.params or {}).get("_resumed_from_step", 0))
    if done_since_start <= 0 or elapsed <= 0:
        return None
    return round(elapsed / done_since_start * (run.total_steps - run.step), 1)


def training_in_progress(*, session: Session) -> TrainingRun | None:
    """The oldest queued or running training run, if any."""
    return session.scalar(
        select(TrainingRun)
        .where(TrainingRun.status.in_([RunStatus.queued, RunStatus.running]))
        .order_by(TrainingRun.created_at)
        .limit(1)
    )


def no_model_message(*, session: Session) -> str | None:
    """What /predict/ says while no model exists but one is being trained; None when none is."""
    run = training_in_progress(session=session)
    if run is None:
        return None
    if run.status == RunStatus.queued:
        return (
            f"No model yet: training run {run.id} is queued to train the first model; "
            f"/predict/ answers as soon as it is published (GET /train/{run.id} shows progress)."
        )
    eta = eta_seconds(run)
    left = f", about {eta / 60:.0f} min left" if eta is not None else ""
    return (
        f"No model yet: the first model is training, {progress(run):.0%} done{left} "
        f"(run {run.id}); /predict/ answers as soon as it is published."
    )
