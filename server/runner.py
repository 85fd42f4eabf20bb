"""Running the gateway: one AppRunner + site per app, signals, graceful shutdown.

Both ports are bound before anything else starts (the broker, background tasks): a port that
is taken stops start-up with one line naming the variable to change, before any resource was
opened or any ``*_started`` event logged.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import ipaddress
import signal
import socket
import sys
from typing import Any

import structlog
from aiohttp import web

from server.app import create_apps
from server.config import Settings
from server.logging_setup import url_for_logs

log = structlog.get_logger("switchboard")
#: Listen backlog (aiohttp's default).
BACKLOG = 128


def runner_options(settings: Settings) -> dict[str, Any]:
    """``AppRunner`` options shared by both ports (tests start their servers with them too).

    * ``access_log=None``: aiohttp's access log would print request lines, and WebSocket
      clients may carry tokens in query strings (``?token=``, ``?session_token=``).
    * ``keepalive_timeout=REQUEST_HEADER_TIMEOUT``: aiohttp arms this timer when a connection
      opens and again after each response, and data trickling in does not re-arm it; a
      connection still waiting for complete request headers when it fires is closed. So it
      bounds both the header read (slowloris) and idle keep-alive time. After a WebSocket
      upgrade the socket is governed by WS_HEARTBEAT and WS_TIMEOUT instead.
    * ``lingering_time``: after a refused request (401, 408, 413) aiohttp drains the unread
      rest of its body before closing; that drain is bounded by the same timeout (at most the
      aiohttp default of 10 s). Slow bodies are cut off by REQUEST_BODY_TIMEOUT (API).
    """
    return {"access_log": None, "keepalive_timeout": settings.request_header_timeout,
            "lingering_time": min(10.0, settings.request_header_timeout)}


def listen_sockets(host: str, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """Bind (not yet accept on) every address ``host`` resolves to, as asyncio's
    ``create_server`` would: SO_REUSEADDR, SO_REUSEPORT when asked, IPv6 sockets IPv6-only."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def bind_error(exc: OSError, host: str, port: int, app: str) -> str:
    """One line for a failed bind, naming the variable to change (``app`` is WS or API)."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    why = (exc.strerror or str(exc)).lower()
    if isinstance(exc, socket.gaierror):
        return f"switchboard: cannot resolve {app}_HOST={host} ({why}); set {app}_HOST"
    if exc.errno == errno.EADDRINUSE:
        advice = (f"another process (another Switchboard?) listens there; stop it or set "
                  f"{app}_PORT to a free port")
    elif exc.errno == errno.EACCES:
        advice = (f"ports below 1024 need privileges (CAP_NET_BIND_SERVICE); set {app}_PORT "
                  f"to 1024 or above")
    elif exc.errno == errno.EADDRNOTAVAIL:
        advice = (f"{host} is not an address of this machine; set {app}_HOST to one of its "
                  f"interfaces (or 0.0.0.0)")
    else:
        advice = f"check {app}_HOST and {app}_PORT"
    return f"switchboard: cannot listen on {where} ({app}_HOST:{app}_PORT): {why}; {advice}"


def display_host(host: str) -> str:
    """The host to put in a URL a person can click: loopback for a wildcard bind (``0.0.0.0``
    serves 127.0.0.1 too), IPv6 literals in brackets, anything else as it is."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    return f"[{address}]" if address.version == 6 else str(address)


def start_up_urls(settings: Settings) -> dict[str, str]:
    """Where a person on this machine reaches the gateway: socket, API, docs, dashboard."""
    api = f"http://{display_host(settings.effective_api_host)}:{settings.api_port}"
    return {"websocket": f"ws://{display_host(settings.ws_host)}:{settings.ws_port}/",
            "api": f"{api}/", "docs": f"{api}/docs", "dashboard": f"{api}/dashboard"}


def _bind(host: str, port: int, app: str, reuse_port: bool) -> list[socket.socket]:
    try:
        return listen_sockets(host, port, reuse_port=reuse_port)
    except OSError as exc:
        raise SystemExit(bind_error(exc, host, port, app)) from None


async def serve(settings: Settings, *, reuse_port: bool = False,
                stop: asyncio.Event | None = None) -> None:
    """Serve both apps until SIGINT/SIGTERM (or ``stop`` is set), then shut down gracefully:
    stop listening, close every socket with 1001, let in-flight HTTP requests finish."""
    api_host = settings.effective_api_host
    ws_sockets = _bind(settings.ws_host, settings.ws_port, "WS", reuse_port)
    try:
        api_sockets = _bind(api_host, settings.api_port, "API", reuse_port)
    except SystemExit:
        for sock in ws_sockets:
            sock.close()
        raise
    ws_app, api_app = create_apps(settings)
    ws_runner = web.AppRunner(ws_app, handle_signals=False,
                              shutdown_timeout=settings.shutdown_timeout,
                              **runner_options(settings))
    api_runner = web.AppRunner(api_app, handle_signals=False,
                               shutdown_timeout=settings.shutdown_timeout,
                               **runner_options(settings))
    await ws_runner.setup()
    await api_runner.setup()
    for runner, sockets in ((ws_runner, ws_sockets), (api_runner, api_sockets)):
        for sock in sockets:
            await web.SockSite(runner, sock, backlog=BACKLOG).start()

    # Everything start-up made (modules, both apps, the settings: ~60,000 objects the cyclic
    # collector tracks) lives as long as the process. Frozen out of the collector, it is no
    # longer walked by every full collection, which paused the event loop (every socket) for
    # ~22 ms on an idle gateway here, and now takes ~0 (docs/BENCHMARKS.md, "Full GC pauses").
    gc.collect()
    gc.freeze()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("switchboard_started", **start_up_urls(settings),
             listening=f"{settings.ws_host}:{settings.ws_port} (WebSocket), "
                       f"{api_host}:{settings.api_port} (API)",
             broker=url_for_logs(settings.broker_url), api_auth=bool(settings.api_token),
             sessions=settings.session_durability)
    await stop.wait()
    log.info("switchboard_stopping", sessions=settings.session_durability)
    # WebSocket side first: sockets get 1001, so pending call_tool requests fail fast.
    await ws_runner.cleanup()
    await api_runner.cleanup()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    log.info("switchboard_stopped")


def run(settings: Settings) -> int:
    """Run in this process with uvloop when installed; returns the exit status."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a default dependency on Linux
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))
    return 0


def main_exit(message: str) -> int:
    print(message, file=sys.stderr)
    return 2
