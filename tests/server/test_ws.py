"""The WebSocket endpoint: greeting, the bad-input table, crashes, limits, slow clients."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from handlers import HANDLER_TABLE, Registration, build_router
from server.errors import CloseCode
from server.protocol import ClientFrame
from server.router import HandlerContext
from server.security import FrameLimiter
from server.sessions import NO_CHANNELS
from server.ws import STATUS_TTL, PublicStatus
from tests.conftest import LiveGateway, MakeGateway, WSClient, wait_for


async def assert_still_open(client: WSClient) -> None:
    """The connection keeps serving: a ping gets its pong."""
    await client.send("ping", message_id="still-there")
    pong = await client.recv_type("pong")
    assert pong["reply_to"] == "still-there"


# --- greeting -------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "expected_type"), [("/ws/mcplog", "MCPLog"),
                                                     ("/ws/chat", "default"), ("/", "default")])
async def test_client_type_defaults_by_path_and_the_query_wins(
        live_gateway: LiveGateway, path: str, expected_type: str) -> None:
    bare = await live_gateway.connect(path, format="envelope")
    assert bare.hello["data"]["client_type"] == expected_type
    named = await live_gateway.connect(path, client_type="MCPClient", format="envelope")
    assert named.hello["data"]["client_type"] == "MCPClient"


# --- the flat profile (seed 004) ---------------------------------------------------------------


async def test_envelope_clients_keep_the_envelope(live_gateway: LiveGateway) -> None:
    """A first frame with no data (``{"type": "ping"}``) is not flat form, and ?format=envelope
    keeps even seed 004's path in the envelope."""
    for client in (await live_gateway.connect(),
                   await live_gateway.connect("/ws/chat", format="envelope")):
        await client.send_raw('{"type": "ping"}')
        pong = await client.recv()
        assert pong["type"] == "pong" and "client_id" not in pong
        await client.send_raw('{"type": "text_message", "content": "hi"}')
        assert (await client.recv())["type"] == "processing"
        answer = await client.recv()
        assert answer["data"]["content"] == "Echo: hi" and "content" not in answer


async def test_a_bad_format_is_refused_before_the_upgrade(live_gateway: LiveGateway) -> None:
    async with live_gateway.http.get(live_gateway.ws_server.make_url("/"), params={
            "format": "xml"}, headers={
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["error"]["code"] == "invalid_request"
    assert "envelope" in body["error"]["message"] and "flat" in body["error"]["message"]
    _, listing = await live_gateway.api("GET", "/clients")
    assert listing["total"] == 0  # no session was opened


async def test_a_refused_resume_on_the_flat_path_is_flat(live_gateway: LiveGateway) -> None:
    ws = await live_gateway.http.ws_connect(live_gateway.ws_server.make_url("/ws/chat"), params={
        "client_id": "nobody", "session_token": "forged"})
    error = orjson.loads((await ws.receive(timeout=5)).data)
    assert error["type"] == "error" and error["code"] == "invalid_session"
    assert (await ws.receive(timeout=5)).data == CloseCode.INVALID_SESSION


async def test_connection_established_is_first_with_the_chosen_client_id(
        live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect(client_id="alice", client_type="browser")
    data = client.hello["data"]
    assert data["client_id"] == "alice"
    assert data["client_type"] == "browser"
    assert data["resumed"] is False
    assert isinstance(data["session_token"], str) and len(data["session_token"]) >= 32
    assert data["last_seq"] == 0
    info = await live_gateway.client_info("alice")
    assert info["connected"] is True and info["client_type"] == "browser"


@pytest.mark.parametrize("path", ["/", "/ws"])
async def test_both_paths_serve_websockets(live_gateway: LiveGateway, path: str) -> None:
    client = await live_gateway.connect(path)
    await assert_still_open(client)


async def test_a_taken_or_invalid_client_id_gets_a_generated_one(
        live_gateway: LiveGateway) -> None:
    first = await live_gateway.connect(client_id="bob")
    second = await live_gateway.connect(client_id="bob")
    third = await live_gateway.connect(client_id="no spaces allowed")
    anonymous = await live_gateway.connect()
    ids = {first.client_id, second.client_id, third.client_id, anonymous.client_id}
    assert first.client_id == "bob" and len(ids) == 4
    assert second.hello["data"]["client_type"] == "default"
    # The taken id was not taken over: bob's session is still bob's connection.
    status, body = await live_gateway.api("POST", "/send_message",
                                          {"client_id": "bob", "content": "for bob"})
    assert status == 200, body
    assert (await first.recv())["data"]["content"] == "for bob"


# --- the table of bad input -----------------------------------------------------------------

WS_BAD_INPUT: list[tuple[str, str, str | None, dict[str, Any]]] = [
    # id, raw text frame, expected error code, expected reply_to, expected extra data
    ("not-json", "this is not json", "invalid_json", None, {}),
    ("truncated-json", '{"type": "ping"', "invalid_json", None, {}),
    ("array", '[{"type": "ping"}]', "invalid_frame", None, {}),
    ("number", "42", "invalid_frame", None, {}),
    ("string", '"ping"', "invalid_frame", None, {}),
    ("missing-type", '{"data": {}, "message_id": "m1"}', "missing_type", "m1", {}),
    ("non-string-type", '{"type": 7, "message_id": "m2"}', "invalid_field", "m2",
     {"field": "type"}),
    ("empty-type", '{"type": "", "message_id": "m3"}', "invalid_field", "m3",
     {"field": "type"}),
    ("unknown-type", '{"type": "teleport", "message_id": "m4"}', "unknown_type", "m4", {}),
    ("data-array", '{"type": "ping", "data": [1], "message_id": "m5"}', "invalid_field", "m5",
     {"field": "data"}),
    ("data-string", '{"type": "chat_message", "data": "hi", "message_id": "m6"}',
     "invalid_field", "m6", {"field": "data"}),
    ("bad-message-id", '{"type": "ping", "message_id": {"x": 1}}', "invalid_field", None,
     {"field": "message_id"}),
    ("chat-no-content", '{"type": "chat_message", "data": {}, "message_id": "c1"}',
     "invalid_field", "c1", {"field": "data.content"}),
    ("chat-content-number", '{"type": "chat_message", "data": {"content": 5}, '
     '"message_id": "c2"}', "invalid_field", "c2", {"field": "data.content"}),
    ("chat-role-number", '{"type": "chat_message", "data": {"content": "hi", "role": 1}, '
     '"message_id": "c3"}', "invalid_field", "c3", {"field": "data.role"}),
    ("text-message-no-content", '{"type": "text_message", "message_id": "c4"}',
     "invalid_field", "c4", {"field": "data.content"}),
    ("tool-call-no-name", '{"type": "tool_call", "data": {"params": {}}, "message_id": "t1"}',
     "invalid_field", "t1", {"field": "data.tool_name"}),
    ("tool-call-params-array", '{"type": "tool_call", "data": {"tool_name": "echo", '
     '"params": []}, "message_id": "t2"}', "invalid_field", "t2", {"field": "data.params"}),
    ("tool-result-no-call-id", '{"type": "tool_result", "data": {"result": 1}, '
     '"message_id": "t3"}', "invalid_field", "t3", {"field": "data.call_id"}),
    ("tool-result-unknown-call", '{"type": "tool_result", "data": {"call_id": "nope", '
     '"result": 1}, "message_id": "t4"}', "unknown_call", "t4", {}),
    ("permission-granted-string", '{"type": "permission_response", "data": {"call_id": "c", '
     '"granted": "yes"}, "message_id": "p1"}', "invalid_field", "p1", {"field": "data.granted"}),
    ("subscribe-no-channel", '{"type": "subscribe", "data": {}, "message_id": "s1"}',
     "invalid_field", "s1", {"field": "data.channel"}),
    ("subscribe-channel-number", '{"type": "subscribe", "data": {"channel": 3}, '
     '"message_id": "s2"}', "invalid_field", "s2", {"field": "data.channel"}),
    ("legacy-unsubscribe-no-channel", '{"action": "unsubscribe", "message_id": "s3"}',
     "invalid_field", "s3", {"field": "data.channel"}),
]


@pytest.mark.parametrize(("raw", "code", "reply_to", "extra"),
                         [case[1:] for case in WS_BAD_INPUT],
                         ids=[case[0] for case in WS_BAD_INPUT])
async def test_bad_frame_gets_an_error_frame_and_the_connection_stays_open(
        live_gateway: LiveGateway, raw: str, code: str, reply_to: str | None,
        extra: dict[str, Any]) -> None:
    client = await live_gateway.connect()
    await client.send_raw(raw)
    error = await client.recv()
    assert error["type"] == "error", error
    assert error["data"]["code"] == code, error
    assert error["data"]["message"]
    assert error.get("reply_to") == reply_to
    for key, value in extra.items():
        assert error["data"][key] == value, error
    assert isinstance(error["seq"], int)  # errors are kept in history, like any answer
    await assert_still_open(client)


async def test_unknown_type_lists_the_supported_types(live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    await client.send("teleport", message_id="u")
    error = await client.recv()
    assert error["data"]["code"] == "unknown_type"
    assert {"chat_message", "ping", "tool_call", "subscribe"} <= set(
        error["data"]["supported_types"])


async def test_binary_frame_gets_an_error_frame(live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    await client.ws.send_bytes(b'{"type": "ping"}')
    error = await client.recv()
    assert error["type"] == "error"
    assert error["data"]["code"] == "binary_not_supported"
    await assert_still_open(client)


async def test_frame_over_max_message_size_closes_with_1009(
        make_gateway: MakeGateway) -> None:
    live = await make_gateway(max_message_size=1024)
    client = await live.connect()
    await client.send("chat_message", {"content": "x" * 2048})
    assert await client.recv_close() == CloseCode.MESSAGE_TOO_BIG == 1009
    # Other clients are unaffected, and a frame just under the limit is fine.
    other = await live.connect()
    await other.send("chat_message", {"content": "y" * 900})
    assert (await other.recv_type("chat_response"))["data"]["content"] == "Echo: " + "y" * 900


async def test_max_connections_refuses_the_upgrade_with_503(make_gateway: MakeGateway) -> None:
    live = await make_gateway(max_connections=2)
    first = await live.connect()
    await live.connect()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await live.connect()
    assert info.value.status == 503
    # A slot frees up when a client leaves.
    await first.close()
    await wait_for(lambda: len(live.connections) == 1, what="the connection to be released")
    third = await live.connect()
    await assert_still_open(third)


async def test_plain_get_on_the_websocket_port_is_426(live_gateway: LiveGateway) -> None:
    async with live_gateway.http.get(live_gateway.ws_server.make_url("/")) as resp:
        assert resp.status == 426
        body = orjson.loads(await resp.read())
    assert body["error"]["code"] == "upgrade_required"


async def test_bad_last_seq_is_refused_before_the_upgrade(live_gateway: LiveGateway) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await live_gateway.connect(last_seq="minus-one")
    assert info.value.status == 400


# --- a handler crash --------------------------------------------------------------------------


async def _crash(ctx: HandlerContext, frame: ClientFrame) -> None:
    raise RuntimeError("handler bug")


async def test_handler_crash_is_an_internal_error_frame_and_the_connection_stays_open(
        make_gateway: MakeGateway) -> None:
    table = (*HANDLER_TABLE, Registration("crash", _crash, {}, "Always raises."))
    live = await make_gateway(router=build_router(table))
    client = await live.connect()
    await client.send("crash", message_id="boom")
    error = await client.recv()
    assert error["type"] == "error"
    assert error["data"]["code"] == "internal_error"
    assert error["reply_to"] == "boom"
    assert "handler bug" not in orjson.dumps(error).decode()  # no internals leak
    await assert_still_open(client)
    await client.send("chat_message", {"content": "still works"})
    assert (await client.recv_type("chat_response"))["data"]["content"] == "Echo: still works"


# --- slow clients -----------------------------------------------------------------------------

BIG = 32 * 1024


async def test_a_slow_client_is_closed_with_4008_while_others_get_every_frame(
        make_gateway: MakeGateway) -> None:
    frames_limit, bytes_limit = 8, 4 * BIG + 4096
    live = await make_gateway(send_queue_frames=frames_limit, send_queue_bytes=bytes_limit,
                              max_message_size=BIG)
    slow = await live.connect(client_id="slow")
    fast = await live.connect(client_id="fast")
    slow_conn = next(c for c in live.connections if c.session.client_id == "slow")
    payload = "x" * BIG
    received: list[int] = []
    peak_frames = peak_bytes = 0
    sent = 0
    # Broadcast big frames until the slow client (which never reads) overflows; the fast one
    # reads each frame as it comes. No timing: we wait for the events themselves.
    while slow_conn.close_code is None:
        sent += 1
        assert sent < 2000, "the slow client never overflowed"
        status, body = await live.api("POST", "/broadcast",
                                      {"message_type": "tick", "data": {"n": sent, "p": payload}})
        assert status == 200, body
        for conn in live.connections:
            peak_frames = max(peak_frames, conn.queued_frames)
            peak_bytes = max(peak_bytes, conn.queued_bytes)
        frame = await fast.recv()
        assert frame["type"] == "tick"
        received.append(frame["data"]["n"])
    assert slow_conn.close_code == CloseCode.SLOW_CONSUMER
    # The fast client is not held back by the slow one: it keeps receiving.
    for _ in range(3):
        sent += 1
        await live.api("POST", "/broadcast", {"message_type": "tick", "data": {"n": sent}})
        received.append((await fast.recv())["data"]["n"])
    assert received == list(range(1, sent + 1))
    # Memory stayed bounded: no connection's queue ever exceeded its limits.
    assert peak_frames <= frames_limit and peak_bytes <= bytes_limit
    assert slow_conn.queued_frames == 0 and slow_conn.queued_bytes == 0
    # The slow client, once it reads, finds what was buffered and then close 4008.
    assert await slow.recv_close(timeout=10) == CloseCode.SLOW_CONSUMER == 4008
    assert (await live.offline("slow"))["client_id"] == "slow"  # kept for resume


async def test_an_idle_client_is_closed_with_4011(make_gateway: MakeGateway) -> None:
    live = await make_gateway(ws_timeout=0.3, ws_heartbeat=0)
    idle = await live.connect(client_id="idle")
    assert await idle.recv_close() == CloseCode.IDLE_TIMEOUT == 4011
    await live.offline("idle")  # kept for resume


# --- what an idle connection holds (bench/idle_memory.py; docs/BENCHMARKS.md, issue 17) -------


def _handler_of(conn: Any) -> tuple[Any, list[str]]:
    """The ``websocket_handler`` coroutine serving ``conn``, and the names of the coroutines it
    is suspended in."""
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        while coro is not None and hasattr(coro, "cr_code"):
            if (coro.cr_code.co_name == "websocket_handler"
                    and coro.cr_frame.f_locals.get("conn") is conn):
                names = []
                inner = coro.cr_await
                while inner is not None and hasattr(inner, "cr_code"):
                    names.append(inner.cr_code.co_name)
                    inner = inner.cr_await
                return coro, names
            coro = coro.cr_await
    raise AssertionError("no websocket_handler serves this connection")


async def test_an_idle_connection_holds_slotted_objects_and_nothing_made_on_first_use(
        live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    node = live_gateway.ws_node
    await wait_for(lambda: len(node.connections) == 1, what="the connection")
    (conn,) = node.connections
    session = conn.session
    guard = conn.request.protocol._payload_parser
    for obj in (conn, session, guard):
        assert not hasattr(obj, "__dict__"), f"{type(obj).__name__} lost its __slots__"
    # Made on first use only: the send queue, the history deque, the channel set; the greeting
    # went out, so the backlog is the shared empty tuple.
    assert conn.queue is None and conn.writer is None and conn.backlog == ()
    assert session.history == () and session.channels is NO_CHANNELS
    # WS_HEARTBEAT (on: 30 s) is the gateway-wide sweep's (server.ws.liveness_ctx): no timer
    # per socket, no callback per read; the socket's liveness is a counter on its guard.
    assert live_gateway.settings.ws_heartbeat > 0
    assert conn.ws._heartbeat_cb is None and conn.ws._pong_response_cb is None
    assert conn.request.protocol._data_received_cb is None and guard.quiet == 0
    # One Switchboard coroutine per idle socket: the handler, waiting in aiohttp's receive
    # (a nested reader coroutine cost 0.3 KB a connection), holding no frame limiter yet.
    handler, awaiting = _handler_of(conn)
    assert awaiting == ["receive"]
    assert handler.cr_frame.f_locals["limiter"] is None
    await client.send("ping")
    await client.recv_type("pong")
    assert isinstance(handler.cr_frame.f_locals["limiter"], FrameLimiter)


async def test_the_public_status_is_computed_at_most_once_per_ttl() -> None:
    """/ws/status on the public port: a flood of requests costs one status a second (a
    cluster's reads every session from Redis), and the broker's description is left out."""
    class CountingGateway:
        calls = 0

        async def status(self) -> dict[str, Any]:
            self.calls += 1
            return {"status": "running", "n": self.calls, "broker": {"url": "redis://internal"}}

    gateway = CountingGateway()
    public = PublicStatus()
    first = await public.get(gateway)  # type: ignore[arg-type]
    again = await public.get(gateway)  # type: ignore[arg-type]
    assert first == again and gateway.calls == 1
    assert orjson.loads(first) == {"status": "running", "n": 1}
    public.at -= 2 * STATUS_TTL  # the TTL has passed
    assert orjson.loads(await public.get(gateway))["n"] == 2  # type: ignore[arg-type]


# --- the aiohttp private API the send path uses ---------------------------------------------


@pytest.mark.parametrize("name", ["BaseProtocol._paused", "WebSocketWriter.compress"])
def test_start_up_fails_in_one_line_when_aiohttp_lacks_a_private_attribute(
        monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    from aiohttp._websocket.writer import WebSocketWriter
    from aiohttp.base_protocol import BaseProtocol

    from server.errors import StartupError
    from server.ws import check_aiohttp

    check_aiohttp()  # the aiohttp setup.cfg pins has everything
    owner, attribute = name.split(".")
    if owner == "BaseProtocol":  # a slot the protocol no longer declares
        monkeypatch.setattr(BaseProtocol, "__slots__",
                            tuple(s for s in BaseProtocol.__slots__ if s != attribute))
    else:  # an instance attribute: a writer that no longer sets it
        original = WebSocketWriter.__init__

        def init(self: WebSocketWriter, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            delattr(self, attribute)

        monkeypatch.setattr(WebSocketWriter, "__init__", init)
    with pytest.raises(StartupError) as info:
        check_aiohttp()
    message = info.value.message
    assert name in message and "aiohttp 3.14.x" in message
    assert "\n" not in message
