"""shadow: shadow traffic statistics and disagreement samples; job re-runs (issue 15)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    # A version shadowing live traffic: a row while on.
    op.create_table(
        "shadow_configs",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("sample_rate", sa.Float(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["version"],
            ["model_versions.version"],
            name=op.f("fk_shadow_configs_version_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_shadow_configs")),
    )
    # Counters per (shadow version, active version, entity type; '' for the totals), UPSERTed.
    op.create_table(
        "shadow_stats",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("active_version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("entity_type", sa.String(length=100), nullable=False),
        sa.Column("texts", sa.BigInteger(), nullable=False),
        sa.Column("texts_disagreeing", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("added", sa.BigInteger(), nullable=False),
        sa.Column("removed", sa.BigInteger(), nullable=False),
        sa.Column("matched", sa.BigInteger(), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["version"],
            ["model_versions.version"],
            name=op.f("fk_shadow_stats_version_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version", "active_version", "entity_type", name=op.f("pk_shadow_stats")),
    )
    # A bounded sample of disagreements, deleted at expires_at (the job retention).
    op.create_table(
        "shadow_samples",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("active_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("text_chars", sa.Integer(), nullable=False),
        sa.Column("excerpt", sa.Text(), nullable=True),
        sa.Column("excerpt_start", sa.Integer(), nullable=False),
        sa.Column("active_entities", JSON, nullable=False),
        sa.Column("shadow_entities", JSON, nullable=False),
        sa.ForeignKeyConstraint(
            ["version"],
            ["model_versions.version"],
            name=op.f("fk_shadow_samples_version_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shadow_samples")),
    )
    with op.batch_alter_table("shadow_samples") as batch:
        batch.create_index("ix_shadow_samples_version_id", ["version", "id"], unique=False)
        batch.create_index(batch.f("ix_shadow_samples_expires_at"), ["expires_at"], unique=False)
    # Which documents a re-run copied (its source and the root of the chain), for diffs.
    op.create_table(
        "job_reruns",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("source_job_id", sa.Uuid(), nullable=False),
        sa.Column("root_job_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_reruns_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_job_reruns")),
    )
    with op.batch_alter_table("job_reruns") as batch:
        batch.create_index(batch.f("ix_job_reruns_root_job_id"), ["root_job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job_reruns") as batch:
        batch.drop_index(batch.f("ix_job_reruns_root_job_id"))
    op.drop_table("job_reruns")
    with op.batch_alter_table("shadow_samples") as batch:
        batch.drop_index(batch.f("ix_shadow_samples_expires_at"))
        batch.drop_index("ix_shadow_samples_version_id")
    op.drop_table("shadow_samples")
    op.drop_table("shadow_stats")
    op.drop_table("shadow_configs")
