"""``/v1/probes``: the γ-clipping probe (thesis Fig. 3.1) as a job, one task per fold.

Before trusting alchemy's "small γ = redundant kernel" on a new dataset, a user can check it: if zeroing
the small γ costs far less Dice than zeroing as many random γ, the γ ranking means something there.
"""

from __future__ import annotations

from typing import Any

from service.api.routes.folds import fold_router
from service.api.schemas import JobOut, ProbeFoldOut, ProbeIn, ProbeOut
from service.core.kinds.probe import KIND
from service.core.models import Job
from service.core.results import GammaByPhase, probe_view


def _shape(job: Job, rows: list[tuple[Any, GammaByPhase]]) -> ProbeOut:
    folds = [ProbeFoldOut.model_validate(probe_view(row, gamma)) for row, gamma in rows]
    return ProbeOut(job=JobOut.model_validate(job), folds=folds)


router = fold_router(
    KIND,
    tag="probes",
    body=ProbeIn,
    out=ProbeOut,
    shape=_shape,
    names=("create_probe", "get_probe"),
    docs=(
        "Queue BN-only training of one checkpoint, then clipping by threshold and at random.",
        "The job and, per fold, the unclipped Dice and one row per threshold: Dice clipped by |γ| vs at random.",
    ),
)
