"""``/v1/leaderboard`` and ``/v1/checkpoints/{id}/results``: scores across rankings (service/core/leaderboard.py).

Paged and filtered like the other list endpoints (``limit``, ``offset``, the same envelope), scoped to the
key's owner: another owner's dataset or checkpoint answers 404 like a missing one.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from service.api.auth import Owner
from service.api.deps import Limit, Offset, ReadsDep
from service.api.schemas import CheckpointResultOut, ErrorOut, LeaderboardRow, Page
from service.core import leaderboard as queries

router = APIRouter(tags=["leaderboard"])


@router.get("/v1/leaderboard", response_model=Page[LeaderboardRow], responses={404: {"model": ErrorOut}})
async def get_leaderboard(
    reads: ReadsDep,
    owner: Owner,
    dataset_id: Annotated[str, Query(min_length=1, max_length=64, description="the dataset the rankings ran on")],
    limit: Limit = 50,
    offset: Offset = 0,
    architecture: Annotated[str | None, Query(max_length=100, description="only checkpoints of this one")] = None,
) -> Page[LeaderboardRow]:
    """Each checkpoint ranked on the dataset, best score first: its best and its latest score, each with the
    job it came from, its steps and the random-init control's score in that job."""
    items, total = await reads(queries.leaderboard, owner, dataset_id, limit, offset, architecture)
    return Page(items=[LeaderboardRow.model_validate(i) for i in items], total=total, limit=limit, offset=offset)


@router.get(
    "/v1/checkpoints/{checkpoint_id}/results",
    response_model=Page[CheckpointResultOut],
    responses={404: {"model": ErrorOut}},
    tags=["checkpoints"],
)
async def get_checkpoint_results(
    checkpoint_id: str,
    reads: ReadsDep,
    owner: Owner,
    limit: Limit = 50,
    offset: Offset = 0,
    dataset_id: Annotated[str | None, Query(max_length=64, description="only rankings on this dataset")] = None,
    status: Annotated[Literal["queued", "running", "ok", "failed", "cancelled"] | None, Query()] = None,
) -> Page[CheckpointResultOut]:
    """The checkpoint's entries in every ranking of the owner, newest job first, with dataset and job."""
    items, total = await reads(queries.checkpoint_results, owner, checkpoint_id, limit, offset, dataset_id, status)
    return Page(items=[CheckpointResultOut.model_validate(i) for i in items], total=total, limit=limit, offset=offset)
