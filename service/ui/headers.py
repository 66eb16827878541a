"""Response headers that keep the dashboard's pages from being framed, sniffed or made to run foreign code.

Every page is server-rendered HTML whose only script and stylesheet are files under ``/ui/static`` (no
inline script, style or event handler), so the Content-Security-Policy can allow ``'self'`` and nothing
else; ``frame-ancestors 'none'`` (and ``X-Frame-Options`` for older browsers) stops clickjacking of the
cancel and delete buttons. ``nosniff`` goes on every response of the process, API answers included: none of
them is meant to be read as anything but its declared type.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def _is_dashboard(path: str) -> bool:
    return path == "/ui" or path.startswith("/ui/")


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        dashboard = _is_dashboard(scope.get("path", ""))

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                if dashboard:
                    for name, value in PAGE_HEADERS.items():
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, with_headers)
