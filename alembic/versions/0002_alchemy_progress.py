"""alchemy_results: progress, attempts and started_at, so an alchemy fold reports progress and is claimed
and redelivered exactly like a ranking entry.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing rows need a value for the NOT NULL columns; the default is dropped again afterwards
    # because the application always sets them (and the models declare no server default).
    with op.batch_alter_table("alchemy_results") as batch:
        batch.add_column(sa.Column("progress", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("alchemy_results") as batch:
        batch.alter_column("progress", server_default=None)
        batch.alter_column("attempts", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("alchemy_results") as batch:
        batch.drop_column("started_at")
        batch.drop_column("attempts")
        batch.drop_column("progress")
