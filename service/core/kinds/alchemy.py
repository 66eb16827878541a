"""The ``alchemy`` kind: network alchemy on one checkpoint, one task per fold, fine-tuned weights as artifacts."""

from __future__ import annotations

from service.core.kinds.base import JobKind
from service.core.kinds.folds import fold_closer
from service.core.models import AlchemyResult
from service.core.params import AlchemyParams

KIND = JobKind(
    name="alchemy",
    path="/v1/alchemy",
    page="alchemy",
    task="bnrank.alchemy",
    task_label="alchemy_fold",
    params=AlchemyParams,
    rows=AlchemyResult,
    relation="alchemy_results",
    unit="fold",
    unit_label="fold",
    unit_order="fold",
    finalise=fold_closer(AlchemyResult),
)
