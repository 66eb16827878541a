"""``/v1/checkpoints``: upload (streamed, hashed, validated), list, get, delete, raw γ statistics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from bnrank.engine.configs.candidate import MAX_HEAD_NAME, CandidateOptions
from bnrank.engine.options import offered
from service.api.auth import Owner
from service.api.deps import BlobsDep, DatabaseDep, FinishedDep, Limit, Offset, SessionDep, SettingsDep, SlotsDep
from service.api.schemas import CheckpointOut, ErrorOut, GammaOut, Page
from service.api.uploads import MODALITIES, UploadError, checkpoint_form, receive_raw, receive_upload
from service.core import checkpoints as records
from service.core.errors import NotFound
from service.core.models import Checkpoint, GammaStat
from service.core.owned import owned_checkpoint

router = APIRouter(prefix="/v1/checkpoints", tags=["checkpoints"])


def checkpoint_out(ckpt: Checkpoint, raw: GammaStat | None) -> CheckpointOut:
    out = CheckpointOut.model_validate(ckpt)
    out.gamma_summary = raw.summary if raw is not None else None
    return out


UPLOAD_FORMATS = (
    "a .safetensors file; a PyTorch .pt/.pth (a state dict or an nnU-Net v2 checkpoint_final.pth); a TorchScript "
    "archive; or a zip of an nnU-Net v2 model folder or a MONAI bundle (recognised by contents, never executed)"
)
UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": UPLOAD_FORMATS},
                    "name": {"type": "string", "description": "default: the file name"},
                    "modality": {"type": "string", "enum": list(MODALITIES)},
                    "architecture": {"type": "string", "description": "default: recognised from keys"},
                    "network_def": {"type": "string", "description": "JSON MONAI network definition"},
                    **{
                        o.name: {"type": "string", "maxLength": MAX_HEAD_NAME, "description": o.spec.help}
                        for o in offered(CandidateOptions, "api")
                    },
                },
            }
        },
        "application/octet-stream": {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "the file itself (the faster path: nothing to parse); name, modality and "
                "architecture go in the query (network_def needs the form)",
            }
        },
    },
}
RAW = "application/octet-stream"


_HEAD_HELP = next(o.spec.help for o in offered(CandidateOptions, "api") if o.name == "head")


def _query_field(description: str, **kwargs: Any) -> Any:
    return Query(description=f"{description} (with an {RAW} body; a form carries it as a field)", **kwargs)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CheckpointOut,
    responses={
        200: {"model": CheckpointOut, "description": "this owner already uploaded the same bytes"},
        409: {"model": ErrorOut, "description": "the same bytes are stored already with another network_def"},
        413: {"model": ErrorOut, "description": "over the upload limit, or unpacks to more than it"},
        422: {"model": ErrorOut},
    },
    openapi_extra={"requestBody": UPLOAD_BODY},
)
async def upload_checkpoint(
    request: Request,
    response: Response,
    owner: Owner,
    settings: SettingsDep,
    store: BlobsDep,
    db: DatabaseDep,
    slots: SlotsDep,
    name: Annotated[str | None, _query_field("the checkpoint's name, required", max_length=300)] = None,
    modality: Annotated[str | None, _query_field("CT, MR or other")] = None,
    architecture: Annotated[str | None, _query_field("default: recognised from keys")] = None,
    head: Annotated[str | None, _query_field(_HEAD_HELP, max_length=MAX_HEAD_NAME)] = None,
) -> CheckpointOut:
    """Stream the file to the blob store while hashing, validate it (off the event loop), then record it.

    The body is either a multipart form (``file`` and the text fields) or, as ``application/octet-stream``,
    the file itself with the fields as query parameters (all but ``network_def``, a JSON document too long
    for a URL: a checkpoint that needs one is sent as a form).
    """
    query = {"name": name, "modality": modality, "architecture": architecture, "head": head}
    fields = {k: v for k, v in query.items() if v is not None}
    headers = dict(request.headers)
    try:
        if headers.get("content-type", "").split(";")[0].strip().lower() == RAW:
            upload = await receive_raw(headers, request.stream(), store, settings.max_upload_bytes, fields)
        elif fields:
            raise UploadError(422, f"query fields ({', '.join(fields)}) go with an {RAW} body; a form has fields")
        else:
            upload = await receive_upload(headers, request.stream(), store, settings.max_upload_bytes)
        assert upload.writer is not None
        try:
            declared = checkpoint_form(upload)
            limits = records.InspectLimits(settings.max_upload_bytes, settings.inspect_time_limit_s, settings.sandbox)
            args = (db, store, slots, owner, upload.writer, declared, settings.gamma_threshold, limits)
            ckpt, raw, created = await run_in_threadpool(records.record_checkpoint, *args)
        finally:
            upload.writer.abort()  # no-op once committed (the file was moved away)
    except UploadError as exc:
        raise HTTPException(exc.status, detail=exc.detail) from exc
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
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
    rows, total = records.list_checkpoints(session, owner, limit, offset, modality, architecture)
    return Page(items=[checkpoint_out(c, raw) for c, raw in rows], total=total, limit=limit, offset=offset)


@router.get("/{checkpoint_id}", response_model=CheckpointOut, responses={404: {"model": ErrorOut}})
def get_checkpoint(checkpoint_id: str, session: SessionDep, owner: Owner) -> CheckpointOut:
    ckpt = owned_checkpoint(session, owner, checkpoint_id)
    return checkpoint_out(ckpt, records.raw_gamma(session, ckpt.id))


@router.delete(
    "/{checkpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}},
)
def delete_checkpoint(
    checkpoint_id: str, session: SessionDep, store: BlobsDep, finished: FinishedDep, owner: Owner
) -> Response:
    """Delete the record; the blob goes too once no record (of any owner) uses those bytes."""
    records.delete_checkpoint(session, store, finished, owner, checkpoint_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{checkpoint_id}/gamma", response_model=GammaOut, responses={404: {"model": ErrorOut}})
def get_checkpoint_gamma(checkpoint_id: str, session: SessionDep, owner: Owner) -> GammaOut:
    """γ statistics of the weights as uploaded (no training): summary, fixed-bin histogram, per layer."""
    ckpt = owned_checkpoint(session, owner, checkpoint_id)
    raw = records.raw_gamma(session, ckpt.id)
    if raw is None:
        raise NotFound("γ statistics of checkpoint", checkpoint_id)
    return GammaOut.model_validate(raw)
