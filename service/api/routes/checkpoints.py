"""``/v1/checkpoints``: upload (streamed, hashed, validated), list, get, delete, raw γ statistics."""

from __future__ import annotations

import json
import threading
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from bnrank.engine.architectures import ARCHITECTURES
from service.auth import Owner
from service.blobs import BlobStore
from service.config import Settings
from service.deps import Limit, Offset, SessionDep, not_found, owned_checkpoint
from service.models import Artifact, Checkpoint, GammaStat, Job, RankingEntry
from service.schemas import CheckpointOut, ErrorOut, GammaOut, Page
from service.uploads import ParsedUpload, UploadError, receive_upload
from service.validation import CheckpointRejected, inspect_checkpoint

router = APIRouter(prefix="/v1/checkpoints", tags=["checkpoints"])

MODALITIES = ("CT", "MR", "other")


def checkpoint_out(ckpt: Checkpoint, raw: GammaStat | None) -> CheckpointOut:
    out = CheckpointOut.model_validate(ckpt)
    out.gamma_summary = raw.summary if raw is not None else None
    return out


def _raw_gamma(session: Session, checkpoint_id: str) -> GammaStat | None:
    return session.scalars(
        select(GammaStat).where(GammaStat.checkpoint_id == checkpoint_id, GammaStat.phase == "raw").limit(1)
    ).first()


def _form(upload: ParsedUpload) -> tuple[str, str | None, str | None, dict[str, Any] | None]:
    """name, modality, architecture, network_def from the text fields, checked."""
    fields = upload.fields
    unknown = sorted(set(fields) - {"name", "modality", "architecture", "network_def"})
    if unknown:
        raise UploadError(422, f"unknown form field(s) {', '.join(unknown)}; allowed: name, modality, architecture")
    name = (fields.get("name") or upload.filename or "").strip()
    if not name:
        raise UploadError(422, "form field 'name' is required (or send a file name)")
    if len(name) > 300:
        raise UploadError(422, "form field 'name' is longer than 300 characters")
    modality = fields.get("modality") or None
    if modality is not None and modality not in MODALITIES:
        raise UploadError(422, f"form field 'modality' must be one of {', '.join(MODALITIES)}, got {modality!r}")
    architecture = fields.get("architecture") or None
    network_def = None
    if fields.get("network_def"):
        try:
            network_def = json.loads(fields["network_def"])
        except json.JSONDecodeError as exc:
            raise UploadError(422, f"form field 'network_def' is not valid JSON: {exc}") from exc
        if not isinstance(network_def, dict):
            raise UploadError(422, "form field 'network_def' must be a JSON object")
        if architecture:
            raise UploadError(422, "send either 'architecture' or 'network_def', not both")
    elif architecture is not None and architecture not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise UploadError(422, f"form field 'architecture': unknown architecture {architecture!r}; known: {known}")
    return name, modality, architecture, network_def


def _existing(session: Session, owner: str, sha256: str) -> Checkpoint | None:
    return session.scalars(select(Checkpoint).where(Checkpoint.owner == owner, Checkpoint.sha256 == sha256)).first()


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CheckpointOut,
    responses={
        200: {"model": CheckpointOut, "description": "this owner already uploaded the same bytes"},
        413: {"model": ErrorOut},
        422: {"model": ErrorOut},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {"type": "string", "format": "binary", "description": ".safetensors or .pt"},
                            "name": {"type": "string", "description": "default: the file name"},
                            "modality": {"type": "string", "enum": list(MODALITIES)},
                            "architecture": {"type": "string", "description": "default: recognised from keys"},
                            "network_def": {"type": "string", "description": "JSON MONAI network definition"},
                        },
                    }
                }
            },
        }
    },
)
async def upload_checkpoint(request: Request, response: Response, owner: Owner) -> CheckpointOut:
    """Stream the file to the blob store while hashing, validate it, then record it."""
    settings: Settings = request.app.state.settings
    store: BlobStore = request.app.state.blobs
    try:
        upload = await receive_upload(dict(request.headers), request.stream(), store, settings.max_upload_bytes)
    except UploadError as exc:
        raise HTTPException(exc.status, detail=exc.detail) from exc
    writer = upload.writer
    assert writer is not None
    try:
        name, modality, architecture, network_def = _form(upload)
        return await run_in_threadpool(
            _record, request, response, owner, upload, name, modality, architecture, network_def
        )
    except UploadError as exc:
        raise HTTPException(exc.status, detail=exc.detail) from exc
    finally:
        writer.abort()  # no-op once committed (the file was moved away)


def _record(
    request: Request,
    response: Response,
    owner: str,
    upload: ParsedUpload,
    name: str,
    modality: str | None,
    architecture: str | None,
    network_def: dict[str, Any] | None,
) -> CheckpointOut:
    """Dedupe, validate and insert; runs on a worker thread (torch work and blocking I/O)."""
    writer = upload.writer
    assert writer is not None
    db = request.app.state.db
    settings: Settings = request.app.state.settings
    store: BlobStore = request.app.state.blobs
    with db.sessions() as session:
        existing = _existing(session, owner, writer.sha256)
        if existing is not None:
            response.status_code = status.HTTP_200_OK
            return checkpoint_out(existing, _raw_gamma(session, existing.id))
    slots: threading.BoundedSemaphore = request.app.state.validation_slots
    with slots:
        try:
            info = inspect_checkpoint(
                writer.path,
                architecture=architecture,
                network_def=network_def,
                threshold=settings.gamma_threshold,
                label=f"checkpoint {name!r}",
            )
        except CheckpointRejected as exc:
            raise UploadError(422, str(exc)) from exc
    blob_path = store.commit(writer)
    kwargs = info.build_kwargs
    ckpt = Checkpoint(
        owner=owner,
        name=name,
        sha256=writer.sha256,
        size=writer.size,
        format=info.format,
        architecture=info.architecture,
        build_kwargs=kwargs,
        network_def=network_def,
        in_channels=kwargs.get("in_channels"),
        out_channels=kwargs.get("out_channels"),
        n_parameters=info.n_parameters,
        n_bn_channels=info.n_bn_channels,
        modality=modality,
        blob_path=blob_path,
        load_report=info.load_report,
    )
    raw = GammaStat(
        phase="raw",
        threshold=settings.gamma_threshold,
        summary=info.gamma["summary"],
        histogram=info.gamma["histogram"],
        layers=info.gamma["layers"],
    )
    ckpt.gamma.append(raw)
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
            response.status_code = status.HTTP_200_OK
            return checkpoint_out(existing, _raw_gamma(session, existing.id))
        return checkpoint_out(ckpt, raw)


@router.get("", response_model=Page[CheckpointOut])
def list_checkpoints(
    session: SessionDep,
    owner: Owner,
    limit: Limit = 50,
    offset: Offset = 0,
    modality: Annotated[str | None, Query(description="CT, MR or other")] = None,
    architecture: Annotated[str | None, Query()] = None,
) -> Page[CheckpointOut]:
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
    return Page(items=[checkpoint_out(r, raws.get(r.id)) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{checkpoint_id}", response_model=CheckpointOut, responses={404: {"model": ErrorOut}})
def get_checkpoint(checkpoint_id: str, session: SessionDep, owner: Owner) -> CheckpointOut:
    ckpt = owned_checkpoint(session, owner, checkpoint_id)
    return checkpoint_out(ckpt, _raw_gamma(session, ckpt.id))


@router.delete(
    "/{checkpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}},
)
def delete_checkpoint(checkpoint_id: str, request: Request, session: SessionDep, owner: Owner) -> Response:
    """Delete the record; the blob goes too once no record (of any owner) uses those bytes."""
    ckpt = owned_checkpoint(session, owner, checkpoint_id)
    busy = session.scalars(
        select(Job.id)
        .join(RankingEntry, RankingEntry.job_id == Job.id)
        .where(RankingEntry.checkpoint_id == ckpt.id, Job.status.in_(("queued", "running")))
        .limit(1)
    ).first()
    if busy is not None:
        raise HTTPException(
            status.HTTP_409_CONFLICT, detail=f"checkpoint {checkpoint_id!r} is in use by job {busy!r}; cancel it first"
        )
    blob_path = ckpt.blob_path
    session.delete(ckpt)
    session.commit()
    request.app.state.finished_rankings.discard_all()  # their entries now point at no checkpoint
    users = session.scalar(select(func.count()).select_from(Checkpoint).where(Checkpoint.blob_path == blob_path))
    users = (users or 0) + (
        session.scalar(select(func.count()).select_from(Artifact).where(Artifact.blob_path == blob_path)) or 0
    )
    if users == 0:
        request.app.state.blobs.delete(blob_path)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{checkpoint_id}/gamma", response_model=GammaOut, responses={404: {"model": ErrorOut}})
def get_checkpoint_gamma(checkpoint_id: str, session: SessionDep, owner: Owner) -> GammaOut:
    """γ statistics of the weights as uploaded (no training): summary, fixed-bin histogram, per layer."""
    ckpt = owned_checkpoint(session, owner, checkpoint_id)
    raw = _raw_gamma(session, ckpt.id)
    if raw is None:
        raise not_found("γ statistics of checkpoint", checkpoint_id)
    return GammaOut.model_validate(raw)
