"""names: a job's name and a training upload's file name, kept by the service (issue 20)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 00:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Shown in the console and the API instead of ids and content hashes.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("name", sa.Text(), nullable=True))
    with op.batch_alter_table("training_uploads") as batch:
        batch.add_column(sa.Column("filename", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_uploads") as batch:
        batch.drop_column("filename")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("name")
