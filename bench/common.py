"""Helpers shared by the benchmark's reference servers (bare aiohttp and python-socketio)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web


def now_iso() -> str:
    """ISO-8601 UTC timestamp with millisecond precision, like Switchboard's envelopes."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def hello_frame(client_id: str) -> dict[str, Any]:
    """The first frame every reference server sends, shaped like Switchboard's greeting."""
    return {
        "type": "connection_established",
        "data": {"client_id": client_id, "session_token": secrets.token_urlsafe(16),
                 "resumed": False},
        "message_id": uuid.uuid4().hex,
        "timestamp": now_iso(),
    }


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


def error_response(status: int, code: str, message: str) -> web.Response:
    return json_response(orjson.dumps({"error": {"code": code, "message": message}}), status)


class BenchApi:
    """The HTTP API both reference servers expose, identically: bearer auth, body checks and
    answers. A subclass only delivers (:meth:`deliver_all`, :meth:`deliver_to`) and counts
    (:meth:`connected`).

    ``POST /broadcast`` {message_type, data} -> {recipients, message_id};
    ``POST /send_message`` {client_id, content, data?, message_type?} ->
    {status: "delivered", message_id}; ``GET /health``.
    """

    def __init__(self, token: str) -> None:
        self.auth = f"Bearer {token}" if token else ""

    async def deliver_all(self, frame: dict[str, Any]) -> int:
        """Send ``frame`` to every client; returns how many it reached."""
        raise NotImplementedError

    async def deliver_to(self, client_id: str, frame: dict[str, Any]) -> str:
        """Send ``frame`` to one client: "delivered", "unknown" or "gone"."""
        raise NotImplementedError

    def connected(self) -> int:
        raise NotImplementedError

    def add_routes(self, api_app: web.Application) -> None:
        api_app.router.add_post("/broadcast", self.broadcast)
        api_app.router.add_post("/send_message", self.send_message)
        api_app.router.add_get("/health", self.health)

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        if self.auth and request.headers.get("Authorization") != self.auth:
            return error_response(401, "unauthorized", "bad or missing bearer token")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return error_response(400, "bad_json", "body is not JSON")
        if not isinstance(body, dict):
            return error_response(422, "bad_body", "body must be an object")
        return body

    async def broadcast(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        message_type = body.get("message_type")
        data = body.get("data", {})
        if not isinstance(message_type, str) or not message_type:
            return error_response(422, "message_type", "message_type must be a non-empty string")
        if not isinstance(data, dict):
            return error_response(422, "data", "data must be an object")
        message_id = uuid.uuid4().hex
        recipients = await self.deliver_all(
            {"type": message_type, "data": data, "message_id": message_id, "timestamp": now_iso()}
        )
        return json_response(orjson.dumps({"recipients": recipients, "message_id": message_id}))

    async def send_message(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        client_id = body.get("client_id")
        content = body.get("content")
        extra = body.get("data") or {}
        if not isinstance(client_id, str) or not isinstance(content, str):
            return error_response(422, "client_id", "client_id and content must be strings")
        if not isinstance(extra, dict):
            return error_response(422, "data", "data must be an object")
        message_id = uuid.uuid4().hex
        outcome = await self.deliver_to(client_id, {
            "type": body.get("message_type") or "message",
            "data": {**extra, "content": content},
            "message_id": message_id,
            "timestamp": now_iso(),
        })
        if outcome == "unknown":
            return error_response(404, "unknown_client", f"no client {client_id}")
        if outcome == "gone":
            return error_response(404, "unknown_client", f"client {client_id} went away")
        return json_response(orjson.dumps({"status": "delivered", "message_id": message_id}))

    async def health(self, request: web.Request) -> web.Response:
        return json_response(orjson.dumps({"status": "ok", "connected_clients": self.connected()}))


def run_reference_server(description: str, gateway_factory: Callable[[str, float], Any],
                         build_apps: Callable[[Any], tuple[web.Application, web.Application]],
                         ) -> None:
    """``main()`` of a reference server: parse the common arguments, install uvloop, serve
    both apps until SIGINT/SIGTERM (closing clients through the gateway's ``close_all``)."""
    args = server_args(description)
    install_uvloop()
    gw = gateway_factory(args.token, args.heartbeat)
    ws_app, api_app = build_apps(gw)
    asyncio.run(
        serve_two_apps(ws_app, api_app, args.host, args.ws_port, args.api_port, gw.close_all)
    )
