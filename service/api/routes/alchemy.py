"""``/v1/alchemy``: queue network alchemy (one task per fold) and read back its per-fold results."""

from __future__ import annotations

from typing import Any

from service.api.routes.folds import fold_router
from service.api.schemas import AlchemyIn, AlchemyOut, AlchemyResultOut, JobOut
from service.core.kinds.alchemy import KIND
from service.core.models import Job
from service.core.results import GammaByPhase, alchemy_view


def _shape(job: Job, rows: list[tuple[Any, GammaByPhase]]) -> AlchemyOut:
    results = [AlchemyResultOut.model_validate(alchemy_view(row, gamma)) for row, gamma in rows]
    return AlchemyOut(job=JobOut.model_validate(job), summary=job.result, results=results)


router = fold_router(
    KIND,
    tag="alchemy",
    body=AlchemyIn,
    out=AlchemyOut,
    shape=_shape,
    names=("create_alchemy", "get_alchemy"),
    docs=(
        "Identification → modification → maximization of one checkpoint on one dataset (or k folds of it).",
        "The job, its summary over folds (``job.result``) and each fold's Dice, kernels re-initialised, γ\n"
        "    summaries and the artifact id of its fine-tuned weights.",
    ),
)
