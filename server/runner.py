"""Running the gateway: one AppRunner + TCPSite per app, signals, graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import structlog
from aiohttp import web

from server.app import create_apps
from server.config import Settings

log = structlog.get_logger("switchboard")



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


async def serve(settings: Settings, *, reuse_port: bool = False,
                stop: asyncio.Event | None = None) -> None:
    """Serve both apps until SIGINT/SIGTERM (or ``stop`` is set), then shut down gracefully:
    stop listening, close every socket with 1001, let in-flight HTTP requests finish."""
    ws_app, api_app = create_apps(settings)
    ws_runner = web.AppRunner(ws_app, handle_signals=False,
                              shutdown_timeout=settings.shutdown_timeout,
                              **runner_options(settings))
    api_runner = web.AppRunner(api_app, handle_signals=False,
                               shutdown_timeout=settings.shutdown_timeout,
                               **runner_options(settings))
    await ws_runner.setup()
    await api_runner.setup()
    api_host = settings.effective_api_host
    try:
        await web.TCPSite(ws_runner, settings.ws_host, settings.ws_port,
                          reuse_port=reuse_port or None).start()
        await web.TCPSite(api_runner, api_host, settings.api_port,
                          reuse_port=reuse_port or None).start()
    except OSError as exc:
        await api_runner.cleanup()
        await ws_runner.cleanup()
        raise SystemExit(f"switchboard: cannot listen: {exc.strerror or exc}") from None

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("switchboard_started", websocket=f"ws://{settings.ws_host}:{settings.ws_port}/",
             api=f"http://{api_host}:{settings.api_port}/",
             broker=settings.broker_url.split("@")[-1], api_auth=bool(settings.api_token),
             docs=f"http://{api_host}:{settings.api_port}/docs")
    await stop.wait()
    log.info("switchboard_stopping")
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
