"""ranking_entries.stage, .seed and .group_key: the cascade strategy's rows. A cascade ranks its candidates against
random-init controls at several seeds (``seed``, grouped with their candidates by ``group_key``) and races the
leaders by short fine-tuning, one row per racer, seed and round (``stage`` = 'race'). Rows of norm-only rankings
keep NULL in all three.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ranking_entries") as batch:
        batch.add_column(sa.Column("stage", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("seed", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("group_key", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ranking_entries") as batch:
        batch.drop_column("group_key")
        batch.drop_column("seed")
        batch.drop_column("stage")
