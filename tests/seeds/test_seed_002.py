"""Seed 002: the standalone WebSocket server for third parties (ports 9004 / 9005).

Its clients send the envelope ``{"type": "chat_message", "data": {"content", "role"},
"message_id", "timestamp"}`` and read ``chat_response``'s ``data`` {content, status, model};
``tool_call`` gets ``tool_response``, ``ping`` gets ``pong``. Its third parties use the API
with plain ``curl`` (no token): ``GET /status``, ``GET /clients``, ``POST /send_message``,
``POST /call_tool``, ``POST /broadcast``, and read the docs at ``/docs``. Its settings are
``WS_HOST``, ``WS_PORT`` and ``API_PORT`` only (ports are chosen free here). Switchboard grew
from this seed, so this module pins what its clients rely on.
"""

from __future__ import annotations

import asyncio
import uuid

from tests.conftest import WSClient
from tests.seeds.conftest import Seed, SeedFactory


async def connect(seed: Seed) -> WSClient:
    client = await seed.client.connect("/")  # ws://localhost:9004
    assert client.hello["type"] == "connection_established"
    await seed.visible(client.client_id)
    return client


async def test_the_seeds_client_frames_get_the_seeds_answers(seed_gateway: SeedFactory) -> None:
    seed = await seed_gateway()
    client = await connect(seed)
    message_id = str(uuid.uuid4())
    await client.send("chat_message", {"content": "消息内容", "role": "user"},
                      message_id=message_id, timestamp="2024-01-01T00:00:00")
    assert (await client.recv())["type"] == "processing"
    answer = await client.recv()
    assert answer["type"] == "chat_response"
    assert answer["data"]["content"] and answer["data"]["status"] == "completed"
    assert answer["data"]["model"]
    assert answer["message_id"] and answer["timestamp"] and answer["reply_to"] == message_id
    await client.send("tool_call", {"tool_name": "echo", "params": {"text": "value1"}})
    response = await client.recv_type("tool_response")
    assert response["data"]["success"] is True and response["data"]["result"] == "value1"
    await client.send("ping")
    assert (await client.recv())["type"] == "pong"


async def test_the_seeds_curl_calls(seed_gateway: SeedFactory) -> None:
    seed = await seed_gateway()
    client = await connect(seed)
    status, body = await seed.call("GET", "/status")
    assert status == 200
    assert body["status"] == "running" and body["connected_clients"] == 1
    assert body["server_time"]
    status, body = await seed.call("GET", "/clients")
    assert status == 200 and body["total"] == 1
    listed = body["clients"][0]
    for key in ("client_id", "connected_at", "last_activity", "message_count"):
        assert key in listed, key
    status, body = await seed.call("POST", "/send_message",
                                   {"content": "测试消息", "client_id": client.client_id})
    assert status == 200 and body["status"] == "delivered", body
    assert (await client.recv())["data"]["content"] == "测试消息"
    status, body = await seed.call("POST", "/broadcast", {
        "message_type": "notification", "data": {"message": "广播消息内容"}})
    assert status == 200 and body["recipients"] == 1, body
    notice = await client.recv()
    assert notice["type"] == "notification" and notice["data"] == {"message": "广播消息内容"}

    async def answer_the_call() -> None:
        call = await client.recv_type("tool_call")
        assert call["data"]["tool_name"] == "tool_name"
        assert call["data"]["params"] == {"param1": "value1"}
        await client.send("tool_result", {"call_id": call["data"]["call_id"],
                                          "result": {"ok": True}})

    task = asyncio.create_task(answer_the_call())
    status, body = await seed.call("POST", "/call_tool", {
        "tool_name": "tool_name", "params": {"param1": "value1"},
        "client_id": client.client_id})
    await task
    assert status == 200 and body["success"] is True and body["result"] == {"ok": True}, body
    async with seed.api.http.get(f"{seed.api.api_url}/docs") as resp:
        assert resp.status == 200
