"""hardening: load errors of model versions (issue: hardening, second round)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 19:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A version that a gateway or worker failed to load: reported by /models, never served.
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("load_error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("load_error_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("load_error_at")
        batch.drop_column("load_error")
