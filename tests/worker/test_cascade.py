"""The cascade strategy in the service: each stage's rounds are tasks of the real worker, and the served answer is
the engine's (`rank_cascade` on the same data and seed): same gains, racers, race scores, cuts and verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from bnrank.engine.cascade import rank_cascade
from bnrank.engine.ranking import Candidate
from service.core.params import RankingParams
from tests.service.conftest import TINY_BUDGET, Stack, make_checkpoint, upload, wait_job
from tests.service.ui.conftest import alice_ui, ui_keys  # noqa: F401  (the dashboard's signed-in client)
from worker.context import WorkerContext

CASCADE = {
    "strategy": "cascade",
    "control_seeds": 2,
    "race_leaders": 2,
    "race_steps": 4,
    "race_rounds": 2,
    "race_seeds": 2,
    "budget_cap": 1.0,
    "tie_resamples": 200,
}
SEED = 5


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cascade")
    return {f"k{i}": make_checkpoint(folder / f"k{i}.safetensors", seed=60 + i) for i in range(3)}


@pytest.fixture(scope="module")
def cascaded(worker: Any, alice: httpx.Client, three: dict[str, Path], dataset_dir: Path) -> dict[str, Any]:
    """A cascade ranking the real worker ran: its job, its served ranking and its dataset id."""
    ids = {name: upload(alice, path, modality="MR").json()["id"] for name, path in three.items()}
    dataset = alice.post("/v1/datasets", json={"name": "tiny", "uri": str(dataset_dir)}).json()["id"]
    body = {"dataset_id": dataset, "checkpoint_ids": list(ids.values()), "budget": TINY_BUDGET, "seed": SEED}
    response = alice.post("/v1/rankings", json={**body, "ranking": CASCADE})
    assert response.status_code == 202, response.text
    refused = alice.post("/v1/rankings", json={**body, "control": False, "ranking": CASCADE})
    assert refused.status_code == 422 and "control" in refused.text

    job = wait_job(alice, response.json()["id"], timeout_s=600)
    assert job["status"] == "succeeded", job
    return {"job": job, "ranking": alice.get(f"/v1/rankings/{job['id']}").json(), "dataset": dataset}


def test_a_cascade_ranking_runs_its_stages_as_tasks_and_answers_as_the_engine(
    stack: Stack, alice: httpx.Client, three: dict[str, Path], cascaded: dict[str, Any]
) -> None:
    job, ranking, dataset = cascaded["job"], cascaded["ranking"], cascaded["dataset"]
    cascade = ranking["cascade"]
    first, race = cascade["stages"]
    rows = ranking["entries"]
    controls = [e for e in rows if e["is_control"]]
    assert sorted(e["seed"] for e in controls) == [SEED, SEED + 1]  # one architecture, two control seeds
    racers = [e for e in rows if e["stage"] == "race"]
    assert racers and all(e["rank"] is None for e in racers)
    assert {e["halving_round"] for e in racers} <= {1, 2}
    assert next(e["name"] for e in rows if e["rank"]) == cascade["verdict"]["leader"]
    assert ranking["ties"]["top_group"] == cascade["verdict"]["tied_group"]

    # The engine on the data the worker prepared, with the job's own configs: the same answer.
    params = RankingParams.model_validate(job["params"])
    ctx = WorkerContext(stack.settings)
    try:
        config = params.train_config()
        data = ctx.task_data(alice.get(f"/v1/datasets/{dataset}").json()["uri"], set(), config.seed)
    finally:
        ctx.db.dispose()
    local = rank_cascade([Candidate(n, p) for n, p in three.items()], data, config, params.rank_config()).cascade
    assert local is not None
    mine = local["stages"]
    for served, own in zip(first["rows"], mine[0]["rows"], strict=True):
        assert served["name"] == own["name"] and served["gain"] == pytest.approx(own["gain"], abs=1e-4)
        assert served["inside_noise_floor"] == own["inside_noise_floor"]
    assert race["leaders"] == mine[1]["leaders"]
    for served, own in zip(race["rounds"], mine[1]["rounds"], strict=True):
        assert [x["name"] for x in served.get("racers", [])] == [x["name"] for x in own.get("racers", [])]
        for a, b in zip(served.get("racers", []), own.get("racers", []), strict=True):
            assert a["seed_scores"] == pytest.approx(b["seed_scores"], abs=1e-3)
        assert [c["name"] for c in served.get("cut", [])] == [c["name"] for c in own.get("cut", [])]
    # the same rounds ran; the cap is held in each one's own measured seconds against its controls' calibration
    assert cascade["cost"]["spent_steps"] == local["cost"]["spent_steps"]
    for cost in (cascade["cost"], local["cost"]):
        assert cost["spent_seconds"] > 0 and cost["reference_seconds"] > 0 and len(cost["step_seconds"]) == 1
    served_controls = [e for e in rows if e["is_control"]]
    assert sum(e["seconds"] for e in rows if e["stage"] is None) <= cascade["cost"]["spent_seconds"] + 1e-3
    assert len(served_controls) == 2
    if len([r for r in race["rounds"] if "racers" in r]) > 1:
        assert cascade["cost"]["retraining_seconds"] > 0 == local["cost"]["retraining_seconds"]
    v, w = cascade["verdict"], local["verdict"]
    assert (v["leader"], v["tied_group"], v["separated"], v["stop"]) == (
        w["leader"],
        w["tied_group"],
        w["separated"],
        w["stop"],
    )



def test_the_dashboard_shows_the_stages_who_was_cut_and_why(
    alice_ui: httpx.Client,  # noqa: F811
    cascaded: dict[str, Any],
) -> None:
    cascade = cascaded["ranking"]["cascade"]
    page = alice_ui.get(f"/ui/rankings/{cascaded['job']['id']}")
    assert page.status_code == 200
    html = page.text
    assert 'id="cascade"' in html and "noise floor of" in html and "Stage 2: fine-tuning race" in html
    assert html.count('<tr><td>') >= len(cascade["stages"][0]["rows"])
    assert "Verdict:" in html and cascade["stop"] in html
    for r in cascade["stages"][1]["rounds"]:
        assert f"round {r['round']} ({r['steps']} steps)" in html
        for cut in r.get("cut", []):
            assert cut["why"] in html
    assert "Fine-tune them all" not in html  # the norm-only guidance is not shown beside the cascade's verdict


def test_bnrank_remote_prints_the_served_cascade(cascaded: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    from bnrank.cli.remote import print_ranking

    print_ranking(cascaded["ranking"])
    shown = capsys.readouterr().out
    assert "noise floor:" in shown and "race:" in shown
    assert f"verdict: {cascaded['ranking']['cascade']['verdict']['guidance']}" in shown
    assert "fine-tune them all" not in shown


def test_a_checkpoints_results_hold_its_norm_only_row_not_its_race_runs(
    alice: httpx.Client, cascaded: dict[str, Any]
) -> None:
    rows = cascaded["ranking"]["entries"]
    racer = next(e for e in rows if e["stage"] == "race")
    results = alice.get(f"/v1/checkpoints/{racer['checkpoint_id']}/results").json()["items"]
    mine = [r for r in results if r["job_id"] == cascaded["job"]["id"]]
    norm_only = next(e for e in rows if e["checkpoint_id"] == racer["checkpoint_id"] and e["stage"] is None)
    # the candidate's norm-only row only; its race rows (one per seed and round) are fine-tuning runs, not results
    assert [r["entry_id"] for r in mine] == [norm_only["id"]]
