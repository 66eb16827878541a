"""Authentication before anything reads the body: every ``/v1`` request shows a valid key in its headers
or is answered (401, or 429 past the failed-authentication limit) with its body unread.

FastAPI reads and parses a request's body before it resolves the route's dependencies, the key check
among them, so a request with no key and a 1 GB body would be read whole before its 401. This middleware
sits outside the body limit and the routes: it runs `service.api.auth.authenticate` on the headers alone
and puts the owner in the request's state, where the routes' `Owner` dependency finds it. Every ``/v1``
route acts for an owner (`tests/service/api/test_hardening_ii.py` checks that none is left out), so nothing
under ``/v1`` is answered to a request without a key, not even a 404 or a 405.
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.auth import authenticate
from service.api.ratelimit import retry_header
from service.core.errors import Limited

GUARDED_PREFIX = "/v1/"


class AuthFirstMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(GUARDED_PREFIX):
            await self.app(scope, receive, send)
            return
        try:
            owner = await authenticate(Request(scope))  # no receive: the body cannot be read here
        except HTTPException as exc:
            response = JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        except Limited as exc:
            response = JSONResponse({"detail": exc.detail}, 429, headers={"Retry-After": retry_header(exc.retry_after)})
        else:
            scope.setdefault("state", {})["owner"] = owner
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)
