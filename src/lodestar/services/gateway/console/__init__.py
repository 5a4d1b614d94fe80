"""The Lodestar Console (a browser UI at ``/console``) and offline API docs.

The console is static files in this package: plain ES modules that call the
public REST API with the user's own token, so it can do nothing the API would
refuse. Its responses carry a strict Content-Security-Policy (scripts, styles
and connections from this origin only; no inline code), so that data shown by
the UI can never run as script even if a rendering bug let markup through.

Third-party scripts (the charting library, Swagger UI, Redoc) are pinned npm
packages that ``make console-assets`` fetches into ``static/vendor``; ``/docs``
and ``/redoc`` load theirs from there, so they render without internet.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

_log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
VENDOR_DIR = STATIC_DIR / "vendor"
CONSOLE_PATH = "/console"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "font-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The files change with the package; let the browser revalidate them.
    "Cache-Control": "no-cache",
}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _SecurityHeaders:
    """Adds the console's security headers to every response of ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_console(app: FastAPI, *, docs: bool) -> None:
    """Serve the console at ``/console/`` and, with ``docs``, Swagger UI at
    ``/docs`` and Redoc at ``/redoc`` from the vendored assets."""
    if not (VENDOR_DIR / "chartjs" / "chart.umd.min.js").is_file():
        _log.warning(
            "the console's vendored scripts are missing (run `make console-assets`); "
            "its charts and the API docs pages will not render"
        )
    static = StaticFiles(directory=STATIC_DIR, html=True)
    app.mount(CONSOLE_PATH, _SecurityHeaders(static), name="console")
    if docs:
        _install_docs(app)


def _install_docs(app: FastAPI) -> None:
    vendor = f"{CONSOLE_PATH}/vendor"
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} API",
            swagger_js_url=f"{vendor}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{vendor}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{vendor}/swagger-ui/favicon-32x32.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} API",
            redoc_js_url=f"{vendor}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{vendor}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )
