"""tool_call to server-side tools: lifecycle frames, tool_response, failures, adding a tool."""

from __future__ import annotations

from typing import Any

import pytest

from server.tools import ToolContext
from tests.conftest import LiveGateway


async def test_tool_call_runs_a_builtin_and_answers_tool_response(
        live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    await client.send("tool_call", {"tool_name": "calculate",
                                    "params": {"expression": "(2 + 3) * 4"},
                                    "call_id": "calc-1"}, message_id="m")
    start = await client.recv()
    complete = await client.recv()
    response = await client.recv()
    assert start["type"] == "mcp_tool_execution_start"
    assert start["data"]["status"] == "executing" and start["data"]["risk_level"] == "low"
    assert complete["type"] == "mcp_tool_execution_complete"
    assert complete["data"]["status"] == "completed"
    assert response["type"] == "tool_response" and response["reply_to"] == "m"
    assert response["data"] == {"call_id": "calc-1", "tool_name": "calculate", "success": True,
                                "result": {"expression": "(2 + 3) * 4", "result": 20}}
    assert [start["seq"], complete["seq"], response["seq"]] == [1, 2, 3]


@pytest.mark.parametrize("name", ["params", "arguments", "parameters"])
async def test_a_tool_call_takes_its_parameters_under_any_of_their_names(
        live_gateway: LiveGateway, name: str) -> None:
    client = await live_gateway.connect()
    await client.send("tool_call", {"tool_name": "calculate", name: {"expression": "6 * 7"}})
    response = await client.recv_type("tool_response")
    assert response["data"]["success"] is True, response
    assert response["data"]["result"]["result"] == 42


async def test_a_tool_call_with_parameters_under_two_names_is_refused(
        live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    await client.send("tool_call", {"tool_name": "calculate", "params": {"expression": "1"},
                                    "parameters": {"expression": "2"}}, message_id="both")
    error = await client.recv()
    assert error["type"] == "error" and error["reply_to"] == "both", error
    assert error["data"]["code"] == "invalid_field" and error["data"]["field"] == "parameters"


async def test_unknown_tool_is_an_unsuccessful_response_with_a_reason(
        live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    await client.send("tool_call", {"tool_name": "launch_rockets"})
    response = await client.recv_type("tool_response")
    assert response["data"]["success"] is False
    assert "launch_rockets" in response["data"]["error"]
    assert "echo" in response["data"]["available_tools"]


async def test_bad_params_are_an_unsuccessful_response_naming_the_problem(
        live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    await client.send("tool_call", {"tool_name": "echo", "params": {"text": 5}})
    response = await client.recv_type("tool_response")
    assert response["data"]["success"] is False
    assert "text" in response["data"]["error"]
    await client.send("tool_call", {"tool_name": "calculate",
                                    "params": {"expression": "__import__('os')"}})
    response = await client.recv_type("tool_response")
    assert response["data"]["success"] is False


async def test_list_tools(live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    await client.send("list_tools")
    listing = await client.recv()
    assert listing["type"] == "tools_list"
    names = {tool["name"] for tool in listing["data"]["tools"]}
    assert {"echo", "calculate", "get_time", "word_count"} <= names


async def test_a_tool_added_to_the_registry_is_callable(live_gateway: LiveGateway) -> None:
    def reverse(params: dict[str, Any], ctx: ToolContext) -> str:
        assert ctx.session is not None
        return f"{params['text'][::-1]} for {ctx.session.client_id}"

    live_gateway.holder.tools.add(  # the node running the client's tool_call
        "reverse", "Reverse a string.", reverse,
        parameters={"type": "object", "properties": {"text": {"type": "string"}},
                    "required": ["text"]})
    client = await live_gateway.connect(client_id="me")
    await client.send("tool_call", {"tool_name": "reverse", "params": {"text": "abc"}})
    response = await client.recv_type("tool_response")
    assert response["data"]["success"] is True
    assert response["data"]["result"] == "cba for me"


async def test_a_waiting_tool_does_not_block_the_connection(live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    await client.send("tool_call", {"tool_name": "notify_all", "params": {"message": "hi"},
                                    "call_id": "risky"})
    await client.recv_type("mcp_tool_waiting_permission")
    await client.send("ping", message_id="alive")
    assert (await client.recv_type("pong"))["reply_to"] == "alive"
    await client.send("permission_response", {"call_id": "risky", "granted": False})
    response = await client.recv_type("tool_response")
    assert response["data"]["success"] is False
    assert "denied" in response["data"]["error"]
