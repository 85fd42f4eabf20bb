"""A bare aiohttp broadcast server: the benchmark's baseline.

It exposes the same surface as Switchboard for the benchmark scenarios and nothing more:
no session registry, no history, no seq, no per-connection queues, no handler dispatch.

- WebSocket ``ws://HOST:WS_PORT/?client_id=ID``: first frame ``connection_established``;
  ``{"type": "ping"}`` is answered with ``{"type": "pong", "reply_to": ...}``.
- HTTP API on ``API_PORT`` (``Authorization: Bearer TOKEN``):
  ``POST /broadcast`` {message_type, data} -> {recipients, message_id};
  ``POST /send_message`` {client_id, content, data?} -> {status: "delivered", message_id};
  ``GET /health``.

A broadcast is serialized once and the same bytes are written to every socket; the loop
awaits ``send_frame``, which only suspends when a transport's buffer is over its limit.

Run: ``python -m bench.bare_server --ws-port 9104 --api-port 9105 --token t``.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from bench.common import BenchApi, hello_frame, now_iso, run_reference_server

TEXT = WSMsgType.TEXT


class BareGateway(BenchApi):
    def __init__(self, token: str, heartbeat: float) -> None:
        super().__init__(token)
        self.clients: dict[str, web.WebSocketResponse] = {}
        self.heartbeat = heartbeat or None

    # ---- WebSocket side -------------------------------------------------------------
    async def ws_handler(self, request: web.Request) -> web.StreamResponse:
        client_id = request.query.get("client_id") or uuid.uuid4().hex
        ws = web.WebSocketResponse(heartbeat=self.heartbeat, max_msg_size=1 << 20)
        await ws.prepare(request)
        self.clients[client_id] = ws
        try:
            await ws.send_frame(orjson.dumps(hello_frame(client_id)), TEXT)
            async for msg in ws:
                if msg.type is not TEXT:
                    continue
                try:
                    frame = orjson.loads(msg.data)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(frame, dict) and frame.get("type") in ("ping", "heartbeat"):
                    pong = {
                        "type": "pong",
                        "data": {},
                        "reply_to": frame.get("message_id"),
                        "timestamp": now_iso(),
                    }
                    await ws.send_frame(orjson.dumps(pong), TEXT)
        except ConnectionError:
            pass
        finally:
            if self.clients.get(client_id) is ws:
                del self.clients[client_id]
        return ws

    # ---- HTTP API (bench.common.BenchApi) -------------------------------------------
    async def deliver_all(self, frame: dict[str, Any]) -> int:
        data = orjson.dumps(frame)  # serialised once, the same bytes to every socket
        recipients = 0
        for ws in list(self.clients.values()):
            try:
                await ws.send_frame(data, TEXT)
            except ConnectionError:
                continue
            recipients += 1
        return recipients

    async def deliver_to(self, client_id: str, frame: dict[str, Any]) -> str:
        ws = self.clients.get(client_id)
        if ws is None:
            return "unknown"
        try:
            await ws.send_frame(orjson.dumps(frame), TEXT)
        except ConnectionError:
            return "gone"
        return "delivered"

    def connected(self) -> int:
        return len(self.clients)

    async def close_all(self) -> None:
        await asyncio.gather(
            *(ws.close(code=1001) for ws in list(self.clients.values())), return_exceptions=True
        )


def build_apps(gw: BareGateway) -> tuple[web.Application, web.Application]:
    ws_app = web.Application()
    ws_app.router.add_get("/", gw.ws_handler)
    ws_app.router.add_get("/ws", gw.ws_handler)
    api_app = web.Application(client_max_size=1 << 20)
    gw.add_routes(api_app)
    return ws_app, api_app


def main() -> None:
    run_reference_server("bare aiohttp broadcast server (benchmark baseline)", BareGateway,
                         build_apps)


if __name__ == "__main__":
    main()
