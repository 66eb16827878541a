"""Successive halving in the service: one task per candidate and round, survivors chosen by the engine's rule.

The first test runs a 4-candidate, 2-round ranking through the real worker and checks it against the engine's
own ``rank_candidates`` on the same data and seed. The second drives the rounds in-process on a queue no worker
consumes, to show the next round is dispatched when a round ends and that a worker killed mid-round is
recovered by the sweep like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from bnrank.engine.configs.ranking import RankConfig
from bnrank.engine.ranking import Candidate, rank_candidates
from service.core.models import Job, RankingEntry, utcnow
from service.core.params import RankingParams
from tests.service.conftest import TINY_BUDGET, Stack, make_checkpoint, upload, wait_job
from tests.worker.test_recovery import _rows, _sweep, idle  # noqa: F401  (idle: the fixture)
from worker.context import WorkerContext
from worker.ranking import run_rank_entry

HALVING = {"halving_rounds": 2, "halving_eta": 2}  # TINY_BUDGET's 4 steps: round 1 ends at 2, round 2 at 4
SEED = 7  # not 0: the close-out's tie bootstrap must draw with the ranking's seed, not a default one


@pytest.fixture(scope="module")
def four(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("halving")
    return {f"h{i}": make_checkpoint(folder / f"h{i}.safetensors", seed=40 + i) for i in range(4)}


def _submit(client: httpx.Client, four: dict[str, Path], dataset_dir: Path) -> str:
    ids = {name: upload(client, path, modality="MR").json()["id"] for name, path in four.items()}
    dataset = client.post("/v1/datasets", json={"name": "tiny", "uri": str(dataset_dir)}).json()["id"]
    body = {
        "dataset_id": dataset,
        "checkpoint_ids": list(ids.values()),
        "budget": TINY_BUDGET,
        "seed": SEED,
        "control": False,
        "ranking": HALVING,
    }
    response = client.post("/v1/rankings", json=body)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_a_halving_ranking_keeps_half_for_round_two_as_the_engine_does(
    stack: Stack, worker: Any, alice: httpx.Client, four: dict[str, Path], dataset_dir: Path
) -> None:
    job_id = _submit(alice, four, dataset_dir)
    job = wait_job(alice, job_id, timeout_s=240)
    assert job["status"] == "succeeded", job
    ranking = alice.get(f"/v1/rankings/{job_id}").json()
    entries = ranking["entries"]
    rounds = {e["name"]: e["halving_round"] for e in entries}
    assert sorted(rounds.values()) == [1, 1, 2, 2]
    assert [e["halving_round"] for e in entries] == [2, 2, 1, 1]  # later rounds rank first
    assert [e["rank"] for e in entries] == [1, 2, 3, 4]
    for e in entries:
        assert e["steps"] == (4 if e["halving_round"] == 2 else 2) and e["progress"] == 1.0
        assert e["gamma_change"] is not None and e["gamma_change"] > 0
    halving = ranking["halving"]
    assert [r["steps"] for r in halving["rounds"]] == [2, 4]
    assert sorted(halving["rounds"][1]["candidates"]) == sorted(n for n, r in rounds.items() if r == 2)
    assert halving["candidate_steps"] == 2 * 2 + 2 * (2 + 4)  # a survivor ran 2 steps, then 4 again from step 0
    assert halving["candidate_steps_without_halving"] == 4 * 4

    # The engine, on the data the worker prepared, with the job's own configs: same survivors, same scores.
    params = RankingParams.model_validate(job["params"])
    assert params.rank_config() == RankConfig(**HALVING)
    uri = alice.get(f"/v1/datasets/{job['dataset_id']}").json()["uri"]
    ctx = WorkerContext(stack.settings)
    try:
        config = params.train_config()
        data = ctx.task_data(uri, set(), config.seed)
    finally:
        ctx.db.dispose()
    cands = [Candidate(name, path) for name, path in four.items()]
    local = rank_candidates(cands, data, config, control=False, rank=params.rank_config())
    assert {e.checkpoint: e.halving_round for e in local.entries} == rounds
    served = {e["name"]: e["score"] for e in entries}
    for e in local.entries:
        assert served[e.checkpoint] == pytest.approx(e.score, abs=1e-4), e.checkpoint
    assert [e["name"] for e in entries] == [e.checkpoint for e in local.entries]

    # One close-out: the same entries give the same ties and halving rounds as `bnrank rank`'s (the engine's
    # close_ranking, whose tie bootstrap draws with the ranking's seed over the same per-case scores).
    assert config.seed == SEED
    ties = ranking["ties"]
    assert ties["groups"] == local.ties["groups"] and ties["top_group"] == local.ties["top_group"]
    assert ties["p_top_is_best"] == pytest.approx(local.ties["p_top_is_best"], abs=1e-3)
    by_name = {e.checkpoint: e for e in local.entries}
    for e in entries:
        mine = by_name[e["name"]]
        assert (e["tie_group"], sorted(e["tied_with"])) == (mine.tie_group, sorted(mine.tied_with)), e["name"]
        assert e["p_best"] == pytest.approx(mine.p_best, abs=1e-3), e["name"]
    assert local.halving is not None
    assert halving["rounds"] == local.halving["rounds"] and halving["eta"] == local.halving["eta"]
    assert halving["candidate_steps_without_halving"] == local.halving["candidate_steps_without_halving"]


def test_rounds_are_dispatched_when_a_round_ends_and_a_killed_worker_is_recovered(
    stack: Stack,
    idle: dict[str, Any],  # noqa: F811
    four: dict[str, Path],
    dataset_dir: Path,
) -> None:
    job_id = _submit(idle["client"], four, dataset_dir)
    first = _rows(idle, job_id)
    assert all(r.halving_round is None and r.status == "queued" for r in first)
    ctx = WorkerContext(idle["settings"])
    try:
        for row in first:
            assert run_rank_entry(ctx, job_id, row.id) == "ok"
        rows = _rows(idle, job_id)
        survivors = [r for r in rows if r.halving_round == 2]
        stopped = [r for r in rows if r.halving_round == 1]
        assert len(survivors) == 2 and len(stopped) == 2
        assert all(r.status == "queued" and r.progress == 0.5 for r in survivors)  # 2 of 4 steps
        assert all(r.status == "ok" and r.progress == 1.0 and r.steps == 2 for r in stopped)
        assert min(r.score for r in survivors) >= max(r.score for r in stopped)
        # the next round's messages were sent when the round ended (after the commit)
        assert {r.task_id for r in survivors} <= idle["probe"].pending_task_ids()
        with idle["db"].sessions() as s:
            job = s.get(Job, job_id)
            assert job is not None and job.status == "running" and "halving round 2 of 2" in job.message

        # A worker took the first survivor and was killed mid-round: its heartbeat stops, the sweep re-sends it.
        dead = survivors[0].id
        stale = utcnow().replace(year=2000)
        with idle["db"].session() as s:
            s.execute(
                update(RankingEntry)
                .where(RankingEntry.id == dead)
                .values(status="running", attempts=RankingEntry.attempts + 1, started_at=stale, heartbeat_at=stale)
            )
        assert _sweep(idle).orphaned == [dead]
        for row in survivors:
            assert run_rank_entry(ctx, job_id, row.id) == "ok"
    finally:
        ctx.db.dispose()
    with idle["db"].sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "succeeded"
        final = dict(
            s.execute(select(RankingEntry.id, RankingEntry.halving_round).where(RankingEntry.job_id == job_id)).all()
        )
    assert sorted(final.values()) == [1, 1, 2, 2] and final[dead] == 2
    ranking = idle["client"].get(f"/v1/rankings/{job_id}").json()
    assert [e["halving_round"] for e in ranking["entries"]] == [2, 2, 1, 1]
    assert [e["steps"] for e in ranking["entries"]] == [4, 4, 2, 2]
