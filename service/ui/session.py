"""Dashboard sessions: an API key exchanged once for a server-side session named by a signed cookie.

Signing in creates a ``dashboard_sessions`` row (keyed by the sha256 of a random token, holding the sha256
of the key and an expiry) and sets a cookie with the token, signed with itsdangerous under the session
secret. Every request finds the row (a few seconds' cache per process, like keys) and then looks the key up
exactly as a bearer key is looked up (service/api/auth.py: the same cache, the same single-flight load,
the same revocation), so the owner a page acts for is the owner the API would see. Signing out deletes the
row: the old cookie opens nothing from then on (in this process at once, in others within the cache's few
seconds). Revoking the key ends every session opened with it the same way. Failed sign-ins count against
the same rate limit as failed bearer keys.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request, Response, status
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete
from starlette.concurrency import run_in_threadpool

from service.api.auth import KeyCache, client_address, failed_authentication, hash_key, held_back, owner_of_digest
from service.api.ratelimit import Limiter
from service.core.errors import Limited
from service.core.models import DashboardSession, utcnow

COOKIE = "bnrank_session"
SALT = "bnrank-ui-session"


@dataclass(frozen=True)
class SignedIn:
    """Who a dashboard request acts for, and the session id its CSRF tokens are bound to."""

    owner: str
    session_id: str


def _serializer(request: Request) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(request.app.state.session_secret, salt=SALT)


def _sessions(request: Request) -> KeyCache:
    """Session token hash → key hash, for a few seconds (created with the dashboard, `mount`)."""
    return request.app.state.session_cache


class SignInRefused(Exception):
    """A sign-in that did not succeed: the status and the sentence the login page shows."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _open_session(request: Request, token_hash: str, digest: str) -> None:
    """Insert the session row; expired rows of anyone go at the same time (the table stays small)."""
    now = utcnow()
    max_age = timedelta(seconds=request.app.state.settings.session_max_age_s)
    with request.app.state.db.sessions() as session:
        session.execute(delete(DashboardSession).where(DashboardSession.expires_at < now))
        session.add(DashboardSession(token_hash=token_hash, key_hash=digest, created_at=now, expires_at=now + max_age))
        session.commit()


def _session_key(request: Request, token_hash: str) -> str | None:
    """The key hash of a live session row, or None (signed out, expired, never existed)."""
    with request.app.state.db.sessions() as session:
        row = session.get(DashboardSession, token_hash)
        return row.key_hash if row is not None and row.expires_at > utcnow() else None


def _close_session(request: Request, token_hash: str) -> None:
    with request.app.state.db.sessions() as session:
        session.execute(delete(DashboardSession).where(DashboardSession.token_hash == token_hash))
        session.commit()


async def sign_in(request: Request, response: Response, api_key: str) -> SignedIn:
    """Check the key as the API would, open a session and set its cookie on ``response``; else SignInRefused."""
    limiter: Limiter = request.app.state.auth_limiter
    address = client_address(request)
    key = api_key.strip()
    digest = hash_key(key) if key else None
    wait = await held_back(limiter, address, digest)
    if wait is not None:
        raise SignInRefused(429, f"too many failed sign-ins; try again in {wait:.0f} s")
    owner = await owner_of_digest(request, digest) if digest else None
    if owner is None:
        refusal = await failed_authentication(limiter, address, digest, "invalid or revoked API key")
        if isinstance(refusal, Limited):
            raise SignInRefused(429, refusal.detail)
        raise SignInRefused(401, "missing API key" if digest is None else "invalid or revoked API key")
    assert digest is not None
    token = secrets.token_urlsafe(32)
    token_hash = _token_hash(token)
    await run_in_threadpool(_open_session, request, token_hash, digest)
    response.set_cookie(
        COOKIE,
        _serializer(request).dumps({"t": token}),
        max_age=request.app.state.settings.session_max_age_s,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return SignedIn(owner, token_hash)


async def sign_out(request: Request, response: Response, who: SignedIn) -> None:
    """End the session server-side (its cookie opens nothing any more) and clear the cookie."""
    await run_in_threadpool(_close_session, request, who.session_id)
    _sessions(request).forget(who.session_id)
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")


async def signed_in(request: Request) -> SignedIn | None:
    """The session of this request, or None (no cookie, a bad signature, signed out, expired, a revoked key)."""
    value = request.cookies.get(COOKIE)
    if not value:
        return None
    try:
        data = _serializer(request).loads(value, max_age=request.app.state.settings.session_max_age_s)
        token = str(data["t"])
    except (BadSignature, KeyError, TypeError):
        return None
    token_hash = _token_hash(token)
    cache = _sessions(request)
    digest = cache.get(token_hash)
    if digest is None:
        digest = await run_in_threadpool(_session_key, request, token_hash)
        if digest is None:
            return None
        cache.put(token_hash, digest)
    owner = await owner_of_digest(request, digest)
    return None if owner is None else SignedIn(owner, token_hash)


def login_url(request: Request) -> str:
    """The sign-in page, coming back here afterwards (a path on this site only)."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"/ui/login?next={quote(here, safe='')}"


async def require_session(request: Request) -> SignedIn:
    """The session, or a redirect (303) to the sign-in page."""
    who = await signed_in(request)
    if who is None:
        raise HTTPException(status.HTTP_303_SEE_OTHER, "sign in first", headers={"Location": login_url(request)})
    return who


Who = Annotated[SignedIn, Depends(require_session)]
