"""One fold of an alchemy or probe job: the engine on the fold's data, its result written over its row."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.errors import BNRankError
from bnrank.engine.training.patches import TaskData
from service.core.jobflow import finalise
from service.core.models import (
    AlchemyResult,
    Artifact,
    Checkpoint,
    GammaStat,
    Job,
    utcnow,
)
from service.core.params import AlchemyParams, FoldParams, ProbeParams
from service.core.results import alchemy_gamma, alchemy_values, probe_values
from worker.claims import Work, cancel_row, claim, gamma_of, job_params, read_work
from worker.context import WorkerContext
from worker.progress import ProgressReporter, run_reported

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------- alchemy


def claim_fold(ctx: WorkerContext, job_id: str, fold: int) -> Work | None:
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        row = s.scalars(select(AlchemyResult).where(AlchemyResult.job_id == job_id, AlchemyResult.fold == fold)).first()
        if job is None or row is None:
            log.warning("task for unknown fold %s of job %s: skipped", fold, job_id)
            return None
        attempt = claim(s, AlchemyResult, job, row, ctx.settings.lease_s)
        if not attempt:
            return None
        params = job_params(job)
        ckpt = s.get(Checkpoint, params.checkpoint_id) if isinstance(params, FoldParams) else None
        name = f"{ckpt.name if ckpt else 'checkpoint'} fold {fold}"
        return read_work(ctx, s, job, row.id, name, ckpt.id if ckpt else None, attempt)


def _fold_task(ctx: WorkerContext, work: Work, fold: int) -> tuple[TrainConfig, TaskData]:
    """The training config and the data of one fold (all of the dataset when the job has one fold)."""
    from bnrank.engine.folds import fold_tasks

    if work.problem:
        raise BNRankError(work.problem)
    assert work.candidate is not None and work.dataset_uri is not None and isinstance(work.params, FoldParams)
    config = work.params.train_config(device=ctx.device)
    data = ctx.task_data(work.dataset_uri, work.skip_cases, config.seed)
    folds = work.params.folds
    if folds > 1:
        data = fold_tasks(data, folds, config.seed)[fold]
    return config, data


def _run_fold(ctx: WorkerContext, work: Work, fold: int, body: Any, what: str) -> tuple[Any, str | None]:
    """Run a fold's ``body(reporter)``: (its result, None), (None, None) when cancelled, or (None, why)."""
    try:
        return run_reported(ctx, AlchemyResult, work, body), None
    except (BNRankError, ValueError) as exc:
        return None, str(exc)
    except Exception as exc:  # out of memory, a bug: only this fold fails
        log.exception("%s fold %s of job %s crashed", what, fold, work.job_id)
        return None, f"{type(exc).__name__}: {exc}"


def _mine(work: Work) -> tuple[Any, ...]:
    """The condition that this run still owns its fold's row (see `claim`)."""
    rows = AlchemyResult
    return (rows.id == work.row_id, rows.status == "running", rows.attempts == work.attempt)


def _end_fold(s: Session, work: Work, outcome: Any, error: str | None) -> bool:
    """Write a cancelled or failed fold; False when the fold succeeded and its result is still to write."""
    if outcome is None and error is None:
        cancel_row(s, AlchemyResult, work.row_id, work.attempt)
    elif error is not None:
        s.execute(
            update(AlchemyResult)
            .where(*_mine(work))
            .values(status="failed", error=error[:4000], progress=1.0, seconds=work.seconds, finished_at=utcnow())
        )
    else:
        return False
    return True


def _alchemy(ctx: WorkerContext, work: Work, fold: int, reporter: ProgressReporter) -> tuple[Any, Path]:
    from bnrank.engine.alchemy import alchemy_checkpoint

    config, data = _fold_task(ctx, work, fold)
    assert work.candidate is not None and isinstance(work.params, AlchemyParams)
    options = work.params.alchemy_config()
    out = ctx.blobs.tmp_dir / f"{secrets.token_hex(16)}.safetensors"
    result, _ = alchemy_checkpoint(
        work.candidate.path,  # type: ignore[arg-type]
        data,
        config,
        options,
        out=out,
        architecture=work.candidate.architecture,
        network_def=work.candidate.network_def,
        dataset_name=work.dataset_uri,
        on_progress=reporter.update,
    )
    return result, out


def save_fold(ctx: WorkerContext, work: Work, fold: int, outcome: Any, weights: Path | None, error: str | None) -> None:
    """Fine-tuned weights into the blob store (an artifact), the fold's result over its row, then finalise."""
    with ctx.db.session() as s:
        if not _end_fold(s, work, outcome, error):
            assert weights is not None
            blob_path, sha256, size = ctx.blobs.adopt(weights)
            artifact = Artifact(
                owner=work.owner,
                job_id=work.job_id,
                kind="weights",
                name=f"{work.name.replace(' ', '.')}.{outcome.mode}.safetensors",
                sha256=sha256,
                size=size,
                blob_path=blob_path,
            )
            s.add(artifact)
            s.flush()
            written = s.execute(
                update(AlchemyResult)
                .where(*_mine(work))
                .values(
                    status="ok",
                    **alchemy_values(outcome),
                    artifact_id=artifact.id,
                    progress=1.0,
                    seconds=work.seconds,
                    error=None,
                    finished_at=utcnow(),
                )
            ).rowcount
            if written == 1:
                s.execute(delete(GammaStat).where(GammaStat.job_id == work.job_id, GammaStat.fold == fold))
                s.add_all(gamma_of(ctx, work, alchemy_gamma(outcome), fold=fold))
            else:
                s.delete(artifact)
        s.flush()
        finalise(s, work.job_id)


def run_alchemy_fold(ctx: WorkerContext, job_id: str, fold: int) -> str:
    work = claim_fold(ctx, job_id, fold)
    if work is None:
        return "skipped"
    log.info("alchemy on %s (job %s)", work.name, job_id)
    weights: Path | None = None
    outcome = None
    ran, error = _run_fold(ctx, work, fold, lambda reporter: _alchemy(ctx, work, fold, reporter), "alchemy")
    if ran is not None:
        outcome, weights = ran
    try:
        save_fold(ctx, work, fold, outcome, weights, error)
    finally:
        if weights is not None:
            weights.unlink(missing_ok=True)
    status = "failed" if error else ("cancelled" if outcome is None else "ok")
    log.info("%s: %s", work.name, status if not error else f"{status}: {error}")
    return status


# --------------------------------------------------------------------------------------------- probe


def _probe(ctx: WorkerContext, work: Work, fold: int, reporter: ProgressReporter) -> Any:
    from bnrank.engine.probe import probe_checkpoint

    config, data = _fold_task(ctx, work, fold)
    assert work.candidate is not None and isinstance(work.params, ProbeParams)
    probe = work.params.probe_config()
    return probe_checkpoint(
        work.candidate.path,  # type: ignore[arg-type]
        data,
        config,
        probe.thresholds,
        draws=probe.draws,
        architecture=work.candidate.architecture,
        network_def=work.candidate.network_def,
        dataset_name=work.dataset_uri,
        on_progress=reporter.update,
    )


def save_probe(ctx: WorkerContext, work: Work, fold: int, outcome: Any, error: str | None) -> None:
    """The probe's table over the fold's row (``metrics``), the BN-only γ as a gamma_stats row, then finalise."""
    with ctx.db.session() as s:
        if not _end_fold(s, work, outcome, error):
            values, gamma = probe_values(outcome)
            written = s.execute(
                update(AlchemyResult)
                .where(*_mine(work))
                .values(
                    status="ok",
                    **values,
                    progress=1.0,
                    seconds=work.seconds,
                    error=None,
                    finished_at=utcnow(),
                )
            ).rowcount
            if written == 1:
                s.execute(delete(GammaStat).where(GammaStat.job_id == work.job_id, GammaStat.fold == fold))
                s.add_all(gamma_of(ctx, work, gamma, fold=fold))
        s.flush()
        finalise(s, work.job_id)


def run_probe_fold(ctx: WorkerContext, job_id: str, fold: int) -> str:
    work = claim_fold(ctx, job_id, fold)
    if work is None:
        return "skipped"
    log.info("γ-clipping probe on %s (job %s)", work.name, job_id)
    outcome, error = _run_fold(ctx, work, fold, lambda reporter: _probe(ctx, work, fold, reporter), "probe")
    save_probe(ctx, work, fold, outcome, error)
    status = "failed" if error else ("cancelled" if outcome is None else "ok")
    log.info("%s: %s", work.name, status if not error else f"{status}: {error}")
    return status
