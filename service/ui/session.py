"""Dashboard sessions: an API key exchanged once for a signed cookie.

The cookie holds the sha256 of the key (never the key) and a random session id, signed with itsdangerous
under the settings' session secret and dated, so it expires. Every request looks the digest up exactly as
a bearer key is looked up (service/api/auth.py: the same cache, the same single-flight load, the same
revocation), so the owner a page acts for is the owner the API would see, and revoking the key ends the
session within the cache's few seconds. Failed sign-ins count against the same rate limit as failed
bearer keys.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request, Response, status
from itsdangerous import BadSignature, URLSafeTimedSerializer

from service.api.auth import failed_authentication, hash_key, held_back, owner_of_digest
from service.api.ratelimit import Limiter
from service.core.errors import Limited

COOKIE = "bnrank_session"
SALT = "bnrank-ui-session"


@dataclass(frozen=True)
class SignedIn:
    """Who a dashboard request acts for, and the session id its CSRF tokens are bound to."""

    owner: str
    session_id: str


def _serializer(request: Request) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(request.app.state.session_secret, salt=SALT)


class SignInRefused(Exception):
    """A sign-in that did not succeed: the status and the sentence the login page shows."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


async def sign_in(request: Request, response: Response, api_key: str) -> SignedIn:
    """Check the key as the API would and set the session cookie on ``response``; SignInRefused otherwise."""
    limiter: Limiter = request.app.state.auth_limiter
    address = request.client.host if request.client else "unknown"
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
    session_id = secrets.token_urlsafe(18)
    value = _serializer(request).dumps({"k": digest, "s": session_id})
    response.set_cookie(
        COOKIE,
        value,
        max_age=request.app.state.settings.session_max_age_s,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return SignedIn(owner, session_id)


def sign_out(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")


async def signed_in(request: Request) -> SignedIn | None:
    """The session of this request, or None (no cookie, a bad or expired signature, a revoked key)."""
    value = request.cookies.get(COOKIE)
    if not value:
        return None
    try:
        data = _serializer(request).loads(value, max_age=request.app.state.settings.session_max_age_s)
        digest, session_id = str(data["k"]), str(data["s"])
    except (BadSignature, KeyError, TypeError):
        return None
    owner = await owner_of_digest(request, digest)
    return None if owner is None else SignedIn(owner, session_id)


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
