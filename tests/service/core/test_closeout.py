"""One ranking close-out: a served ranking is closed by the engine's `close_ranking`, with the ranking's seed.

Rows finished as the worker writes them (scores, curves, the per-case scores behind each score) are closed by
the service's finalise; the engine's close-out over the same entries must give the same order, stability and
tie guidance, and only with the ranking's own seed (7 here): seed 0, what the service once used, gives other
bootstrap shares on these near-tied candidates.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bnrank.engine.configs.ranking import RankConfig, ranking_config
from bnrank.engine.entries import RankEntry
from bnrank.engine.ranking import close_ranking
from service.core.jobflow import finalise
from service.core.models import Job, RankingEntry
from service.core.params import RankingParams
from tests.service.conftest import Stack

SEED = 7


def _entries() -> list[dict[str, Any]]:
    """Three near-tied candidates over 12 validation cases, and a clearly worse fourth."""
    rng = np.random.default_rng(3)
    out = []
    for i, mean in enumerate((0.62, 0.61, 0.60, 0.30)):
        cases = [[round(float(v), 4) for v in np.clip(rng.normal(mean, 0.08, 12), 0, 1)]]
        score = float(np.mean(cases[0]))
        curve = [{"step": 10, "score": score - 0.05}, {"step": 20, "score": score}]
        out.append({"name": f"c{i}", "score": score, "case_scores": cases, "curve": curve})
    return out


def test_the_service_closes_a_ranking_with_the_engines_close_out_and_the_rankings_seed(stack: Stack) -> None:
    params = RankingParams(seed=SEED, control=False)
    with stack.db.session() as s:
        job = Job(owner="closeout", kind="ranking", params=params.model_dump(mode="json"), status="running")
        job.entries = [
            RankingEntry(
                slot=e["name"],
                position=i,
                name=e["name"],
                status="ok",
                score=e["score"],
                curve=e["curve"],
                steps=20,
                case_scores=e["case_scores"],
                progress=1.0,
            )
            for i, e in enumerate(_entries())
        ]
        s.add(job)
        s.flush()
        ids = [row.id for row in job.entries]
        assert finalise(s, job.id)
        s.commit()
        job_id = job.id
    with stack.db.session() as s:
        closed_job = s.get(Job, job_id)
        assert closed_job is not None and closed_job.status == "succeeded"
        result = closed_job.result

    def engine(seed: int) -> tuple[list[RankEntry], dict[str, Any]]:
        entries = [
            RankEntry(row_id, score=e["score"], curve=e["curve"], steps=20, case_scores=e["case_scores"])
            for row_id, e in zip(ids, _entries(), strict=True)
        ]
        return close_ranking(entries, ranking_config(seed=seed), RankConfig())

    ordered, local = engine(SEED)
    assert result["ranked"] == [e.checkpoint for e in ordered]
    assert result["stability"] == local["stability"]
    assert result["ties"] == local["ties"]
    assert result["entry_ties"] == {
        e.checkpoint: {"tie_group": e.tie_group, "p_best": e.p_best, "tied_with": e.tied_with} for e in ordered
    }
    assert len(local["ties"]["top_group"]) > 1  # near-tied: the bootstrap's draw shows in the shares
    _, seed_zero = engine(0)
    assert seed_zero["ties"]["p_top_is_best"] != local["ties"]["p_top_is_best"]
