"""The one mapping of results: engine result objects ↔ database rows ↔ the API's response fields.

A ranking entry, an alchemy fold and a probe fold each cross three representations: what the engine returns
(``RankEntry``, an alchemy result, a ``ProbeResult``), the row the worker writes, and the body the API
serves. Every field copy between them is here (the CLI's way back from the served JSON is the engine's
`entry_from_view`, so `bnrank remote` needs no database library), and γ phases keep one name each
on the way: ``raw`` (as uploaded) and ``after_bn`` (after BN-only training) for rankings and probes, as the
engine's ``RankEntry.gamma`` names them; alchemy's engine phases are named once, in `ALCHEMY_GAMMA_PHASES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bnrank.engine.entries import RankEntry, gamma_change
from service.core.errors import NotFound
from service.core.models import AlchemyResult, GammaStat, Job, ProbeResult, RankingEntry

# The alchemy engine's γ phases → the phases stored in gamma_stats (and served).
ALCHEMY_GAMMA_PHASES = {
    "raw": "raw",
    "after_identification": "after_bn",
    "after_modification": "modified",
    "after_alchemy": "after_alchemy",
    "after_training": "after_alchemy",
}
GammaByPhase = dict[str, dict[str, Any]]


def gamma_rows(stats_by_phase: Mapping[str, Mapping[str, Any]], threshold: float, **link: Any) -> list[GammaStat]:
    """γ statistics by phase (the engine's ``gamma_stats`` output) as rows; ``link`` names what they belong to."""
    return [
        GammaStat(
            phase=phase,
            threshold=float(stats["summary"].get("threshold", threshold)),
            summary=stats["summary"],
            histogram=stats["histogram"],
            layers=stats["layers"],
            **link,
        )
        for phase, stats in stats_by_phase.items()
        if stats
    ]


# ------------------------------------------------------------------------------------------- rankings


def entry_values(outcome: RankEntry) -> dict[str, Any]:
    """An evaluated candidate's columns of its ``ranking_entries`` row (status and result)."""
    values: dict[str, Any] = {
        "status": outcome.status,
        "score": outcome.score,
        "dice_per_class": outcome.dice_per_class,
        "curve": outcome.curve,
        "steps": outcome.steps,
        "seconds": outcome.seconds,
        "error": outcome.error if outcome.status != "ok" else None,
        "load_report": stored_load_report(outcome),
        "case_scores": outcome.case_scores or None,
    }
    if outcome.architecture:
        values["architecture"] = outcome.architecture
    if outcome.halving_round is not None:  # a failure before training keeps the round the row was run for
        values["halving_round"] = outcome.halving_round
    return values


NORM_ONLY_KEY = "norm_only"
"""Where a row keeps what norm-only evaluation trained: inside its ``load_report`` JSON (no column of its own)."""
CALIBRATION_KEY = "calibration"
"""Where a cascade control's row keeps its architecture's measured step cost (``RankEntry.calibration``)."""


def stored_load_report(outcome: RankEntry) -> dict[str, Any] | None:
    """The row's ``load_report``: the engine's, plus (under NORM_ONLY_KEY) the norm kinds and parameters trained and
    (under CALIBRATION_KEY) a cascade control's measured step cost."""
    report = dict(outcome.load_report or {})
    if outcome.trained_parameters is not None:
        report[NORM_ONLY_KEY] = {
            "kinds": list(outcome.norm_kinds),
            "norm_parameters": outcome.norm_parameters,
            "trained_parameters": outcome.trained_parameters,
            "inserted_affines": list(outcome.inserted_affines),
        }
    if outcome.calibration is not None:
        report[CALIBRATION_KEY] = dict(outcome.calibration)
    return report if report or outcome.load_report is not None else None


def norm_view(row: RankingEntry) -> dict[str, Any]:
    """The EntryOut fields of what norm-only evaluation trained (empty until the entry has run)."""
    trained = (row.load_report or {}).get(NORM_ONLY_KEY) or {}
    return {
        "norm_kinds": list(trained.get("kinds") or []),
        "norm_parameters": trained.get("norm_parameters"),
        "trained_parameters": trained.get("trained_parameters"),
        "inserted_affines": list(trained.get("inserted_affines") or []),
    }


def source_view(row: RankingEntry) -> dict[str, Any]:
    """The EntryOut fields of where the candidate came from: its file format and, for a converted graph, the
    conversion report (operators, norms found, norms without affine, head chosen); empty until it has run."""
    report = row.load_report or {}
    source = report.get("source") or {}
    conversion = source.get("conversion")
    if not isinstance(conversion, dict):
        return {"format": report.get("format"), "conversion": None}
    extra = {k: source[k] for k in ("opset", "producer", "converted") if source.get(k) is not None}
    return {"format": report.get("format"), "conversion": {**conversion, **extra}}


def rank_entry(row: RankingEntry) -> RankEntry:
    """A stored entry as the engine's ``RankEntry``, keyed by row id, for the engine's ordering and stability."""
    return RankEntry(
        checkpoint=row.id,
        status="ok" if row.status == "ok" else "failed",
        score=row.score,
        curve=list(row.curve or []),
        steps=row.steps,
        is_control=row.is_control,
        halving_round=row.halving_round,
        case_scores=list(row.case_scores or []),
        seconds=row.seconds or 0.0,
        calibration=(row.load_report or {}).get(CALIBRATION_KEY),
    )


def entry_view(row: RankingEntry, gamma: GammaByPhase, ties: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A stored entry as the API serves it (``EntryOut``); ``gamma`` is its γ summary by phase, ``ties`` its
    tie guidance as the finished job stored it (tied entries by row id, see `ranking_ties` for names)."""
    ties = ties or {}
    return {
        "id": row.id,
        "rank": row.rank,
        "name": row.name,
        "checkpoint_id": row.checkpoint_id,
        "is_control": row.is_control,
        "architecture": row.architecture,
        "status": row.status,
        "score": row.score,
        "dice_per_class": dict(row.dice_per_class or {}),
        "gamma": gamma,
        "steps": row.steps,
        "seconds": row.seconds,
        "progress": row.progress,
        "curve": list(row.curve or []),
        "error": row.error,
        **norm_view(row),
        **source_view(row),
        "tie_group": ties.get("tie_group"),
        "p_best": ties.get("p_best"),
        "tied_with": list(ties.get("tied_with") or []),
        "halving_round": row.halving_round,
        "stage": row.stage,
        "seed": row.seed,
        "gamma_change": gamma_change(gamma.get("after_bn") or {}),
    }


def ranking_views(job: Job, entries: list[tuple[RankingEntry, GammaByPhase]]) -> tuple[list[dict[str, Any]], Any]:
    """The served entries and the ranking's tie summary, with the row ids the job stored turned into names."""
    result = job.result or {}
    names = {row.id: row.name for row, _ in entries}
    per_entry = result.get("entry_ties") or {}
    views = []
    for row, gamma in entries:
        ties = dict(per_entry.get(row.id) or {})
        ties["tied_with"] = [names.get(i, i) for i in ties.get("tied_with") or []]
        views.append(entry_view(row, gamma, ties))
    summary = result.get("ties")
    if summary:
        summary = {
            **summary,
            "top_group": [names.get(i, i) for i in summary.get("top_group") or []],
            "groups": [[names.get(i, i) for i in group] for group in summary.get("groups") or []],
        }
    return views, summary


def _served_order(
    by_id: dict[str, RankingEntry], gamma: dict[str, GammaByPhase]
) -> list[tuple[RankingEntry, GammaByPhase]]:
    entries = sorted(by_id.values(), key=lambda e: (e.rank is None, e.rank or 0, e.position))
    return [(e, gamma.get(e.id, {})) for e in entries]


def owned_ranking(session: Session, owner: str, job_id: str) -> tuple[Job, list[tuple[RankingEntry, GammaByPhase]]]:
    """The owner's ranking job and its entries in served order, with γ summaries, in one query.

    A ranking being polled is read on every request; the job, its entries and their γ rows come back in
    one round trip (the job's columns repeated per row) instead of one for the job and one for the rest,
    which was the largest item of the profile (docs/benchmarks.md). NotFound when the owner has no such
    ranking.
    """
    rows = session.execute(
        select(Job, RankingEntry, GammaStat.phase, GammaStat.summary)
        .outerjoin(RankingEntry, RankingEntry.job_id == Job.id)
        .outerjoin(GammaStat, GammaStat.entry_id == RankingEntry.id)
        .where(Job.id == job_id, Job.owner == owner, Job.kind == "ranking")
    ).all()
    if not rows:
        raise NotFound("ranking", job_id)
    by_id: dict[str, RankingEntry] = {}
    gamma: dict[str, GammaByPhase] = {}
    for _, entry, phase, summary in rows:
        if entry is None:
            continue
        by_id[entry.id] = entry
        if phase is not None:
            gamma.setdefault(entry.id, {})[phase] = summary
    return rows[0][0], _served_order(by_id, gamma)


# -------------------------------------------------------------------------------------- alchemy, probe


def fold_rows(session: Session, job_id: str, rows: type[Any]) -> list[tuple[Any, GammaByPhase]]:
    """An alchemy or probe job's fold rows (``rows``: its kind's table) in fold order, each with its γ summaries."""
    gamma: dict[int, GammaByPhase] = {}
    for fold, phase, summary in session.execute(
        select(GammaStat.fold, GammaStat.phase, GammaStat.summary).where(GammaStat.job_id == job_id)
    ):
        gamma.setdefault(fold or 0, {})[phase] = summary
    found = session.scalars(select(rows).where(rows.job_id == job_id).order_by(rows.fold))
    return [(row, gamma.get(row.fold, {})) for row in found]


def alchemy_values(outcome: Any) -> dict[str, Any]:
    """A finished alchemy fold's result columns (the engine's alchemy result)."""
    return {
        "dice": {"score": outcome.score, "per_class": outcome.dice_per_class},
        "reinitialised": outcome.modification or {},
        "metrics": {
            "mode": outcome.mode,
            "steps": outcome.steps,
            "seconds": outcome.seconds,
            "curve": outcome.curve,
            "identification": outcome.identification,
            "selection": outcome.selection,
            "r_gamma": outcome.r_gamma,
            "warnings": outcome.warnings,
            "options": outcome.options,
            "n_train": outcome.n_train,
            "n_val": outcome.n_val,
            "val_cases": outcome.val_cases,
        },
    }


def alchemy_gamma(outcome: Any) -> GammaByPhase:
    """An alchemy result's γ statistics under their stored phase names."""
    return {ALCHEMY_GAMMA_PHASES[k]: v for k, v in outcome.gamma.items() if k in ALCHEMY_GAMMA_PHASES}


def alchemy_view(row: AlchemyResult, gamma: GammaByPhase) -> dict[str, Any]:
    """A stored alchemy fold as the API serves it (``AlchemyResultOut``)."""
    return {
        "fold": row.fold,
        "status": row.status,
        "progress": row.progress,
        "dice": row.dice,
        "reinitialised": row.reinitialised,
        "metrics": row.metrics,
        "gamma": gamma,
        "error": row.error,
        "artifact_id": row.artifact_id,
    }


def probe_values(outcome: Any) -> tuple[dict[str, Any], GammaByPhase]:
    """A finished probe fold's result columns, and the γ after its BN-only training (stored as ``after_bn``)."""
    result = outcome.to_dict()
    gamma_after = result["bn_only"].pop("gamma", None)
    values = {
        "dice": {"score": outcome.dice_unclipped, "per_class": outcome.dice_per_class_unclipped},
        "metrics": {"probe": result},
    }
    return values, {"after_bn": gamma_after}


def probe_view(row: ProbeResult, gamma: GammaByPhase) -> dict[str, Any]:
    """A stored probe fold as the API serves it (``ProbeFoldOut``)."""
    probe = (row.metrics or {}).get("probe") or {}
    return {
        "fold": row.fold,
        "status": row.status,
        "progress": row.progress,
        "dice_unclipped": probe.get("dice_unclipped"),
        "n_channels": probe.get("n_channels"),
        "rows": probe.get("rows", []),
        "bn_only": probe.get("bn_only", {}),
        "gamma": gamma,
        "seconds": probe.get("seconds"),
        "error": row.error,
    }
