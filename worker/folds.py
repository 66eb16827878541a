"""The units of work of jobs run once per fold: an alchemy fold and a probe fold, the engine on the fold's data."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bnrank.engine.configs.training import TrainConfig
from bnrank.engine.errors import BNRankError
from bnrank.engine.training.patches import TaskData
from service.core.kinds import alchemy, probe
from service.core.models import Artifact, Checkpoint, Job
from service.core.params import AlchemyParams, FoldParams, ProbeParams
from service.core.results import alchemy_gamma, alchemy_values, probe_values
from worker.claims import claim, job_params, read_work
from worker.context import WorkerContext
from worker.progress import ProgressReporter
from worker.unit import Outcome, Unit, run_unit
from worker.work import Work

log = logging.getLogger(__name__)


class FoldUnit(Unit):
    """One fold of a job on one checkpoint: claimed by (job, fold), written over the kind's fold row."""

    def claim(self, ctx: WorkerContext, job_id: str, key: Any) -> Work | None:
        rows = self.kind.rows
        with ctx.db.session() as s:
            job = s.get(Job, job_id)
            row = s.scalars(select(rows).where(rows.job_id == job_id, rows.fold == key)).first()
            if job is None or row is None:
                log.warning("task for unknown fold %s of job %s: skipped", key, job_id)
                return None
            attempt = claim(s, rows, job, row, ctx.settings.lease_s)
            if not attempt:
                return None
            params = job_params(job)
            ckpt = s.get(Checkpoint, params.checkpoint_id) if isinstance(params, FoldParams) else None
            name = f"{ckpt.name if ckpt else 'checkpoint'} fold {key}"
            work = read_work(ctx, s, job, row.id, name, ckpt.id if ckpt else None, attempt)
            work.fold = key
            return work

    def fold_task(self, ctx: WorkerContext, work: Work) -> tuple[TrainConfig, TaskData]:
        """The training config and the data of one fold (all of the dataset when the job has one fold)."""
        from bnrank.engine.folds import fold_tasks

        if work.problem:
            raise BNRankError(work.problem)
        assert work.candidate is not None and work.dataset_uri is not None and isinstance(work.params, FoldParams)
        config = work.params.train_config(device=ctx.device)
        data = ctx.task_data(work.dataset_uri, work.skip_cases, config.seed)
        folds = work.params.folds
        if folds > 1:
            data = fold_tasks(data, folds, config.seed)[work.fold or 0]
        return config, data

    def gamma_link(self, work: Work) -> dict[str, Any]:
        return {"fold": work.fold}


class AlchemyUnit(FoldUnit):
    kind = alchemy.KIND
    verb = "alchemy on"

    def run(self, ctx: WorkerContext, work: Work, reporter: ProgressReporter) -> Outcome:
        from bnrank.engine.alchemy import alchemy_checkpoint

        config, data = self.fold_task(ctx, work)
        assert work.candidate is not None and isinstance(work.params, AlchemyParams)
        out = ctx.blobs.tmp_dir / f"{secrets.token_hex(16)}.safetensors"
        try:
            result, _ = alchemy_checkpoint(
                work.candidate.path,  # type: ignore[arg-type]
                data,
                config,
                work.params.alchemy_config(),
                out=out,
                architecture=work.candidate.architecture,
                network_def=work.candidate.network_def,
                head=work.candidate.head,
                dataset_name=work.dataset_uri,
                on_progress=reporter.update,
            )
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        return Outcome(result, weights=out)

    def attach(self, ctx: WorkerContext, s: Session, work: Work, outcome: Outcome) -> tuple[dict[str, Any], Any]:
        """The fine-tuned weights into the blob store, as an artifact of the job."""
        blob_path, sha256, size = ctx.blobs.adopt(outcome.weights)
        artifact = Artifact(
            owner=work.owner,
            job_id=work.job_id,
            kind="weights",
            name=f"{work.name.replace(' ', '.')}.{outcome.result.mode}.safetensors",
            sha256=sha256,
            size=size,
            blob_path=blob_path,
        )
        s.add(artifact)
        s.flush()
        return {"artifact_id": artifact.id}, artifact

    def values(self, work: Work, result: Any) -> dict[str, Any]:
        return {"status": "ok", **alchemy_values(result), "progress": 1.0, "seconds": work.seconds, "error": None}

    def gamma(self, result: Any) -> dict[str, Any]:
        return alchemy_gamma(result)


class ProbeUnit(FoldUnit):
    kind = probe.KIND
    verb = "γ-clipping probe on"

    def run(self, ctx: WorkerContext, work: Work, reporter: ProgressReporter) -> Outcome:
        from bnrank.engine.probe import probe_checkpoint

        config, data = self.fold_task(ctx, work)
        assert work.candidate is not None and isinstance(work.params, ProbeParams)
        options = work.params.probe_config()
        return Outcome(
            probe_checkpoint(
                work.candidate.path,  # type: ignore[arg-type]
                data,
                config,
                options.thresholds,
                draws=options.draws,
                architecture=work.candidate.architecture,
                network_def=work.candidate.network_def,
                head=work.candidate.head,
                dataset_name=work.dataset_uri,
                on_progress=reporter.update,
            )
        )

    def values(self, work: Work, result: Any) -> dict[str, Any]:
        values, _ = probe_values(result)
        return {"status": "ok", **values, "progress": 1.0, "seconds": work.seconds, "error": None}

    def gamma(self, result: Any) -> dict[str, Any]:
        return probe_values(result)[1]


ALCHEMY_UNIT = AlchemyUnit()
PROBE_UNIT = ProbeUnit()


def run_alchemy_fold(ctx: WorkerContext, job_id: str, fold: int) -> str:
    return run_unit(ctx, ALCHEMY_UNIT, job_id, fold)


def run_probe_fold(ctx: WorkerContext, job_id: str, fold: int) -> str:
    return run_unit(ctx, PROBE_UNIT, job_id, fold)
