"""Promised limits fire (issue 11, items 5-9), tried from outside against a real gateway
process (the shared ``edge`` process of ``conftest.py``, MAX_MESSAGE_SIZE=4096), with raw
sockets where a well-behaved client library would refuse to misbehave.

* JSON nesting: every entry point (frames, API bodies, tool results, webhook answers) refuses
  what is nested deeper than MAX_JSON_DEPTH with a clear error, never a 500 or an
  ``internal_error``, and nothing unencodable is stored.
* Every tool call ends with ``mcp_tool_execution_complete`` and ``tool_response``.
* ``tool_activity`` is readable only with an observer credential.
* RFC 6455: unmasked frames and forbidden close codes get 1002, invalid UTF-8 gets 1007.
* A frame of exactly MAX_MESSAGE_SIZE is accepted; one byte more gets 1009.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
import websockets
from aiohttp import web
from websockets.exceptions import ConnectionClosed

from server.security import OBSERVER_TICKET_TTL, Security
from tests.conftest import MakeGateway, WSClient
from tests.processes import Node, connect, get, metric, post, spawn_ready, until
from tests.security.conftest import no_traceback
from tests.security.rawws import CLOSE, PING, TEXT, RawWebSocket, close_payload, encode_frame

DEPTH = 64  # MAX_JSON_DEPTH's default


def nest(depth: int) -> Any:
    """A JSON value ``depth`` levels deep (arrays in arrays; orjson encodes up to 254)."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def nested_text(depth: int) -> str:
    """JSON text of arrays ``depth`` levels deep (any depth, unlike :func:`nest`)."""
    return "[" * depth + "]" * depth


def frame_of_depth(depth: int) -> str:
    """A chat_message frame nesting ``depth`` levels in all (the frame itself is level 1)."""
    return '{"type":"chat_message","data":{"content":"deep","x":' + nested_text(depth - 2) + "}}"


async def still_served(client: WSClient) -> None:
    await client.send("ping", message_id="alive")
    assert (await client.recv_type("pong"))["reply_to"] == "alive"


# --- 5. JSON depth -----------------------------------------------------------------------------

async def test_deep_json_frames_are_refused_and_the_connection_stays(
        edge: Node, http: aiohttp.ClientSession) -> None:
    client = await connect(http, edge)
    await client.send_raw(frame_of_depth(DEPTH))
    assert (await client.recv_type("chat_response"))["data"]["content"] == "Echo: deep"
    for depth in (DEPTH + 1, 300, 1000):
        await client.send_raw(frame_of_depth(depth))
        error = await client.recv_type("error")
        assert error["data"]["code"] == "json_too_deep", error
        assert "MAX_JSON_DEPTH" in error["data"]["message"]
    await still_served(client)
    code, page = await get(http, f"{edge.api}/clients/{client.client_id}/messages?limit=1000")
    assert code == 200, page
    await client.close()


@pytest.mark.parametrize("path", ["/send_message", "/broadcast", "/call_tool"])
async def test_deep_api_bodies_get_422(edge: Node, http: aiohttp.ClientSession,
                                       path: str) -> None:
    client = await connect(http, edge)
    bodies = {"/send_message": {"client_id": client.client_id, "content": "c"},
              "/broadcast": {"message_type": "deep", "channel": "news"},
              "/call_tool": {"client_id": client.client_id, "tool_name": "t", "timeout": 0.2}}
    key = "params" if path == "/call_tool" else "data"
    # The body is level 1, its object field level 2: DEPTH levels in all is accepted.
    code, body = await post(http, edge.api + path,
                            {**bodies[path], key: {"v": nest(DEPTH - 2)}})
    assert code in (200, 504), body  # nobody answers the tool call: 504 is its documented end
    for depth in (DEPTH + 1, 300):
        raw = orjson.dumps({**bodies[path], key: {"v": "DEEP"}}).replace(
            b'"DEEP"', nested_text(depth - 2).encode())
        async with http.post(edge.api + path, data=raw,
                             headers={"Content-Type": "application/json"}) as resp:
            code, body = resp.status, orjson.loads(await resp.read())
        assert code == 422, body
        assert body["error"]["code"] == "json_too_deep"
        assert "MAX_JSON_DEPTH" in body["error"]["message"]
    await client.close()


async def test_a_deep_tool_result_is_refused_and_nothing_unencodable_is_kept(
        edge: Node, http: aiohttp.ClientSession) -> None:
    worker = await connect(http, edge, client_id="deep-worker")
    call = asyncio.ensure_future(post(http, f"{edge.api}/call_tool", {
        "client_id": "deep-worker", "tool_name": "t", "timeout": 1}))
    call_id = (await worker.recv_type("tool_call"))["data"]["call_id"]
    await worker.send_raw('{"type":"tool_result","message_id":"deep","data":{"call_id":"'
                          + call_id + '","result":' + nested_text(300) + "}}")
    error = await worker.recv_type("error")
    assert error["data"]["code"] == "json_too_deep"
    code, body = await call
    assert code == 504, body  # the refused answer never arrived: a timeout, not a 500
    code, page = await get(http, f"{edge.api}/clients/deep-worker/messages?limit=1000")
    assert code == 200, page
    await still_served(worker)
    await worker.close()


async def deep_backend(depth: int) -> AsyncIterator[str]:
    async def tool(request: web.Request) -> web.Response:
        return web.Response(text='{"result":{"v":' + nested_text(depth) + "}}",
                            content_type="application/json")

    app = web.Application()
    app.router.add_post("/tool", tool)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/tool"
    finally:
        await runner.cleanup()


async def test_a_deep_webhook_answer_is_an_upstream_error(
        tmp_path: Path, nodes: list[Node], http: aiohttp.ClientSession) -> None:
    async for url in deep_backend(300):
        node = spawn_ready(tmp_path, "webhook", TOOL_WEBHOOK_URL=url, LOG_FORMAT="json")
        nodes.append(node)
        client = await connect(http, node)
        await client.send("tool_call", {"tool_name": "remote_thing", "params": {}},
                          message_id="t")
        complete = await client.recv_type("mcp_tool_execution_complete")
        response = await client.recv_type("tool_response")
        assert complete["data"]["status"] == "failed"
        assert response["data"]["success"] is False
        assert "MAX_JSON_DEPTH" in response["data"]["error"], response
        await still_served(client)
        await client.close()
        no_traceback(node)


# --- 6. every tool call completes -------------------------------------------------------------

@pytest.mark.parametrize("expression, reason", [
    ("99999999999*99999999999", "digits"),
    ("(-1)**0.5", "real number"),
    ("1e308*10", "finite"),
])
async def test_calculate_never_hangs_a_client(edge: Node, http: aiohttp.ClientSession,
                                              expression: str, reason: str) -> None:
    client = await connect(http, edge)
    await client.send("tool_call", {"tool_name": "calculate",
                                    "params": {"expression": expression}}, message_id="calc")
    complete = await client.recv_type("mcp_tool_execution_complete")
    response = await client.recv_type("tool_response")
    assert complete["data"]["status"] == "failed" and complete["reply_to"] == "calc"
    assert response["data"]["success"] is False and reason in response["data"]["error"]
    await client.send("tool_call", {"tool_name": "calculate",
                                    "params": {"expression": "6*7"}})
    assert (await client.recv_type("tool_response"))["data"]["result"]["result"] == 42
    await client.close()


async def test_whatever_a_tool_does_its_call_completes(make_gateway: MakeGateway) -> None:
    """Custom tools that return what JSON cannot carry, nest too deep, raise, or never
    finish: each call still ends with both frames, saying why."""
    live = await make_gateway(call_tool_timeout=0.3)
    tools = live.holder.tools  # the node running its clients' tool calls

    async def forever(params: dict[str, Any], ctx: Any) -> None:
        await asyncio.Event().wait()

    def boom(params: dict[str, Any], ctx: Any) -> None:
        raise ValueError("bad luck")

    tools.add("a_set", "", lambda params, ctx: {1, 2})
    tools.add("huge_int", "", lambda params, ctx: {"n": 2**70})
    tools.add("too_deep", "", lambda params, ctx: nest(300))
    tools.add("boom", "", boom)
    tools.add("forever", "", forever)
    client = await live.connect()
    for name, reason in (("a_set", "cannot be sent as JSON"), ("huge_int", "64-bit"),
                         ("too_deep", "MAX_JSON_DEPTH"), ("boom", "bad luck"),
                         ("forever", "CALL_TOOL_TIMEOUT")):
        await client.send("tool_call", {"tool_name": name}, message_id=name)
        complete = await client.recv_type("mcp_tool_execution_complete")
        response = await client.recv_type("tool_response")
        assert complete["reply_to"] == response["reply_to"] == name
        assert complete["data"]["status"] == "failed"
        assert response["data"]["success"] is False and reason in response["data"]["error"], (
            name, response)
    await still_served(client)


# --- 7. tool_activity is for observers --------------------------------------------------------

async def test_tool_activity_needs_an_observer_credential(edge: Node,
                                                          http: aiohttp.ClientSession) -> None:
    # An anonymous client is refused, even though CHANNELS lists tool_activity implicitly.
    anonymous = await connect(http, edge)
    await anonymous.send("subscribe", {"channel": "tool_activity"}, message_id="s")
    refused = await anonymous.recv_type("error")
    assert refused["data"]["code"] == "forbidden_channel" and refused["reply_to"] == "s"
    # A forged ticket is refused before the upgrade.
    with pytest.raises(aiohttp.WSServerHandshakeError) as forged:
        await http.ws_connect(edge.ws, params={"observer_ticket": "obs1.9999999999.x.sig"})
    assert forged.value.status == 401
    # A ticket from the API lets the connection watch everyone's tool calls.
    code, ticket = await post(http, f"{edge.api}/observer_ticket", {})
    assert code == 200 and ticket["expires_in"] == OBSERVER_TICKET_TTL, ticket
    observer = await connect(http, edge, observer_ticket=ticket["ticket"])
    await observer.send("subscribe", {"channel": "tool_activity"})
    assert (await observer.recv_type("subscribed"))["data"]["channel"] == "tool_activity"
    # In the token's place (where a client library's getToken puts it) it works too.
    code, again = await post(http, f"{edge.api}/observer_ticket", {})
    by_token = await connect(http, edge, token=again["ticket"])
    await by_token.send("subscribe", {"channel": "tool_activity"})
    assert (await by_token.recv_type("subscribed"))["data"]["channel"] == "tool_activity"
    await by_token.close()
    caller = await connect(http, edge, client_id="caller")
    await caller.send("tool_call", {"tool_name": "echo", "params": {"text": "seen"}})
    start = await observer.recv_type("mcp_tool_execution_start")
    assert start["data"]["client_id"] == "caller"
    await anonymous.send("ping", message_id="after")
    assert (await anonymous.recv())["type"] == "pong"  # it saw none of it
    # Resuming without a ticket takes the session off the system channel.
    await observer.close()
    again = await connect(http, edge, client_id=observer.client_id,
                          session_token=observer.session_token, last_seq=10**9)
    await caller.send("tool_call", {"tool_name": "echo", "params": {"text": "unseen"}})
    await caller.recv_type("tool_response")
    await post(http, f"{edge.api}/send_message", {"client_id": again.client_id,
                                                  "content": "marker"})
    assert (await again.recv_type("message"))["data"]["content"] == "marker"
    assert not [f for f in again.frames if f["type"].startswith("mcp_tool")]
    for client in (anonymous, caller, again):
        await client.close()


def test_observer_tickets_expire_and_are_bound_to_the_key(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    from server.config import Settings

    node_a = Security(Settings(api_token="shared-token"))
    node_b = Security(Settings(api_token="shared-token"))
    stranger = Security(Settings(api_token="other-token"))
    ticket, _ = node_a.issue_observer_ticket()
    assert node_b.observer_ticket_valid(ticket)  # a cluster shares API_TOKEN
    assert not stranger.observer_ticket_valid(ticket)
    later = time.time() + OBSERVER_TICKET_TTL + 1
    monkeypatch.setattr("server.security.time.time", lambda: later)
    assert not node_a.observer_ticket_valid(ticket)


async def test_a_jwt_with_the_observer_role_reads_tool_activity(make_gateway: MakeGateway) -> None:
    secret = "s" * 32
    live = await make_gateway(ws_auth="jwt", ws_jwt_secret=secret)

    def token(sub: str, **claims: Any) -> str:
        return jwt.encode({"sub": sub, "exp": int(time.time()) + 60, **claims}, secret,
                          algorithm="HS256")

    for sub, claims, allowed in (("ops", {"roles": ["observer"]}, True),
                                 ("ops2", {"roles": "observer"}, True),
                                 ("user", {}, False), ("admin", {"roles": ["admin"]}, False),
                                 ("sneaky", {"observer": True}, False)):
        client = await live.connect(token=token(sub, **claims))
        await client.send("subscribe", {"channel": "tool_activity"})
        reply = await client.recv()
        assert reply["type"] == ("subscribed" if allowed else "error"), (sub, reply)


# --- 8. RFC 6455 ---------------------------------------------------------------------------------

def _closed_with(client: RawWebSocket) -> int | None:
    _, close = client.recv_until_close()
    client.close()
    return close.close_code if close is not None else None


async def _raw(edge: Node, **options: Any) -> RawWebSocket:
    client = await asyncio.to_thread(RawWebSocket, edge.ws_port, **options)
    assert client.status == 101
    return client


async def test_an_unmasked_frame_is_closed_with_1002(edge: Node,
                                                     http: aiohttp.ClientSession) -> None:
    before = await metric(http, edge, "switchboard_disconnects_total", code="1002")
    client = await _raw(edge)
    client.send(TEXT, b'{"type":"ping"}', mask=False)
    assert await asyncio.to_thread(_closed_with, client) == 1002
    # Counted as what was sent (the peer never answering the close does not make it 1006).
    await until(lambda: metric(http, edge, "switchboard_disconnects_total", code="1002"),
                lambda n: n == before + 1, edge, "the 1002 disconnect counted")


async def test_an_unmasked_frame_right_behind_the_handshake_is_closed_with_1002(
        edge: Node) -> None:
    client = await _raw(edge, early=encode_frame(TEXT, b'{"type":"ping"}', mask=False))
    assert await asyncio.to_thread(_closed_with, client) == 1002


async def test_frame_headers_split_anywhere_are_still_checked(edge: Node) -> None:
    """Masked frames dribbled byte by byte are served; an unmasked one after a medium
    (16-bit length) frame split across writes still gets 1002."""
    client = await _raw(edge)
    client.recv()  # greeting
    for byte in encode_frame(TEXT, b'{"type":"ping","message_id":"slow"}'):
        client.sock.sendall(bytes([byte]))
    assert orjson.loads(client.recv().payload)["reply_to"] == "slow"
    medium = encode_frame(TEXT, orjson.dumps({"type": "ping", "data": {"p": "x" * 2000}}))
    unmasked = encode_frame(TEXT, b'{"type":"ping"}', mask=False)
    stream = medium + unmasked
    for cut in (1, 3, 700, len(medium) + 1):
        client.sock.sendall(stream[:cut])
        stream = stream[cut:]
    client.sock.sendall(stream)
    assert await asyncio.to_thread(_closed_with, client) == 1002


async def test_invalid_utf8_is_closed_with_1007(edge: Node) -> None:
    client = await _raw(edge)
    client.send(TEXT, b'{"type":"ping","data":{"x":"\xff\xfe"}}')
    assert await asyncio.to_thread(_closed_with, client) == 1007


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
async def test_forbidden_close_codes_get_1002(edge: Node, code: int) -> None:
    client = await _raw(edge)
    client.send(CLOSE, close_payload(code))
    assert await asyncio.to_thread(_closed_with, client) == 1002


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1011, 3000, 4999])
async def test_allowed_close_codes_are_answered_normally(edge: Node, code: int) -> None:
    client = await _raw(edge)
    client.send(CLOSE, close_payload(code))
    assert await asyncio.to_thread(_closed_with, client) == 1000


async def test_pings_and_good_frames_still_work_on_raw_sockets(edge: Node) -> None:
    client = await _raw(edge)
    client.recv()  # greeting
    client.send(PING, b"hi")
    assert client.recv().payload == b"hi"
    client.send_text('{"type":"ping","message_id":"ok"}')
    assert orjson.loads(client.recv().payload)["reply_to"] == "ok"
    client.close()


# --- 9. the size limit is inclusive -----------------------------------------------------------

def sized_ping(size: int) -> bytes:
    """A valid ping frame of exactly ``size`` bytes."""
    frame = b'{"type":"ping","message_id":"sized","data":{"pad":""}}'
    return frame.replace(b'"pad":""', b'"pad":"' + b"a" * (size - len(frame)) + b'"')


async def test_a_frame_of_exactly_max_message_size_is_accepted(edge: Node) -> None:
    client = await _raw(edge)
    client.recv()  # greeting
    client.send_text(sized_ping(4096))
    assert orjson.loads(client.recv().payload)["reply_to"] == "sized"
    client.send_text(sized_ping(4097))
    assert await asyncio.to_thread(_closed_with, client) == 1009


@pytest.mark.parametrize("size, accepted", [(4096, True), (4097, False)])
async def test_the_limit_holds_after_decompression(edge: Node, size: int,
                                                   accepted: bool) -> None:
    frame = sized_ping(size)
    assert len(zlib.compress(frame)) < 200  # it is the inflated size that counts
    async with websockets.connect(edge.ws, compression="deflate", max_size=None) as conn:
        await conn.recv()
        await conn.send(frame.decode())
        if accepted:
            assert orjson.loads(await asyncio.wait_for(conn.recv(), 5))["reply_to"] == "sized"
        else:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(conn.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
