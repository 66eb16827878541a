"""POST /v1/rankings writes the job and its entries in one INSERT (PostgreSQL) and sends their tasks in one
broker round trip (Redis), and a submission the broker refuses leaves a failed job saying why."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select

from service.api.app import create_app
from service.core.models import Job, RankingEntry
from tests.service.conftest import TINY_BUDGET, Stack, ThreadedServer


@pytest.fixture
def statements(stack: Stack) -> Iterator[tuple[str, list[str]]]:
    """An API of the stack's settings on a queue no worker reads, and the SQL its requests execute."""
    settings = stack.settings.model_copy(update={"queue": f"{stack.settings.queue}_unread"})
    app = create_app(settings)
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(app.state.db.engine, "before_cursor_execute", record)
    with ThreadedServer(app) as server:
        yield server.url, seen


def test_a_ranking_and_its_entries_are_one_insert(
    stack: Stack, statements: tuple[str, list[str]], alice: httpx.Client, candidates: dict[str, str], dataset_id: str
) -> None:
    url, seen = statements
    body = {"dataset_id": dataset_id, "checkpoint_ids": [candidates["good_a"], candidates["good_b"]]}
    with httpx.Client(base_url=url, headers=alice.headers, timeout=60) as client:
        client.get("/v1/checkpoints")  # the key is now cached: the POST below does no key lookup
        seen.clear()
        response = client.post("/v1/rankings", json={**body, "budget": TINY_BUDGET})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["created_at"] and job["message"] == "queued"
    inserts = [s for s in seen if s.lstrip().upper().startswith(("INSERT", "WITH"))]
    expected = 1 if stack.kind == "postgres+redis" else 2
    assert len(inserts) == expected, inserts
    with stack.db.sessions() as s:
        stored = s.get(Job, job["id"])
        assert stored is not None and stored.task_ids and stored.status == "queued"
        entries = s.scalars(select(RankingEntry).where(RankingEntry.job_id == job["id"])).all()
    assert len(entries) == 3  # two candidates and their control
    assert {e.task_id for e in entries} == set(stored.task_ids)
    # No worker reads that queue: cancelled, so the job does not hold its checkpoints for the other tests.
    assert alice.post(f"/v1/jobs/{job['id']}/cancel").status_code in (200, 202)
    assert alice.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"


def test_a_rankings_tasks_are_one_broker_round_trip(
    stack: Stack,
    statements: tuple[str, list[str]],
    alice: httpx.Client,
    candidates: dict[str, str],
    dataset_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every command the API sends Redis over kombu's (sync) connections is counted: the job's three task
    messages (two candidates and their control) must go in one write, a pipeline of three LPUSHes."""
    if stack.kind != "postgres+redis":
        pytest.skip("the filesystem broker writes a file per message: there is no round trip to count")
    import redis.connection

    writes: list[bytes] = []
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        parts = command if isinstance(command, list | tuple) else [command]
        writes.append(b"".join(bytes(p) for p in parts))
        send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    url, _ = statements
    queue = f"{stack.settings.queue}_unread".encode()  # the statements fixture's queue: no worker takes from it
    body = {"dataset_id": dataset_id, "checkpoint_ids": [candidates["good_a"], candidates["good_b"]]}
    with httpx.Client(base_url=url, headers=alice.headers, timeout=60) as client:
        client.get("/v1/checkpoints")
        writes.clear()
        response = client.post("/v1/rankings", json={**body, "budget": TINY_BUDGET})
    assert response.status_code == 202, response.text
    publishes = [w for w in writes if b"LPUSH" in w and queue in w]
    assert len(publishes) == 1, publishes
    assert publishes[0].count(b"LPUSH") == 3
    assert alice.post(f"/v1/jobs/{response.json()['id']}/cancel").status_code in (200, 202)


def test_a_submission_the_broker_refuses_fails_its_job_with_503(
    stack: Stack, serve_app: Any, alice: httpx.Client, candidates: dict[str, str], dataset_id: str
) -> None:
    if stack.kind != "postgres+redis":
        pytest.skip("the filesystem broker has no server to be down")
    down = stack.settings.model_copy(update={"broker_url": "redis://127.0.0.1:9/0", "rate_limit_store": "process"})
    body = {"dataset_id": dataset_id, "checkpoint_ids": [candidates["good_a"]], "budget": TINY_BUDGET}
    with serve_app(down) as url, httpx.Client(base_url=url, headers=alice.headers, timeout=60) as client:
        response = client.post("/v1/rankings", json=body)
    assert response.status_code == 503 and "broker is unreachable" in response.json()["detail"]
    with stack.db.sessions() as s:
        failed = s.scalars(
            select(Job).where(Job.owner == "alice", Job.error.like("could not be queued%")).order_by(Job.created_at)
        ).all()
    assert failed and failed[-1].status == "failed" and failed[-1].finished_at is not None
