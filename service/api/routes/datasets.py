"""``/v1/datasets``: register a dataset folder by reference (checked case by case), list, get."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from service.api.auth import Owner
from service.api.deps import Limit, Offset, RemoteDatasetsDep, SessionDep, SettingsDep
from service.api.schemas import DatasetIn, DatasetOut, ErrorOut, Page
from service.core import datasets
from service.core.owned import owned_dataset

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    responses={
        200: {"model": DatasetOut, "description": "this owner registered the same folder before: that dataset"},
        422: {"model": ErrorOut, "description": "outside the data roots, unreadable, no usable case"},
    },
)
def register_dataset(
    body: DatasetIn,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    remote: RemoteDatasetsDep,
    owner: Owner,
    force: Annotated[bool, Query(description="check the folder again and refresh its dataset (same id)")] = False,
) -> DatasetOut:
    """Check every case; bad ones are listed in ``problems`` and left out, the rest are usable.

    Reads every file, which is why this is a plain ``def``: FastAPI runs it on a worker thread. The same
    folder registered again by the same owner answers the existing dataset (200), re-checked if ``force``.
    """
    row, created = datasets.register_dataset(
        session, owner, body.name, body.uri, body.modality, body.format, settings.data_roots,
        force=force,
        remote=remote,
    )
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return DatasetOut.model_validate(row)


@router.get("", response_model=Page[DatasetOut])
def list_datasets(session: SessionDep, owner: Owner, limit: Limit = 50, offset: Offset = 0) -> Page[DatasetOut]:
    rows, total = datasets.list_datasets(session, owner, limit, offset)
    return Page(items=[DatasetOut.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{dataset_id}", response_model=DatasetOut, responses={404: {"model": ErrorOut}})
def get_dataset(dataset_id: str, session: SessionDep, owner: Owner) -> DatasetOut:
    return DatasetOut.model_validate(owned_dataset(session, owner, dataset_id))
