"""The dashboard's routes under ``/ui``: HTML pages, sign-in, the two state-changing forms, live progress.

Every route is left out of the OpenAPI document (the REST API under ``/v1`` is the contract; these pages
are its view). Pages read through `views` on one read session; a refusal of core (NotFound for another
owner's id, Conflict for a job that ended) is rendered as an HTML page with the status the API would send.
Forms post back here and answer with a redirect (303), so a reload never posts twice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Form, Query, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader

from service.api.auth import KeyCache
from service.api.deps import (
    BlobsDep,
    FinishedDep,
    LiveDep,
    Offset,
    ReadsDep,
    SessionDep,
    SettingsDep,
)
from service.api.refusals import status_of
from service.api.routes import jobs as job_routes
from service.api.schemas import JobStatus
from service.core import checkpoints as records
from service.core import jobflow
from service.core.errors import ServiceError
from service.core.kinds import KIND_NAMES, KINDS
from service.core.owned import owned_job
from service.ui import csrf, views
from service.ui.headers import SecurityHeadersMiddleware
from service.ui.session import SignInRefused, Who, sign_in, sign_out, signed_in

HERE = Path(__file__).parent
PAGE_OF_KIND = {kind.name: kind.page for kind in KINDS.values()}

router = APIRouter(prefix="/ui", include_in_schema=False)

Text = Annotated[str | None, Query(max_length=100)]


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f} %"


def _num(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _when(value: datetime | None) -> str:
    return "–" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _environment() -> Environment:
    """Autoescape on for every template: names, messages and paths are user input."""
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True)
    env.filters.update(pct=_pct, num=_num, when=_when)
    env.globals["page_of_kind"] = PAGE_OF_KIND
    return env


templates = Jinja2Templates(env=_environment())


def render(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    who = context.get("who")
    context = {**context, "csrf": csrf.token(request, who) if who is not None else None}
    return templates.TemplateResponse(request, template, context, status_code=status_code)


def forbidden(request: Request, who: Any) -> HTMLResponse:
    detail = "missing or wrong CSRF token: reload the page and try again"
    return render(request, "error.html", {"who": who, "code": 403, "detail": detail}, status_code=403)


def refused(request: Request, who: Any, exc: ServiceError) -> HTMLResponse:
    code = status_of(exc)
    return render(request, "error.html", {"who": who, "code": code, "detail": exc.detail}, status_code=code)


async def show(
    request: Request, who: Any, template: str, reads: ReadsDep, fn: Callable[..., dict[str, Any]], *args: Any
) -> HTMLResponse:
    """Read a page's context on the thread pool and render it; core's refusals become HTML error pages."""
    try:
        context = await reads(fn, who.owner, *args)
    except ServiceError as exc:
        return refused(request, who, exc)
    return render(request, template, {"who": who, **context})


def _back(target: str | None) -> str:
    """Where to go after signing in: a dashboard path of this site, never an absolute or protocol URL."""
    if target and target.startswith("/ui") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/jobs"


# --------------------------------------------------------------------------------------------- sign-in


@router.get("")
@router.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/ui/jobs", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/login")
async def login_page(
    request: Request, next_: Annotated[str | None, Query(alias="next", max_length=2000)] = None
) -> Response:
    who = await signed_in(request)
    if who is not None:
        return RedirectResponse(_back(next_), status_code=status.HTTP_303_SEE_OTHER)
    return login_form(request, _back(next_), None)


def login_form(request: Request, next_: str, error: str | None, status_code: int = 200) -> HTMLResponse:
    """The sign-in page with a fresh CSRF token bound to this browser's nonce cookie."""
    holder = Response()
    login_csrf = csrf.login_token(request, holder)
    context = {"who": None, "next": next_, "error": error, "login_csrf": login_csrf}
    page = render(request, "login.html", context, status_code=status_code)
    for value in holder.headers.getlist("set-cookie"):
        page.headers.append("set-cookie", value)
    return page


@router.post("/login")
async def login(
    request: Request,
    api_key: Annotated[str, Form(max_length=500)] = "",
    next_: Annotated[str, Form(alias="next", max_length=2000)] = "/ui/jobs",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """Exchange an API key for a session; the key itself is never stored or sent back.

    The form must carry the token of the login page this browser was shown (403 otherwise): a page of
    another site cannot sign the browser in under a key of its choosing.
    """
    if not csrf.login_valid(request, csrf_token):
        detail = "the sign-in form expired or did not come from this site: sign in again"
        return login_form(request, _back(next_), detail, status_code=status.HTTP_403_FORBIDDEN)
    response = RedirectResponse(_back(next_), status_code=status.HTTP_303_SEE_OTHER)
    try:
        await sign_in(request, response, api_key)
    except SignInRefused as exc:
        return login_form(request, _back(next_), exc.detail, status_code=exc.status_code)
    response.delete_cookie(csrf.LOGIN_COOKIE, path="/ui/login", httponly=True, samesite="strict")
    return response


@router.post("/logout")
async def logout(request: Request, who: Who, csrf_token: Annotated[str, Form(max_length=200)] = "") -> Response:
    """End the session server-side: the cookie, even if kept or copied, opens nothing afterwards."""
    if not csrf.valid(request, who, csrf_token):
        return forbidden(request, who)
    response = RedirectResponse("/ui/login", status_code=status.HTTP_303_SEE_OTHER)
    await sign_out(request, response, who)
    return response


# ----------------------------------------------------------------------------------------------- pages


@router.get("/checkpoints")
async def checkpoints_page(
    request: Request,
    who: Who,
    reads: ReadsDep,
    offset: Offset = 0,
    modality: Text = None,
    architecture: Text = None,
) -> HTMLResponse:
    return await show(request, who, "checkpoints.html", reads, views.checkpoints_page, offset, modality, architecture)


@router.get("/checkpoints/{checkpoint_id}")
async def checkpoint_page(request: Request, checkpoint_id: str, who: Who, reads: ReadsDep) -> HTMLResponse:
    return await show(request, who, "checkpoint.html", reads, views.checkpoint_page, checkpoint_id)


@router.post("/checkpoints/{checkpoint_id}/delete")
def delete_checkpoint(
    request: Request,
    checkpoint_id: str,
    who: Who,
    session: SessionDep,
    store: BlobsDep,
    finished: FinishedDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """Delete as ``DELETE /v1/checkpoints/{id}`` does (409 while a running job uses it)."""
    if not csrf.valid(request, who, csrf_token):
        return forbidden(request, who)
    try:
        records.delete_checkpoint(session, store, finished, who.owner, checkpoint_id)
    except ServiceError as exc:
        return refused(request, who, exc)
    return RedirectResponse("/ui/checkpoints", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/datasets")
async def datasets_page(request: Request, who: Who, reads: ReadsDep, offset: Offset = 0) -> HTMLResponse:
    return await show(request, who, "datasets.html", reads, views.datasets_page, offset)


@router.get("/datasets/{dataset_id}")
async def dataset_page(
    request: Request, dataset_id: str, who: Who, reads: ReadsDep, settings: SettingsDep
) -> HTMLResponse:
    return await show(request, who, "dataset.html", reads, views.dataset_page, dataset_id, settings.data_roots)


@router.get("/jobs")
async def jobs_page(
    request: Request,
    who: Who,
    reads: ReadsDep,
    offset: Offset = 0,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    kind: Annotated[Literal[KIND_NAMES] | None, Query()] = None,  # type: ignore[valid-type]
) -> HTMLResponse:
    return await show(request, who, "jobs.html", reads, views.jobs_page, offset, status_, kind)


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: str, who: Who, reads: ReadsDep) -> Response:
    """A job's own page, whatever its kind."""
    try:
        kind = await reads(lambda s: owned_job(s, who.owner, job_id).kind)
    except ServiceError as exc:
        return refused(request, who, exc)
    return RedirectResponse(f"/ui/{PAGE_OF_KIND.get(kind, 'jobs')}/{job_id}", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/rankings/{job_id}")
async def ranking_page(request: Request, job_id: str, who: Who, reads: ReadsDep) -> HTMLResponse:
    return await show(request, who, "ranking.html", reads, views.ranking_page, job_id)


@router.get("/alchemy/{job_id}")
async def alchemy_page(request: Request, job_id: str, who: Who, reads: ReadsDep) -> HTMLResponse:
    return await show(request, who, "alchemy.html", reads, views.alchemy_page, job_id)


@router.get("/probes/{job_id}")
async def probe_page(request: Request, job_id: str, who: Who, reads: ReadsDep) -> HTMLResponse:
    return await show(request, who, "probe.html", reads, views.probe_page, job_id)


@router.get("/leaderboard")
async def leaderboard_page(
    request: Request,
    who: Who,
    reads: ReadsDep,
    dataset_id: Annotated[str | None, Query(max_length=64)] = None,
    offset: Offset = 0,
    architecture: Text = None,
) -> HTMLResponse:
    return await show(request, who, "leaderboard.html", reads, views.leaderboard_page, dataset_id, offset, architecture)


# ------------------------------------------------------------------------------- cancel, live progress


@router.post("/jobs/{job_id}/cancel")
def cancel_job(
    request: Request,
    job_id: str,
    who: Who,
    session: SessionDep,
    live: LiveDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """Cancel as ``POST /v1/jobs/{id}/cancel`` does, then back to the job's page."""
    if not csrf.valid(request, who, csrf_token):
        return forbidden(request, who)
    try:
        job = jobflow.cancel_job(session, who.owner, job_id)
    except ServiceError as exc:
        return refused(request, who, exc)
    live.discard(job_id)
    return RedirectResponse(f"/ui/{PAGE_OF_KIND[job.kind]}/{job_id}", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/jobs/{job_id}/events")
async def job_events(
    request: Request, job_id: str, who: Who, reads: ReadsDep, settings: SettingsDep
) -> StreamingResponse:
    """The API's event stream (``GET /v1/jobs/{id}/events``) for the session's owner: an EventSource cannot
    send a bearer header, so the page listens here, with its cookie."""
    return await job_routes.job_events(job_id, request, reads, settings, who.owner)


def mount(app: FastAPI) -> None:
    """Add the dashboard to ``app``: its routes and its static files (stylesheet, live-progress script)."""
    app.state.session_secret = app.state.settings.session_key()
    app.state.session_cache = KeyCache()  # session token hash → key hash, a few seconds (ui/session.py)
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")
    app.add_middleware(SecurityHeadersMiddleware)


