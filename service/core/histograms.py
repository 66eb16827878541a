"""γ histograms as stored (``gamma_stats.histogram``), for the pages that draw them.

The API's ranking and alchemy bodies carry γ *summaries* only (service/core/results.py keeps them small for
polling clients); the dashboard draws the fixed-bin histograms beside each other (thesis Fig. 3.2), so it
reads them here, keyed the way the result mapping keys the summaries: by entry (rankings) or fold (alchemy,
probe), then by phase.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.models import GammaStat

Histograms = dict[str, dict[str, Any]]
"""phase → {"edges": [...], "counts": [...], "threshold": float}"""


def _hist(row: tuple[Any, ...]) -> dict[str, Any]:
    histogram, threshold = row
    edges, counts = histogram.get("edges") or [], histogram.get("counts") or []
    return {"edges": list(edges), "counts": list(counts), "threshold": threshold}


def entry_histograms(session: Session, entry_ids: list[str]) -> dict[str, Histograms]:
    """entry id → phase → histogram, for a ranking's entries (callers got the ids from an owned ranking)."""
    if not entry_ids:
        return {}
    out: dict[str, Histograms] = {}
    rows = session.execute(
        select(GammaStat.entry_id, GammaStat.phase, GammaStat.histogram, GammaStat.threshold).where(
            GammaStat.entry_id.in_(entry_ids)
        )
    )
    for entry_id, phase, histogram, threshold in rows:
        out.setdefault(entry_id, {})[phase] = _hist((histogram, threshold))
    return out


def fold_histograms(session: Session, job_id: str) -> dict[int, Histograms]:
    """fold → phase → histogram, for an alchemy or probe job (callers checked the owner)."""
    out: dict[int, Histograms] = {}
    rows = session.execute(
        select(GammaStat.fold, GammaStat.phase, GammaStat.histogram, GammaStat.threshold).where(
            GammaStat.job_id == job_id
        )
    )
    for fold, phase, histogram, threshold in rows:
        out.setdefault(fold or 0, {})[phase] = _hist((histogram, threshold))
    return out
