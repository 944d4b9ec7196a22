"""/docs and /redoc without a CDN: Swagger UI and ReDoc served from the package.

The assets under ../static come from the Swagger UI (Apache-2.0) and ReDoc (MIT) releases,
as packaged by fastapi-offline 1.7.7 (MIT); see static/THIRD_PARTY_NOTICES.md.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_ROUTE = "/static"


def install_offline_docs(app: FastAPI) -> None:
    """Mount the assets and the two documentation pages (the app must have docs_url=None)."""
    app.mount(STATIC_ROUTE, StaticFiles(directory=STATIC_DIR), name="static")

    def prefix(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = prefix(request)
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
            swagger_js_url=f"{root}{STATIC_ROUTE}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_ROUTE}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_ROUTE}/favicon.png",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = prefix(request)
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{STATIC_ROUTE}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{STATIC_ROUTE}/favicon.png",
            with_google_fonts=False,
        )
