"""An in-process fake Switchboard gateway for testing code that uses the client.

:class:`FakeGateway` speaks the wire contract (``connection_established``, per-session
``seq``, resume with ``session_token`` + ``last_seq`` and replay, the documented close codes)
and a subset of the HTTP API (``/status``, ``/clients``, ``/send_message``, ``/broadcast``,
``/call_tool``, ``/health``) on one ephemeral port. Tests drive it directly: push frames,
drop a connection abruptly, close it with a code, refuse the next connections, and read the
frames clients sent from :attr:`FakeGateway.frames`.

It is a test double, not a gateway: one process, no limits, no persistence::

    async with FakeGateway() as gw:
        async with SwitchboardClient(gw.ws_url) as client:
            ...
            await gw.drop(client.client_id)  # abort the TCP connection
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from switchboard_client.protocol import dumps, new_message_id, now_iso


@dataclass
class FakeSession:
    """One session of the fake gateway (inspect it from tests)."""

    client_id: str
    client_type: str
    token: str
    history: deque[dict[str, Any]]
    seq: int = 0
    ws: web.WebSocketResponse | None = None
    request: web.Request | None = None
    channels: set[str] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    connects: int = 0

    @property
    def connected(self) -> bool:
        """True while a socket is attached to the session."""
        return self.ws is not None and not self.ws.closed


@dataclass
class _Plan:
    status: int | None = None  # refuse the upgrade with this HTTP status
    close_code: int | None = None  # accept, then close with this code before greeting
    reason: str = ""


class FakeGateway:
    """A small WebSocket + HTTP server following the Switchboard wire contract.

    Arguments:
        history_limit: frames kept per session (older ones fall off; a resume from before the
            oldest kept frame answers ``recovered: false``).
        api_token: bearer token required by the HTTP routes.
        ws_token: when set, WebSocket connections must pass ``?token=`` equal to it (else 401).
        channels: channels a client may subscribe to (others get an ``error`` frame).
        unknown_session: what a resume of an unknown or expired session gets: ``"refuse"``
            (an ``error`` frame and close 4003, like the real gateway) or ``"fresh"`` (a new
            session, ``resumed: false``).

    Use ``async with FakeGateway() as gw`` (or :meth:`start` / :meth:`stop`); the URLs are
    :attr:`ws_url` and :attr:`api_url` once started.
    """

    def __init__(
        self,
        *,
        history_limit: int = 1000,
        api_token: str = "test-token",
        ws_token: str | None = None,
        channels: tuple[str, ...] = ("news", "alerts"),
        unknown_session: str = "refuse",
    ) -> None:
        self.unknown_session = unknown_session
        #: Replay this many frames the client already has (at-least-once redelivery), to test
        #: client-side de-duplication.
        self.replay_overlap = 0
        self.history_limit = history_limit
        self.api_token = api_token
        self.ws_token = ws_token
        self.channels = channels
        self.sessions: dict[str, FakeSession] = {}
        #: Every frame a client sent, as ``(client_id, frame_dict)``, in arrival order.
        self.frames: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        #: Query parameters of every accepted WebSocket connection, in order.
        self.connection_log: list[dict[str, str]] = []
        self._plans: deque[_Plan] = deque()
        self._tool_calls: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._connected_cond = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.app = web.Application()
        self.app.router.add_get("/", self._ws_handler)
        self.app.router.add_get("/ws", self._ws_handler)
        self.app.router.add_get("/status", self._api_status)
        self.app.router.add_get("/health", self._api_health)
        self.app.router.add_get("/clients", self._api_clients)
        self.app.router.add_get("/clients/{client_id}", self._api_client)
        self.app.router.add_post("/send_message", self._api_send_message)
        self.app.router.add_post("/broadcast", self._api_broadcast)
        self.app.router.add_post("/call_tool", self._api_call_tool)

    # ------------------------------------------------------------------ lifecycle

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:<port>/``."""
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def api_url(self) -> str:
        """``http://127.0.0.1:<port>`` (the fake serves the API on the same port)."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen on an ephemeral port of 127.0.0.1."""
        self._runner = web.AppRunner(self.app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Close every socket (1001) and stop listening."""
        for sess in self.sessions.values():
            if sess.connected and sess.ws is not None:
                with contextlib.suppress(Exception):
                    await sess.ws.close(code=1001, message=b"server shutdown")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ test controls

    def refuse_next(self, status: int, count: int = 1) -> None:
        """Refuse the next ``count`` WebSocket upgrades with HTTP ``status``."""
        self._plans.extend(_Plan(status=status) for _ in range(count))

    def close_next(self, code: int, count: int = 1, reason: str = "") -> None:
        """Accept the next ``count`` connections, then close them with ``code`` at once."""
        self._plans.extend(_Plan(close_code=code, reason=reason) for _ in range(count))

    async def push(
        self, client_id: str, type: str, data: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Append a frame to the session's history (new ``seq``) and send it if connected.

        Returns the frame. An offline session gets it on resume (replay).
        """
        sess = self.sessions[client_id]
        async with sess.lock:
            return await self._record_and_send(sess, type, data or {})

    async def drop(self, client_id: str) -> None:
        """Abort the session's TCP connection without a close frame (client sees 1006)."""
        sess = self.sessions[client_id]
        if sess.request is not None and sess.request.transport is not None:
            sess.request.transport.abort()

    async def close_client(self, client_id: str, code: int, reason: str = "") -> None:
        """Close the session's socket with ``code``."""
        sess = self.sessions[client_id]
        if sess.ws is not None:
            await sess.ws.close(code=code, message=reason.encode())

    def end_session(self, client_id: str) -> None:
        """Forget a session (a later resume of it starts a fresh session)."""
        self.sessions.pop(client_id, None)

    async def wait_connected(self, client_id: str, connects: int = 1) -> FakeSession:
        """Wait until session ``client_id`` has been connected ``connects`` times in total.

        Bound it with ``asyncio.wait_for``/``asyncio.timeout``.
        """
        async with self._connected_cond:
            await self._connected_cond.wait_for(
                lambda: (
                    (s := self.sessions.get(client_id)) is not None
                    and s.connects >= connects
                    and s.connected
                )
            )
            return self.sessions[client_id]

    async def next_frame(self, type: str | None = None) -> tuple[str, dict[str, Any]]:
        """Return the next client frame (of ``type``, skipping others) as (client_id, frame)."""
        while True:
            client_id, frame = await self.frames.get()
            if type is None or frame.get("type") == type:
                return client_id, frame

    async def call_tool(
        self, client_id: str, tool_name: str, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Send a server ``tool_call`` to the client and wait for its ``tool_result`` data."""
        call_id = new_message_id()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._tool_calls[call_id] = future
        try:
            await self.push(
                client_id,
                "tool_call",
                {"call_id": call_id, "tool_name": tool_name, "params": dict(params or {})},
            )
            return await future
        finally:
            self._tool_calls.pop(call_id, None)

    # ------------------------------------------------------------------ WebSocket side

    async def _record_and_send(
        self,
        sess: FakeSession,
        type: str,
        data: Mapping[str, Any],
        *,
        reply_to: str | None = None,
        keep: bool = True,
    ) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "type": type,
            "data": dict(data),
            "message_id": new_message_id(),
            "timestamp": now_iso(),
        }
        if reply_to is not None:
            frame["reply_to"] = reply_to
        if keep:
            sess.seq += 1
            frame["seq"] = sess.seq
            sess.history.append(frame)
        ws = sess.ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.send_str(dumps(frame))
        return frame

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        plan = self._plans.popleft() if self._plans else None
        if plan is not None and plan.status is not None:
            raise _http_error(plan.status, "refused", "refused by the test")
        if self.ws_token is not None and query.get("token") != self.ws_token:
            raise _http_error(401, "unauthorized", "bad or missing token")
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        self.connection_log.append(query)
        if plan is not None and plan.close_code is not None:
            await ws.close(code=plan.close_code, message=plan.reason.encode())
            return ws

        client_id = query.get("client_id") or new_message_id()[:12]
        token = query.get("session_token")
        sess = self.sessions.get(client_id)
        resumed = False
        recovered = True
        last_seq = 0
        if token is not None and (
            (sess is None and self.unknown_session == "refuse")
            or (sess is not None and not secrets.compare_digest(token, sess.token))
        ):
            await ws.send_str(
                dumps(
                    {
                        "type": "error",
                        "data": {
                            "code": "invalid_session",
                            "message": "invalid or expired session token",
                            "close_code": 4003,
                        },
                        "message_id": new_message_id(),
                        "timestamp": now_iso(),
                    }
                )
            )
            await ws.close(code=4003, message=b"invalid session token")
            return ws
        if sess is not None and token is None:
            # Like the real gateway: an id that is taken is not reused; a fresh one is picked.
            client_id = new_message_id()[:12]
            sess = None
        if sess is not None:
            resumed = True
            try:
                last_seq = max(0, int(query.get("last_seq", "0")))
            except ValueError:
                last_seq = 0
            if sess.ws is not None and not sess.ws.closed:
                with contextlib.suppress(Exception):
                    await sess.ws.close(code=4000, message=b"replaced")
        else:
            sess = FakeSession(
                client_id=client_id,
                client_type=query.get("client_type", "generic"),
                token=secrets.token_urlsafe(24),
                history=deque(maxlen=self.history_limit),
            )
            self.sessions[client_id] = sess

        async with sess.lock:
            if resumed and last_seq < sess.seq:
                oldest = sess.history[0]["seq"] if sess.history else sess.seq + 1
                recovered = oldest <= last_seq + 1
            sess.ws = ws
            sess.request = request
            sess.connects += 1
            greeting = {
                "type": "connection_established",
                "data": {
                    "client_id": client_id,
                    "client_type": sess.client_type,
                    "session_token": sess.token,
                    "resumed": resumed,
                    "recovered": recovered,
                    "last_seq": sess.seq,
                    "heartbeat": 30,
                    "server_time": now_iso(),
                },
                "message_id": new_message_id(),
                "timestamp": now_iso(),
            }
            await ws.send_str(dumps(greeting))
            if resumed:
                for frame in list(sess.history):
                    if frame["seq"] > last_seq - self.replay_overlap:
                        await ws.send_str(dumps(frame))
        async with self._connected_cond:
            self._connected_cond.notify_all()

        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self._on_client_frame(sess, msg.data)
        finally:
            if sess.ws is ws:
                sess.ws = None
                sess.request = None
        return ws

    async def _on_client_frame(self, sess: FakeSession, text: str) -> None:
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError:
            async with sess.lock:
                await self._record_and_send(
                    sess, "error", {"code": "invalid_json", "message": "not JSON"}
                )
            return
        if not isinstance(frame, dict):
            return
        self.frames.put_nowait((sess.client_id, frame))
        type = frame.get("type")
        data = frame.get("data") if isinstance(frame.get("data"), dict) else {}
        mid = frame.get("message_id")
        async with sess.lock:
            send = self._record_and_send
            if type == "ping":
                await send(sess, "pong", {}, reply_to=mid, keep=False)
            elif type == "get_status":
                await send(
                    sess,
                    "status_response",
                    {"connected_clients": sum(s.connected for s in self.sessions.values())},
                    reply_to=mid,
                )
            elif type in ("subscribe", "unsubscribe"):
                channel = data.get("channel")
                if channel not in self.channels:
                    await send(
                        sess,
                        "error",
                        {
                            "code": "unknown_channel",
                            "message": f"unknown channel {channel!r}",
                            "available_channels": list(self.channels),
                        },
                        reply_to=mid,
                    )
                else:
                    (sess.channels.add if type == "subscribe" else sess.channels.discard)(channel)
                    await send(sess, type + "d", {"channel": channel}, reply_to=mid)
            elif type == "chat_message":
                content = data.get("content", "")
                await send(sess, "processing", {"status": "processing"}, reply_to=mid)
                await send(
                    sess,
                    "chat_response",
                    {"content": f"Echo: {content}", "status": "success", "model": "echo"},
                    reply_to=mid,
                )
            elif type == "tool_call":
                name = data.get("tool_name")
                ok = name != "fail"
                await send(
                    sess,
                    "tool_response",
                    {
                        "call_id": data.get("call_id") or new_message_id(),
                        "tool_name": name,
                        "success": ok,
                        "result": data.get("params")
                        if ok
                        else {"type": "error", "content": "failed"},
                    },
                    reply_to=mid,
                )
            elif type == "tool_result":
                future = self._tool_calls.get(str(data.get("call_id")))
                if future is not None and not future.done():
                    future.set_result(data)
            elif type == "permission_response":
                pass
            else:
                await send(
                    sess,
                    "error",
                    {"code": "unknown_type", "message": f"unknown frame type {type!r}"},
                    reply_to=mid,
                )

    # ------------------------------------------------------------------ HTTP side

    def _check_auth(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {self.api_token}":
            raise _http_error(401, "unauthorized", "missing or bad bearer token")

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json(loads=orjson.loads)
        except ValueError:
            raise _http_error(400, "invalid_json", "body is not JSON") from None
        if not isinstance(body, dict):
            raise _http_error(422, "invalid_body", "body must be an object")
        return body

    def _client_view(self, sess: FakeSession) -> dict[str, Any]:
        return {
            "client_id": sess.client_id,
            "client_type": sess.client_type,
            "connected": sess.connected,
            "channels": sorted(sess.channels),
            "message_count": sess.seq,
            "connected_at": None,
            "last_activity": None,
        }

    async def _api_health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, dumps=dumps)

    async def _api_status(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        return web.json_response(
            {
                "status": "running",
                "connected_clients": sum(s.connected for s in self.sessions.values()),
                "sessions": len(self.sessions),
                "server_time": now_iso(),
                "uptime": 1.0,
            },
            dumps=dumps,
        )

    async def _api_clients(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        clients = [self._client_view(s) for s in self.sessions.values()]
        return web.json_response({"clients": clients, "total": len(clients)}, dumps=dumps)

    async def _api_client(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        sess = self.sessions.get(request.match_info["client_id"])
        if sess is None:
            raise _http_error(404, "client_not_found", "unknown client")
        return web.json_response(self._client_view(sess), dumps=dumps)

    async def _api_send_message(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        body = await self._json(request)
        sess = self.sessions.get(str(body.get("client_id")))
        if sess is None:
            raise _http_error(404, "client_not_found", "unknown client")
        data = dict(body.get("data") or {})
        data.setdefault("content", body.get("content"))
        async with sess.lock:
            frame = await self._record_and_send(sess, body.get("message_type") or "message", data)
        status = "delivered" if sess.connected else "queued"
        return web.json_response(
            {"status": status, "message_id": frame["message_id"], "seq": frame["seq"]},
            status=200 if status == "delivered" else 202,
            dumps=dumps,
        )

    async def _api_broadcast(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        body = await self._json(request)
        if not isinstance(body.get("message_type"), str):
            raise _http_error(422, "invalid_field", "message_type is required")
        recipients = 0
        message_id = new_message_id()
        for sess in list(self.sessions.values()):
            if body.get("channel") and body["channel"] not in sess.channels:
                continue
            if body.get("client_type") and body["client_type"] != sess.client_type:
                continue
            async with sess.lock:
                await self._record_and_send(sess, body["message_type"], body.get("data") or {})
            recipients += 1
        return web.json_response({"recipients": recipients, "message_id": message_id}, dumps=dumps)

    async def _api_call_tool(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        body = await self._json(request)
        client_id = str(body.get("client_id"))
        if client_id not in self.sessions:
            raise _http_error(404, "client_not_found", "unknown client")
        try:
            async with asyncio.timeout(float(body.get("timeout") or 10)):
                result = await self.call_tool(
                    client_id, str(body.get("tool_name")), body.get("params") or {}
                )
        except TimeoutError:
            raise _http_error(504, "tool_timeout", "the client did not answer in time") from None
        out: dict[str, Any] = {"call_id": result.get("call_id"), "success": "error" not in result}
        out["error" if "error" in result else "result"] = result.get("error", result.get("result"))
        return web.json_response(out, dumps=dumps)


def _http_error(status: int, code: str, message: str) -> web.HTTPException:
    cls = type(f"HTTP{status}", (web.HTTPException,), {"status_code": status})
    return cls(
        text=dumps({"error": {"code": code, "message": message}}), content_type="application/json"
    )


class FrameRecorder:
    """Collects what a client delivers (server frames and lifecycle events) for assertions.

    ``frames`` / ``events`` keep everything in order; :meth:`next` and :meth:`event` wait for
    the next not-yet-consumed item (bound them with ``asyncio.wait_for``)::

        rec = FrameRecorder(client)
        frame = await asyncio.wait_for(rec.next("message"), 5)
    """

    def __init__(self, client: Any) -> None:
        from switchboard_client.protocol import Lifecycle

        self.frames: list[Any] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._frame_q: asyncio.Queue[Any] = asyncio.Queue()
        self._event_q: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        client.on("*", self._on_frame)
        for name in sorted(Lifecycle.ALL):
            client.on(name, lambda payload, name=name: self._on_event(name, payload))

    def _on_frame(self, frame: Any) -> None:
        self.frames.append(frame)
        self._frame_q.put_nowait(frame)

    def _on_event(self, name: str, payload: dict[str, Any]) -> None:
        self.events.append((name, payload))
        self._event_q.put_nowait((name, payload))

    async def next(self, type: str | None = None) -> Any:
        """Return the next frame (of ``type``; frames of other types are consumed and skipped)."""
        while True:
            frame = await self._frame_q.get()
            if type is None or frame.type == type:
                return frame

    async def event(self, name: str) -> dict[str, Any]:
        """Return the payload of the next lifecycle event ``name`` (others are skipped)."""
        while True:
            got, payload = await self._event_q.get()
            if got == name:
                return payload

    def types(self) -> list[str]:
        """Types of all frames received so far, in order."""
        return [f.type for f in self.frames]

    def seqs(self) -> list[int]:
        """``seq`` of all frames received so far that had one, in order."""
        return [f.seq for f in self.frames if f.seq is not None]
