"""The dashboard over HTTP (no browser): sign-in and its cookie, owner scoping, CSRF, escaping, and what each page
shows of rankings, alchemy and probe jobs a real worker ran. tests/service/ui/test_browser.py drives the same
pages in Chromium."""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.core.config import Settings
from service.core.launcher import WorkerProcess
from tests.service.conftest import TINY_BUDGET, Stack, wait_job
from tests.service.ui.conftest import XSS_NAME, sign_in


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def _rows(html: str, table_id: str) -> list[str]:
    table = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S)
    assert table, f"no table #{table_id}"
    return re.findall(r"<tr[^>]*>(.*?)</tr>", table.group(1), re.S)


def test_pages_need_a_session(anonymous: httpx.Client) -> None:
    response = anonymous.get("/ui/rankings/job_x?a=1")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login?next=%2Fui%2Frankings%2Fjob_x%3Fa%3D1"
    login = anonymous.get("/ui/login")
    assert login.status_code == 200 and 'name="api_key"' in login.text and 'method="post"' in login.text


def test_sign_in_sets_a_strict_http_only_cookie(api: str, ui_keys: dict[str, str]) -> None:
    with httpx.Client(base_url=api) as client:
        wrong = sign_in(client, "bnr_wrong")
        assert wrong.status_code == 401 and "invalid or revoked API key" in wrong.text
        assert not any(c.startswith("bnrank_session=") for c in wrong.headers.get_list("set-cookie"))
        right = sign_in(client, ui_keys["alice"], "https://evil.example/")
        assert right.status_code == 303 and right.headers["location"] == "/ui/jobs"  # never off-site
        cookie = next(c for c in right.headers.get_list("set-cookie") if c.startswith("bnrank_session="))
        assert cookie.startswith("bnrank_session=") and ui_keys["alice"] not in cookie
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/ui"} <= flags
        assert client.get("/ui/jobs").status_code == 200
        # A cookie whose signature does not match is no session.
        value = client.cookies["bnrank_session"]
        client.cookies.set("bnrank_session", value[:-2] + ("AA" if not value.endswith("AA") else "BB"), path="/ui")
        assert client.get("/ui/jobs").status_code == 303


def test_ranking_page_shows_the_table_curves_and_histograms(alice_ui: httpx.Client, ranked: dict[str, Any]) -> None:
    ranking = ranked["ranking"]
    page = alice_ui.get(f"/ui/rankings/{ranking['job']['id']}")
    assert page.status_code == 200, page.text
    html = page.text
    candidates = html.split('<tbody class="candidates">', 1)[1].split("</tbody>", 1)[0]
    controls = html.split('<tbody class="controls">', 1)[1].split("</tbody>", 1)[0]
    for entry in ranking["entries"]:
        assert (entry["name"] in controls) == entry["is_control"], entry["name"]
        assert (entry["name"] in candidates) != entry["is_control"], entry["name"]
    for entry in [e for e in ranking["entries"] if e["status"] == "ok"]:
        assert f"{entry['score']:.4f}" in html
        for value in entry["dice_per_class"].values():
            assert f"{value:.4f}" in html
    assert "Dice tumor" in html and "Dice edema" in html
    # The spread is the std of the validations behind the score: shown exactly when there are several.
    window = ranking["job"]["params"]["budget"].get("score_window", 1)
    for entry in [e for e in ranking["entries"] if e["status"] == "ok"]:
        scored = [p.get("score", p.get("dice")) for p in entry["curve"]]
        scored = [v for v in scored if v is not None][-window:]
        row = html.split(f'data-name="{entry["name"]}"', 1)[1].split("</tr>", 1)[0]
        assert f"{entry['gamma_change']:.4f}" in row, entry["name"]  # the |Δγ| column beside the γ shares
        assert (f"· {entry['format']}" in row) != entry["is_control"], entry["name"]  # each candidate's format
        if len(scored) > 1:
            assert f"± {statistics.pstdev(scored):.4f}" in row, entry["name"]
        else:
            assert "±" not in row, entry["name"]
    assert "loss became nan" in candidates  # the failed candidate says why
    ok = sum(e["status"] == "ok" for e in ranking["entries"])
    assert html.count('class="chart gamma-histogram"') == ok
    assert html.count('<polyline class="line') == ok  # one validation curve per evaluated entry
    assert "Ties:" in html and "Stability:" in html
    assert ("Kendall τ" in html) == (ranking["stability"]["kendall_tau"] is not None)
    assert 'id="cancel"' not in html  # the ranking has ended


def test_another_owner_gets_404_everywhere(
    mallory_ui: httpx.Client, ranked: dict[str, Any], candidates: dict[str, str], dataset_id: str
) -> None:
    job_id = ranked["job"]["id"]
    for path in (
        f"/ui/rankings/{job_id}",
        f"/ui/jobs/{job_id}",
        f"/ui/jobs/{job_id}/events",
        f"/ui/checkpoints/{candidates['good_a']}",
        f"/ui/datasets/{dataset_id}",
        f"/ui/leaderboard?dataset_id={dataset_id}",
    ):
        response = mallory_ui.get(path)
        assert response.status_code == 404, path
        assert "good_a" not in response.text, path
    token = _csrf(mallory_ui.get("/ui/jobs").text)
    assert mallory_ui.post(f"/ui/jobs/{job_id}/cancel", data={"csrf_token": token}).status_code == 404
    delete = mallory_ui.post(f"/ui/checkpoints/{candidates['good_a']}/delete", data={"csrf_token": token})
    assert delete.status_code == 404
    assert job_id not in mallory_ui.get("/ui/jobs").text


def test_forms_need_this_sessions_csrf_token(
    alice_ui: httpx.Client, mallory_ui: httpx.Client, ranked: dict[str, Any], candidates: dict[str, str]
) -> None:
    job_id = ranked["job"]["id"]
    foreign = _csrf(mallory_ui.get("/ui/jobs").text)
    for data in ({}, {"csrf_token": "0" * 64}, {"csrf_token": foreign}):
        assert alice_ui.post(f"/ui/jobs/{job_id}/cancel", data=data).status_code == 403
        assert alice_ui.post(f"/ui/checkpoints/{candidates['good_a']}/delete", data=data).status_code == 403
    own = _csrf(alice_ui.get(f"/ui/rankings/{job_id}").text)
    ended = alice_ui.post(f"/ui/jobs/{job_id}/cancel", data={"csrf_token": own})
    assert ended.status_code == 409 and "already ended" in ended.text


def test_user_supplied_names_are_escaped(alice_ui: httpx.Client, xss_checkpoint: str) -> None:
    for path in ("/ui/checkpoints", f"/ui/checkpoints/{xss_checkpoint}"):
        html = alice_ui.get(path).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path
        assert XSS_NAME not in html, path


def test_checkpoint_dataset_jobs_and_leaderboard_pages(
    alice_ui: httpx.Client, ranked: dict[str, Any], candidates: dict[str, str], dataset_id: str, stack: Stack
) -> None:
    job_id = ranked["job"]["id"]
    checkpoint = alice_ui.get(f"/ui/checkpoints/{candidates['good_a']}").text
    assert "<dd>unet3d</dd>" in checkpoint and "<dt>normalisation</dt><dd>batch</dd>" in checkpoint
    assert 'class="chart gamma-histogram"' in checkpoint
    assert any(job_id in row for row in _rows(checkpoint, "checkpoint-results"))
    dataset = alice_ui.get(f"/ui/datasets/{dataset_id}").text
    assert "tumor" in dataset and "edema" in dataset and "good_a" in dataset
    assert "<code>Dataset001_Tiny</code>" in dataset and str(stack.data_root) not in dataset  # no server path
    board = alice_ui.get("/ui/leaderboard", params={"dataset_id": dataset_id}).text
    rows = _rows(board, "leaderboard")[1:]
    names = [re.search(r'/ui/checkpoints/[^"]+">([^<]+)</a>', row).group(1) for row in rows]  # type: ignore[union-attr]
    assert {"good_a", "good_b"} <= set(names) and "exploding" not in names
    jobs = alice_ui.get("/ui/jobs", params={"kind": "ranking", "status": "succeeded"}).text
    assert job_id in jobs and 'option value="succeeded" selected' in jobs
    assert alice_ui.get("/ui/jobs", params={"status": "bogus"}).status_code == 422
    assert alice_ui.get(f"/ui/jobs/{job_id}").headers["location"] == f"/ui/rankings/{job_id}"


@pytest.fixture(scope="module")
def fold_jobs(worker: WorkerProcess, alice: httpx.Client, candidates: dict[str, str], dataset_id: str) -> dict:
    """A tiny alchemy job and a tiny probe of good_a, run by the worker."""
    common = {"dataset_id": dataset_id, "checkpoint_id": candidates["good_a"], "budget": TINY_BUDGET}
    alchemy = alice.post("/v1/alchemy", json={**common, "fraction": 0.2})
    probe = alice.post("/v1/probes", json={**common, "thresholds": [0.9, 2.0], "draws": 2})
    assert alchemy.status_code == probe.status_code == 202, (alchemy.text, probe.text)
    ids = {"alchemy": alchemy.json()["id"], "probe": probe.json()["id"]}
    for job_id in ids.values():
        assert wait_job(alice, job_id)["status"] == "succeeded"
    return {
        "alchemy": alice.get(f"/v1/alchemy/{ids['alchemy']}").json(),
        "probe": alice.get(f"/v1/probes/{ids['probe']}").json(),
    }


def test_alchemy_page(alice_ui: httpx.Client, fold_jobs: dict) -> None:
    served = fold_jobs["alchemy"]
    html = alice_ui.get(f"/ui/alchemy/{served['job']['id']}").text
    [fold] = served["results"]
    assert "identification: on" in html and "modification: on" in html and "maximization: on" in html
    assert f"{fold['dice']['score']:.4f}" in html
    comparison = _rows(html, "comparison")
    assert any("alchemy" in row and f"{fold['dice']['score']:.4f}" in row for row in comparison)
    for layer in fold["reinitialised"]["layers"]:
        assert f"<code>{layer['bn']}</code>" in html
    assert f"kernels re-initialised: {fold['reinitialised']['reinitialised']}" in html
    assert 'class="chart gamma-histogram"' in html and 'class="chart bars"' in html


def test_probe_page(alice_ui: httpx.Client, fold_jobs: dict) -> None:
    served = fold_jobs["probe"]
    html = alice_ui.get(f"/ui/probes/{served['job']['id']}").text
    [fold] = served["folds"]
    assert 'class="chart clipping"' in html and html.count('<polyline class="line') == 2
    for row in fold["rows"]:
        assert f"{row['dice_threshold']:.4f}" in html
        assert f"{row['dice_random']:.4f} ± {row['dice_random_std']:.4f}" in html
    assert alice_ui.get(f"/ui/alchemy/{served['job']['id']}").status_code == 404  # a probe is no alchemy job


def test_session_secret_is_generated_once_and_kept(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, database_url="", broker_url="", data_roots=[tmp_path])
    first = settings.session_key()
    assert len(first) >= 32 and settings.session_key() == first
    assert Settings(home=tmp_path, database_url="", broker_url="", data_roots=[tmp_path]).session_key() == first
    assert (tmp_path / "session_secret").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["session_secret"]  # no draft left behind
    explicit = Settings(home=tmp_path, database_url="", broker_url="", data_roots=[tmp_path], session_secret="s" * 40)
    assert explicit.session_key() == "s" * 40
