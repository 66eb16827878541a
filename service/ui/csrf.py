"""CSRF tokens for the dashboard's forms: sign-in, sign-out, cancel a job, delete a checkpoint.

The session cookie is SameSite=Strict already, so a cross-site form post arrives without it; the token is
the second, independent guard (and covers browsers or proxies that drop the attribute). It is an HMAC of
the session id under the session secret: it needs no storage, changes with every sign-in, and a page of
another session (or another site) cannot produce it.

The sign-in form has no session yet, so its token is bound to a random nonce the login page sets as a
cookie of its own (double submit): a cross-site page can post the form but can neither read that cookie
nor compute the HMAC, so it cannot sign a browser in under a key of its choosing (login CSRF).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import Request, Response

from service.ui.session import SignedIn

FIELD = "csrf_token"
LOGIN_COOKIE = "bnrank_login"
LOGIN_MAX_AGE_S = 3600


def _mac(request: Request, message: str) -> str:
    secret = request.app.state.session_secret.encode()
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


def token(request: Request, who: SignedIn) -> str:
    return _mac(request, f"csrf:{who.session_id}")


def valid(request: Request, who: SignedIn, presented: str | None) -> bool:
    """Whether the form carried this session's token (compared in constant time)."""
    return bool(presented) and hmac.compare_digest(str(presented), token(request, who))


def login_token(request: Request, response: Response) -> str:
    """The sign-in form's token; sets its nonce cookie on ``response`` (kept when the browser has one)."""
    nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=LOGIN_MAX_AGE_S,
        path="/ui/login",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return _mac(request, f"login:{nonce}")


def login_valid(request: Request, presented: str | None) -> bool:
    """Whether the sign-in form carried the token of this browser's nonce cookie."""
    nonce = request.cookies.get(LOGIN_COOKIE)
    if not nonce or not presented:
        return False
    return hmac.compare_digest(str(presented), _mac(request, f"login:{nonce}"))
