"""Requests that used to freeze, bloat or crash the service now get a clear 4xx (issue 14, items 1, 2, 4).

No test here measures time: each shows *why* the answer is cheap (the error comes from a length check,
a limit, a refusal before any lookup) and that the API keeps answering others meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from service.api.schemas import MAX_CANDIDATES, RankingIn
from service.api.singleflight import single_flight
from service.core import cache as cache_module
from service.core import datasets as core_datasets
from service.core.blobs import BlobStore, sweep_partials
from service.core.cache import LiveCache
from service.core.models import Dataset, Job, RankingEntry
from tests.engine.test_limits import _lying_nifti, _zip_bomb
from tests.engine.volumes import write_nnunet_dataset
from tests.service.conftest import TINY_BUDGET, Stack, key_of, make_checkpoint, new_key, upload, wait_for
from worker.context import WorkerContext
from worker.progress import ProgressReporter

MiB = 1024**2


def _ranking(ids: list[str], **budget: Any) -> dict[str, Any]:
    return {"dataset_id": "ds_nope", "checkpoint_ids": ids, "budget": {**TINY_BUDGET, **budget}}


# ------------------------------------------------------------------------------- 1. bounded work


def test_forty_thousand_candidates_are_refused_by_length_while_healthz_answers(
    alice: httpx.Client, anonymous: httpx.Client
) -> None:
    ids = [f"ck_{i:032x}" for i in range(40_000)]
    started = threading.Event()
    healthy: list[int] = []

    def poll_health() -> None:
        started.wait()
        healthy.extend(anonymous.get("/healthz").status_code for _ in range(5))

    with ThreadPoolExecutor(2) as pool:
        health = pool.submit(poll_health)
        started.set()
        big = pool.submit(alice.post, "/v1/rankings", json=_ranking(ids)).result()
        health.result()
    assert big.status_code == 422, big.text
    detail = big.json()["detail"]
    # pydantic's max_length answer: the list was refused at item 65, not checked id by id for duplicates,
    # owners or existence (those messages would say "listed twice" or "not found").
    assert f"at most {MAX_CANDIDATES} items" in detail and "not 40000" in detail
    assert healthy == [200] * 5


def test_a_million_candidates_are_refused_unread(alice: httpx.Client, stack: Stack) -> None:
    ids = [f"ck_{i:032x}" for i in range(1_000_000)]
    response = alice.post("/v1/rankings", json=_ranking(ids))
    assert response.status_code == 413, response.text
    assert f"limit of {stack.settings.max_json_body_bytes} bytes" in response.json()["detail"]


def test_duplicate_check_is_one_pass() -> None:
    """64 distinct ids and one listed twice: the duplicate is named (Counter, not list.count per id)."""
    ids = [f"ck_{i}" for i in range(MAX_CANDIDATES - 1)] + ["ck_3"]
    with pytest.raises(ValueError, match="listed twice: ck_3"):
        RankingIn.model_validate(_ranking(ids))


def test_a_budget_no_worker_can_hold_is_refused(alice: httpx.Client, stack: Stack) -> None:
    response = alice.post("/v1/rankings", json=_ranking(["ck_x"], patch_size=1024, batch_size=256))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "GiB" in detail and f"{stack.settings.worker_memory_gib:.1f} GiB a worker has" in detail
    assert "use a smaller patch_size" in detail or "at most batch_size" in detail


def test_zip_bomb_upload_is_refused_413_and_leaves_nothing(alice: httpx.Client, tmp_path: Path, stack: Stack) -> None:
    bomb = _zip_bomb(tmp_path / "bomb.pt", 256 * MiB)
    assert bomb.stat().st_size < MiB
    response = upload(alice, bomb)
    assert response.status_code == 413, response.text
    assert "inflates" in response.json()["detail"] and str(tmp_path) not in response.json()["detail"]
    assert list((stack.settings.blobs / "tmp").glob("*.partial")) == []


def test_huge_network_def_is_refused_before_it_is_built(alice: httpx.Client, tmp_path: Path) -> None:
    weights = make_checkpoint(tmp_path / "w.safetensors", seed=int.from_bytes(os.urandom(3), "big"))
    huge = {"_target_": "UNet", "channels": [100_000, 200_000], "strides": [2], "norm": "batch"}
    response = upload(alice, weights, network_def=json.dumps(huge))
    assert response.status_code == 413, response.text  # too large is 413 whatever the format (nnU-Net alike)
    assert "parameters" in response.json()["detail"] and "limit" in response.json()["detail"]


# ------------------------------------------------------------------------------ 2. no 5xx from input


@pytest.mark.parametrize("offset", [2**63, 10**9 + 1, -1])
def test_offsets_out_of_range_are_422(alice: httpx.Client, offset: int) -> None:
    for path in ("/v1/jobs", "/v1/checkpoints", "/v1/datasets"):
        response = alice.get(path, params={"offset": offset})
        assert response.status_code == 422, (path, response.text)
        assert "offset" in response.json()["detail"]


def test_largest_offset_is_served(alice: httpx.Client) -> None:
    response = alice.get("/v1/jobs", params={"offset": 10**9})
    assert response.status_code == 200 and response.json()["items"] == []


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("~nosuchuser", "'~' is not expanded"),
        ("~/data", "'~' is not expanded"),
        ("http:foo", "only local paths"),
        ("mailto:someone@example.org", "only local paths"),
        ("gs://bucket/x", "only local paths"),
        ("s3://bucket/x", "is not one datasets may come from"),
        ("a" * 4000, "cannot be resolved"),
    ],
)
def test_uris_that_are_not_local_paths_are_422(alice: httpx.Client, uri: str, expected: str) -> None:
    response = alice.post("/v1/datasets", json={"name": "x", "uri": uri})
    assert response.status_code == 422, response.text
    assert expected in response.json()["detail"]


def test_nul_characters_are_422_not_500(alice: httpx.Client, dataset_dir: Path) -> None:
    assert alice.post("/v1/datasets", json={"name": "a\x00b", "uri": str(dataset_dir)}).status_code in (200, 422)
    assert alice.get("/v1/jobs/a%00b").status_code in (404, 422)
    assert alice.get("/v1/checkpoints", params={"architecture": "u\x00"}).status_code in (200, 422)


def test_nifti_header_bomb_at_registration_is_a_problem_not_a_read(alice: httpx.Client, stack: Stack) -> None:
    folder = write_nnunet_dataset(stack.data_root / "Dataset042_Bomb", n_cases=3, shape=(12, 12, 12), n_labels=1)
    _lying_nifti(folder / "imagesTr" / "case_000_0000.nii.gz", (1024, 1024, 1024))
    response = alice.post("/v1/datasets", json={"name": "bomb", "uri": folder.name})
    assert response.status_code == 201, response.text
    problems = response.json()["problems"]
    assert [p["case_id"] for p in problems] == ["case_000"] and "refused" in problems[0]["message"]


# ----------------------------------------------------------------------------- 4. leftovers and state


def test_messages_name_paths_relative_to_the_data_root(alice: httpx.Client, stack: Stack) -> None:
    single = write_nnunet_dataset(stack.data_root / "Dataset043_One", n_cases=1, shape=(12, 12, 12), n_labels=1)
    for uri in (str(single), "Dataset404_Missing", str(stack.outside)):
        response = alice.post("/v1/datasets", json={"name": "x", "uri": uri})
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert str(stack.data_root) not in detail.replace(uri, ""), detail
        assert str(stack.data_root.resolve()) not in detail.replace(uri, ""), detail
    one = alice.post("/v1/datasets", json={"name": "x", "uri": single.name}).json()["detail"]
    assert "dataset Dataset043_One has 1 usable case" in one


def test_registering_a_folder_twice_answers_the_first_dataset(alice: httpx.Client, stack: Stack) -> None:
    folder = write_nnunet_dataset(stack.data_root / "Dataset044_Twice", n_cases=2, shape=(12, 12, 12), n_labels=1)
    first = alice.post("/v1/datasets", json={"name": "twice", "uri": str(folder)})
    assert first.status_code == 201, first.text
    again = alice.post("/v1/datasets", json={"name": "twice again", "uri": f"file://{folder}"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    write_nnunet_dataset(folder, n_cases=3, shape=(12, 12, 12), n_labels=1)  # a case more: force sees it
    forced = alice.post("/v1/datasets", params={"force": "true"}, json={"name": "fresh", "uri": folder.name})
    assert forced.status_code == 200 and forced.json()["id"] == first.json()["id"], forced.text
    assert (forced.json()["name"], forced.json()["n_cases"]) == ("fresh", 3)
    assert alice.get(f"/v1/datasets/{first.json()['id']}").json() == forced.json()


def test_concurrent_registrations_of_one_folder_make_one_dataset(stack: Stack, api: str) -> None:
    """Eight requests racing past the lookup: one row (the database's unique (owner, uri)), all answer it."""
    folder = write_nnunet_dataset(stack.data_root / "Dataset046_Race", n_cases=2, shape=(12, 12, 12), n_labels=1)
    owner = "racer"
    key = new_key(stack, owner)
    with (
        ThreadPoolExecutor(8) as pool,
        httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client,
    ):
        answers = list(
            pool.map(lambda i: client.post("/v1/datasets", json={"name": f"r{i}", "uri": folder.name}), range(8))
        )
    assert all(a.status_code in (200, 201) for a in answers), [a.text for a in answers]
    assert [a.status_code for a in answers].count(201) == 1
    assert len({a.json()["id"] for a in answers}) == 1
    with stack.db.session() as session:
        rows = session.scalars(select(Dataset).where(Dataset.owner == owner)).all()
    assert [r.id for r in rows] == [answers[0].json()["id"]]


def test_a_registration_that_loses_the_race_answers_the_winner(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic race: the lookup saw nothing, then the insert meets the row committed meanwhile."""
    folder = write_nnunet_dataset(stack.data_root / "Dataset047_Lost", n_cases=2, shape=(12, 12, 12), n_labels=1)
    roots = stack.settings.data_roots
    with stack.db.session() as session:
        winner, created = core_datasets.register_dataset(session, "loser", "w", folder.name, None, "auto", roots)
    assert created
    monkeypatch.setattr(core_datasets, "registered", _blind_once(core_datasets.registered))
    with stack.db.session() as session:
        answer, created = core_datasets.register_dataset(session, "loser", "l", folder.name, None, "auto", roots)
    assert (answer.id, created) == (winner.id, False)


def _blind_once(lookup: Any) -> Any:
    """``registered`` that answers None on its first call: the view of a request that looked too early."""
    calls = []

    def blind(*args: Any) -> Any:
        calls.append(args)
        return None if len(calls) == 1 else lookup(*args)

    return blind


def test_another_owner_registering_the_same_folder_gets_their_own(
    alice: httpx.Client, bob: httpx.Client, stack: Stack
) -> None:
    folder = write_nnunet_dataset(stack.data_root / "Dataset045_Shared", n_cases=2, shape=(12, 12, 12), n_labels=1)
    mine = alice.post("/v1/datasets", json={"name": "a", "uri": folder.name})
    theirs = bob.post("/v1/datasets", json={"name": "b", "uri": folder.name})
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]


def test_partial_uploads_are_swept_by_age(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    old, fresh = store.tmp_dir / "old.partial", store.tmp_dir / "fresh.partial"
    other = store.tmp_dir / "adopting.pt"  # a worker's file on its way into the store: not an upload
    for path in (old, fresh, other):
        path.write_bytes(b"x")
    os.utime(old, (1_000, 1_000))
    os.utime(other, (1_000, 1_000))
    assert sweep_partials(store, older_than_s=3600) == 1
    assert sorted(p.name for p in store.tmp_dir.iterdir()) == ["adopting.pt", "fresh.partial"]


def test_an_api_starting_up_deletes_abandoned_partial_uploads(stack: Stack, serve_app: Any) -> None:
    tmp = stack.settings.blobs / "tmp"
    abandoned, live = tmp / "killed-mid-upload.partial", tmp / "in-progress.partial"
    abandoned.write_bytes(b"half a checkpoint")
    live.write_bytes(b"still arriving")
    os.utime(abandoned, (1_000, 1_000))
    try:
        with serve_app(stack.settings) as url:
            assert httpx.get(f"{url}/healthz").status_code == 200  # startup (and its sweep) is over
            assert not abandoned.exists() and live.exists()
    finally:
        abandoned.unlink(missing_ok=True)
        live.unlink(missing_ok=True)


def test_progress_never_goes_backwards(stack: Stack, dataset_id: str) -> None:
    with stack.db.session() as s:
        job = Job(owner="alice", kind="ranking", dataset_id=dataset_id, params={}, status="running", progress=0.6)
        entry = RankingEntry(slot="x", position=0, name="x", architecture="unet3d", status="running", attempts=2)
        entry.progress = 0.6
        job.entries = [entry]
        s.add(job)
        s.flush()
        job_id, entry_id = job.id, entry.id
    ctx = WorkerContext(stack.settings)
    try:
        work = SimpleNamespace(job_id=job_id, row_id=entry_id, attempt=2)
        reporter = ProgressReporter(ctx, RankingEntry, work)  # type: ignore[arg-type]
        reporter.update(1, 10, "a redelivered run starts again at step 1")
        reporter.flush()
        with stack.db.session() as s:
            assert s.scalar(select(RankingEntry.progress).where(RankingEntry.id == entry_id)) == pytest.approx(0.6)
            assert s.scalar(select(Job.progress).where(Job.id == job_id)) == pytest.approx(0.6)
        reporter.update(8, 10, "past where the first run was")
        reporter.flush()
        with stack.db.session() as s:
            assert s.scalar(select(RankingEntry.progress).where(RankingEntry.id == entry_id)) == pytest.approx(0.8)
            assert s.scalar(select(Job.progress).where(Job.id == job_id)) == pytest.approx(0.8)
    finally:
        ctx.db.dispose()
        with stack.db.session() as s:
            s.execute(RankingEntry.__table__.delete().where(RankingEntry.job_id == job_id))
            s.execute(Job.__table__.delete().where(Job.id == job_id))


# ------------------------------------------------------------------------------------ 6. a fast API


@pytest.fixture
def queued_ranking(stack: Stack, dataset_id: str) -> Iterator[str]:
    """A ranking job row of alice's, queued and never dispatched: what the live cache serves while it waits."""
    with stack.db.session() as s:
        job = Job(owner="alice", kind="ranking", dataset_id=dataset_id, params={}, message="queued")
        s.add(job)
        s.flush()
        job_id = job.id
    yield job_id
    with stack.db.session() as s:
        s.execute(Job.__table__.delete().where(Job.id == job_id))


def test_polled_unfinished_ranking_is_read_once_per_interval(
    stack: Stack, serve_app: Any, alice: httpx.Client, queued_ranking: str
) -> None:
    job_id = queued_ranking
    settings = stack.settings.model_copy(update={"live_cache_s": 3600.0})
    headers = {"Authorization": f"Bearer {key_of(alice)}"}
    with serve_app(settings) as url:
        first = httpx.get(f"{url}/v1/rankings/{job_id}", headers=headers)
        assert first.status_code == 200 and first.json()["job"]["message"] == "queued"
        with stack.db.session() as s:
            s.execute(update(Job).where(Job.id == job_id).values(message="changed behind the API's back"))
        assert httpx.get(f"{url}/v1/rankings/{job_id}", headers=headers).content == first.content
        bob = {"Authorization": f"Bearer {new_key(stack, 'bob')}"}
        assert httpx.get(f"{url}/v1/rankings/{job_id}", headers=bob).status_code == 404  # owner checked
        assert httpx.post(f"{url}/v1/jobs/{job_id}/cancel", headers=headers).status_code == 202
        after = httpx.get(f"{url}/v1/rankings/{job_id}", headers=headers).json()
        assert after["job"]["cancel_requested"] is True  # a cancel through this process drops the entry


def test_live_cache_off_and_expiry() -> None:
    assert LiveCache(0).get("job", "me") is None
    cache = LiveCache(0.0001)
    cache.put("job", "me", b"body")
    time.sleep(0.01)  # a floor, not a ceiling: a slow machine only makes the entry older
    assert cache.get("job", "me") is None


def test_live_cache_serves_a_stale_body_for_one_more_interval() -> None:
    clock = SimpleNamespace(now=100.0)
    cache = LiveCache(0.25)
    real = cache_module.time
    cache_module.time = SimpleNamespace(monotonic=lambda: clock.now)  # type: ignore[assignment]
    try:
        cache.put("job", "me", b"body")
        assert cache.lookup("job", "me") == (b"body", False) and cache.get("job", "me") == b"body"
        assert cache.lookup("job", "someone else") is None
        clock.now += 0.3
        assert cache.lookup("job", "me") == (b"body", True) and cache.get("job", "me") is None
        clock.now += 0.3  # past 2 × ttl: not served at all
        assert cache.lookup("job", "me") is None
    finally:
        cache_module.time = real  # type: ignore[assignment]


def test_an_expired_live_body_is_answered_at_once_and_refreshed_behind(
    stack: Stack, serve_app: Any, alice: httpx.Client, queued_ranking: str
) -> None:
    """Past the interval the cached body is answered (no wait for the database) and a fresh one follows."""
    job_id = queued_ranking
    settings = stack.settings.model_copy(update={"live_cache_s": 1.5})
    headers = {"Authorization": f"Bearer {key_of(alice)}"}
    with serve_app(settings) as url:
        first = httpx.get(f"{url}/v1/rankings/{job_id}", headers=headers)
        assert first.status_code == 200
        with stack.db.session() as s:
            s.execute(update(Job).where(Job.id == job_id).values(message="progress written meanwhile"))
        time.sleep(1.7)  # stale: between 1.5 and 3 s old
        assert httpx.get(f"{url}/v1/rankings/{job_id}", headers=headers).content == first.content
        wait_for(
            lambda: (
                httpx.get(f"{url}/v1/rankings/{job_id}", headers=headers).json()["job"]["message"]
                == "progress written meanwhile"
            ),
            timeout_s=5,
            what="the refreshed body",
        )


def test_concurrent_misses_share_one_read() -> None:
    calls = 0

    async def scenario() -> list[bytes]:
        release = asyncio.Event()

        async def load() -> bytes:
            nonlocal calls
            calls += 1
            await release.wait()
            return b"body"

        pending: dict[str, Any] = {}
        waiters = [asyncio.create_task(single_flight(pending, "alice\0job", load)) for _ in range(64)]
        await asyncio.sleep(0)  # every waiter has asked before the first read finishes
        release.set()
        results = await asyncio.gather(*waiters)
        assert pending == {}
        return results

    assert asyncio.run(scenario()) == [b"body"] * 64 and calls == 1


def test_a_failed_shared_read_fails_every_waiter_and_is_not_kept() -> None:
    async def scenario() -> list[Any]:
        async def load() -> bytes:
            await asyncio.sleep(0)
            raise LookupError("not found")

        pending: dict[str, Any] = {}
        tasks = [asyncio.create_task(single_flight(pending, "k", load)) for _ in range(3)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert pending == {}
        return results

    assert all(isinstance(r, LookupError) for r in asyncio.run(scenario()))
