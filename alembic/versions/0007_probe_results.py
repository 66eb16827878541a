"""probe_results: the folds of γ-clipping probe jobs get a table of their own, moved out of alchemy_results.

Every job kind keeps its units of work in its own table (service/core/kinds/). Existing probe folds are copied
with their ids, leases and results (a probe never had weights or reinitialised layers), then deleted from
alchemy_results; the downgrade moves them back.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    "id, job_id, fold, status, progress, attempts, task_id, dispatched_at, heartbeat_at, seconds, dice, metrics, "
    "error, created_at, started_at, finished_at"
)
PROBE_JOBS = "SELECT id FROM jobs WHERE kind = 'probe'"


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "probe_results",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("fold", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.String(64), nullable=True),
        _time("dispatched_at", nullable=True),
        _time("heartbeat_at", nullable=True),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("dice", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _time("created_at"),
        _time("started_at", nullable=True),
        _time("finished_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_probe_results_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_probe_results"),
        sa.UniqueConstraint("job_id", "fold", name="uq_probe_results_job_id_fold"),
    )
    op.create_index("ix_probe_results_job_id", "probe_results", ["job_id"])
    op.execute(
        f"INSERT INTO probe_results ({COLUMNS}) SELECT {COLUMNS} FROM alchemy_results WHERE job_id IN ({PROBE_JOBS})"
    )
    op.execute(f"DELETE FROM alchemy_results WHERE job_id IN ({PROBE_JOBS})")


def downgrade() -> None:
    op.execute(
        f"INSERT INTO alchemy_results ({COLUMNS}, reinitialised) SELECT {COLUMNS}, '{{}}' FROM probe_results"
    )
    op.drop_index("ix_probe_results_job_id", table_name="probe_results")
    op.drop_table("probe_results")
