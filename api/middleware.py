"""What every HTTP API request goes through: JSON errors, authentication, rate limiting,
request metrics and logging (:func:`guard_routes` wraps every route of the API app in it;
aiohttp middlewares are not used, see there why).

Every error, ours or aiohttp's (404, 405, 413), leaves as ``{"error": {"code", "message"}}``;
an unexpected exception is logged with its traceback and answered 500 without one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import structlog
from aiohttp import hdrs, web

from server.errors import StartupError, SwitchboardError
from server.metrics import API_COUNTS

if TYPE_CHECKING:
    from aiohttp.web_urldispatcher import AbstractRoute
    from multidict import MultiMapping

    from server.security import Security

log = structlog.get_logger("switchboard.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

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


def guard_routes(app: web.Application, security: Security) -> None:
    """Put every route of the API app behind :func:`_guarded` (call it once every route is
    added, CORS preflights included) and answer what no route matches with a JSON 404/405.

    Why not an aiohttp middleware: aiohttp adds its own ``_fix_request_current_app``
    middleware to every app that has any, and finds the chain per request (an lru_cache
    keyed by the app): about ten Python calls per request on top of ours, on a path measured
    in calls (``bench/api_calls.py``, docs/BENCHMARKS.md "Issue 17"). Wrapping each route's
    handler once, here, gives every request the same single path with what it needs bound
    in advance: the app's Security, the route's metrics label and whether it is public or
    streams its body. aiohttp's own 404/405 are raised outside any handler, so a catch-all
    resource (:class:`_EveryPath`, registered last: aiohttp tries it only after every other
    route) answers them. Two aiohttp internals are used: handlers are swapped on its route
    objects (``_handler``, checked as it is set: another aiohttp stops start-up) and the
    catch-all overrides ``DynamicResource._match`` (were it renamed, 404/405 would lose their
    JSON body: ``tests/api/test_errors.py`` would fail). :func:`check_guarded` refuses to
    start an app with a route left unguarded.
    """
    router = app.router
    for route in router.routes():
        _swap(route, _guarded(route.handler, security, *_facts(route)))
    every_path = _EveryPath("/{path}")
    router.register_resource(every_path)
    _swap(every_path.add_route(hdrs.METH_ANY, _no_route),
          _guarded(_no_route, security, "unmatched", None, False))
    app.on_startup.append(check_guarded)


def _swap(route: AbstractRoute, handler: Handler) -> None:
    route._handler = handler  # type: ignore[attr-defined] # aiohttp's, see guard_routes
    if route.handler is not handler:
        raise StartupError(f"aiohttp {aiohttp.__version__} keeps a route's handler elsewhere "
                           f"than _handler; install the aiohttp pinned in setup.cfg")


def _facts(route: AbstractRoute) -> tuple[str, bool | None, bool]:
    """A route's metrics label (its canonical path), whether it is public (``None``: it
    depends on the path, as under /static/; a plain resource answers exactly its own path)
    and whether its handler reads its body as it arrives."""
    resource = route.resource
    assert resource is not None
    label = resource.canonical
    public = is_public(label) if isinstance(resource, web.PlainResource) else None
    return label, public, route.handler in STREAMING_HANDLERS


async def check_guarded(app: web.Application) -> None:
    """At start-up: every route of the API app goes through :func:`_guarded` (a route added
    after :func:`guard_routes` would skip the token check)."""
    unguarded = [f"{route.method} {route.resource.canonical if route.resource else '?'}"
                 for route in app.router.routes()
                 if not getattr(route.handler, "api_guarded", False)]
    if unguarded:
        raise StartupError(f"API routes added after guard_routes(): {', '.join(unguarded)}")


class _EveryPath(web.DynamicResource):
    """The catch-all resource: matches every request target, the asterisk form of
    ``OPTIONS *`` included (which no path pattern matches). aiohttp tries it last: its
    index key is "/", where every walk of the router ends."""

    def _match(self, path: str) -> dict[str, str] | None:
        return {"path": path}


async def _no_route(request: web.Request) -> web.StreamResponse:
    """What no route matched: 405 naming the methods the path has (as aiohttp's own), else
    404. Only error paths come here."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is request.match_info.route.resource:
            continue  # the catch-all itself
        _, methods = await resource.resolve(request)
        allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


def _guarded(handler: Handler, security: Security, route_name: str, public: bool | None,
             streaming: bool) -> Handler:
    """``handler`` behind the API's one per-request path: JSON errors, the route's metrics
    and the debug access line around :func:`_admitted` (the repeated-query check, the token,
    the rate limit, the body read under its deadline)."""

    @functools.wraps(handler)
    async def api_request(request: web.Request) -> web.StreamResponse:
        started = perf_counter()
        status = 500
        try:
            response = await _admitted(request, handler, security, public, streaming)
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

    api_request.api_guarded = True  # type: ignore[attr-defined]
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
                    public: bool | None, streaming: bool) -> web.StreamResponse:
    """The handler's response if the request may run, its body read first under a deadline
    (unless the handler ``streaming`` reads it itself); the refusal otherwise (401/403
    token, 429 rate, 422 repeated query parameter). ``public``: whether the route needs no
    token (``None``: :func:`is_public` of the path)."""
    if public is None:
        public = is_public(request.path)
    query = request.query
    if request.method == "OPTIONS" or public:
        return (len(query) > 1 and _repeated_query(query)) or await handler(request)
    refusal = (security.check_api_token(request) or security.check_api_rate(request)
               or (len(query) > 1 and _repeated_query(query)) or None)
    if refusal is not None:
        return refusal
    if not streaming and request.can_read_body:
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
