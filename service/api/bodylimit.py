"""A ceiling on every request body, chosen per route and content type, enforced before the body is read.

Starlette reads a body whole before FastAPI parses it, so a 1 GB JSON body (or a 1 GB "multipart" body
sent to a JSON route, which FastAPI would hand to its form parser) would be held in memory. Every body is
therefore bounded here, whatever its content type:

- ``POST /v1/checkpoints`` with a multipart form or an ``application/octet-stream`` body: left to
  service/api/uploads.py, which streams the file to disk under ``max_upload_bytes`` and bounds the form's
  text fields itself;
- the dashboard's forms (``/ui``): a few KiB of text (a key, a CSRF token, a path);
- anything else: ``max_json_body_bytes``.

A declared ``Content-Length`` over the limit is answered 413 at once, unread; a chunked body is counted as
it arrives and refused at the chunk that passes the limit. Authentication runs before this
(service/api/authgate.py), so a request without a valid key never gets this far.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.errors import TooLarge

UPLOAD_ROUTES = frozenset({("POST", "/v1/checkpoints")})  # routes that stream their body to disk themselves
STREAMED_TYPES = (b"multipart/form-data", b"application/octet-stream")
FORM_LIMIT = 16 * 1024  # a dashboard form: an API key, a CSRF token, a return path


def _too_large(limit: int) -> str:
    return f"request body exceeds the limit of {limit} bytes"


def body_limit(scope: Scope, content_type: bytes, json_limit: int) -> int | None:
    """The most bytes this request's body may have; None where the route bounds the stream itself."""
    path = scope.get("path", "")
    if (scope.get("method"), path) in UPLOAD_ROUTES and content_type.startswith(STREAMED_TYPES):
        return None
    if path == "/ui" or path.startswith("/ui/"):
        return FORM_LIMIT
    return json_limit


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        limit = body_limit(scope, headers.get(b"content-type", b"").lower(), self.limit)
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            body = json.dumps({"detail": _too_large(limit)}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise TooLarge(_too_large(limit))  # answered 413 by the app's ServiceError handler
            return message

        await self.app(scope, counted, send)
