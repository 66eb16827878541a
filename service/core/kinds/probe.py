"""The ``probe`` kind: the γ-clipping probe (thesis Fig. 3.1) on one checkpoint, one task per fold."""

from __future__ import annotations

from service.core.kinds.base import JobKind
from service.core.kinds.folds import fold_closer
from service.core.models import ProbeResult
from service.core.params import ProbeParams

KIND = JobKind(
    name="probe",
    path="/v1/probes",
    page="probes",
    task="bnrank.probe",
    task_label="probe_fold",
    params=ProbeParams,
    rows=ProbeResult,
    relation="probe_results",
    unit="fold",
    unit_label="fold",
    unit_order="fold",
    finalise=fold_closer(ProbeResult),
)
