"""Application assembly: the WebSocket app and the HTTP API app over one gateway.

``create_apps(settings)`` returns both ``web.Application``s sharing one
:class:`~server.gateway.Gateway` (one session registry). :func:`create_gateway` is the only
place that knows whether this process is the whole gateway (``BROKER_URL=memory://``) or one
node of a cluster (``redis://``): it picks the implementations of the seams
(:mod:`server.seams`). Resources and background tasks (the backend, the expiry sweeper, the
sockets' liveness sweep, the metrics collector, webhook clients) live in the WebSocket app's
``cleanup_ctx``; its ``on_shutdown`` closes every socket with 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp_cors
import structlog
from aiohttp import hdrs, web

from api.middleware import guard_routes
from api.routes import routes as api_routes
from api.stream import routes as stream_routes
from api.ui import setup_ui
from handlers import build_router
from server.channel_history import ChannelRings
from server.channel_rules import load_channel_rules
from server.channel_webhooks import ChannelWebhooks
from server.client_js import add_client_routes
from server.config import Settings
from server.errors import CloseCode, ConfigError, Unavailable
from server.events import EventEmitter
from server.gateway import SYSTEM_CHANNELS, Gateway
from server.keys import (
    CHANNEL_RULES,
    CHANNEL_WEBHOOKS,
    CONNECTIONS,
    EVENTS,
    GATEWAY,
    PUBLIC_STATUS,
    ROUTER,
    SECURITY,
)
from server.metrics import BROKER_UP, LIVE_STATE
from server.router import MessageRouter
from server.seams import Backend, LocalBackend
from server.security import Security
from server.sessions import SessionRegistry
from server.tools import default_tools
from server.webhooks import webhooks_ctx
from server.ws import (
    WS_PATHS,
    PublicStatus,
    check_aiohttp,
    close_all,
    liveness_ctx,
    websocket_handler,
    ws_handlers,
    ws_status,
)

log = structlog.get_logger("switchboard.app")

#: How often sessions past SESSION_TTL are reclaimed.
SWEEP_INTERVAL = 1.0


def create_backend(settings: Settings, registry: SessionRegistry) -> Backend:
    """The seams for ``BROKER_URL``: one process (``memory://``), or one node of a cluster
    over Redis (``redis://``, ``rediss://``; imported only then)."""
    scheme = urlsplit(settings.broker_url).scheme
    if scheme == "memory":
        rings = ChannelRings(max_bytes=settings.channel_history_bytes,
                             max_channels=settings.channel_history_channels,
                             ttl=settings.channel_history_ttl)
        return LocalBackend(registry, node_id=settings.node_id,
                            idempotency_ttl=settings.idempotency_ttl, rings=rings)
    if scheme in ("redis", "rediss"):
        from server.cluster import RedisBackend

        return RedisBackend(settings, registry)
    raise ConfigError(f"BROKER_URL: unsupported scheme {scheme!r}")


def create_gateway(settings: Settings) -> Gateway:
    """The gateway for ``settings``: its seams, and the channel rules, the subscribe/publish
    webhooks and the lifecycle events emitter its channel service uses."""
    registry = SessionRegistry.from_settings(settings, SYSTEM_CHANNELS)
    rules = load_channel_rules(settings.channel_rules, system_channels=SYSTEM_CHANNELS,
                               allow_list=settings.channels,
                               subscribe_webhook=bool(settings.subscribe_webhook_url),
                               publish_webhook=bool(settings.publish_webhook_url))
    return Gateway(settings=settings, registry=registry,
                   backend=create_backend(settings, registry), tools=default_tools.copy(),
                   rules=rules, hooks=ChannelWebhooks(settings), events=EventEmitter(settings))


def create_apps(settings: Settings, gateway: Gateway | None = None,
                router: MessageRouter | None = None
                ) -> tuple[web.Application, web.Application]:
    """The WebSocket app and the API app, sharing one gateway and router."""
    check_aiohttp()
    gateway = gateway or create_gateway(settings)
    router = router or build_router()
    security = Security(settings)
    channels = gateway.channels
    shared: dict[web.AppKey[Any], Any] = {CHANNEL_RULES: channels.rules,
                                          CHANNEL_WEBHOOKS: channels.hooks,
                                          EVENTS: channels.events}

    ws_app = web.Application()
    ws_app[GATEWAY] = gateway
    ws_app[ROUTER] = router
    ws_app[SECURITY] = security
    ws_app[CONNECTIONS] = set()
    for key, value in shared.items():
        ws_app[key] = value
    ws_app[PUBLIC_STATUS] = PublicStatus()
    for path in WS_PATHS:
        ws_app.router.add_get(path, websocket_handler)
    ws_app.router.add_get("/ws/status", ws_status)
    ws_app.router.add_get("/ws/handlers", ws_handlers)
    # First in, last out: events emitted while the rest shuts down are still posted.
    ws_app.cleanup_ctx.append(shared[EVENTS].lifespan)
    add_client_routes(ws_app)  # /switchboard.js for pages that import the browser client
    ws_app.cleanup_ctx.append(_backend_ctx)
    ws_app.cleanup_ctx.append(_sweeper_ctx)
    ws_app.cleanup_ctx.append(liveness_ctx)  # WS_HEARTBEAT: one sweep, not a timer per socket
    ws_app.cleanup_ctx.append(_metrics_ctx)
    ws_app.cleanup_ctx.append(webhooks_ctx)
    ws_app.on_shutdown.append(_close_sockets)

    # No aiohttp middleware: every route is guarded by api.middleware.guard_routes (below).
    api_app = web.Application(client_max_size=settings.api_max_body)
    api_app[GATEWAY] = gateway
    api_app[ROUTER] = router
    api_app[SECURITY] = security
    for key, value in shared.items():
        api_app[key] = value
    api_app.add_routes(api_routes)
    setup_ui(api_app)
    add_client_routes(api_app, any_origin=False)  # the dashboard imports it same-origin
    api_app.add_routes(stream_routes)
    _setup_cors(api_app, settings)
    guard_routes(api_app, security)  # last: every route, CORS preflights included
    return ws_app, api_app


def _setup_cors(app: web.Application, settings: Settings) -> None:
    origins = settings.allowed_origins or ("*",)
    options = aiohttp_cors.ResourceOptions(
        allow_credentials=False, expose_headers="*",
        allow_headers=("Authorization", "Content-Type", "X-API-Key", "Idempotency-Key"),
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"], max_age=600)
    before = list(app.on_response_prepare)
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for route in list(app.router.routes()):
        if route.method != "HEAD":
            cors.add(route)
    # aiohttp-cors adds its response headers from an on_response_prepare handler that looks up
    # the request's route and its CORS config (about 30 Python calls) before it reads Origin;
    # a request without Origin gets no CORS headers (CORS 6.1.1), which is every server-to-
    # server API call. So its handler only runs for requests that carry an Origin.
    app.on_response_prepare[:] = [
        handler if handler in before else _when_origin(handler)
        for handler in app.on_response_prepare]


def _when_origin(handler: Callable[[web.Request, web.StreamResponse], Awaitable[None]]
                 ) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    async def cors_response_headers(request: web.Request, response: web.StreamResponse
                                    ) -> None:
        if hdrs.ORIGIN in request.headers:
            await handler(request, response)
    return cors_response_headers


async def _backend_ctx(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    backend = gateway.backend
    await backend.start()
    gateway.channels.start()
    log.info("backend_started", **backend.describe())
    if gateway.channels.rules.enabled:
        log.info("channel_rules", rules=gateway.channels.rules.describe())
    yield
    if not gateway.settings.sessions_survive_restart:
        # memory://: the sessions end with the process; their ends (and the leaves that go
        # with them) are reported like any other, for EVENTS_WEBHOOK_URL's backend.
        for client_id in list(gateway.registry.sessions):
            gateway.registry.end(client_id, "shutdown")
    # The membership changes are recorded (and announced) before the node leaves.
    await gateway.channels.close(min(gateway.settings.shutdown_timeout or 1.0, 5.0))
    await gateway.cancel_tasks()
    await backend.stop()


async def _sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]

    async def sweep_forever() -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                gateway.sweep()
            except Exception:  # housekeeping must never die
                log.exception("sweep_failed")

    task = asyncio.get_running_loop().create_task(sweep_forever(), name="session-sweeper")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    connections = app[CONNECTIONS]

    def sample() -> dict[str, float]:
        registry = gateway.registry
        BROKER_UP.set(1 if gateway.backend.healthy else 0)
        return {
            "connections": len(connections),
            "sessions": len(registry),
            "channels": len(registry.channels),
            "send_queue_frames": sum(c.queued_frames for c in connections),
            "send_queue_bytes": sum(c.queued_bytes for c in connections),
            "send_queue_max_frames": max((c.queued_frames for c in connections), default=0),
            "pending_tool_calls": len(gateway.pending_calls),
            "events_queued": app[EVENTS].pending,
        }

    LIVE_STATE.samplers.append(sample)
    yield
    LIVE_STATE.samplers.remove(sample)


def going_away_reason(settings: Settings) -> str:
    """The 1001 close reason at shutdown: resuming works only where sessions outlive the
    process (``BROKER_URL=redis://``); with ``memory://`` the reconnect starts a new session."""
    if settings.sessions_survive_restart:
        return CloseCode.GOING_AWAY.explanation
    return "server shutting down; reconnect (this server's sessions end with it)"


async def _close_sockets(app: web.Application) -> None:
    app[GATEWAY].accepting = False
    connections = app[CONNECTIONS]
    if connections:
        log.info("closing_sockets", count=len(connections), code=int(CloseCode.GOING_AWAY))
    await close_all(connections, CloseCode.GOING_AWAY,
                    reason=going_away_reason(app[SECURITY].settings))
    # Calls waiting for a client to come back (wait_for_client) get a clear answer now, not a
    # dropped HTTP connection when SHUTDOWN_TIMEOUT runs out.
    app[GATEWAY].fail_pending_calls(Unavailable(
        "server shutting down before the client answered; retry the call"))
