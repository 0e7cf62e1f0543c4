"""trust: trust boundaries (issue: trust boundaries)

Per-key rate limits, the ``metrics`` scope (scopes are plain strings: nothing to alter) and
training uploads owned by their key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 19:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("rate_limit_per_minute", sa.Integer(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("idempotency_hash", sa.String(length=64), nullable=True))
    op.create_table(
        "training_uploads",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name=op.f("fk_training_uploads_api_key_id_api_keys"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_uploads")),
        sa.UniqueConstraint("path", name=op.f("uq_training_uploads_path")),
    )
    op.create_index(op.f("ix_training_uploads_api_key_id"), "training_uploads", ["api_key_id"])
    op.create_index(op.f("ix_training_uploads_expires_at"), "training_uploads", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_training_uploads_expires_at"), table_name="training_uploads")
    op.drop_index(op.f("ix_training_uploads_api_key_id"), table_name="training_uploads")
    op.drop_table("training_uploads")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("idempotency_hash")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("rate_limit_per_minute")
