"""``/v1/artifacts/{id}``: download a file a job produced (fine-tuned weights)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response, StreamingResponse

from service.api.auth import Owner
from service.api.deps import BlobsDep, SessionDep
from service.api.schemas import ErrorOut
from service.core.errors import NotFound
from service.core.owned import owned_artifact

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])


@router.get(
    "/{artifact_id}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, 404: {"model": ErrorOut}},
)
def download_artifact(artifact_id: str, session: SessionDep, blobs: BlobsDep, owner: Owner) -> Response:
    """The file itself, streamed from the blob store; its sha256 is in the ``ETag`` header.

    On an object store the bytes pass through the API rather than a presigned redirect: the store's
    endpoint is often reachable only from the service's own hosts (service/core/objectstore.py).
    """
    row = owned_artifact(session, owner, artifact_id)
    headers = {"ETag": f'"{row.sha256}"'}
    if blobs.remote:
        try:
            size, chunks = blobs.stream(row.blob_path)  # type: ignore[attr-defined]
        except Exception as exc:
            raise NotFound("file of artifact", artifact_id) from exc
        headers["Content-Disposition"] = f"attachment; filename*=utf-8''{quote(row.name)}"
        headers["Content-Length"] = str(size)
        return StreamingResponse(chunks, media_type="application/octet-stream", headers=headers)
    path = blobs.path(row.blob_path)
    if not path.is_file():
        raise NotFound("file of artifact", artifact_id)
    return FileResponse(path, media_type="application/octet-stream", filename=row.name, headers=headers)
