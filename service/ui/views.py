"""What each dashboard page shows, read through core's functions: ``fn(session, owner, ...) -> context``.

Every function here runs on a read session (``deps.Reads``) and starts from an owner-scoped lookup
(service/core/owned.py, `results.owned_ranking`, the list functions), so another owner's id raises
NotFound exactly where the API would answer 404. Entries, folds and probe rows are taken in the API's own
shape (`results.ranking_views`, `alchemy_view`, `probe_view`); this module only adds what a page derives
from them (a score's spread, chart geometry) and never re-reads raw rows its own way.
"""

from __future__ import annotations

import contextlib
import statistics
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bnrank.engine.configs.ranking import DEFAULT_STRATEGY
from bnrank.engine.formats.conversion import conversion_line
from bnrank.engine.training.validation import point_value
from service.core import checkpoints as records
from service.core import datasets as dataset_records
from service.core import jobflow
from service.core.errors import NotFound
from service.core.histograms import entry_histograms, fold_histograms
from service.core.kinds import kind_of
from service.core.kinds.ranking import ranking_params
from service.core.leaderboard import checkpoint_results, leaderboard
from service.core.models import Job
from service.core.owned import owned_checkpoint, owned_dataset, owned_job
from service.core.paths import relative_to_roots
from service.core.results import alchemy_view, fold_rows, owned_ranking, probe_view, ranking_views
from service.ui import charts

PAGE = 50
MODES = ("scratch", "finetune", "alchemy")


def _page(offset: int, limit: int, total: int) -> dict[str, Any]:
    return {
        "offset": offset,
        "limit": limit,
        "total": total,
        "prev": max(0, offset - limit) if offset > 0 else None,
        "next": offset + limit if offset + limit < total else None,
    }


def norm_kind(raw_summary: dict[str, Any] | None, trained: list[list[str]] | None = None) -> str:
    """The checkpoint's normalisation in the engine's names (bnrank/engine/norms.py): the kinds its upload's γ
    statistics cover (every kind with its own affine), else those norm-only evaluation trained in its rankings
    (inserted affines show there), else unknown until it is ranked."""
    kinds = sorted((raw_summary or {}).get("kinds") or [])
    if not kinds:
        kinds = sorted({k for entry in trained or [] for k in entry})
    return ", ".join(kinds) if kinds else "unknown (no affine normalisation; not ranked yet)"


def _histogram(hist: dict[str, Any] | None, label: str, phases: tuple[str, ...] = ("raw", "after_bn")) -> Any:
    return hist and charts.gamma_histogram(
        [(p, hist[p]["counts"]) for p in phases if p in hist and hist[p]["counts"]],
        next(iter(hist.values()))["edges"],
        threshold=next(iter(hist.values()))["threshold"],
        label=label,
    )


# ---------------------------------------------------------------------------------------- checkpoints


def checkpoints_page(
    session: Session, owner: str, offset: int, modality: str | None, architecture: str | None
) -> dict[str, Any]:
    rows, total = records.list_checkpoints(session, owner, PAGE, offset, modality, architecture)
    items = [
        {
            "ckpt": c,
            "norm": norm_kind(raw.summary if raw else None),
            "share_below": (raw.summary or {}).get("share_below") if raw else None,
        }
        for c, raw in rows
    ]
    return {
        "items": items,
        "page": _page(offset, PAGE, total),
        "filters": {"modality": modality or "", "architecture": architecture or ""},
    }


def checkpoint_page(session: Session, owner: str, checkpoint_id: str) -> dict[str, Any]:
    ckpt = owned_checkpoint(session, owner, checkpoint_id)
    raw = records.raw_gamma(session, ckpt.id)
    histogram = None
    if raw is not None and raw.histogram.get("counts"):
        histogram = charts.gamma_histogram(
            [("raw", raw.histogram["counts"])], raw.histogram["edges"], raw.threshold, label=f"γ of {ckpt.name}"
        )
    results, total = checkpoint_results(session, owner, ckpt.id, PAGE, 0)
    return {
        "ckpt": ckpt,
        "conversion": conversion_line((ckpt.load_report or {}).get("source")),
        "norm": norm_kind(raw.summary if raw is not None else None, [r["norm_kinds"] for r in results]),
        "summary": raw.summary if raw is not None else None,
        "layers": raw.layers if raw is not None else [],
        "histogram": histogram,
        "results": results,
        "results_total": total,
    }


# ------------------------------------------------------------------------------------------- datasets


def datasets_page(session: Session, owner: str, offset: int) -> dict[str, Any]:
    rows, total = dataset_records.list_datasets(session, owner, PAGE, offset)
    return {"items": rows, "page": _page(offset, PAGE, total)}


def dataset_page(session: Session, owner: str, dataset_id: str, roots: list[Path]) -> dict[str, Any]:
    dataset = owned_dataset(session, owner, dataset_id)
    board, total = leaderboard(session, owner, dataset.id, 10, 0)
    folder = relative_to_roots(dataset.uri, roots)  # as the API shows it: never the server's own path
    return {"dataset": dataset, "folder": folder, "board": board, "board_total": total}


# ----------------------------------------------------------------------------------------------- jobs


def jobs_page(session: Session, owner: str, offset: int, status: str | None, kind: str | None) -> dict[str, Any]:
    rows, total = jobflow.list_jobs(session, owner, PAGE, offset, status, kind)
    return {"items": rows, "page": _page(offset, PAGE, total), "filters": {"status": status or "", "kind": kind or ""}}


def _score_window(job: Job) -> int:
    return ranking_params(job.params).train_config().score_window


def _spread(curve: list[dict[str, float]], window: int) -> float | None:
    """Standard deviation of the validations the score averages: how much the score moves between them."""
    values = [v for p in curve if (v := point_value(p)) is not None][-window:]
    return statistics.pstdev(values) if len(values) > 1 else None


def ranking_page(session: Session, owner: str, job_id: str) -> dict[str, Any]:
    job, rows = owned_ranking(session, owner, job_id)
    views, ties = ranking_views(job, rows)
    window = _score_window(job)
    hists = entry_histograms(session, [v["id"] for v in views])
    classes = list(next((v["dice_per_class"] for v in views if v["dice_per_class"]), {}))
    for v in views:
        v["spread"] = _spread(v["curve"], window)
        after = v["gamma"].get("after_bn") or {}
        v["share_below"] = after.get("share_below")
        v["share_below_relative"] = after.get("share_below_relative")
        v["histogram"] = _histogram(hists.get(v["id"]), f"γ of {v['name']}")
        conversion = v.get("conversion")
        v["conversion_line"] = conversion_line({**conversion, "conversion": conversion}) if conversion else None
    curve_chart = charts.curves(
        [
            (v["name"], [(p["step"], s) for p in v["curve"] if (s := point_value(p)) is not None])
            for v in views
            if v["curve"]
        ],
        label="validation score by step",
    )
    dataset = None
    if job.dataset_id:
        with contextlib.suppress(NotFound):  # deleted since: the ranking is still the owner's
            dataset = owned_dataset(session, owner, job.dataset_id)
    return {
        "job": job,
        "dataset": dataset,
        "classes": classes,
        "candidates": [v for v in views if not v["is_control"] and v["stage"] is None],
        "controls": [v for v in views if v["is_control"]],
        "racers": [v for v in views if v["stage"] == "race"],
        "cascade": (job.result or {}).get("cascade"),
        "strategy": ((job.params or {}).get("ranking") or {}).get("strategy", DEFAULT_STRATEGY),
        "stability": (job.result or {}).get("stability"),
        "ties": ties,
        "curves": curve_chart,
        "budget": (job.params or {}).get("budget") or {},
        "window": window,
    }


# ------------------------------------------------------------------------------------- alchemy, probe


def _mode_of(job: Job) -> str:
    return str(((job.params or {}).get("options") or {}).get("mode") or "alchemy")


def _compared(session: Session, owner: str, job: Job) -> dict[str, Job]:
    """The latest succeeded alchemy job per mode on the same checkpoint and dataset (this one for its mode)."""
    checkpoint = (job.params or {}).get("checkpoint_id")
    found: dict[str, Job] = {_mode_of(job): job}
    rows = session.scalars(
        select(Job)
        .where(
            Job.owner == owner,
            Job.kind == "alchemy",
            Job.status == "succeeded",
            Job.dataset_id == job.dataset_id,
            Job.id != job.id,
        )
        .order_by(Job.created_at.desc())
        .limit(200)
    )
    for other in rows:
        if (other.params or {}).get("checkpoint_id") == checkpoint:
            found.setdefault(_mode_of(other), other)
    return found


def alchemy_page(session: Session, owner: str, job_id: str) -> dict[str, Any]:
    job = owned_job(session, owner, job_id, kind="alchemy")
    folds = [alchemy_view(row, gamma) for row, gamma in fold_rows(session, job.id, kind_of(job.kind).rows)]
    hists = fold_histograms(session, job.id)
    options = (job.params or {}).get("options") or {}
    mode = _mode_of(job)
    phases = [
        ("identification", mode == "alchemy" and options.get("identification", True)),
        ("modification", mode == "alchemy" and options.get("modification", True)),
        (
            "maximization",
            mode == "alchemy" if options.get("maximization") is None else bool(options.get("maximization")),
        ),
    ]
    for f in folds:
        f["histogram"] = _histogram(
            hists.get(f["fold"]), f"γ, fold {f['fold']}", ("raw", "after_bn", "modified", "after_alchemy")
        )
        f["layers"] = (f["reinitialised"] or {}).get("layers") or []
    compared = _compared(session, owner, job)
    n_folds = max([len((j.result or {}).get("dice_per_fold") or []) for j in compared.values()] + [len(folds)])
    series = []
    for m in MODES:
        other = compared.get(m)
        if other is None:
            continue
        if other.id == job.id:  # this job's own folds, finished or not
            series.append((m, [(f["dice"] or {}).get("score") for f in folds]))
        else:
            series.append((m, list((other.result or {}).get("dice_per_fold") or [])))
    groups = [f"fold {i}" for i in range(n_folds)]
    return {
        "job": job,
        "mode": mode,
        "phases": phases,
        "folds": folds,
        "compared": compared,
        "comparison": series,
        "chart": charts.grouped_bars(groups, series, label="Dice per fold by mode") if series else None,
        "groups": groups,
    }


def probe_page(session: Session, owner: str, job_id: str) -> dict[str, Any]:
    job = owned_job(session, owner, job_id, kind="probe")
    folds = [probe_view(row, gamma) for row, gamma in fold_rows(session, job.id, kind_of(job.kind).rows)]
    for f in folds:
        points = [
            charts.ClipPoint(r["share_clipped"], r["dice_threshold"], r["dice_random"], r["dice_random_std"])
            for r in f["rows"]
        ]
        f["chart"] = (
            charts.clipping(points, f["dice_unclipped"], label=f"γ clipping, fold {f['fold']}") if points else None
        )
    return {"job": job, "folds": folds}


# ------------------------------------------------------------------------------------------ leaderboard


def leaderboard_page(
    session: Session, owner: str, dataset_id: str | None, offset: int, architecture: str | None
) -> dict[str, Any]:
    datasets, _ = dataset_records.list_datasets(session, owner, 500, 0)
    context: dict[str, Any] = {"datasets": datasets, "dataset": None, "items": [], "page": _page(0, PAGE, 0)}
    context["filters"] = {"dataset_id": dataset_id or "", "architecture": architecture or ""}
    if dataset_id:
        context["dataset"] = owned_dataset(session, owner, dataset_id)
        items, total = leaderboard(session, owner, dataset_id, PAGE, offset, architecture)
        context.update(items=items, page=_page(offset, PAGE, total))
    return context
