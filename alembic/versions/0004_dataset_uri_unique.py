"""datasets: one row per (owner, uri), so registering a folder twice can never make two datasets, even when
two requests race (the database refuses the second insert and the API answers the first row).

Rows already duplicated are merged before the constraint is created: per (owner, uri) the **newest** row is
kept (it is the one the API has answered for that folder since registration became idempotent, and it
describes the folder as last checked); the jobs and γ statistics that named an older copy are repointed to
the kept row, and the older copies are deleted. Nothing that referenced a dataset loses its link. The
downgrade drops the constraint only; merged rows are not split again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONSTRAINT = "uq_datasets_owner_uri"
REFERRERS = ("jobs", "gamma_stats")  # tables with a dataset_id column


def merge_duplicates(conn: sa.Connection) -> int:
    """Keep the newest row of every duplicated (owner, uri), repoint references to it; the rows removed."""
    rows = conn.execute(
        sa.text("SELECT id, owner, uri FROM datasets ORDER BY owner, uri, created_at DESC, id DESC")
    ).all()
    keep: dict[tuple[str, str], str] = {}
    replaced: dict[str, str] = {}
    for row_id, owner, uri in rows:
        kept = keep.setdefault((owner, uri), row_id)
        if kept != row_id:
            replaced[row_id] = kept
    for old, new in replaced.items():
        for table in REFERRERS:
            conn.execute(
                sa.text(f"UPDATE {table} SET dataset_id = :new WHERE dataset_id = :old"), {"new": new, "old": old}
            )
        conn.execute(sa.text("DELETE FROM datasets WHERE id = :old"), {"old": old})
    return len(replaced)


def upgrade() -> None:
    merge_duplicates(op.get_bind())
    with op.batch_alter_table("datasets") as batch:
        batch.create_unique_constraint(CONSTRAINT, ["owner", "uri"])


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_constraint(CONSTRAINT, type_="unique")
