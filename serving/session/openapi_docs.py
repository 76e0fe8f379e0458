"""The session API's browsable docs (``/docs``, ``/redoc``), served whole by the service itself.

FastAPI's own pages load Swagger UI and ReDoc from a public CDN, which the machines fitml runs
on often cannot reach: the page stays blank. Here their JavaScript, CSS and icon come from the
installed ``fastapi-offline`` package (pinned in the locks, which ships Swagger UI 5's and
ReDoc's dist files) and are served under :data:`ASSETS_URL`; nothing on the pages reaches
past the service (no CDN, no Google fonts, no online validator badge), and the pages' Content
Security Policy (:data:`CONTENT_SECURITY_POLICY`) has the browser refuse anything that would
(ReDoc always asks the Redocly CDN for its footer logo: refused, the footer keeps its text).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Final

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL: Final = "/docs"
REDOC_URL: Final = "/redoc"
ASSETS_URL: Final = "/docs/assets"
"""Where the Swagger UI / ReDoc files are served (outside the API prefix: no key needed)."""
ASSET_PACKAGE: Final = "fastapi_offline"
ASSETS: Final = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'self'"
)
"""Only the service itself: the pages' inline start-up script and styles, the served assets,
the OpenAPI document and, for "Try it out", the API; ReDoc's search runs in a blob worker."""
SWAGGER_UI_PARAMETERS: Final = {
    "validatorUrl": None,  # no badge fetched from validator.swagger.io
    "persistAuthorization": True,  # the API key survives a reload of the page
}


def assets_dir() -> Path:
    """The folder of the installed Swagger UI and ReDoc files.

    Raises:
        RuntimeError: the package is missing or lacks a file (names the package and the fix).
    """
    try:
        directory = Path(str(files(ASSET_PACKAGE) / "static"))
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            f"the session API docs need the {ASSET_PACKAGE!r} package (Swagger UI's files): "
            "install the locked requirements (`make setup`), or start the service with "
            "FITML_SESSION_DOCS=0"
        ) from exc
    missing = [name for name in ASSETS if not (directory / name).is_file()]
    if missing:
        raise RuntimeError(
            f"{directory} lacks {', '.join(missing)}: reinstall {ASSET_PACKAGE!r} from the lock "
            "(`make setup`), or start the service with FITML_SESSION_DOCS=0"
        )
    return directory


def add_docs(app: FastAPI) -> None:
    """Serve ``/docs`` (Swagger UI), its OAuth2 redirect page and ``/redoc`` from ``app`` itself.

    ``app`` must have been created with ``docs_url=None, redoc_url=None`` and an
    ``openapi_url``; the pages read the document from there.
    """
    if app.openapi_url is None:
        raise ValueError("add_docs needs the app's openapi_url (the pages render that document)")
    openapi_url = app.openapi_url
    oauth2_redirect_url = f"{DOCS_URL}/oauth2-redirect"
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")

    def own_only(page: HTMLResponse) -> HTMLResponse:
        page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return page

    def asset(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '')}{ASSETS_URL}/{name}"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{oauth2_redirect_url}",
            swagger_js_url=asset(request, "swagger-ui-bundle.js"),
            swagger_css_url=asset(request, "swagger-ui.css"),
            swagger_favicon_url=asset(request, "favicon.png"),
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )
        return own_only(page)

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=asset(request, "redoc.standalone.js"),
            redoc_favicon_url=asset(request, "favicon.png"),
            with_google_fonts=False,
        )
        return own_only(page)
