"""The database schema (DESIGN §3) as SQLAlchemy 2 models; Alembic migrations must match it exactly.

Ids are opaque strings with a type prefix (``ck_``, ``ds_``, ``job_`` ...): random, so ids cannot be
guessed or enumerated across owners, and self-describing, so a user who pastes the wrong id into the wrong
command gets a clear 404 rather than a match in another table. Every row a user can reach carries an
``owner`` (or hangs off a row that does); every query filters by it.

JSON columns use the generic ``JSON`` type so the same models run on PostgreSQL and on the embedded SQLite.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Stable constraint names: migrations can then drop/alter them by name on every backend.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_JOB_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
TERMINAL_ENTRY_STATUSES = frozenset({"ok", "failed", "cancelled"})


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id(prefix: str) -> str:
    """96 random bits behind a readable type prefix."""
    return f"{prefix}_{secrets.token_hex(12)}"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend: SQLite drops the zone, so it is put back on read."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware UTC datetime")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime}


class ApiKey(Base):
    """Only the sha256 of a key is stored: a leaked database does not leak working keys."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("key"))
    owner: Mapped[str] = mapped_column(String(200), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class DashboardSession(Base):
    """A dashboard sign-in, kept server-side so that signing out ends it: the cookie names a row (by the
    sha256 of a random token), and a cookie whose row is gone or expired opens nothing."""

    __tablename__ = "dashboard_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (
        UniqueConstraint("owner", "sha256"),
        Index("ix_checkpoints_owner_created_at", "owner", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("ck"))
    owner: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(300))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(16))
    architecture: Mapped[str] = mapped_column(String(100))
    build_kwargs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    network_def: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    head: Mapped[str | None] = mapped_column(String(300), default=None)
    """A converted graph's head as its uploader named it (`CandidateOptions.head`); None: the graph's own."""
    in_channels: Mapped[int | None] = mapped_column(Integer)
    out_channels: Mapped[int | None] = mapped_column(Integer)
    n_parameters: Mapped[int] = mapped_column(BigInteger)
    n_bn_channels: Mapped[int] = mapped_column(Integer)
    modality: Mapped[str | None] = mapped_column(String(32))
    blob_path: Mapped[str] = mapped_column(String(200))
    load_report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    gamma: Mapped[list[GammaStat]] = relationship(
        back_populates="checkpoint", cascade="all, delete-orphan", passive_deletes=True
    )


class Dataset(Base):
    """A reference to a folder under a data root; the files are never copied."""

    __tablename__ = "datasets"
    __table_args__ = (
        UniqueConstraint("owner", "uri"),  # one dataset per folder and owner (migration 0004)
        Index("ix_datasets_owner_created_at", "owner", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("ds"))
    owner: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(300))
    uri: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(16))
    modality: Mapped[str] = mapped_column(String(32))
    n_cases: Mapped[int] = mapped_column(Integer)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    channel_names: Mapped[list[Any]] = mapped_column(default=list)
    fingerprint: Mapped[str] = mapped_column(String(64))
    problems: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """A ranking or an alchemy run. ``progress``/``message`` are written by the worker while it runs."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_owner_created_at", "owner", "created_at"),
        Index("ix_jobs_owner_status", "owner", "status"),
        # the leaderboard's filter: an owner's rankings on one dataset (migration 0005)
        Index("ix_jobs_owner_kind_dataset_id", "owner", "kind", "dataset_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("job"))
    owner: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    result: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text)
    task_ids: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    entries: Mapped[list[RankingEntry]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True, order_by="RankingEntry.position"
    )
    alchemy_results: Mapped[list[AlchemyResult]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True, order_by="AlchemyResult.fold"
    )
    probe_results: Mapped[list[ProbeResult]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True, order_by="ProbeResult.fold"
    )


class RankingEntry(Base):
    """One candidate of a ranking. ``slot`` (checkpoint id, or ``control:<architecture key>``) is unique per
    job, so a redelivered task updates its row instead of adding a second one.

    ``task_id``/``dispatched_at`` name the latest message sent for the row and ``heartbeat_at`` is renewed
    by the worker running it: together they let `service.core.recovery` tell a lost message or a dead worker
    from work that is merely waiting or slow (the same columns sit on ``alchemy_results``)."""

    __tablename__ = "ranking_entries"
    __table_args__ = (
        UniqueConstraint("job_id", "slot"),
        # a checkpoint's results across rankings (migration 0005)
        Index("ix_ranking_entries_checkpoint_id_status", "checkpoint_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("re"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    checkpoint_id: Mapped[str | None] = mapped_column(ForeignKey("checkpoints.id", ondelete="SET NULL"), index=True)
    slot: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(300))
    is_control: Mapped[bool] = mapped_column(Boolean, default=False)
    architecture: Mapped[str | None] = mapped_column(String(100))
    build_kwargs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    network_def: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    rank: Mapped[int | None] = mapped_column(Integer)
    score: Mapped[float | None] = mapped_column(Float)
    dice_per_class: Mapped[dict[str, Any]] = mapped_column(default=dict)
    curve: Mapped[list[Any]] = mapped_column(default=list)
    steps: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    task_id: Mapped[str | None] = mapped_column(String(64), default=None)
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text)
    load_report: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    halving_round: Mapped[int | None] = mapped_column(Integer, default=None)
    """Successive halving: the round this entry is run for, then the round it stopped in; NULL without halving."""
    case_scores: Mapped[list[Any] | None] = mapped_column(default=None)
    """Per validation case score at each validation behind the score (the engine's ``RankEntry.case_scores``):
    what the close-out's tie guidance resamples, as `bnrank rank` does; NULL before it ran (or before 0008)."""
    stage: Mapped[str | None] = mapped_column(String(16), default=None)
    """The cascade strategy's stage this row belongs to: NULL for norm-only evaluation, ``race`` for one racer's
    fine-tuning run at one seed and round (bnrank/engine/cascade.py)."""
    seed: Mapped[int | None] = mapped_column(Integer, default=None)
    """The seed the row runs at where it is not the ranking's own (a cascade's control seeds and race seeds)."""
    group_key: Mapped[str | None] = mapped_column(String(32), default=None)
    """The cascade's control group: a candidate's and its architecture's controls share it (their slot's hash)."""
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    job: Mapped[Job] = relationship(back_populates="entries")
    gamma: Mapped[list[GammaStat]] = relationship(
        back_populates="entry", cascade="all, delete-orphan", passive_deletes=True
    )


class GammaStat(Base):
    """γ statistics of one network at one phase: raw (as uploaded), after BN-only, after alchemy."""

    __tablename__ = "gamma_stats"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("gs"))
    checkpoint_id: Mapped[str | None] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    entry_id: Mapped[str | None] = mapped_column(ForeignKey("ranking_entries.id", ondelete="CASCADE"), index=True)
    fold: Mapped[int | None] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(16))
    threshold: Mapped[float] = mapped_column(Float)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    histogram: Mapped[dict[str, Any]] = mapped_column(default=dict)
    layers: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    checkpoint: Mapped[Checkpoint | None] = relationship(back_populates="gamma")
    entry: Mapped[RankingEntry | None] = relationship(back_populates="gamma")


class Artifact(Base):
    """A file a job produced (fine-tuned weights), stored in the blob store like an upload."""

    __tablename__ = "artifacts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("art"))
    owner: Mapped[str] = mapped_column(String(200), index=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(300))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    blob_path: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AlchemyResult(Base):
    """One fold of an alchemy job (fold 0 when there is no cross-validation); like a ranking entry, the
    (job, fold) pair is the slot a redelivered task writes over."""

    __tablename__ = "alchemy_results"
    __table_args__ = (UniqueConstraint("job_id", "fold"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("ar"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    fold: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    task_id: Mapped[str | None] = mapped_column(String(64), default=None)
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    dice: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reinitialised: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    artifact_id: Mapped[str | None] = mapped_column(ForeignKey("artifacts.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    job: Mapped[Job] = relationship(back_populates="alchemy_results")


class ProbeResult(Base):
    """One fold of a γ-clipping probe job: its per-threshold table in ``metrics`` and the unclipped Dice in
    ``dice``. The same lease columns as an alchemy fold, without the fine-tuned weights a probe never writes."""

    __tablename__ = "probe_results"
    __table_args__ = (UniqueConstraint("job_id", "fold"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("pr"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    fold: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    task_id: Mapped[str | None] = mapped_column(String(64), default=None)
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    dice: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    job: Mapped[Job] = relationship(back_populates="probe_results")
