"""Pages on the API port: the OpenAPI document, Swagger UI and the live dashboard.

Everything is served from this machine: Swagger UI comes from the ``swagger-ui-bundle`` package
(mounted at ``/static/swagger-ui/``), the dashboard from ``api/static/`` (mounted at
``/static/``). No CDN, no build step. These paths are public (see ``PUBLIC_PATHS``): the pages
ask for the API token and send it with every API call they make.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from swagger_ui_bundle import swagger_ui_path

from api.asyncapi import asyncapi_json
from api.openapi import openapi_json
from server.keys import SECURITY

STATIC_DIR = Path(__file__).with_name("static")
SWAGGER_PREFIX = "/static/swagger-ui"
DEFAULT_WS_PORT = 9004

DOCS_HTML = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Switchboard API docs</title>
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <link rel="icon" href="{SWAGGER_PREFIX}/favicon-32x32.png">
  <link rel="stylesheet" href="{SWAGGER_PREFIX}/swagger-ui.css">
  <link rel="stylesheet" href="/static/docs.css">
</head>
<body>
  <header class="sb-docs-bar">
    <strong>Switchboard</strong> HTTP API
    <a href="/dashboard">dashboard</a> <a href="/openapi.json">openapi.json</a>
  </header>
  <div id="swagger-ui"></div>
  <script src="{SWAGGER_PREFIX}/swagger-ui-bundle.js"></script>
  <script src="{SWAGGER_PREFIX}/swagger-ui-standalone-preset.js"></script>
  <script src="/static/docs.js"></script>
</body>
</html>
"""


async def docs(request: web.Request) -> web.Response:
    return web.Response(text=DOCS_HTML, content_type="text/html",
                        headers={"Cache-Control": "no-cache"})


async def dashboard(request: web.Request) -> web.Response:
    """The dashboard page, with this gateway's WebSocket port as the stream's default."""
    port = request.app[SECURITY].settings.ws_port or DEFAULT_WS_PORT
    html = (STATIC_DIR / "dashboard.html").read_text(encoding="utf-8")
    return web.Response(text=html.replace("{{ws_port}}", str(port)), content_type="text/html",
                        headers={"Cache-Control": "no-cache"})


async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/dashboard")


#: The Swagger UI files the docs page uses (and their source maps, for browser dev tools).
SWAGGER_FILES = frozenset({
    "swagger-ui.css", "swagger-ui.css.map", "swagger-ui-bundle.js",
    "swagger-ui-bundle.js.map", "swagger-ui-standalone-preset.js",
    "swagger-ui-standalone-preset.js.map", "favicon-16x16.png", "favicon-32x32.png",
})
SWAGGER_DIR = Path(str(swagger_ui_path))


def _file_response(root: Path, relative: str) -> web.FileResponse:
    """``root/relative`` when it is a file inside ``root``; a JSON 404 otherwise (never a
    traversal outside ``root``, whatever the path holds)."""
    try:
        base = root.resolve()
        candidate = (base / relative).resolve()
        if candidate.is_relative_to(base) and candidate.is_file():
            return web.FileResponse(candidate, headers={"Cache-Control": "no-cache"})
    except (OSError, ValueError):
        pass
    raise web.HTTPNotFound(text=f"no such file: {relative[:200]}")


async def static_file(request: web.Request) -> web.FileResponse:
    """``/static/{path}``: the dashboard's and the docs page's own files (``api/static``)."""
    return _file_response(STATIC_DIR, request.match_info["path"])


async def swagger_file(request: web.Request) -> web.FileResponse:
    """``/static/swagger-ui/{path}``: Swagger UI from the ``swagger-ui-bundle`` package."""
    name = request.match_info["path"]
    if name not in SWAGGER_FILES:
        raise web.HTTPNotFound(text=f"no such file: {name[:200]}")
    return _file_response(SWAGGER_DIR, name)


def setup_ui(app: web.Application) -> None:
    """Register ``/openapi.json``, ``/asyncapi.json``, ``/docs``, ``/dashboard``, ``/`` and the static files."""
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/asyncapi.json", asyncapi_json)
    app.router.add_get("/docs", docs)
    app.router.add_get("/dashboard", dashboard)
    app.router.add_get("/", root)
    app.router.add_get(SWAGGER_PREFIX + "/{path:.+}", swagger_file)
    app.router.add_get("/static/{path:.+}", static_file)
