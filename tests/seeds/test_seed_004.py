"""Seed 004: the YYChat front end on ``ws://host/ws/chat``, speaking flat frames.

Its frames carry their fields beside ``type`` — ``{"type": "text_message", "content": …,
"stream": true, "timestamp": 1234567890.123}`` — and so do the answers it reads:
``msg.client_id`` on every frame, ``processing_start``, ``stream_chunk``'s ``msg.content``,
``stream_end``'s ``msg.full_content``, ``status_response``'s ``msg.data.max_connections``.
Its test script checks connection, heartbeat, ping, status and a streamed text message, and
its REST routes ``/ws/status`` and ``/ws/handlers`` live on the socket's own port. The seed's
own setting: ``MAX_CONNECTIONS = 100`` (heartbeat 30 s, timeout 300 s and 1 MB frames are the
defaults already).
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson

from tests.conftest import RECV_TIMEOUT, LiveGateway, MakeGateway
from tests.seeds.conftest import Seed, SeedFactory

SEED_SETTINGS = {"max_connections": 100}


class ChatClient:
    """The seed's test script: sends flat frames, reads fields at the top level."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.client_id = ""
        self.hello: dict[str, Any] = {}

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_str(orjson.dumps({**frame, "timestamp": time.time()}).decode())

    async def receive(self) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=RECV_TIMEOUT)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        frame = orjson.loads(msg.data)
        if not self.client_id:
            self.client_id = frame["client_id"]
        assert frame["client_id"] == self.client_id, frame  # every answer names the client
        return frame


async def open_chat(seed: Seed, path: str = "/ws/chat") -> ChatClient:
    client = ChatClient(await seed.client.http.ws_connect(seed.url(path)))
    client.hello = await client.receive()  # the seed names no greeting; it is flat too
    assert client.hello["type"] == "connection_established" and client.hello["client_id"]
    return client


async def test_the_seeds_test_script_passes_unchanged(seed_gateway: SeedFactory) -> None:
    seed = await seed_gateway(**SEED_SETTINGS)
    client = await open_chat(seed)
    # 2. heartbeat
    await client.send({"type": "heartbeat"})
    assert (await client.receive())["type"] == "heartbeat_response"
    # 3. ping
    await client.send({"type": "ping"})
    assert (await client.receive())["type"] == "pong"
    # 4. status
    await client.send({"type": "get_status"})
    status = await client.receive()
    assert status["type"] == "status_response"
    for key in ("total_connections", "active_connections", "total_messages", "uptime"):
        assert key in status["data"], key
    assert status["data"]["max_connections"] == 100
    # 5. a streamed text message
    await client.send({"type": "text_message", "content": "Hello, how are you?",
                       "conversation_id": "optional_conversation_id",
                       "personality_id": "optional_personality_id", "use_tools": True,
                       "stream": True})
    assert (await client.receive())["type"] == "processing_start"
    assert (await client.receive())["type"] == "stream_start"
    chunks = []
    while True:
        msg = await client.receive()
        if msg["type"] != "stream_chunk":
            break
        chunks.append(msg["content"])
    assert msg["type"] == "stream_end"
    assert len(chunks) > 1
    assert msg["full_content"] == "".join(chunks) == "Echo: Hello, how are you?"


async def test_an_unstreamed_answer_and_errors_are_flat_too(seed_gateway: SeedFactory) -> None:
    seed = await seed_gateway(**SEED_SETTINGS)
    client = await open_chat(seed)
    await client.send({"type": "text_message", "content": "no stream", "stream": False})
    assert (await client.receive())["type"] == "processing_start"
    answer = await client.receive()
    assert answer["content"] == "Echo: no stream"
    await client.ws.send_str("{garbage")
    error = await client.receive()
    assert error["type"] == "error"
    assert error["code"] == "invalid_json" and error["message"]


async def test_third_party_frames_and_the_replay_are_flat_while_history_is_not(
        seed_gateway: SeedFactory) -> None:
    seed = await seed_gateway(**SEED_SETTINGS)
    client = await open_chat(seed)
    await seed.visible(client.client_id)
    status, body = await seed.call("POST", "/send_message", {
        "client_id": client.client_id, "content": "from the backend",
        "data": {"type": "not the envelope's", "extra": 1}})
    assert status == 200, body
    message = await client.receive()
    assert message["type"] == "message" and message["content"] == "from the backend"
    assert message["extra"] == 1 and message["seq"] == body["seq"]
    status, body = await seed.call("POST", "/broadcast", {
        "message_type": "notification", "data": {"message": "广播消息内容"}})
    assert body["recipients"] == 1, body
    assert (await client.receive())["message"] == "广播消息内容"
    # History keeps the canonical envelope (asked of the node holding it: a cluster writes
    # history behind) ...
    status, history = await seed.client.api("GET", f"/clients/{client.client_id}/messages",
                                            auth=False)
    assert status == 200, history
    kept = [item["frame"] for item in history["messages"] if item["direction"] == "out"]
    assert kept[0]["data"] == {"content": "from the backend", "type": "not the envelope's",
                               "extra": 1}
    assert all("content" not in frame and "client_id" not in frame for frame in kept)
    # ... and a resume on the flat path replays it flat.
    await client.ws.close()
    await seed.visible(client.client_id, connected=False)
    again = ChatClient(await seed.client.http.ws_connect(seed.url(
        f"/ws/chat?client_id={client.client_id}&session_token={client.hello['session_token']}"
        f"&last_seq=0")))
    hello = await again.receive()
    assert hello["resumed"] is True and hello["replayed"] == 2
    replayed = [await again.receive(), await again.receive()]
    assert [f["seq"] for f in replayed] == [1, 2]
    assert replayed[0]["content"] == "from the backend"
    assert replayed[1]["message"] == "广播消息内容"


async def test_the_seeds_rest_routes_answer_on_the_socket_port(
        seed_gateway: SeedFactory) -> None:
    seed = await seed_gateway(**SEED_SETTINGS)
    client = await open_chat(seed)
    async with seed.client.http.get(seed.http_url("/ws/status")) as resp:
        assert resp.status == 200
        status = await resp.json()
    assert status["max_connections"] == 100
    assert status["active_connections"] >= 1 and "total_connections" in status
    assert "broker" not in status  # no internal addresses on the public port
    async with seed.client.http.get(seed.http_url("/ws/handlers")) as resp:
        assert resp.status == 200
        listing = await resp.json()
    for frame_type in ("text_message", "heartbeat", "ping", "get_status"):
        assert frame_type in listing["types"], frame_type
    chat = next(h for h in listing["handlers"] if h["type"] == "chat_message")
    assert "stream_chunk" in chat["replies"]
    await client.ws.close()


async def test_a_flat_first_frame_or_format_flat_choose_the_profile_on_any_path(
        seed_gateway: SeedFactory) -> None:
    seed = await seed_gateway(**SEED_SETTINGS)
    sniffed = ChatClient(await seed.client.http.ws_connect(seed.url("/ws")))
    assert (await sniffed.ws.receive_json())["type"] == "connection_established"
    await sniffed.send({"type": "text_message", "content": "hi"})
    assert (await sniffed.receive())["type"] == "processing_start"
    assert (await sniffed.receive())["content"] == "Echo: hi"
    asked = await open_chat(seed, "/?format=flat")
    await asked.send({"type": "heartbeat"})
    assert (await asked.receive())["type"] == "heartbeat_response"


# --- the seed's REST routes, on the API port too (moved from tests/handlers) --------------------


async def test_ws_status_is_an_alias_of_status_on_the_api_port(
        live_gateway: LiveGateway) -> None:
    await live_gateway.connect()
    status, body = await live_gateway.api("GET", "/ws/status")
    assert status == 200
    assert body["total_clients"] == 1
    assert body["status"] == "running"


async def test_handlers_are_listed_on_both_paths(live_gateway: LiveGateway) -> None:
    status, body = await live_gateway.api("GET", "/handlers")
    assert status == 200
    for frame_type in ("chat_message", "text_message", "tool_call", "tool_result",
                       "permission_response", "ping", "heartbeat", "subscribe",
                       "unsubscribe", "get_status"):
        assert frame_type in body["types"], frame_type
    chat = next(h for h in body["handlers"] if h["type"] == "chat_message")
    assert chat["aliases"] == ["text_message"]
    assert "stream_chunk" in chat["replies"]
    assert chat["fields"]["content"]["required"] is True
    status, alias = await live_gateway.api("GET", "/ws/handlers")
    assert status == 200
    assert alias == body


async def test_socket_port_routes_follow_the_sockets_origin_and_auth_rules(
        make_gateway: MakeGateway) -> None:
    live = await make_gateway(allowed_origins=("https://app.example",), ws_auth="token",
                              ws_auth_token="t" * 32)
    url = str(live.ws_server.make_url("/ws/status"))
    async with live.http.get(url, headers={"Origin": "https://evil.example"}) as resp:
        assert resp.status == 403
    async with live.http.get(url, headers={"Origin": "https://app.example"}) as resp:
        assert resp.status == 401
    async with live.http.get(url + "?token=" + "t" * 32,
                             headers={"Origin": "https://app.example"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "running"
