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
import secrets
import uuid

import orjson
from aiohttp import WSMsgType, web

from bench.common import install_uvloop, json_response, now_iso, serve_two_apps, server_args

TEXT = WSMsgType.TEXT


class BareGateway:
    def __init__(self, token: str, heartbeat: float) -> None:
        self.clients: dict[str, web.WebSocketResponse] = {}
        self.auth = f"Bearer {token}" if token else ""
        self.heartbeat = heartbeat or None

    # ---- WebSocket side -------------------------------------------------------------
    async def ws_handler(self, request: web.Request) -> web.StreamResponse:
        client_id = request.query.get("client_id") or uuid.uuid4().hex
        ws = web.WebSocketResponse(heartbeat=self.heartbeat, max_msg_size=1 << 20)
        await ws.prepare(request)
        self.clients[client_id] = ws
        hello = {
            "type": "connection_established",
            "data": {
                "client_id": client_id,
                "session_token": secrets.token_urlsafe(16),
                "resumed": False,
            },
            "message_id": uuid.uuid4().hex,
            "timestamp": now_iso(),
        }
        try:
            await ws.send_frame(orjson.dumps(hello), TEXT)
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

    # ---- HTTP API -------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        return not self.auth or request.headers.get("Authorization") == self.auth

    async def _body(self, request: web.Request) -> dict[str, object] | web.Response:
        if not self._authorized(request):
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
        frame = orjson.dumps(
            {"type": message_type, "data": data, "message_id": message_id, "timestamp": now_iso()}
        )
        recipients = 0
        for ws in list(self.clients.values()):
            try:
                await ws.send_frame(frame, TEXT)
            except ConnectionError:
                continue
            recipients += 1
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
        ws = self.clients.get(client_id)
        if ws is None:
            return _error(404, "unknown_client", f"no client {client_id}")
        message_id = uuid.uuid4().hex
        frame = orjson.dumps(
            {
                "type": body.get("message_type") or "message",
                "data": {**extra, "content": content},
                "message_id": message_id,
                "timestamp": now_iso(),
            }
        )
        try:
            await ws.send_frame(frame, TEXT)
        except ConnectionError:
            return _error(404, "unknown_client", f"client {client_id} went away")
        return json_response(orjson.dumps({"status": "delivered", "message_id": message_id}))

    async def health(self, request: web.Request) -> web.Response:
        return json_response(orjson.dumps({"status": "ok", "connected_clients": len(self.clients)}))

    async def close_all(self) -> None:
        await asyncio.gather(
            *(ws.close(code=1001) for ws in list(self.clients.values())), return_exceptions=True
        )


def _error(status: int, code: str, message: str) -> web.Response:
    return json_response(orjson.dumps({"error": {"code": code, "message": message}}), status)


def build_apps(gw: BareGateway) -> tuple[web.Application, web.Application]:
    ws_app = web.Application()
    ws_app.router.add_get("/", gw.ws_handler)
    ws_app.router.add_get("/ws", gw.ws_handler)
    api_app = web.Application(client_max_size=1 << 20)
    api_app.router.add_post("/broadcast", gw.broadcast)
    api_app.router.add_post("/send_message", gw.send_message)
    api_app.router.add_get("/health", gw.health)
    return ws_app, api_app


def main() -> None:
    args = server_args("bare aiohttp broadcast server (benchmark baseline)")
    install_uvloop()
    gw = BareGateway(args.token, args.heartbeat)
    ws_app, api_app = build_apps(gw)
    asyncio.run(
        serve_two_apps(ws_app, api_app, args.host, args.ws_port, args.api_port, gw.close_all)
    )


if __name__ == "__main__":
    main()
