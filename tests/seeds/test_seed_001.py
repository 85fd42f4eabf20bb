"""Seed 001: the agent front end's ``MCPToolHandler``, connected to
``ws://host/agent_backend/ws/<session_id>``.

:class:`MCPToolHandler` is the seed's JavaScript class transcribed line by line: the same
``switch (message.type)``, the same reads of ``message.data`` (``tool_name``, ``risk_level``,
``success``, ``result.type``, ``result.content``, ``result.raw_data``), and the DOM it would
build recorded as a list of what the user sees. The agent reaches the front end by its session
id, which is the client_id (``POST /send_message`` to it); the gateway's own tools emit the same
lifecycle frames.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from tests.conftest import RECV_TIMEOUT
from tests.seeds.conftest import Seed, SeedFactory, on_message

LIFECYCLE = ("mcp_tool_execution_start", "mcp_tool_waiting_permission",
             "mcp_tool_execution_complete")

# The seed's three example frames, verbatim (what its agent sends).
START = {"tool_name": "file_system::read_file", "parameters": {"path": "/path/to/file.txt"},
         "risk_level": "medium", "start_time": "2024-01-15T10:30:00.000Z",
         "status": "executing"}
WAITING = {"tool_name": "file_system::write_file",
           "parameters": {"path": "/path/to/file.txt", "content": "file content..."},
           "risk_level": "high", "start_time": "2024-01-15T10:30:00.000Z",
           "status": "waiting_permission"}
COMPLETE = {"tool_name": "file_system::read_file", "parameters": {"path": "/path/to/file.txt"},
            "risk_level": "medium", "start_time": "2024-01-15T10:30:00.000Z",
            "end_time": "2024-01-15T10:30:05.500Z", "success": True,
            "result": {"type": "text", "content": "文件内容在这里...",
                       "raw_data": {"content": [{"type": "text", "text": "文件内容在这里..."}]},
                       "success": True},
            "status": "completed"}


class MCPToolHandler:
    """The seed's class; ``chat`` is what ``#chat-container`` would show."""

    def __init__(self) -> None:
        self.active_tools: dict[str, dict[str, Any]] = {}
        self.indicators: dict[str, str] = {}
        self.chat: list[tuple[Any, ...]] = []

    def handle_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "mcp_tool_execution_start":
            self.handle_tool_start(message["data"])
        elif kind == "mcp_tool_waiting_permission":
            self.handle_tool_waiting_permission(message["data"])
        elif kind == "mcp_tool_execution_complete":
            self.handle_tool_complete(message["data"])

    def handle_tool_start(self, data: dict[str, Any]) -> None:
        self.indicators[data["tool_name"]] = "executing"
        self.active_tools[data["tool_name"]] = {**data, "status": "executing"}

    def handle_tool_waiting_permission(self, data: dict[str, Any]) -> None:
        self.indicators[data["tool_name"]] = "waiting_permission"
        if data["risk_level"] == "high":
            self.chat.append(("high_risk_warning", data["tool_name"]))

    def handle_tool_complete(self, data: dict[str, Any]) -> None:
        self.indicators.pop(data["tool_name"], None)
        self.display_tool_result(data)
        self.active_tools.pop(data["tool_name"], None)

    def display_tool_result(self, data: dict[str, Any]) -> None:
        if not data["success"]:
            self.chat.append(("tool_error", f"工具执行失败: {data['result']['content']}"))
            return
        result = data["result"]
        if result["type"] == "text":
            self.chat.append(("text", data["tool_name"], result["content"][:200]))
        elif result["type"] == "structured":
            self.chat.append(("structured", data["tool_name"], len(result["content"])))
        if result["raw_data"]:
            self.chat.append(("view_raw_data", data["tool_name"], result["raw_data"]))


class FrontEnd:
    """``new WebSocket('ws://localhost:8000/agent_backend/ws/<session_id>')`` with the seed's
    handler attached."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.handler = MCPToolHandler()

    async def until(self, kind: str) -> dict[str, Any]:
        message = await on_message(self.ws, *LIFECYCLE)
        self.handler.handle_message(message)
        assert message["type"] == kind, message
        return message


async def open_front_end(seed: Seed, session_id: str, on: str = "client") -> FrontEnd:
    node = seed.client if on == "client" else seed.api
    url = node.ws_url.rstrip("/") + f"/agent_backend/ws/{session_id}"
    return FrontEnd(await node.http.ws_connect(url))


async def agent_sends(seed: Seed, session_id: str, message_type: str,
                      data: dict[str, Any]) -> dict[str, Any]:
    status, body = await seed.call("POST", "/send_message", {
        "client_id": session_id, "message_type": message_type, "data": data})
    assert status == 200, body
    return body


async def test_the_agents_tool_frames_reach_the_front_end_by_its_session_id(
        seed_gateway: SeedFactory) -> None:
    seed = await seed_gateway()
    front = await open_front_end(seed, "your_session_id")
    await seed.visible("your_session_id")
    await agent_sends(seed, "your_session_id", "mcp_tool_execution_start", START)
    await front.until("mcp_tool_execution_start")
    assert front.handler.indicators == {"file_system::read_file": "executing"}
    await agent_sends(seed, "your_session_id", "mcp_tool_waiting_permission", WAITING)
    await front.until("mcp_tool_waiting_permission")
    assert ("high_risk_warning", "file_system::write_file") in front.handler.chat
    await agent_sends(seed, "your_session_id", "mcp_tool_execution_complete", COMPLETE)
    await front.until("mcp_tool_execution_complete")
    assert front.handler.chat[1:] == [
        ("text", "file_system::read_file", "文件内容在这里..."),
        ("view_raw_data", "file_system::read_file", COMPLETE["result"]["raw_data"]),
    ]
    assert "file_system::read_file" not in front.handler.indicators


async def test_the_gateways_own_tools_speak_the_seeds_lifecycle(
        seed_gateway: SeedFactory) -> None:
    seed = await seed_gateway()
    front = await open_front_end(seed, "sess-tools")
    ws = front.ws
    await ws.send_str(orjson.dumps({"type": "tool_call", "data": {
        "tool_name": "word_count", "params": {"text": "two words"}}}).decode())
    start = await front.until("mcp_tool_execution_start")
    assert start["data"]["risk_level"] == "low"
    assert start["data"]["start_time"].endswith("Z")
    await front.until("mcp_tool_execution_complete")
    assert front.handler.chat[0] == ("structured", "word_count", 3)
    # A high-risk tool waits for permission; the front end grants it.
    await ws.send_str(orjson.dumps({"type": "tool_call", "data": {
        "tool_name": "notify_all", "params": {"message": "deploy", "api_key": "s3cret"}}}
    ).decode())
    await front.until("mcp_tool_execution_start")
    waiting = await front.until("mcp_tool_waiting_permission")
    assert waiting["data"]["status"] == "waiting_permission"
    assert waiting["data"]["parameters"]["api_key"] != "s3cret"  # redacted
    assert ("high_risk_warning", "notify_all") in front.handler.chat
    await ws.send_str(orjson.dumps({"type": "permission_response", "data": {
        "call_id": waiting["data"]["call_id"], "granted": True}}).decode())
    complete = await front.until("mcp_tool_execution_complete")
    assert complete["data"]["status"] == "completed" and complete["data"]["end_time"]
    assert front.handler.chat[-1][:2] == ("view_raw_data", "notify_all")
    assert front.handler.active_tools == {}


async def test_a_reloaded_front_end_gets_its_session_id_back(seed_gateway: SeedFactory) -> None:
    """A page reload reconnects to the same path without any session_token: the new socket
    takes the session id over (on any node), and the agent's frames follow it."""
    seed = await seed_gateway()
    first = await open_front_end(seed, "sess-reload")
    await seed.visible("sess-reload")
    await first.ws.close()
    await seed.visible("sess-reload", connected=False)
    second = await open_front_end(seed, "sess-reload", on="api")
    hello = await on_message(second.ws, "connection_established")
    assert hello["data"]["client_id"] == "sess-reload"
    await seed.visible("sess-reload")
    body = await agent_sends(seed, "sess-reload", "mcp_tool_execution_start", START)
    assert body["status"] == "delivered"
    await second.until("mcp_tool_execution_start")
    # A third tab on the same session id replaces the second, which is told not to
    # reconnect (4000).
    third = await open_front_end(seed, "sess-reload")
    hello = await on_message(third.ws, "connection_established")
    assert hello["data"]["client_id"] == "sess-reload"
    msg = await second.ws.receive(timeout=RECV_TIMEOUT)
    while msg.type is aiohttp.WSMsgType.TEXT:
        msg = await second.ws.receive(timeout=RECV_TIMEOUT)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4000, msg
    await seed.visible("sess-reload")
    await agent_sends(seed, "sess-reload", "mcp_tool_execution_complete", COMPLETE)
    await third.until("mcp_tool_execution_complete")


async def test_a_bad_session_id_in_the_path_is_refused_before_the_upgrade(
        seed_gateway: SeedFactory) -> None:
    seed = await seed_gateway()
    for session_id in ("with%20space", "x" * 129):
        async with seed.client.http.get(seed.http_url(f"/agent_backend/ws/{session_id}"),
                                        headers={"Connection": "Upgrade",
                                                 "Upgrade": "websocket",
                                                 "Sec-WebSocket-Version": "13",
                                                 "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
                                        ) as resp:
            assert resp.status == 400
            body = await resp.json()
            assert body["error"]["code"] == "invalid_request"
            assert "session_id" in body["error"]["message"]
