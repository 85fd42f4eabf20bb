"""Per-connection abuse limits and tool-call ownership (issue 5): frame rate limit (4009),
permessage-deflate off by default and no deflate bombs (1009), only the addressed client can
answer a tool call or permission request, and call_ids are unguessable."""

from __future__ import annotations

import asyncio
import re
import string
import zlib
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from server.errors import CloseCode
from tests.conftest import LiveGateway, MakeGateway, WSClient, wait_for

# --- frame rate limit -------------------------------------------------------------------------


async def _flood_until_closed(client: WSClient, frames: int) -> tuple[list[dict[str, Any]],
                                                                     int | None]:
    for n in range(frames):
        try:
            await client.send("ping", message_id=f"f{n}")
        except ConnectionError:
            break
    received: list[dict[str, Any]] = []
    while True:
        msg = await client.ws.receive(timeout=5)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            return received, client.ws.close_code
        received.append(orjson.loads(msg.data))


async def test_flood_gets_rate_limited_error_then_4009(make_gateway: MakeGateway) -> None:
    live = await make_gateway(ws_rate_limit=0.001, ws_rate_burst=5)
    flooder = await live.connect(client_id="flooder")
    bystander = await live.connect(client_id="bystander")
    flood = asyncio.get_running_loop().create_task(_flood_until_closed(flooder, 50))
    # The bystander on the same server keeps getting answers while the flood goes on.
    for n in range(4):
        await bystander.send("ping", message_id=f"b{n}")
        assert (await bystander.recv_type("pong"))["reply_to"] == f"b{n}"
    received, code = await flood
    assert code == CloseCode.RATE_LIMITED == 4009
    pongs = [f for f in received if f["type"] == "pong"]
    errors = [f for f in received if f["type"] == "error"]
    assert len(pongs) == 5, received  # exactly the burst was served
    assert errors and errors[0]["data"]["code"] == "rate_limited", received
    assert "retry_after" in errors[0]["data"]
    assert not bystander.ws.closed
    await wait_for(lambda: len(live.connections) == 1, what="flooder cleaned up")


async def test_a_short_burst_over_the_limit_only_drops_frames(make_gateway: MakeGateway
                                                               ) -> None:
    """Going over the budget briefly is an error frame, not a close."""
    live = await make_gateway(ws_rate_limit=0.001, ws_rate_burst=5)
    client = await live.connect()
    for n in range(7):  # 5 served, 2 refused: refused (2) <= burst (5), the socket stays open
        await client.send("ping", message_id=f"f{n}")
    error = await client.recv_type("error")
    assert error["data"]["code"] == "rate_limited"
    assert not client.ws.closed
    assert len(live.connections) == 1


async def test_rate_limit_is_per_connection(make_gateway: MakeGateway) -> None:
    live = await make_gateway(ws_rate_limit=0.001, ws_rate_burst=3)
    a = await live.connect()
    b = await live.connect()
    for client in (a, b):
        for n in range(3):
            await client.send("ping", message_id=f"p{n}")
            assert (await client.recv_type("pong"))["reply_to"] == f"p{n}"


# --- permessage-deflate -----------------------------------------------------------------------


async def test_compression_is_off_by_default(make_gateway: MakeGateway) -> None:
    live = await make_gateway()
    ws = await live.http.ws_connect(live.ws_server.make_url("/"), compress=15)
    assert ws.compress == 0
    await ws.close()
    async with websockets.connect(live.ws_url, compression="deflate") as conn:
        assert conn.response is not None
        assert "Sec-WebSocket-Extensions" not in conn.response.headers


async def test_compression_is_negotiated_when_enabled(make_gateway: MakeGateway) -> None:
    live = await make_gateway(ws_compression=True)
    ws = await live.http.ws_connect(live.ws_server.make_url("/"), compress=15)
    assert ws.compress == 15
    hello = await ws.receive(timeout=5)
    assert orjson.loads(hello.data)["type"] == "connection_established"
    await ws.send_str(orjson.dumps({"type": "ping", "message_id": "z"}).decode())
    while True:
        frame = orjson.loads((await ws.receive(timeout=5)).data)
        if frame["type"] == "pong":
            break
    await ws.close()


def _bomb(size: int) -> str:
    """A valid JSON frame of ``size`` bytes that deflates to almost nothing."""
    padding = size - len('{"type":"ping","data":{"pad":""}}')
    return '{"type":"ping","data":{"pad":"' + "a" * padding + '"}}'


async def test_deflate_bomb_aiohttp_client_is_closed_1009(make_gateway: MakeGateway) -> None:
    max_size = 64 * 1024
    live = await make_gateway(ws_compression=True, max_message_size=max_size,
                              send_queue_bytes=max_size)
    bystander = await live.connect()
    bomb = _bomb(64 * max_size)  # 4 MiB once inflated
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    on_the_wire = compressor.compress(bomb.encode()) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert len(on_the_wire) < max_size // 4  # the frame itself is small: only inflating trips it
    ws = await live.http.ws_connect(live.ws_server.make_url("/"), compress=15)
    assert ws.compress == 15
    await ws.receive(timeout=5)  # connection_established
    await ws.send_str(bomb)
    while True:
        msg = await ws.receive(timeout=5)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            break
    assert ws.close_code == CloseCode.MESSAGE_TOO_BIG == 1009
    await bystander.send("ping", message_id="still")
    assert (await bystander.recv_type("pong"))["reply_to"] == "still"
    await wait_for(lambda: len(live.connections) == 1, what="bomb connection cleaned up")


async def test_deflate_bomb_websockets_client_is_closed_1009(make_gateway: MakeGateway
                                                             ) -> None:
    max_size = 64 * 1024
    live = await make_gateway(ws_compression=True, max_message_size=max_size,
                              send_queue_bytes=max_size)
    async with websockets.connect(live.ws_url, compression="deflate", max_size=None) as conn:
        assert "permessage-deflate" in conn.response.headers["Sec-WebSocket-Extensions"]
        await conn.recv()
        await conn.send(_bomb(16 * max_size))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(conn.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009


async def test_compressed_frame_just_under_the_limit_is_accepted(make_gateway: MakeGateway
                                                                 ) -> None:
    max_size = 64 * 1024
    live = await make_gateway(ws_compression=True, max_message_size=max_size,
                              send_queue_bytes=max_size * 4)
    async with websockets.connect(live.ws_url, compression="deflate", max_size=None) as conn:
        await conn.recv()
        frame = _bomb(max_size - 100)
        await conn.send(frame.replace('"ping"', '"ping","message_id":"big"', 1))
        while True:
            answer = orjson.loads(await asyncio.wait_for(conn.recv(), 5))
            if answer["type"] == "pong":
                assert answer["reply_to"] == "big"
                break


async def test_uncompressed_oversized_frame_is_1009(make_gateway: MakeGateway) -> None:
    live = await make_gateway(max_message_size=4096)
    client = await live.connect()
    await client.send_raw(_bomb(8192))
    assert await client.recv_close() == 1009


# --- tool calls and permissions are answered only by their addressee --------------------------


async def _pending_call(live: LiveGateway, client_id: str
                        ) -> tuple[asyncio.Task[tuple[int, Any]], str]:
    target = next(c for c in live.clients if c.client_id == client_id)
    task = asyncio.get_running_loop().create_task(live.api("POST", "/call_tool", {
        "client_id": client_id, "tool_name": "read_file", "params": {"path": "/x"},
        "timeout": 10}))
    call = await target.recv_type("tool_call")
    return task, call["data"]["call_id"]


async def test_only_the_addressed_client_can_answer_a_tool_call(make_gateway: MakeGateway
                                                                ) -> None:
    live = await make_gateway()
    alice = await live.connect(client_id="alice")
    mallory = await live.connect(client_id="mallory")
    task, call_id = await _pending_call(live, "alice")
    # mallory learned the call_id somehow and answers first: refused, call still pending.
    await mallory.send("tool_result", {"call_id": call_id, "result": "forged"},
                       message_id="m1")
    error = await mallory.recv_type("error")
    assert error["data"]["code"] == "unknown_call" and error["reply_to"] == "m1"
    assert call_id in live.holder.pending_calls  # still waiting on the node holding alice
    assert not task.done()
    # A made-up call_id is refused the same way (no oracle telling the two apart).
    await mallory.send("tool_result", {"call_id": "guess", "result": 1}, message_id="m2")
    other = await mallory.recv_type("error")
    assert other["data"]["code"] == "unknown_call"
    assert other["data"]["message"].replace("'guess'", "X") == \
        error["data"]["message"].replace(repr(call_id), "X")
    await alice.send("tool_result", {"call_id": call_id, "result": "genuine"})
    status, body = await task
    assert status == 200, body
    assert body["result"] == "genuine" and body["client_id"] == "alice"
    # Answered calls cannot be answered again.
    await alice.send("tool_result", {"call_id": call_id, "result": "again"})
    assert (await alice.recv_type("error"))["data"]["code"] == "unknown_call"


async def test_only_the_asking_client_can_grant_permission(make_gateway: MakeGateway) -> None:
    live = await make_gateway(permission_timeout=10)
    alice = await live.connect(client_id="alice")
    mallory = await live.connect(client_id="mallory")
    await alice.send("tool_call", {"tool_name": "notify_all", "params": {"message": "hi"}},
                     message_id="t1")
    waiting = await alice.recv_type("mcp_tool_waiting_permission")
    call_id = waiting["data"]["call_id"]
    await mallory.send("permission_response", {"call_id": call_id, "granted": True},
                       message_id="m1")
    assert (await mallory.recv_type("error"))["data"]["code"] == "unknown_call"
    assert not [f for f in alice.frames if f["type"] == "mcp_tool_execution_complete"]
    await alice.send("permission_response", {"call_id": call_id, "granted": False})
    done = await alice.recv_type("tool_response")
    assert done["data"]["success"] is False
    assert "permission denied" in done["data"]["error"]


async def test_clients_choosing_the_same_call_id_do_not_collide(make_gateway: MakeGateway
                                                                 ) -> None:
    """call_ids of client-initiated tool calls are chosen by clients: one client reusing
    another's id must neither steal nor cancel the other's permission request."""
    live = await make_gateway(permission_timeout=10)
    alice = await live.connect(client_id="alice")
    mallory = await live.connect(client_id="mallory")
    await alice.send("tool_call", {"tool_name": "notify_all", "params": {"message": "a"},
                                   "call_id": "shared"})
    await alice.recv_type("mcp_tool_waiting_permission")
    await mallory.send("tool_call", {"tool_name": "notify_all", "params": {"message": "m"},
                                     "call_id": "shared"})
    await mallory.recv_type("mcp_tool_waiting_permission")
    await alice.send("permission_response", {"call_id": "shared", "granted": True})
    done = await alice.recv_type("tool_response")
    assert done["data"]["success"] is True, done
    await mallory.send("permission_response", {"call_id": "shared", "granted": False})
    denied = await mallory.recv_type("tool_response")
    assert denied["data"]["success"] is False


# --- call_ids are unguessable -----------------------------------------------------------------

URLSAFE = set(string.ascii_letters + string.digits + "-_")


async def test_call_ids_are_unguessable(make_gateway: MakeGateway) -> None:
    live = await make_gateway()
    alice = await live.connect(client_id="alice")
    count = 40
    tasks = [asyncio.get_running_loop().create_task(live.api("POST", "/call_tool", {
        "client_id": "alice", "tool_name": "t", "params": {}, "timeout": 10}))
        for _ in range(count)]
    ids = [(await alice.recv_type("tool_call"))["data"]["call_id"] for _ in range(count)]
    for call_id in ids:
        await alice.send("tool_result", {"call_id": call_id, "result": None})
    for task in tasks:
        assert (await task)[0] == 200
    assert len(set(ids)) == count
    for call_id in ids:
        assert len(call_id) >= 22, call_id  # >= 128 random bits in base64url
        assert set(call_id) <= URLSAFE, call_id
        assert not re.fullmatch(r"\d+", call_id)
    # Shape of randomness: no shared prefix, and the alphabet is used broadly.
    assert len({call_id[:4] for call_id in ids}) > count * 0.9
    assert len(set("".join(ids))) > 50


async def test_one_client_reusing_its_own_pending_call_id_is_refused(
        make_gateway: MakeGateway) -> None:
    live = await make_gateway(permission_timeout=10)
    alice = await live.connect(client_id="alice")
    await alice.send("tool_call", {"tool_name": "notify_all", "params": {"message": "a"},
                                   "call_id": "dup"}, message_id="first")
    await alice.recv_type("mcp_tool_waiting_permission")
    await alice.send("tool_call", {"tool_name": "notify_all", "params": {"message": "b"},
                                   "call_id": "dup"}, message_id="second")
    refused = await alice.recv_type("tool_response")
    assert refused["reply_to"] == "second" and refused["data"]["success"] is False
    assert "already waiting" in refused["data"]["error"]
    await alice.send("permission_response", {"call_id": "dup", "granted": True})
    done = await alice.recv_type("tool_response")
    assert done["reply_to"] == "first" and done["data"]["success"] is True, done
