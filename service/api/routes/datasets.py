"""``/v1/datasets``: register a dataset folder by reference (checked case by case), list, get."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import func, select

from bnrank.engine.data import Dataset as EngineDataset
from bnrank.engine.data import PreprocessConfig, compute_fingerprint, open_dataset
from bnrank.engine.errors import BNRankError
from service.auth import Owner
from service.deps import UNPROCESSABLE, Limit, Offset, SessionDep, SettingsDep, owned_dataset
from service.models import Dataset
from service.paths import PathRefused, resolve_in_roots
from service.schemas import DatasetIn, DatasetOut, ErrorOut, Page

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def _check(body: DatasetIn, roots: list) -> tuple[EngineDataset, str]:
    """Containment, then the engine's full per-case check (reads every file, so it runs off the loop)."""
    try:
        folder = resolve_in_roots(body.uri, roots)
    except PathRefused as exc:
        raise HTTPException(UNPROCESSABLE, detail=str(exc)) from exc
    try:
        dataset = open_dataset(folder)
        fingerprint = compute_fingerprint(dataset, PreprocessConfig())
    except BNRankError as exc:
        raise HTTPException(UNPROCESSABLE, detail=str(exc)) from exc
    if body.format != "auto" and dataset.layout != body.format:
        raise HTTPException(
            UNPROCESSABLE,
            detail=f"uri {body.uri!r} holds a {dataset.layout} dataset, but format {body.format!r} was declared",
        )
    if len(dataset.cases) < 2:
        raise HTTPException(
            UNPROCESSABLE,
            detail=f"dataset {folder} has {len(dataset.cases)} usable case(s); training and validation need at "
            f"least 2. Problems: " + "; ".join(f"{p.case_id}: {p.message}" for p in dataset.problems[:5]),
        )
    return dataset, fingerprint


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    responses={422: {"model": ErrorOut, "description": "outside the data roots, unreadable, no usable case"}},
)
def register_dataset(body: DatasetIn, session: SessionDep, settings: SettingsDep, owner: Owner) -> DatasetOut:
    """Check every case; bad ones are listed in ``problems`` and left out, the rest are usable.

    Reads every file, which is why this is a plain ``def``: FastAPI runs it on a worker thread.
    """
    dataset, fingerprint = _check(body, settings.data_roots)
    row = Dataset(
        owner=owner,
        name=body.name,
        uri=str(dataset.root),
        format=dataset.layout,
        modality=body.modality or dataset.modality,
        n_cases=len(dataset.cases),
        labels=dict(dataset.labels),
        channel_names=list(dataset.channel_names),
        fingerprint=fingerprint,
        problems=[{"case_id": p.case_id, "message": p.message} for p in dataset.problems],
    )
    session.add(row)
    session.commit()
    return DatasetOut.model_validate(row)


@router.get("", response_model=Page[DatasetOut])
def list_datasets(session: SessionDep, owner: Owner, limit: Limit = 50, offset: Offset = 0) -> Page[DatasetOut]:
    where = Dataset.owner == owner
    total = session.scalar(select(func.count()).select_from(Dataset).where(where)) or 0
    rows = session.scalars(
        select(Dataset).where(where).order_by(Dataset.created_at.desc(), Dataset.id).limit(limit).offset(offset)
    )
    return Page(items=[DatasetOut.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{dataset_id}", response_model=DatasetOut, responses={404: {"model": ErrorOut}})
def get_dataset(dataset_id: str, session: SessionDep, owner: Owner) -> DatasetOut:
    return DatasetOut.model_validate(owned_dataset(session, owner, dataset_id))
