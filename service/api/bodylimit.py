"""A ceiling on JSON request bodies, enforced before they are read into memory.

Starlette reads a body whole before FastAPI parses it, so a 1 GB JSON body would be held in memory and
parsed on the event loop. A declared ``Content-Length`` over the limit is answered 413 at once, unread; a
chunked body is counted as it arrives and refused at the chunk that passes the limit. Checkpoint uploads
(multipart forms, and raw ``application/octet-stream`` bodies to the upload route) are streamed to disk by
service/api/uploads.py under their own, larger limit.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.errors import TooLarge


def _too_large(limit: int) -> str:
    return f"request body exceeds the limit of {limit} bytes"


RAW_UPLOAD_PATHS = frozenset({"/v1/checkpoints"})  # routes that stream an octet-stream body themselves


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    @staticmethod
    def _streamed(scope: Scope, content_type: bytes) -> bool:
        """Bodies an upload route streams to disk under its own limit: left alone here."""
        if content_type.startswith(b"multipart/form-data"):
            return True
        return content_type.startswith(b"application/octet-stream") and scope.get("path") in RAW_UPLOAD_PATHS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        if self._streamed(scope, headers.get(b"content-type", b"").lower()):
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            body = json.dumps({"detail": _too_large(self.limit)}).encode()
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
                if seen > self.limit:
                    raise TooLarge(_too_large(self.limit))  # answered 413 by the app's ServiceError handler
            return message

        await self.app(scope, counted, send)
