"""Looking rows up on behalf of an owner: someone else's row is answered exactly like a missing one."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.errors import NotFound
from service.core.models import Artifact, Checkpoint, Dataset, Job


def owned_job(session: Session, owner: str, job_id: str, kind: str | None = None) -> Job:
    query = select(Job).where(Job.id == job_id, Job.owner == owner)
    if kind is not None:
        query = query.where(Job.kind == kind)
    job = session.scalars(query).first()
    if job is None:
        raise NotFound(kind or "job", job_id)
    return job


def owned_dataset(session: Session, owner: str, dataset_id: str) -> Dataset:
    dataset = session.scalars(select(Dataset).where(Dataset.id == dataset_id, Dataset.owner == owner)).first()
    if dataset is None:
        raise NotFound("dataset", dataset_id)
    return dataset


def owned_checkpoint(session: Session, owner: str, checkpoint_id: str) -> Checkpoint:
    ckpt = session.scalars(select(Checkpoint).where(Checkpoint.id == checkpoint_id, Checkpoint.owner == owner)).first()
    if ckpt is None:
        raise NotFound("checkpoint", checkpoint_id)
    return ckpt


def owned_checkpoints(session: Session, owner: str, checkpoint_ids: list[str]) -> list[Checkpoint]:
    """The checkpoints in the order asked for; one NotFound naming every id that is missing."""
    found = {
        c.id: c
        for c in session.scalars(select(Checkpoint).where(Checkpoint.id.in_(checkpoint_ids), Checkpoint.owner == owner))
    }
    missing = [c for c in checkpoint_ids if c not in found]
    if missing:
        raise NotFound("checkpoint", ", ".join(missing))
    return [found[c] for c in checkpoint_ids]


def owned_artifact(session: Session, owner: str, artifact_id: str) -> Artifact:
    row = session.scalars(select(Artifact).where(Artifact.id == artifact_id, Artifact.owner == owner)).first()
    if row is None:
        raise NotFound("artifact", artifact_id)
    return row
