"""HTTP API middleware: JSON errors, authentication, rate limiting, request logging.

Every error, ours or aiohttp's (404, 405, 413), leaves as ``{"error": {"code", "message"}}``;
an unexpected exception is logged with its traceback and answered 500 without one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from aiohttp import web

from server.errors import SwitchboardError
from server.metrics import API_COUNTS

if TYPE_CHECKING:
    from aiohttp.web_urldispatcher import AbstractRoute
    from multidict import MultiMapping

    from server.security import Security

log = structlog.get_logger("switchboard.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

#: Routes anyone may call without the token: liveness and readiness probes, the docs, the
#: WebSocket protocol (/asyncapi.json), the dashboard's page (which asks for the token itself),
#: the browser client it imports (public code) and their static files. The one
#: source for every list of public routes: the OpenAPI document and its /docs page are built
#: from it, and a test holds the README and docs/SECURITY.md to :func:`public_routes_text`.
PUBLIC_ROUTES = ("/health", "/healthz", "/ready", "/docs", "/openapi.json", "/asyncapi.json",
                 "/dashboard", "/switchboard.js", "/switchboard.d.ts", "/frames.d.ts", "/")
PUBLIC_PREFIXES = ("/static/",)
PUBLIC_PATHS = frozenset(PUBLIC_ROUTES)


def is_public(path: str) -> bool:
    """Whether ``path`` is served without the API token."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def public_routes_text() -> str:
    """The public routes as the docs list them: "`/health`, … and `/static/…`"."""
    items = [f"`{path}`" for path in PUBLIC_ROUTES]
    items += [f"`{prefix}…`" for prefix in PUBLIC_PREFIXES]
    return ", ".join(items[:-1]) + " and " + items[-1]

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 406: "not_acceptable", 408: "request_timeout",
               413: "payload_too_large", 415: "unsupported_media_type", 429: "rate_limited",
               503: "unavailable"}


def json_error(status: int, code: str, message: str, *, headers: Any = None,
               **details: Any) -> web.Response:
    body = {"error": {"code": code, "message": message, **details}}
    return web.Response(body=orjson.dumps(body), status=status,
                        content_type="application/json", headers=headers)


def api_middleware(security: Security) -> Middleware:
    """The API app's one middleware (bound to its :class:`Security`): on every request, JSON
    errors, the route's metrics and the debug access line around :func:`_admitted` (the
    repeated-query check, the token, the rate limit, the body read under its deadline).

    One middleware, not one per concern: each level of aiohttp's middleware chain is a
    coroutine call per request, and the unicast path is measured in Python calls
    (``bench/api_calls.py``, docs/BENCHMARKS.md). This is the API's one per-request path, so
    what it needs is at hand without a lookup per request: the app's Security (no
    ``request.app[...]``), and each route's metrics label, found once per route and kept.
    """
    #: aiohttp's route object -> (its metrics label, whether it is public: ``None`` when that
    #: depends on the path, as under /static/). Only routes the app has are kept: a 404/405
    #: gets a new SystemRoute each time (labelled "unmatched", public by its path).
    known: dict[AbstractRoute, tuple[str, bool | None]] = {}

    @web.middleware
    async def api_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = perf_counter()
        route = request.match_info.route
        facts = known.get(route)
        if facts is None:
            resource = route.resource
            if resource is None:
                facts = ("unmatched", None)
            else:
                # A plain resource answers exactly one path: its canonical one.
                public = (is_public(resource.canonical)
                          if isinstance(resource, web.PlainResource) else None)
                facts = known[route] = (resource.canonical, public)
        route_name, public = facts
        status = 500
        try:
            response = await _admitted(request, handler, security, public)
            status = response.status
            return response
        except SwitchboardError as exc:
            status = exc.http_status
            return json_error(status, exc.code, exc.message, **exc.details)
        except web.HTTPException as exc:
            status = exc.status
            if status < 400:
                raise
            return _http_error(request, exc, security)
        except Exception:
            log.exception("api_crashed", method=request.method, path=request.path)
            return json_error(500, "internal_error", "internal server error")
        finally:
            elapsed = perf_counter() - started
            API_COUNTS.done(request.method, route_name, status, elapsed)
            if _access_log.isEnabledFor(logging.DEBUG):  # off by default: no event built
                log.debug("api_request", method=request.method, path=request.path,
                          status=status, ms=round(elapsed * 1000, 3))

    return api_request


#: Asked whether debug is on before the access line is built (as ``server.gateway`` does).
_access_log = logging.getLogger("switchboard.api")


def _http_error(request: web.Request, exc: web.HTTPException, security: Security
                ) -> web.Response:
    """aiohttp's own 4xx/5xx (404, 405, 413, ...) as a JSON error that says what to do."""
    status = exc.status
    message = exc.text if exc.text and not exc.text.startswith(f"{status}:") else exc.reason
    if status == 413:
        message = (f"request body too large (limit "
                   f"{security.settings.api_max_body} bytes)")
    elif status == 404 and message == "Not Found":
        message = f"no route {request.method} {request.path}; see /docs for the API"
    elif status == 405:
        allowed = exc.headers.get("Allow", "")
        message = f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
    headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
    return json_error(status, _HTTP_CODES.get(status, "http_error"), message, headers=headers)


#: Handlers that read their body as it arrives (``POST /stream/{client_id}``): the middleware
#: does not pre-read it; they enforce their own size and idle limits.
STREAMING_HANDLERS: set[Handler] = set()


def streams_body(handler: Handler) -> Handler:
    """Mark a route handler as reading its request body incrementally (see above)."""
    STREAMING_HANDLERS.add(handler)
    return handler


async def _admitted(request: web.Request, handler: Handler, security: Security,
                    public: bool | None) -> web.StreamResponse:
    """The handler's response if the request may run, its body read first under a deadline;
    the refusal otherwise (401/403 token, 429 rate, 422 repeated query parameter).
    ``handler`` is the route's own (this is the only middleware: nothing wraps it);
    ``public``: whether the route needs no token (``None``: :func:`is_public` of the path)."""
    if public is None:
        public = is_public(request.path)
    query = request.query
    if request.method == "OPTIONS" or public:
        return (len(query) > 1 and _repeated_query(query)) or await handler(request)
    refusal = (security.check_api_token(request) or security.check_api_rate(request)
               or (len(query) > 1 and _repeated_query(query)) or None)
    if refusal is not None:
        return refusal
    if request.can_read_body and handler not in STREAMING_HANDLERS:
        # Read (and cache) the body under a deadline: a client trickling its body cannot hold
        # a handler forever (slow POST). Over API_MAX_BODY, read() raises 413. A body that
        # came whole with the headers (the common small request) has nothing to wait for:
        # no timer is armed for it.
        if request.content.is_eof():
            await request.read()
            return await handler(request)
        try:
            async with asyncio.timeout(security.settings.request_body_timeout):
                await request.read()
        except TimeoutError:
            response = json_error(408, "request_timeout",
                                  f"request body not received within "
                                  f"{security.settings.request_body_timeout:g}s")
            response.force_close()
            return response
    return await handler(request)


def _repeated_query(query: MultiMapping[str]) -> web.Response | None:
    """No API query parameter takes several values: ``?limit=1&limit=2`` is a 422 naming it,
    not a silent pick of the first (asked only when there are several parameters)."""
    seen: set[str] = set()
    for name, _ in query.items():
        if name in seen:
            return json_error(422, "invalid_field",
                              f"query parameter {name[:64]} given more than once",
                              field=name[:64])
        seen.add(name)
    return None
