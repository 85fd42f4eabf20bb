"""Seed 001: the tool lifecycle frames of a gateway-mediated tool call, permission for
high-risk tools, the three result shapes, redaction, and observers on ``tool_activity``."""

from __future__ import annotations

from typing import Any

from tests.conftest import LiveGateway, MakeGateway, WSClient

LIFECYCLE = ("mcp_tool_execution_start", "mcp_tool_waiting_permission",
             "mcp_tool_execution_complete")


async def frames_until(client: WSClient, last_type: str) -> list[dict[str, Any]]:
    """Every frame up to and including the first of ``last_type``."""
    frames = []
    while True:
        frame = await client.recv()
        frames.append(frame)
        if frame["type"] == last_type:
            return frames


async def test_low_risk_tool_emits_start_then_complete_with_a_text_result(
        live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    await client.send("tool_call", {"tool_name": "echo", "params": {"text": "hi"},
                                    "call_id": "c1"}, message_id="m1")
    frames = await frames_until(client, "tool_response")
    assert [f["type"] for f in frames] == ["mcp_tool_execution_start",
                                           "mcp_tool_execution_complete", "tool_response"]
    assert all(f["reply_to"] == "m1" for f in frames)
    start, complete, response = (f["data"] for f in frames)
    assert start["tool_name"] == "echo"
    assert start["parameters"] == {"text": "hi"}
    assert start["risk_level"] == "low"
    assert start["status"] == "executing"
    assert start["start_time"].endswith("Z")
    assert start["call_id"] == "c1"
    assert complete["status"] == "completed"
    assert complete["success"] is True
    assert complete["start_time"] == start["start_time"]
    assert complete["end_time"] >= complete["start_time"]
    assert complete["result"] == {"type": "text", "content": "hi", "raw_data": "hi",
                                  "success": True}
    assert response == {"call_id": "c1", "tool_name": "echo", "success": True, "result": "hi"}


async def test_a_structured_result(live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    await client.send("tool_call", {"tool_name": "calculate",
                                    "params": {"expression": "(2 + 3) * 4"}})
    complete = await client.recv_type("mcp_tool_execution_complete")
    result = complete["data"]["result"]
    assert result["type"] == "structured"
    assert result["content"] == {"expression": "(2 + 3) * 4", "result": 20}
    assert result["raw_data"] == result["content"]
    assert result["success"] is True
    response = await client.recv_type("tool_response")
    assert response["data"]["result"] == {"expression": "(2 + 3) * 4", "result": 20}


async def test_a_failing_tool_gives_an_error_result_and_a_failed_status(
        live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    await client.send("tool_call", {"tool_name": "calculate", "params": {"expression": "1/0"}})
    complete = (await client.recv_type("mcp_tool_execution_complete"))["data"]
    assert complete["status"] == "failed"
    assert complete["success"] is False
    assert complete["result"] == {"type": "error", "content": "division by zero",
                                  "raw_data": None, "success": False}
    response = (await client.recv_type("tool_response"))["data"]
    assert response["success"] is False
    assert response["error"] == "division by zero"


async def test_invalid_params_fail_the_call_naming_the_parameter(
        live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    await client.send("tool_call", {"tool_name": "echo", "params": {"text": 5}})
    complete = (await client.recv_type("mcp_tool_execution_complete"))["data"]
    assert complete["status"] == "failed"
    assert "text" in complete["result"]["content"]


async def test_unknown_tool_without_a_backend_lists_the_available_tools(
        live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    await client.send("tool_call", {"tool_name": "nope", "params": {}}, message_id="m2")
    frame = await client.recv()
    assert frame["type"] == "tool_response"
    assert frame["reply_to"] == "m2"
    assert frame["data"]["success"] is False
    assert "nope" in frame["data"]["error"]
    assert "echo" in frame["data"]["available_tools"]


async def test_high_risk_tool_waits_for_permission_and_runs_when_granted(
        live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect(client_id="admin")
    await client.send("tool_call", {"tool_name": "notify_all",
                                    "params": {"message": "deploy at noon"},
                                    "call_id": "risky"})
    start = await client.recv()
    assert start["type"] == "mcp_tool_execution_start"
    assert start["data"]["risk_level"] == "high"
    waiting = await client.recv()
    assert waiting["type"] == "mcp_tool_waiting_permission"
    assert waiting["data"]["status"] == "waiting_permission"
    assert waiting["data"]["risk_level"] == "high"
    assert waiting["data"]["tool_name"] == "notify_all"
    assert waiting["data"]["parameters"] == {"message": "deploy at noon"}
    assert waiting["data"]["call_id"] == "risky"
    await client.send("permission_response", {"call_id": "risky", "granted": True})
    frames = await frames_until(client, "tool_response")
    types = [f["type"] for f in frames]
    assert "notification" in types  # the tool ran: its broadcast reached this client too
    complete = next(f for f in frames if f["type"] == "mcp_tool_execution_complete")
    assert complete["data"]["status"] == "completed"
    assert complete["data"]["result"]["type"] == "structured"
    assert frames[-1]["data"]["success"] is True


async def test_denied_permission_fails_the_call_with_the_reason(
        live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    other = await live_gateway.connect()
    await client.send("tool_call", {"tool_name": "notify_all", "params": {"message": "x"},
                                    "call_id": "d1"})
    await client.recv_type("mcp_tool_waiting_permission")
    await client.send("permission_response", {"call_id": "d1", "granted": False})
    frames = await frames_until(client, "tool_response")
    assert "notification" not in [f["type"] for f in frames]
    complete = next(f["data"] for f in frames if f["type"] == "mcp_tool_execution_complete")
    assert complete["status"] == "failed"
    assert complete["success"] is False
    assert complete["result"]["type"] == "error"
    assert complete["result"]["content"] == "permission denied"
    assert frames[-1]["data"]["error"] == "permission denied"
    # The tool never ran: the other client's next frame is the message sent after it.
    await live_gateway.api("POST", "/send_message", {"client_id": other.client_id,
                                                     "content": "after"})
    assert (await other.recv())["data"] == {"content": "after"}


async def test_no_permission_answer_in_time_fails_the_call(
        make_gateway: MakeGateway) -> None:
    live = await make_gateway(permission_timeout=0.2)
    client = await live.connect()
    await client.send("tool_call", {"tool_name": "notify_all", "params": {"message": "x"},
                                    "call_id": "t1"})
    await client.recv_type("mcp_tool_waiting_permission")
    complete = (await client.recv_type("mcp_tool_execution_complete"))["data"]
    assert complete["status"] == "failed"
    assert "no permission_response within 0.2s" in complete["result"]["content"]
    response = (await client.recv_type("tool_response"))["data"]
    assert response["success"] is False
    # A late answer finds nothing to grant.
    await client.send("permission_response", {"call_id": "t1", "granted": True})
    error = await client.recv_type("error")
    assert error["data"]["code"] == "unknown_call"


async def test_only_the_calling_client_can_grant_permission(
        live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    intruder = await live_gateway.connect()
    await client.send("tool_call", {"tool_name": "notify_all", "params": {"message": "x"},
                                    "call_id": "p1"})
    await client.recv_type("mcp_tool_waiting_permission")
    await intruder.send("permission_response", {"call_id": "p1", "granted": True})
    assert (await intruder.recv_type("error"))["data"]["code"] == "unknown_call"
    await client.send("permission_response", {"call_id": "p1", "granted": False})
    assert (await client.recv_type("tool_response"))["data"]["error"] == "permission denied"


async def test_sensitive_parameters_are_redacted_and_long_ones_truncated(
        live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    long_text = "a" * 1000
    params = {"text": long_text, "password": "hunter2", "api_key": "sk-123",
              "nested": {"token": "tok-456", "keep": "visible"}}
    await client.send("tool_call", {"tool_name": "echo", "params": params})
    frames = await frames_until(client, "mcp_tool_execution_complete")
    for frame in frames:
        shown = frame["data"]["parameters"]
        assert shown["password"] == "***"
        assert shown["api_key"] == "***"
        assert shown["nested"] == {"token": "***", "keep": "visible"}
        assert shown["text"].startswith("a" * 200)
        assert len(shown["text"]) < 300
        assert "chars" in shown["text"]
        encoded = str(frame)
        for secret in ("hunter2", "sk-123", "tok-456"):
            assert secret not in encoded


async def test_observers_on_tool_activity_get_copies_of_the_lifecycle(
        live_gateway: LiveGateway) -> None:
    observer = await live_gateway.connect_observer(client_type="dashboard")
    await observer.send("subscribe", {"channel": "tool_activity"})
    assert (await observer.recv())["type"] == "subscribed"
    caller = await live_gateway.connect(client_id="caller")
    await caller.send("tool_call", {"tool_name": "echo", "params": {"text": "seen",
                                                                    "secret": "s3"}})
    start = await observer.recv()
    complete = await observer.recv()
    assert start["type"] == "mcp_tool_execution_start"
    assert complete["type"] == "mcp_tool_execution_complete"
    assert start["data"]["client_id"] == "caller"
    assert start["data"]["parameters"] == {"text": "seen", "secret": "***"}
    assert complete["data"]["result"]["content"] == "seen"
    # tool_response is for the caller only: the observer's next frame is what we send next.
    await live_gateway.api("POST", "/send_message", {"client_id": observer.client_id,
                                                     "content": "next"})
    assert (await observer.recv())["type"] == "message"
    assert (await caller.recv_type("tool_response"))["data"]["result"] == "seen"


async def test_tools_are_listed_with_their_risk_levels(live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    await client.send("list_tools")
    tools = {t["name"]: t for t in (await client.recv())["data"]["tools"]}
    assert tools["notify_all"]["risk_level"] == "high"
    assert tools["echo"]["risk_level"] == "low"
    status, body = await live_gateway.api("GET", "/tools")
    assert status == 200
    assert {t["name"] for t in body["tools"]} == set(tools)
