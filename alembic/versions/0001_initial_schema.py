"""Initial schema: api_keys, checkpoints, datasets, jobs, ranking_entries, gamma_stats, artifacts,
alchemy_results (DESIGN §3).

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id() -> sa.Column:
    return sa.Column("id", sa.String(32), nullable=False)


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _fk(table: str, column: str, target: str, ondelete: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [f"{target}.id"], name=f"fk_{table}_{column}_{target}", ondelete=ondelete)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        _id(),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        _time("created_at"),
        _time("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_index("ix_api_keys_owner", "api_keys", ["owner"])

    op.create_table(
        "checkpoints",
        _id(),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("architecture", sa.String(100), nullable=False),
        sa.Column("build_kwargs", sa.JSON(), nullable=False),
        sa.Column("network_def", sa.JSON(), nullable=True),
        sa.Column("in_channels", sa.Integer(), nullable=True),
        sa.Column("out_channels", sa.Integer(), nullable=True),
        sa.Column("n_parameters", sa.BigInteger(), nullable=False),
        sa.Column("n_bn_channels", sa.Integer(), nullable=False),
        sa.Column("modality", sa.String(32), nullable=True),
        sa.Column("blob_path", sa.String(200), nullable=False),
        sa.Column("load_report", sa.JSON(), nullable=False),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_checkpoints"),
        sa.UniqueConstraint("owner", "sha256", name="uq_checkpoints_owner_sha256"),
    )
    op.create_index("ix_checkpoints_owner_created_at", "checkpoints", ["owner", "created_at"])
    op.create_index("ix_checkpoints_sha256", "checkpoints", ["sha256"])

    op.create_table(
        "datasets",
        _id(),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("modality", sa.String(32), nullable=False),
        sa.Column("n_cases", sa.Integer(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("channel_names", sa.JSON(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("problems", sa.JSON(), nullable=False),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_datasets"),
    )
    op.create_index("ix_datasets_owner_created_at", "datasets", ["owner", "created_at"])

    op.create_table(
        "jobs",
        _id(),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("dataset_id", sa.String(32), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("task_ids", sa.JSON(), nullable=False),
        _time("created_at"),
        _time("started_at", nullable=True),
        _time("finished_at", nullable=True),
        _time("updated_at"),
        _fk("jobs", "dataset_id", "datasets", "SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_owner_created_at", "jobs", ["owner", "created_at"])
    op.create_index("ix_jobs_owner_status", "jobs", ["owner", "status"])

    op.create_table(
        "artifacts",
        _id(),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("blob_path", sa.String(200), nullable=False),
        _time("created_at"),
        _fk("artifacts", "job_id", "jobs", "SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_artifacts"),
    )
    op.create_index("ix_artifacts_job_id", "artifacts", ["job_id"])
    op.create_index("ix_artifacts_owner", "artifacts", ["owner"])

    op.create_table(
        "ranking_entries",
        _id(),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("checkpoint_id", sa.String(32), nullable=True),
        sa.Column("slot", sa.String(200), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("is_control", sa.Boolean(), nullable=False),
        sa.Column("architecture", sa.String(100), nullable=True),
        sa.Column("build_kwargs", sa.JSON(), nullable=False),
        sa.Column("network_def", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("dice_per_class", sa.JSON(), nullable=False),
        sa.Column("curve", sa.JSON(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("load_report", sa.JSON(), nullable=True),
        _time("started_at", nullable=True),
        _time("finished_at", nullable=True),
        _fk("ranking_entries", "checkpoint_id", "checkpoints", "SET NULL"),
        _fk("ranking_entries", "job_id", "jobs", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_ranking_entries"),
        sa.UniqueConstraint("job_id", "slot", name="uq_ranking_entries_job_id_slot"),
    )
    op.create_index("ix_ranking_entries_checkpoint_id", "ranking_entries", ["checkpoint_id"])
    op.create_index("ix_ranking_entries_job_id", "ranking_entries", ["job_id"])

    op.create_table(
        "alchemy_results",
        _id(),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("fold", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("dice", sa.JSON(), nullable=False),
        sa.Column("reinitialised", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("artifact_id", sa.String(32), nullable=True),
        _time("created_at"),
        _time("finished_at", nullable=True),
        _fk("alchemy_results", "artifact_id", "artifacts", "SET NULL"),
        _fk("alchemy_results", "job_id", "jobs", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_alchemy_results"),
        sa.UniqueConstraint("job_id", "fold", name="uq_alchemy_results_job_id_fold"),
    )
    op.create_index("ix_alchemy_results_job_id", "alchemy_results", ["job_id"])

    op.create_table(
        "gamma_stats",
        _id(),
        sa.Column("checkpoint_id", sa.String(32), nullable=True),
        sa.Column("dataset_id", sa.String(32), nullable=True),
        sa.Column("job_id", sa.String(32), nullable=True),
        sa.Column("entry_id", sa.String(32), nullable=True),
        sa.Column("fold", sa.Integer(), nullable=True),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("histogram", sa.JSON(), nullable=False),
        sa.Column("layers", sa.JSON(), nullable=False),
        _time("created_at"),
        _fk("gamma_stats", "checkpoint_id", "checkpoints", "CASCADE"),
        _fk("gamma_stats", "dataset_id", "datasets", "SET NULL"),
        _fk("gamma_stats", "entry_id", "ranking_entries", "CASCADE"),
        _fk("gamma_stats", "job_id", "jobs", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_gamma_stats"),
    )
    op.create_index("ix_gamma_stats_checkpoint_id", "gamma_stats", ["checkpoint_id"])
    op.create_index("ix_gamma_stats_entry_id", "gamma_stats", ["entry_id"])
    op.create_index("ix_gamma_stats_job_id", "gamma_stats", ["job_id"])


def downgrade() -> None:
    # Children before parents; dropping a table drops its indexes.
    for table in (
        "gamma_stats",
        "alchemy_results",
        "ranking_entries",
        "artifacts",
        "jobs",
        "datasets",
        "checkpoints",
        "api_keys",
    ):
        op.drop_table(table)
