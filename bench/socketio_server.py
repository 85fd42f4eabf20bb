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

import uuid
from typing import Any
from urllib.parse import parse_qs

import socketio
from aiohttp import web

from bench.common import BenchApi, hello_frame, now_iso, run_reference_server


class SocketIOGateway(BenchApi):
    def __init__(self, token: str, heartbeat: float) -> None:
        super().__init__(token)
        self.sio = socketio.AsyncServer(
            async_mode="aiohttp",
            cors_allowed_origins="*",
            always_connect=True,
            max_http_buffer_size=1 << 20,
            ping_interval=heartbeat or 25,
        )
        self.sid_by_client: dict[str, str] = {}
        self.client_by_sid: dict[str, str] = {}
        self.sio.on("connect", self.on_connect)
        self.sio.on("disconnect", self.on_disconnect)
        self.sio.on("message", self.on_message)

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: object = None) -> None:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        client_id = (query.get("client_id") or [uuid.uuid4().hex])[0]
        self.sid_by_client[client_id] = sid
        self.client_by_sid[sid] = client_id
        await self.sio.emit("message", hello_frame(client_id), to=sid)

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

    # ---- HTTP API (bench.common.BenchApi) -------------------------------------------
    async def deliver_all(self, frame: dict[str, Any]) -> int:
        recipients = len(self.client_by_sid)
        await self.sio.emit("message", frame)
        return recipients

    async def deliver_to(self, client_id: str, frame: dict[str, Any]) -> str:
        sid = self.sid_by_client.get(client_id)
        if sid is None:
            return "unknown"
        await self.sio.emit("message", frame, to=sid)
        return "delivered"

    def connected(self) -> int:
        return len(self.client_by_sid)

    async def close_all(self) -> None:
        await self.sio.shutdown()


def build_apps(gw: SocketIOGateway) -> tuple[web.Application, web.Application]:
    ws_app = web.Application()
    gw.sio.attach(ws_app)
    api_app = web.Application(client_max_size=1 << 20)
    gw.add_routes(api_app)
    return ws_app, api_app


def main() -> None:
    run_reference_server("python-socketio (aiohttp) server with the benchmark's surface",
                         SocketIOGateway, build_apps)


if __name__ == "__main__":
    main()
