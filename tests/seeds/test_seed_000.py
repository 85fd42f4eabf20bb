"""Seed 000: the MCPLog viewer (``websockets`` client and JavaScript ``switch(data.type)``).

The viewer connects to ``/ws/mcplog`` with no query at all, waits for ``connection_ack``
(reading ``data.message``) and shows ``handoff_call`` / ``tool_execution`` / ``mcp_event``
(reading ``data.data``). The MCP manager reaches viewers with ``broadcast(...,
target_type="MCPLog")`` — here ``POST /broadcast`` with ``client_type: "MCPLog"``. MCPClient and
DistributedServer clients use the same path and say what they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import websockets

from tests.conftest import RECV_TIMEOUT
from tests.seeds.conftest import Seed, SeedFactory


class Viewer:
    """The seed's Python client (``websockets.connect(uri)``, ``json.loads(message)``) with the
    JavaScript client's ``switch``: frames without a case are skipped."""

    def __init__(self, websocket: websockets.ClientConnection) -> None:
        self.websocket = websocket
        self.client_id = ""

    async def receive(self, *cases: str) -> dict[str, Any]:
        async with asyncio.timeout(RECV_TIMEOUT):
            while True:
                message = await self.websocket.recv()
                data = json.loads(message)
                if data["type"] == "connection_established":  # not in the seed's switch
                    self.client_id = data["data"]["client_id"]
                if data["type"] in cases:
                    return data


async def open_viewer(stack: contextlib.AsyncExitStack, seed: Seed, query: str = "") -> Viewer:
    viewer = Viewer(await stack.enter_async_context(
        websockets.connect(seed.url("/ws/mcplog" + query))))
    ack = await viewer.receive("connection_ack")
    assert ack["message"]  # console.log('连接确认:', data.message)
    assert ack["timestamp"].endswith("Z")
    await seed.visible(viewer.client_id)
    return viewer


async def test_a_bare_mcplog_viewer_gets_what_the_mcp_manager_sends_to_mcplog(
        seed_gateway: SeedFactory) -> None:
    seed = await seed_gateway()
    async with contextlib.AsyncExitStack() as stack:
        viewer = await open_viewer(stack, seed)  # ws://host/ws/mcplog, nothing else
        mcp_client = await open_viewer(stack, seed, "?client_type=MCPClient")
        # The seed's own notifications, sent by the MCP manager to MCPLog viewers only.
        notices = [
            ("handoff_call", {"service_name": "agent_coder", "task": {"goal": "write code"},
                              "status": "started"}),
            ("tool_execution", {"service_name": "agent_coder", "tool_name": "generate_code",
                                "status": "success", "result": "代码已生成..."}),
            ("mcp_event", {"event_type": "service_connected", "service_name": "agent_coder",
                           "details": {"tools": 3}}),
            ("targeted_message", {"message": "定向消息"}),
        ]
        for message_type, data in notices:
            status, body = await seed.call("POST", "/broadcast", {
                "message_type": message_type, "data": data, "client_type": "MCPLog"})
            assert status == 200, body
            assert body["recipients"] == 1, body  # the viewer, not the MCPClient
            frame = await viewer.receive(message_type)
            assert frame["data"] == data  # console.log('Handoff调用:', data.data) ...
            assert frame["timestamp"]
        # A broadcast to everyone reaches both.
        status, body = await seed.call("POST", "/broadcast", {
            "message_type": "custom_event", "data": {"message": "自定义消息"}})
        assert status == 200 and body["recipients"] == 2, body
        for client in (viewer, mcp_client):
            assert (await client.receive("custom_event"))["data"] == {"message": "自定义消息"}


async def test_the_three_client_types_share_the_path(seed_gateway: SeedFactory) -> None:
    seed = await seed_gateway()
    async with contextlib.AsyncExitStack() as stack:
        ids = {client_type: (await open_viewer(stack, seed, query)).client_id
               for client_type, query in (
                   ("MCPLog", ""), ("MCPClient", "?client_type=MCPClient"),
                   ("DistributedServer", "?client_type=DistributedServer"))}
        for client_type, client_id in ids.items():
            status, body = await seed.call("GET", f"/clients?client_type={client_type}")
            assert status == 200, body
            assert [c["client_id"] for c in body["clients"]] == [client_id], client_type


async def test_invalid_json_from_a_viewer_loses_it_nothing(seed_gateway: SeedFactory) -> None:
    """The seed ignored invalid JSON; here it gets an ``error`` frame (no case in the viewer's
    switch) and the connection carries on."""
    seed = await seed_gateway()
    async with contextlib.AsyncExitStack() as stack:
        viewer = await open_viewer(stack, seed)
        await viewer.websocket.send("{not json")
        error = await viewer.receive("error")
        assert error["data"]["code"] == "invalid_json"
        status, body = await seed.call("POST", "/broadcast", {
            "message_type": "mcp_event", "client_type": "MCPLog",
            "data": {"event_type": "tool_registered", "service_name": "agent_coder",
                     "details": {}}})
        assert status == 200 and body["recipients"] == 1, body
        assert (await viewer.receive("mcp_event"))["data"]["event_type"] == "tool_registered"
