"""Helpers shared by the benchmark's reference servers (bare aiohttp and python-socketio)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiohttp import web


def now_iso() -> str:
    """ISO-8601 UTC timestamp with millisecond precision, like Switchboard's envelopes."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def server_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ws-port", type=int, required=True)
    parser.add_argument("--api-port", type=int, required=True)
    parser.add_argument("--token", default="")
    parser.add_argument("--heartbeat", type=float, default=30.0)
    return parser.parse_args()


def json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


async def serve_two_apps(
    ws_app: web.Application,
    api_app: web.Application,
    host: str,
    ws_port: int,
    api_port: int,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve both applications until SIGINT/SIGTERM, then clean up (bounded)."""
    runners = [web.AppRunner(ws_app, access_log=None), web.AppRunner(api_app, access_log=None)]
    for runner in runners:
        await runner.setup()
    await web.TCPSite(runners[0], host, ws_port, backlog=4096).start()
    await web.TCPSite(runners[1], host, api_port, backlog=4096).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if on_shutdown is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await on_shutdown()
    for runner in runners:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await runner.cleanup()
