"""Checkpoints as records: checking an upload before any row refers to it, recording it, listing, deleting.

All reading goes through the engine (`load_checkpoint` → `read_state_dict`), which only ever calls
``torch.load(weights_only=True)``: a pickle that would run code is refused unopened. The upload is one
file, its format told from its contents: a state dict, an nnU-Net v2 model (zipped folder or
checkpoint_final.pth), a zipped MONAI bundle or a TorchScript archive (see bnrank/engine/formats). The same
call fits the weights to the declared, described or recognised architecture, which is what produces the
load report and the model whose raw γ statistics are stored.

The upload is inspected in a child process (`inspect_checkpoint_isolated`) under a memory limit matched to
the upload limit (`memory_limit_for`) and a time limit: a zip that inflates to gigabytes, a network_def
with absurd widths or a file that trips some library into a loop costs that child, never the API. Limits
the engine foresaw (decompressed size, parameter count) are refused before anything is allocated.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bnrank.engine.errors import BNRankError, CheckpointTooLargeError, NetworkTooLargeError
from bnrank.engine.inspect_isolated import inspect_checkpoint_isolated, memory_limit_for
from service.core.blobs import BlobStore, BlobWriter
from service.core.cache import FinishedCache
from service.core.db import Database
from service.core.errors import Conflict, Invalid, TooLarge
from service.core.jobflow import ACTIVE_JOB
from service.core.models import Artifact, Checkpoint, GammaStat, Job, RankingEntry
from service.core.owned import owned_checkpoint
from service.core.results import gamma_rows

log = logging.getLogger(__name__)


class CheckpointRejected(Invalid):
    """The file cannot be used as a checkpoint; the message tells the uploader why."""


class CheckpointTooLarge(TooLarge):
    """The file unpacks to more than the upload limit allows (a zip bomb, or simply too big), or the network
    it describes (an nnU-Net plan, a MONAI network_def) has more parameters than allowed: 413 for all."""


@dataclass(frozen=True)
class InspectLimits:
    """What one inspection may cost: bytes the file may unpack to, the child's memory and time."""

    max_bytes: int
    time_limit_s: float = 60.0
    sandbox: str = "off"

    @property
    def memory_limit_mib(self) -> int:
        return memory_limit_for(self.max_bytes)


@dataclass
class Declared:
    """What the uploader says about the file (the form fields), already checked for shape."""

    name: str
    modality: str | None = None
    architecture: str | None = None
    network_def: dict[str, Any] | None = None
    head: str | None = None
    """A converted graph's head, named by the uploader (`CandidateOptions.head`)."""


@dataclass
class CheckpointInfo:
    format: str
    architecture: str
    build_kwargs: dict[str, Any]
    n_parameters: int
    n_bn_channels: int
    load_report: dict[str, Any]
    gamma: dict[str, Any]
    network_def: dict[str, Any] | None = None
    """The declared network_def, or a MONAI bundle's own: stored so workers build the candidate and its
    control from it (an nnU-Net model's plans travel in `build_kwargs` instead)."""


def inspect_checkpoint(
    path: Path,
    *,
    architecture: str | None,
    network_def: dict[str, Any] | None,
    threshold: float,
    label: str,
    limits: InspectLimits,
    head: str | None = None,
) -> CheckpointInfo:
    """Load the checkpoint as the worker will, in a limited child process; CheckpointRejected (422) or
    CheckpointTooLarge (413) with the reason when it cannot be used. Blocks: call it off the event loop."""
    try:
        summary = inspect_checkpoint_isolated(
            path,
            architecture=architecture,
            network_def=network_def,
            threshold=threshold,
            max_bytes=limits.max_bytes,
            memory_limit_mib=limits.memory_limit_mib,
            time_limit_s=limits.time_limit_s,
            sandbox_mode=limits.sandbox,
            head=head,
        )
    except (CheckpointTooLargeError, NetworkTooLargeError) as exc:  # too large, whatever the format: 413
        raise CheckpointTooLarge(f"{label}: {str(exc).replace(path.name + ': ', '')}") from exc
    except BNRankError as exc:  # engine refusals and exhausted limits alike (LimitExceededError is one)
        raise CheckpointRejected(f"{label}: {str(exc).replace(path.name + ': ', '')}") from exc
    return CheckpointInfo(
        format=summary.format,
        architecture=summary.architecture,
        build_kwargs=dict(summary.build_kwargs),
        n_parameters=summary.n_parameters,
        n_bn_channels=summary.n_bn_channels,
        load_report=summary.load_report,
        gamma=summary.gamma,
        network_def=summary.network_def,
    )


# ------------------------------------------------------------------------------------------- records


def raw_gamma(session: Session, checkpoint_id: str) -> GammaStat | None:
    """The γ statistics of the weights as uploaded (phase ``raw``)."""
    return session.scalars(
        select(GammaStat).where(GammaStat.checkpoint_id == checkpoint_id, GammaStat.phase == "raw").limit(1)
    ).first()


def _existing(session: Session, owner: str, sha256: str) -> Checkpoint | None:
    return session.scalars(select(Checkpoint).where(Checkpoint.owner == owner, Checkpoint.sha256 == sha256)).first()


def _new_record(
    owner: str, writer: BlobWriter, blob_path: str, info: CheckpointInfo, declared: Declared, threshold: float
) -> Checkpoint:
    kwargs = info.build_kwargs
    ckpt = Checkpoint(
        owner=owner,
        name=declared.name,
        sha256=writer.sha256,
        size=writer.size,
        format=info.format,
        architecture=info.architecture,
        build_kwargs=kwargs,
        network_def=declared.network_def if declared.network_def is not None else info.network_def,
        head=declared.head,
        in_channels=kwargs.get("in_channels"),
        out_channels=kwargs.get("out_channels"),
        n_parameters=info.n_parameters,
        n_bn_channels=info.n_bn_channels,
        modality=declared.modality,
        blob_path=blob_path,
        load_report=info.load_report,
    )
    ckpt.gamma.extend(gamma_rows({"raw": info.gamma}, threshold))
    return ckpt


def record_checkpoint(
    db: Database,
    store: BlobStore,
    slots: threading.BoundedSemaphore,
    owner: str,
    writer: BlobWriter,
    declared: Declared,
    threshold: float,
    limits: InspectLimits,
) -> tuple[Checkpoint, GammaStat | None, bool]:
    """Dedupe, validate and insert an uploaded file: ``(checkpoint, raw γ, created)``.

    ``created`` is False when this owner already had the same bytes (then nothing is stored twice). Loading
    a stranger's file is torch work, so at most ``slots`` validations run at once; call this off the event
    loop. Raises CheckpointRejected (Invalid) with the reason when the file is unusable.
    """
    with db.sessions() as session:
        existing = _existing(session, owner, writer.sha256)
        if existing is not None:
            _check_same_declaration(existing, declared)
            return existing, raw_gamma(session, existing.id), False
    with slots:
        info = inspect_checkpoint(
            writer.path,
            architecture=declared.architecture,
            network_def=declared.network_def,
            threshold=threshold,
            label=f"checkpoint {declared.name!r}",
            limits=limits,
            head=declared.head,
        )
    blob_path = store.commit(writer)
    try:
        ckpt = _new_record(owner, writer, blob_path, info, declared, threshold)
        with db.sessions() as session:
            session.add(ckpt)
            try:
                session.commit()
            except IntegrityError:
                # The same bytes arrived twice at once; the other request won, answer with its row.
                session.rollback()
                existing = _existing(session, owner, writer.sha256)
                if existing is None:
                    raise
                return existing, raw_gamma(session, existing.id), False
            return ckpt, ckpt.gamma[0], True
    except BaseException:
        # No blob without a row: whatever refused the row (a value the database cannot store, a lost
        # connection), the bytes go too unless another record uses them.
        forget_blob(db, store, blob_path)
        raise


def _check_same_declaration(existing: Checkpoint, declared: Declared) -> None:
    """Conflict when the same bytes come again with a network_def other than the one they were stored with:
    answering the old record would silently drop the new definition."""
    if declared.network_def is not None and declared.network_def != existing.network_def:
        raise Conflict(
            f"these bytes are already checkpoint {existing.id!r} ({existing.name!r}), stored with "
            f"{'another' if existing.network_def is not None else 'no'} network_def; delete it first to upload "
            "them with this one"
        )
    if declared.head is not None and declared.head != existing.head:
        raise Conflict(
            f"these bytes are already checkpoint {existing.id!r} ({existing.name!r}), stored with "
            f"{'head ' + repr(existing.head) if existing.head is not None else 'the head the graph gives'}; delete "
            "it first to upload them with this one"
        )


def forget_blob(db: Database, store: BlobStore, blob_path: str) -> None:
    """Delete a blob that no record uses (after a failed insert); a blob some record uses stays."""
    try:
        with db.sessions() as session:
            if _blob_users(session, blob_path) == 0:
                store.delete(blob_path)
    except Exception:  # the database may be what failed: `bnrank blobs sweep` finds the blob later
        log.warning("could not check whether blob %s is used; left for the orphan sweep", blob_path, exc_info=True)


def list_checkpoints(
    session: Session, owner: str, limit: int, offset: int, modality: str | None, architecture: str | None
) -> tuple[list[tuple[Checkpoint, GammaStat | None]], int]:
    """A page of the owner's checkpoints (newest first), each with its raw γ, and the total matching."""
    where = [Checkpoint.owner == owner]
    if modality:
        where.append(Checkpoint.modality == modality)
    if architecture:
        where.append(Checkpoint.architecture == architecture)
    total = session.scalar(select(func.count()).select_from(Checkpoint).where(*where)) or 0
    rows = list(
        session.scalars(
            select(Checkpoint)
            .where(*where)
            .order_by(Checkpoint.created_at.desc(), Checkpoint.id)
            .limit(limit)
            .offset(offset)
        )
    )
    raws = {
        g.checkpoint_id: g
        for g in session.scalars(
            select(GammaStat).where(GammaStat.checkpoint_id.in_([r.id for r in rows]), GammaStat.phase == "raw")
        )
    }
    return [(r, raws.get(r.id)) for r in rows], total


def _blob_users(session: Session, blob_path: str) -> int:
    """Records of any owner (checkpoints, artifacts) that still use these bytes."""
    checkpoints = session.scalar(select(func.count()).select_from(Checkpoint).where(Checkpoint.blob_path == blob_path))
    artifacts = session.scalar(select(func.count()).select_from(Artifact).where(Artifact.blob_path == blob_path))
    return (checkpoints or 0) + (artifacts or 0)


def delete_checkpoint(
    session: Session, store: BlobStore, finished: FinishedCache, owner: str, checkpoint_id: str
) -> None:
    """Delete the record; the blob goes too once no record (of any owner) uses those bytes.

    Conflict while a queued or running ranking uses the checkpoint. Finished rankings that listed it are
    dropped from the response cache: their entries now point at no checkpoint.
    """
    ckpt = owned_checkpoint(session, owner, checkpoint_id)
    busy = session.scalars(
        select(Job.id)
        .join(RankingEntry, RankingEntry.job_id == Job.id)
        .where(RankingEntry.checkpoint_id == ckpt.id, Job.status.in_(ACTIVE_JOB))
        .limit(1)
    ).first()
    if busy is not None:
        raise Conflict(f"checkpoint {checkpoint_id!r} is in use by job {busy!r}; cancel it first")
    blob_path = ckpt.blob_path
    session.delete(ckpt)
    session.commit()
    finished.discard_all()
    if _blob_users(session, blob_path) == 0:
        store.delete(blob_path)
