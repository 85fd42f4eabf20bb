"""python-socketio (aiohttp mode) server with the benchmark's surface.

Socket.IO carries every frame of the benchmark as the event ``"message"`` whose single
argument is the same JSON object Switchboard sends (``{"type": ..., "data": ...}``); on the
wire that is ``42["message",{...}]`` inside an engine.io v4 WebSocket frame.

- Socket.IO endpoint ``ws://HOST:WS_PORT/socket.io/?EIO=4&transport=websocket&client_id=ID``;
  on connect the server emits ``connection_established``; a ``{"type": "ping"}`` event is
  answered with ``{"type": "pong"}``.
- HTTP API on ``API_PORT``: the same ``POST /broadcast``, ``POST /send_message`` and
  ``GET /health`` as the bare server, implemented with ``sio.emit``.

python-socketio runs with its defaults (stdlib ``json``, ``async_handlers=True``, engine.io
pings every 25 s) except ``always_connect=True`` (the CONNECT ack precedes our first event)
and no CORS restriction. uvloop is installed as the event loop, as for the other targets.

Run: ``python -m bench.socketio_server --ws-port 9204 --api-port 9205 --token t``.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from typing import Any
from urllib.parse import parse_qs

import orjson
import socketio
from aiohttp import web

from bench.common import install_uvloop, json_response, now_iso, serve_two_apps, server_args


class SocketIOGateway:
    def __init__(self, token: str, heartbeat: float) -> None:
        self.sio = socketio.AsyncServer(
            async_mode="aiohttp",
            cors_allowed_origins="*",
            always_connect=True,
            max_http_buffer_size=1 << 20,
            ping_interval=heartbeat or 25,
        )
        self.sid_by_client: dict[str, str] = {}
        self.client_by_sid: dict[str, str] = {}
        self.auth = f"Bearer {token}" if token else ""
        self.sio.on("connect", self.on_connect)
        self.sio.on("disconnect", self.on_disconnect)
        self.sio.on("message", self.on_message)

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: object = None) -> None:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        client_id = (query.get("client_id") or [uuid.uuid4().hex])[0]
        self.sid_by_client[client_id] = sid
        self.client_by_sid[sid] = client_id
        await self.sio.emit(
            "message",
            {
                "type": "connection_established",
                "data": {
                    "client_id": client_id,
                    "session_token": secrets.token_urlsafe(16),
                    "resumed": False,
                },
                "message_id": uuid.uuid4().hex,
                "timestamp": now_iso(),
            },
            to=sid,
        )

    async def on_disconnect(self, sid: str, reason: object = None) -> None:
        client_id = self.client_by_sid.pop(sid, None)
        if client_id is not None and self.sid_by_client.get(client_id) == sid:
            del self.sid_by_client[client_id]

    async def on_message(self, sid: str, frame: object) -> None:
        if isinstance(frame, dict) and frame.get("type") in ("ping", "heartbeat"):
            await self.sio.emit(
                "message",
                {
                    "type": "pong",
                    "data": {},
                    "reply_to": frame.get("message_id"),
                    "timestamp": now_iso(),
                },
                to=sid,
            )

    # ---- HTTP API -------------------------------------------------------------------
    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        if self.auth and request.headers.get("Authorization") != self.auth:
            return _error(401, "unauthorized", "bad or missing bearer token")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "bad_json", "body is not JSON")
        if not isinstance(body, dict):
            return _error(422, "bad_body", "body must be an object")
        return body

    async def broadcast(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        message_type = body.get("message_type")
        data = body.get("data", {})
        if not isinstance(message_type, str) or not message_type:
            return _error(422, "message_type", "message_type must be a non-empty string")
        if not isinstance(data, dict):
            return _error(422, "data", "data must be an object")
        message_id = uuid.uuid4().hex
        recipients = len(self.client_by_sid)
        await self.sio.emit(
            "message",
            {"type": message_type, "data": data, "message_id": message_id, "timestamp": now_iso()},
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
            return _error(422, "client_id", "client_id and content must be strings")
        if not isinstance(extra, dict):
            return _error(422, "data", "data must be an object")
        sid = self.sid_by_client.get(client_id)
        if sid is None:
            return _error(404, "unknown_client", f"no client {client_id}")
        message_id = uuid.uuid4().hex
        await self.sio.emit(
            "message",
            {
                "type": body.get("message_type") or "message",
                "data": {**extra, "content": content},
                "message_id": message_id,
                "timestamp": now_iso(),
            },
            to=sid,
        )
        return json_response(orjson.dumps({"status": "delivered", "message_id": message_id}))

    async def health(self, request: web.Request) -> web.Response:
        return json_response(
            orjson.dumps({"status": "ok", "connected_clients": len(self.client_by_sid)})
        )

    async def close_all(self) -> None:
        await self.sio.shutdown()


def _error(status: int, code: str, message: str) -> web.Response:
    return json_response(orjson.dumps({"error": {"code": code, "message": message}}), status)


def build_apps(gw: SocketIOGateway) -> tuple[web.Application, web.Application]:
    ws_app = web.Application()
    gw.sio.attach(ws_app)
    api_app = web.Application(client_max_size=1 << 20)
    api_app.router.add_post("/broadcast", gw.broadcast)
    api_app.router.add_post("/send_message", gw.send_message)
    api_app.router.add_get("/health", gw.health)
    return ws_app, api_app


def main() -> None:
    args = server_args("python-socketio (aiohttp) server with the benchmark's surface")
    install_uvloop()
    gw = SocketIOGateway(args.token, args.heartbeat)
    ws_app, api_app = build_apps(gw)
    asyncio.run(
        serve_two_apps(ws_app, api_app, args.host, args.ws_port, args.api_port, gw.close_all)
    )


if __name__ == "__main__":
    main()
