"""quality: gate scores of model versions (issue: entities as users get them)

The quality gate's decision on a version, why, and the scores it compared on the operator's gate
set: the version's own (also the cache of the active version's score, keyed by the gate set's hash)
and the active version's at the time of the decision.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 19:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("gate_decision", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("gate_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("gate_score", _JSON, nullable=True))
        batch.add_column(sa.Column("gate_active_score", _JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("gate_active_score")
        batch.drop_column("gate_score")
        batch.drop_column("gate_reason")
        batch.drop_column("gate_decision")
