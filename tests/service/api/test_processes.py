"""Two API processes behind one port (`bnrank serve --processes 2`): what one process changes, the other honours.

Every request below opens a new connection, so the kernel hands them to either process. Checked: both
processes answer; the submission limit is one limit across them (Redis); a cached finished ranking is
not served stale by the other process after a checkpoint of it was deleted; a scrape adds up the request
counts of both (prometheus_client's multiprocess files); the dashboard's session secret is the same.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from service.core.launcher import ServeProcess, free_port
from tests.service.conftest import TINY_BUDGET, Stack, make_checkpoint, new_key, wait_job
from tests.service.ui.conftest import sign_in


@pytest.fixture
def two_processes(stack: Stack, tmp_path: Path) -> Iterator[ServeProcess]:
    if stack.kind != "postgres+redis":
        pytest.skip("several API processes share their limits and caches through Redis")
    settings = stack.settings.model_copy(
        update={"api_processes": 2, "api_port": free_port(), "submissions_per_minute": 3, "live_cache_s": 0.25}
    )
    serve = ServeProcess(settings, log_path=tmp_path / "serve.log", extra_args=["--no-worker"])
    try:
        serve.wait_ready(timeout_s=180)
        yield serve
    finally:
        serve.stop(grace_s=20)


def _fresh(serve: ServeProcess, method: str, path: str, key: str, **kwargs: object) -> httpx.Response:
    """One request on a connection of its own."""
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.request(method, serve.url + path, headers=headers, timeout=60, **kwargs)  # type: ignore[arg-type]


def _counted(serve: ServeProcess, route: str) -> float:
    text = httpx.get(serve.url + "/metrics", timeout=30).text
    pattern = rf'bnrank_http_requests_total{{method="GET",route="{re.escape(route)}",status="200"}} ([0-9.e+]+)'
    return sum(float(m) for m in re.findall(pattern, text))


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def test_two_api_processes_share_limits_caches_metrics_and_sessions(
    stack: Stack, worker: object, two_processes: ServeProcess, dataset_id: str, tmp_path: Path
) -> None:
    serve = two_processes
    alice = new_key(stack, "alice")
    assert len(_children(serve.process.pid)) >= 2  # uvicorn's supervisor and its two processes

    # Metrics: requests spread over both processes, all of them counted by one scrape. Which process accepts a
    # connection is the kernel's choice (a fast machine can give 20 sequential ones to one process), so requests go
    # in concurrent bursts until both have served some.
    before = _counted(serve, "/v1/checkpoints")
    metrics_dir = stack.settings.home / f"metrics-{serve.process.pid}"
    sent, writers = 0, set()
    with ThreadPoolExecutor(8) as pool:
        while len(writers) < 2 and sent < 400:
            burst = list(pool.map(lambda _: _fresh(serve, "GET", "/v1/checkpoints", alice).status_code, range(8)))
            assert burst == [200] * 8
            sent += 8
            writers = {p.stem.rsplit("_", 1)[-1] for p in metrics_dir.glob("*.db")}
    assert len(writers) >= 2, (writers, sent)  # both processes served some of them
    # A request is counted once its response has gone out (the middleware's finally), so the client can read the
    # last answer a moment before its process counts it: scrape until every request is counted, never more.
    counted = _counted(serve, "/v1/checkpoints") - before
    for _ in range(600):
        if counted >= sent:
            break
        time.sleep(0.1)
        counted = _counted(serve, "/v1/checkpoints") - before
    assert counted == sent

    # One submission limit across both processes (3 a minute): the fourth is refused, wherever it lands.
    carol = new_key(stack, "carol")
    body = {"dataset_id": "ds_does_not_exist", "checkpoint_ids": ["ck_x"], "budget": TINY_BUDGET}
    answers = [_fresh(serve, "POST", "/v1/rankings", carol, json=body).status_code for _ in range(4)]
    assert answers == [404, 404, 404, 429]

    # A finished ranking cached by both processes; a checkpoint of it deleted through one of them.
    path = make_checkpoint(tmp_path / "mine.safetensors", seed=int.from_bytes(os.urandom(3), "big"))
    with path.open("rb") as f:
        uploaded = _fresh(serve, "POST", "/v1/checkpoints", alice, files={"file": ("mine", f)}, data={"name": "mine"})
    assert uploaded.status_code == 201, uploaded.text
    ckpt = uploaded.json()["id"]
    mine = {**body, "dataset_id": dataset_id, "checkpoint_ids": [ckpt]}
    job = _fresh(serve, "POST", "/v1/rankings", alice, json=mine)
    assert job.status_code == 202, job.text
    with httpx.Client(base_url=serve.url, headers={"Authorization": f"Bearer {alice}"}, timeout=60) as client:
        assert wait_job(client, job.json()["id"])["status"] == "succeeded"
    path_of = f"/v1/rankings/{job.json()['id']}"
    for _ in range(10):
        entries = _fresh(serve, "GET", path_of, alice).json()["entries"]
        assert ckpt in {e["checkpoint_id"] for e in entries}
    assert _fresh(serve, "DELETE", f"/v1/checkpoints/{ckpt}", alice).status_code == 204
    for _ in range(10):
        entries = _fresh(serve, "GET", path_of, alice).json()["entries"]
        assert ckpt not in {e["checkpoint_id"] for e in entries}

    # The dashboard's session cookie signed by one process is accepted by the other.
    with httpx.Client(base_url=serve.url, timeout=30) as browser:
        signed_in = sign_in(browser, alice)
        assert signed_in.status_code in (200, 303), signed_in.text
        cookies = browser.cookies
    assert cookies, signed_in.text
    pages = [httpx.get(serve.url + "/ui/jobs", cookies=cookies, timeout=30) for _ in range(10)]
    assert all(p.status_code == 200 and "alice" in p.text for p in pages)


def test_several_processes_need_redis_and_the_api_metrics_port() -> None:
    from service.core.config import Settings

    with pytest.raises(ValueError, match="needs the rate limits and cache invalidations shared in Redis"):
        Settings(api_processes=2, broker_url="")
    with pytest.raises(ValueError, match="needs the rate limits"):
        Settings(api_processes=2, broker_url="redis://127.0.0.1:6379/0", rate_limit_store="process")
    with pytest.raises(ValueError, match="metrics_port is one port per process"):
        Settings(api_processes=2, broker_url="redis://127.0.0.1:6379/0", metrics_port=9100)
    assert Settings(api_processes=2, broker_url="redis://127.0.0.1:6379/0").api_processes == 2
