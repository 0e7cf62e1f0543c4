"""jobs_options: bulk job options, completion callbacks, progress within a chunk (issues 14, 20)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("options", _json(), nullable=True))
        batch.add_column(sa.Column("callback_url", sa.Text(), nullable=True))
        batch.add_column(sa.Column("callback_state", sa.String(16), nullable=True))
        batch.add_column(sa.Column("callback_next_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("progress_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("rate", sa.Float(), nullable=True))
    # The watchdog looks for callbacks due: few rows are ever pending, so a partial index.
    op.create_index(
        "ix_jobs_callback_due",
        "jobs",
        ["callback_next_at"],
        postgresql_where=sa.text("callback_state = 'pending'"),
        sqlite_where=sa.text("callback_state = 'pending'"),
    )
    with op.batch_alter_table("job_results") as batch:
        batch.add_column(sa.Column("redacted_text", sa.Text(), nullable=True))
    op.create_table(
        "job_callback_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_callback_attempts_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_callback_attempts")),
    )
    op.create_index("ix_job_callback_attempts_job_id", "job_callback_attempts", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_job_callback_attempts_job_id", table_name="job_callback_attempts")
    op.drop_table("job_callback_attempts")
    with op.batch_alter_table("job_results") as batch:
        batch.drop_column("redacted_text")
    op.drop_index("ix_jobs_callback_due", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("rate")
        batch.drop_column("progress_at")
        batch.drop_column("callback_next_at")
        batch.drop_column("callback_state")
        batch.drop_column("callback_url")
        batch.drop_column("options")
