"""ranking_entries.case_scores: the per-case scores behind an entry's score, so a served ranking's tie guidance
resamples what `bnrank rank`'s does (the engine's close-out, with the ranking's seed) instead of the spread of
the last validations. Rows from before have none (NULL) and keep that fallback.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ranking_entries") as batch:
        batch.add_column(sa.Column("case_scores", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ranking_entries") as batch:
        batch.drop_column("case_scores")
