"""The browser client, served by the gateway: ``/switchboard.js`` (and its TypeScript
declarations) on the WebSocket port, so a page can ``import { Switchboard } from
"http://host:9004/switchboard.js"``.

The files live in ``clients/js/`` (the npm package); ``server/static/`` holds symlinks to them,
which setuptools copies into an installed package, so there is one copy to maintain. They are
read once at start-up and served with an ETag (``304`` on ``If-None-Match``), a day's cache
and ``Access-Control-Allow-Origin: *`` (module scripts are fetched with CORS; the code is
public).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).with_name("static")
CACHE_CONTROL = "public, max-age=86400"

#: URL path → (file in server/static, content type)
CLIENT_FILES: dict[str, tuple[str, str]] = {
    "/switchboard.js": ("switchboard.js", "text/javascript"),
    "/switchboard.d.ts": ("switchboard.d.ts", "application/typescript"),
    "/frames.d.ts": ("frames.d.ts", "application/typescript"),
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    assets = {}
    for path, (name, content_type) in CLIENT_FILES.items():
        body = (STATIC_DIR / name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[path] = Asset(body, content_type, etag)
    return assets


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = {c.strip().removeprefix("W/") for c in if_none_match.split(",")}
    return "*" in candidates or etag in candidates


def asset_handler(assets: dict[str, Asset], *, any_origin: bool
                  ) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def serve(request: web.Request) -> web.Response:
        asset = assets[request.path]
        headers = {"ETag": asset.etag, "Cache-Control": CACHE_CONTROL,
                   "X-Content-Type-Options": "nosniff"}
        if any_origin:
            headers["Access-Control-Allow-Origin"] = "*"
        if _matches(request.headers.get("If-None-Match"), asset.etag):
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, content_type=asset.content_type,
                            charset="utf-8", headers=headers)

    return serve


def add_client_routes(app: web.Application, *, any_origin: bool = True) -> None:
    """Serve the client's files on ``app`` (GET and HEAD). ``any_origin=False`` where the app's
    own CORS set-up answers cross-origin requests (the API port: ALLOWED_ORIGINS)."""
    handler = asset_handler(load_assets(), any_origin=any_origin)
    for path in CLIENT_FILES:
        app.router.add_get(path, handler)
