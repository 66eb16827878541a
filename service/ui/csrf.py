"""CSRF tokens for the dashboard's state-changing forms (cancel a job, delete a checkpoint).

The session cookie is SameSite=Strict already, so a cross-site form post arrives without it; the token is
the second, independent guard (and covers browsers or proxies that drop the attribute). It is an HMAC of
the session id under the session secret: it needs no storage, changes with every sign-in, and a page of
another session (or another site) cannot produce it.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from service.ui.session import SignedIn

FIELD = "csrf_token"


def token(request: Request, who: SignedIn) -> str:
    secret = request.app.state.session_secret.encode()
    return hmac.new(secret, f"csrf:{who.session_id}".encode(), hashlib.sha256).hexdigest()


def valid(request: Request, who: SignedIn, presented: str | None) -> bool:
    """Whether the form carried this session's token (compared in constant time)."""
    return bool(presented) and hmac.compare_digest(str(presented), token(request, who))
