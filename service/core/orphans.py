"""Blobs no row refers to: found, reported, and deleted once older than a grace period.

Uploads write a blob before its row (the row needs the bytes checked first) and delete it again when the
row cannot be written (service/core/checkpoints.py); a process killed between the two, or a database that
failed while the cleanup asked it, can still leave bytes behind. This sweep is the backstop: every blob
under ``sha256/`` that no checkpoint or artifact row names is an orphan. Deleting waits ``grace_s`` after
the blob was last written, so a blob whose row is being inserted right now is never taken.
`bnrank blobs sweep` runs it (a dry run unless ``--delete``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.blobs import BlobStore
from service.core.models import Artifact, Checkpoint


@dataclass(frozen=True)
class Orphan:
    relpath: str
    size: int
    age_s: float


@dataclass
class SweepReport:
    orphans: list[Orphan] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    kept_in_use: int = 0

    @property
    def orphan_bytes(self) -> int:
        return sum(o.size for o in self.orphans)


def blobs_in_use(session: Session) -> set[str]:
    """Every blob address a row names (checkpoints of every owner, job artifacts)."""
    used = set(session.scalars(select(Checkpoint.blob_path)))
    used |= set(session.scalars(select(Artifact.blob_path)))
    return used


def find_orphans(session: Session, store: BlobStore, now: float | None = None) -> tuple[list[Orphan], int]:
    """(orphans, blobs in use): blobs no row names, with their size and age, in a folder or a bucket alike."""
    now = time.time() if now is None else now
    used = blobs_in_use(session)
    orphans: list[Orphan] = []
    in_use = 0
    for relpath, size, written in store.stored():
        if relpath in used:
            in_use += 1
        else:
            orphans.append(Orphan(relpath, size, max(0.0, now - written)))
    return orphans, in_use


def sweep_orphans(
    session: Session, store: BlobStore, *, grace_s: float, delete: bool, now: float | None = None
) -> SweepReport:
    """Report the orphans; with ``delete``, remove those older than ``grace_s`` (checked again just before)."""
    orphans, in_use = find_orphans(session, store, now)
    report = SweepReport(orphans=orphans, kept_in_use=in_use)
    if not delete:
        return report
    due = [o.relpath for o in orphans if o.age_s >= grace_s]
    if due:
        still_used = blobs_in_use(session)  # a row written since the first look keeps its blob
        for relpath in due:
            if relpath not in still_used:
                store.delete(relpath)
                report.deleted.append(relpath)
    return report
