"""ranking_entries, alchemy_results: task_id, dispatched_at and heartbeat_at, the lease that lets the
recovery sweep re-send work whose broker message was lost or whose worker died; alchemy_results.seconds,
the run time that /metrics reports for every kind of task.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("ranking_entries", "alchemy_results")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("task_id", sa.String(length=64), nullable=True))
            batch.add_column(sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
            batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("alchemy_results") as batch:
        batch.add_column(sa.Column("seconds", sa.Float(), nullable=False, server_default="0"))
    with op.batch_alter_table("alchemy_results") as batch:
        batch.alter_column("seconds", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("alchemy_results") as batch:
        batch.drop_column("seconds")
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("heartbeat_at")
            batch.drop_column("dispatched_at")
            batch.drop_column("task_id")
