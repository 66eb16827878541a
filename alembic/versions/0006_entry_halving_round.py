"""ranking_entries.halving_round: the successive-halving round an entry is run for, then the one it stopped in.

A ranking with halving (the request's ``ranking.halving_rounds`` > 1) runs one task per candidate and round. The
worker reads the round from this column (NULL = the first, or no halving) and trains to that round's end; when a
round's tasks are all finished, the job flow (service/core/jobflow.py) moves the survivors to the next round by
setting it here, and the entries that stop keep the round they stopped in, which the ranking's order and the API
entry show. Rows from before have no halving: NULL.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ranking_entries") as batch:
        batch.add_column(sa.Column("halving_round", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ranking_entries") as batch:
        batch.drop_column("halving_round")
