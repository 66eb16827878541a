"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright's Python API.

No browser is downloaded: Playwright launches the system's ``/usr/bin/chromium`` (``BNRANK_CHROMIUM`` to point
elsewhere), which `.ci/run` installs with apt when it is missing. Without it this test fails and says how to
install it; only ``BNRANK_SKIP_BROWSER_TESTS=1`` turns the failure into a skip, for a machine that cannot have
a browser. Flags: Chromium's background services (updates, sync, field trials) would try to reach the internet,
which a closed network answers with refused connections and stalls.

The pages are those of the session's real stack (uvicorn API, Celery worker, PostgreSQL + Redis where they
answer): the finished ranking of tests/service/conftest.py, and a ranking started here that runs while the page
is open, so the progress is seen advancing over the event stream, then cancelled with the page's button.
Screenshots go to ``BNRANK_SCREENSHOTS`` (default ``artifacts/screenshots/``, kept by CI). Every wait is on a
condition with a generous limit, never a fixed sleep.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.core.launcher import WorkerProcess
from tests.service.conftest import TINY_BUDGET, wait_job
from tests.service.ui.conftest import XSS_NAME

CHROMIUM = Path(os.environ.get("BNRANK_CHROMIUM", "/usr/bin/chromium"))
SHOTS = Path(os.environ.get("BNRANK_SCREENSHOTS", Path(__file__).resolve().parents[3] / "artifacts" / "screenshots"))
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-field-trial-config",
]
WAIT_MS = 180_000  # a limit for conditions on a loaded machine, not an expected duration


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        message = (
            f"no Chromium at {CHROMIUM}: install Debian's package (`apt-get install -y chromium`, as .ci/run does) "
            "or point BNRANK_CHROMIUM at one"
        )
        if os.environ.get("BNRANK_SKIP_BROWSER_TESTS") == "1":
            pytest.skip(message + " (skipped: BNRANK_SKIP_BROWSER_TESTS=1)")
        pytest.fail(message)
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        yield chromium
        chromium.close()


def _signed_in_page(browser: Any, api: str, key: str, path: str) -> tuple[Any, Any, list[str]]:
    """A fresh context (own cookies) that opens ``path``, is sent to the sign-in page, signs in with ``key`` and
    comes back. Returns the context, the page and the list every JavaScript dialog's text lands in."""
    context = browser.new_context(base_url=api, viewport={"width": 1360, "height": 900})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(path)
    assert page.url.startswith(f"{api}/ui/login"), page.url
    page.fill("input[name=api_key]", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{api}{path}")
    return context, page, dialogs


def test_finished_ranking_table_and_histograms(
    browser: Any, api: str, ui_keys: dict[str, str], ranked: dict[str, Any]
) -> None:
    ranking = ranked["ranking"]
    job_id = ranking["job"]["id"]
    context, page, dialogs = _signed_in_page(browser, api, ui_keys["alice"], f"/ui/rankings/{job_id}")
    try:
        candidates = [e for e in ranking["entries"] if not e["is_control"]]
        controls = [e for e in ranking["entries"] if e["is_control"]]
        assert page.locator("#ranking tbody.candidates tr.entry").count() == len(candidates)
        assert page.locator("#ranking tbody.controls tr.entry.control").count() == len(controls) >= 1
        first = page.locator("#ranking tbody.candidates tr.entry").first
        assert first.locator("td").nth(1).inner_text().startswith(candidates[0]["name"])
        ok = [e for e in ranking["entries"] if e["status"] == "ok"]
        histograms = page.locator("#histograms svg.gamma-histogram")
        assert histograms.count() == len(ok)
        assert histograms.first.locator("rect.bar.after_bn").count() > 0  # bars drawn, not an empty frame
        assert page.locator("svg.curves polyline").count() == len(ok)
        assert page.locator("#guidance").inner_text().startswith("Ties:")
        assert page.locator("#live .status").inner_text() == "succeeded"
        assert page.locator("#cancel").count() == 0
        page.screenshot(path=str(SHOTS / "ranking.png"), full_page=True)
        # The other pages load from the navigation, and the leaderboard lists this ranking's candidates.
        page.click("text=Leaderboard")
        page.select_option("select[name=dataset_id]", ranking["job"]["dataset_id"])
        page.click("form.filters button[type=submit]")
        page.wait_for_selector("#leaderboard")
        names = page.locator("#leaderboard tbody td:nth-child(2)").all_inner_texts()
        assert {e["name"] for e in candidates if e["status"] == "ok"} <= set(names)
        page.screenshot(path=str(SHOTS / "leaderboard.png"), full_page=True)
        assert dialogs == []
    finally:
        context.close()


def test_live_progress_cancel_and_an_inert_script_name(
    browser: Any,
    api: str,
    worker: WorkerProcess,
    alice: httpx.Client,
    ui_keys: dict[str, str],
    xss_checkpoint: str,
    candidates: dict[str, str],
    dataset_id: str,
) -> None:
    # Long enough to be watched and cancelled: the job's progress moves a few percent per second.
    budget = {**TINY_BUDGET, "max_steps": 1000, "val_every": 50, "patience": 100_000}
    body = {"dataset_id": dataset_id, "checkpoint_ids": [xss_checkpoint, candidates["good_b"]], "budget": budget}
    response = alice.post("/v1/rankings", json=body)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    context, page, dialogs = _signed_in_page(browser, api, ui_keys["alice"], f"/ui/rankings/{job_id}")
    try:
        # The name is on the page as text, and no script of it ran.
        name = page.get_by_text(XSS_NAME, exact=True)
        assert name.count() >= 1 and name.first.is_visible()
        assert not page.evaluate("[...document.scripts].some(s => s.textContent.includes('alert(1)'))")
        # Progress advances on the open page (no reload: the marker set now survives) over the event stream.
        page.evaluate("window.__sameDocument = true")
        start = float(page.locator("#progress-bar").get_attribute("value") or 0)
        page.wait_for_function(
            "start => window.__sameDocument && Number(document.getElementById('live').dataset.updates || 0) >= 2"
            " && document.getElementById('progress-bar').value > start",
            arg=start,
            timeout=WAIT_MS,
        )
        assert page.locator("#live .status").inner_text() == "running"
        page.screenshot(path=str(SHOTS / "ranking-live.png"), full_page=True)
        # Cancel with the page's button (a CSRF-protected form): the job ends cancelled and the page says so.
        page.click("#cancel")
        page.wait_for_function(
            "() => { const s = document.querySelector('#live .status'); return s && s.textContent === 'cancelled'; }",
            timeout=WAIT_MS,
        )
        page.wait_for_load_state()
        assert wait_job(alice, job_id, timeout_s=WAIT_MS / 1000)["status"] == "cancelled"
        assert page.locator("#cancel").count() == 0
        page.screenshot(path=str(SHOTS / "ranking-cancelled.png"), full_page=True)
        assert page.get_by_text(XSS_NAME, exact=True).first.is_visible()
        assert dialogs == [], dialogs
    finally:
        context.close()


def test_another_owners_ranking_answers_404(
    browser: Any, api: str, ui_keys: dict[str, str], ranked: dict[str, Any]
) -> None:
    job_id = ranked["job"]["id"]
    context, page, _ = _signed_in_page(browser, api, ui_keys["mallory"], "/ui/jobs")
    try:
        response = page.goto(f"/ui/rankings/{job_id}")
        assert response is not None and response.status == 404
        assert f"ranking '{job_id}' not found" in page.locator("#error-detail").inner_text()
        assert page.locator("#ranking").count() == 0
        page.screenshot(path=str(SHOTS / "other-owner-404.png"))
    finally:
        context.close()
