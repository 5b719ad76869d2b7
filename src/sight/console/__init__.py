"""The web console: a few static files served at ``/`` under a strict Content-Security-Policy.

It is plain HTML, CSS and JavaScript that calls the public API with the key a person pastes in; nothing is
built or downloaded::

    app = FastAPI()
    mount_console(app)   # GET / -> index.html, GET /console/app.js ...
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HEADERS", "mount_console"]

STATIC = Path(__file__).parent / "static"

# Only this origin's own files; images may also be blob: (the picked files) and data: URLs. No inline code,
# no framing, no form posts: the key a person pastes can only travel in fetch() calls to this server.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",  # revalidate (ETag): an upgraded server serves its own console at once
}


class _WithHeaders:
    """Adds ``HEADERS`` to every response the wrapped app sends (its 404s go through the app's error handler)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.raw = [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.raw]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _index(_request: Request) -> FileResponse:
    return FileResponse(STATIC / "index.html", headers=HEADERS)


def mount_console(app: Starlette) -> None:
    """Serve the console: ``/`` is its page, ``/console/*`` its scripts and styles."""
    app.add_route("/", _index, methods=["GET", "HEAD"], include_in_schema=False)
    app.mount("/console", _WithHeaders(StaticFiles(directory=STATIC)), name="console")
