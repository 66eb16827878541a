"""Indexes of the queries across jobs (issue 13): the leaderboard of a dataset and a checkpoint's results.

``GET /v1/leaderboard?dataset_id=`` reads an owner's ranking jobs on one dataset, then their entries:
``jobs (owner, kind, dataset_id)`` finds those jobs without scanning the owner's other jobs (the entries
are then reached through the existing ``ranking_entries (job_id)``). ``GET /v1/checkpoints/{id}/results``
reads one checkpoint's entries, optionally of one status: ``ranking_entries (checkpoint_id, status)``.
The single-column ``ranking_entries (checkpoint_id)`` stays: the foreign key's ``ON DELETE SET NULL`` uses it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_jobs_owner_kind_dataset_id", "jobs", ["owner", "kind", "dataset_id"])
    op.create_index("ix_ranking_entries_checkpoint_id_status", "ranking_entries", ["checkpoint_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_ranking_entries_checkpoint_id_status", table_name="ranking_entries")
    op.drop_index("ix_jobs_owner_kind_dataset_id", table_name="jobs")
