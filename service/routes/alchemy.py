"""``/v1/alchemy``: network alchemy jobs. Answers 501 until the engine's alchemy module is available."""

from __future__ import annotations

import importlib.util

from fastapi import APIRouter, HTTPException, status

from service.auth import Owner
from service.schemas import AlchemyIn, AlchemyOut, ErrorOut, JobOut

router = APIRouter(prefix="/v1/alchemy", tags=["alchemy"])

NOT_AVAILABLE = "network alchemy is not available in this build: bnrank.engine.alchemy is missing"


def alchemy_available() -> bool:
    return importlib.util.find_spec("bnrank.engine.alchemy") is not None


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={501: {"model": ErrorOut}},
)
def create_alchemy(body: AlchemyIn, owner: Owner) -> JobOut:
    raise HTTPException(status.HTTP_501_NOT_IMPLEMENTED, detail=NOT_AVAILABLE)


@router.get("/{job_id}", response_model=AlchemyOut, responses={404: {"model": ErrorOut}, 501: {"model": ErrorOut}})
def get_alchemy(job_id: str, owner: Owner) -> AlchemyOut:
    raise HTTPException(status.HTTP_501_NOT_IMPLEMENTED, detail=NOT_AVAILABLE)
