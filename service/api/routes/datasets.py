"""``/v1/datasets``: register a dataset folder by reference (checked case by case), list, get."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from service.api.auth import Owner
from service.api.deps import DatasetChecksDep, Limit, Offset, RemoteDatasetsDep, SessionDep, SettingsDep
from service.api.schemas import DatasetIn, DatasetOut, ErrorOut, Page
from service.core import datasets
from service.core.models import Dataset
from service.core.owned import owned_dataset
from service.core.paths import relative_to_roots

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def dataset_out(row: Dataset, roots: list[Path]) -> DatasetOut:
    """The answer for a dataset row; its folder named relative to the data roots, as a client names it."""
    out = DatasetOut.model_validate(row)
    out.uri = relative_to_roots(out.uri, roots)
    return out


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    responses={
        200: {"model": DatasetOut, "description": "this owner registered the same folder before: that dataset"},
        422: {"model": ErrorOut, "description": "outside the data roots, unreadable, no usable case"},
        503: {"model": ErrorOut, "description": "every dataset check slot stayed busy; retry shortly"},
    },
)
def register_dataset(
    body: DatasetIn,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    checks: DatasetChecksDep,
    remote: RemoteDatasetsDep,
    owner: Owner,
    force: Annotated[bool, Query(description="check the folder again and refresh its dataset (same id)")] = False,
) -> DatasetOut:
    """Check every case; bad ones are listed in ``problems`` and left out, the rest are usable.

    The check reads every file, in a child process with its own memory limit (a few at a time per API
    process), and waits for it, which is why this is a plain ``def``: FastAPI runs it on a worker thread.
    The same folder registered again by the same owner answers the existing dataset (200), re-checked if
    ``force``. ``uri`` in the answer is relative to the data root.
    """
    row, created = datasets.register_dataset(
        session,
        owner,
        body.name,
        body.uri,
        body.modality,
        body.format,
        settings.data_roots,
        force=force,
        limits=checks,
        remote=remote,
    )
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return dataset_out(row, settings.data_roots)


@router.get("", response_model=Page[DatasetOut])
def list_datasets(
    session: SessionDep, settings: SettingsDep, owner: Owner, limit: Limit = 50, offset: Offset = 0
) -> Page[DatasetOut]:
    rows, total = datasets.list_datasets(session, owner, limit, offset)
    items = [dataset_out(r, settings.data_roots) for r in rows]
    return Page(items=items, total=total, limit=limit, offset=offset)


@router.get("/{dataset_id}", response_model=DatasetOut, responses={404: {"model": ErrorOut}})
def get_dataset(dataset_id: str, session: SessionDep, settings: SettingsDep, owner: Owner) -> DatasetOut:
    return dataset_out(owned_dataset(session, owner, dataset_id), settings.data_roots)
