"""POST /call_tool: a real round trip to a client, and every way it can fail."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import LiveGateway, MakeGateway, WSClient, eventually, wait_for

#: Long enough that a test passing quickly proves the answer did not wait for the timeout.
LONG = 30


def call(live: LiveGateway, client_id: str, tool_name: str = "read_file",
         params: dict[str, Any] | None = None, **extra: Any) -> asyncio.Task[tuple[int, Any]]:
    """Start a call_tool request in the background (it returns when the client answers)."""
    body = {"client_id": client_id, "tool_name": tool_name,
            "params": params if params is not None else {"path": "/etc/motd"}, **extra}
    return asyncio.get_running_loop().create_task(live.api("POST", "/call_tool", body))


async def incoming_call(client: WSClient) -> dict[str, Any]:
    frame = await client.recv_type("tool_call")
    assert frame["data"]["call_id"]
    return frame


async def test_call_tool_is_answered_by_the_client(live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="agent")
    request = call(live, "agent", params={"path": "/etc/motd"}, timeout=LONG)
    frame = await incoming_call(client)
    assert frame["data"]["tool_name"] == "read_file"
    assert frame["data"]["params"] == {"path": "/etc/motd"}
    assert isinstance(frame["seq"], int)
    call_id = frame["data"]["call_id"]
    await client.send("tool_result", {"call_id": call_id, "result": {"text": "hello"}},
                      message_id="answer")
    status, body = await request
    assert status == 200, body
    assert body["call_id"] == call_id
    assert body["success"] is True
    assert body["result"] == {"text": "hello"}
    assert body["tool_name"] == "read_file" and body["client_id"] == "agent"
    ack = await client.recv_type("tool_result_ack")
    assert ack["reply_to"] == "answer" and ack["data"]["call_id"] == call_id
    assert not live.holder.pending_calls


@pytest.mark.parametrize("name", ["params", "arguments", "parameters"])
async def test_the_parameters_reach_the_client_under_any_of_their_names(
        live_gateway: LiveGateway, name: str) -> None:
    live = live_gateway
    client = await live.connect(client_id="agent")
    request = asyncio.get_running_loop().create_task(live.api("POST", "/call_tool", {
        "client_id": "agent", "tool_name": "read_file", name: {"path": "/etc/motd"},
        "timeout": LONG}))
    frame = await incoming_call(client)
    assert frame["data"]["params"] == {"path": "/etc/motd"}
    await client.send("tool_result", {"call_id": frame["data"]["call_id"], "result": "ok"})
    status, body = await request
    assert status == 200 and body["result"] == "ok", body


async def test_parameters_under_two_names_are_422_and_nothing_is_sent(
        live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="agent")
    status, body = await live.api("POST", "/call_tool", {
        "client_id": "agent", "tool_name": "read_file", "params": {"path": "/a"},
        "arguments": {"path": "/b"}})
    assert status == 422, body
    assert body["error"]["code"] == "invalid_field"
    assert body["error"]["field"] == "arguments" and "params" in body["error"]["message"]
    await client.send("ping", message_id="after")
    assert (await client.recv())["type"] == "pong"  # no tool_call came before the pong
    assert not live.holder.pending_calls


async def test_a_client_error_answer_is_an_unsuccessful_result(
        live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="agent")
    request = call(live, "agent", timeout=LONG)
    call_id = (await incoming_call(client))["data"]["call_id"]
    await client.send("tool_result", {"call_id": call_id, "error": "no such file"})
    status, body = await request
    assert status == 200, body
    assert body["success"] is False and body["error"] == "no such file"


async def test_no_answer_within_the_timeout_is_504(live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="mute")
    status, body = await live.api("POST", "/call_tool", {
        "client_id": "mute", "tool_name": "t", "params": {}, "timeout": 0.1})
    assert status == 504, body
    assert body["error"]["code"] == "timeout"
    frame = await incoming_call(client)
    assert body["error"]["call_id"] == frame["data"]["call_id"]
    assert not live.holder.pending_calls  # nothing left waiting
    # A late answer is refused, and the client stays connected.
    await client.send("tool_result", {"call_id": body["error"]["call_id"], "result": 1},
                      message_id="late")
    error = await client.recv_type("error")
    assert error["data"]["code"] == "unknown_call" and error["reply_to"] == "late"


async def test_default_timeout_is_call_tool_timeout(make_gateway: MakeGateway) -> None:
    live = await make_gateway(call_tool_timeout=0.1)
    await live.connect(client_id="mute")
    status, body = await live.api("POST", "/call_tool", {"client_id": "mute", "tool_name": "t"})
    assert status == 504, body


async def test_call_tool_to_an_unknown_client_is_404(live_gateway: LiveGateway) -> None:
    status, body = await live_gateway.api("POST", "/call_tool",
                                          {"client_id": "nobody", "tool_name": "t"})
    assert status == 404
    assert body["error"]["code"] == "client_not_found"


async def test_call_tool_to_an_offline_session_is_409_at_once(
        live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="away")
    await client.close()
    await live.offline("away")
    status, body = await live.api("POST", "/call_tool", {
        "client_id": "away", "tool_name": "t", "timeout": LONG})
    assert status == 409, body
    assert body["error"]["code"] == "client_offline"
    assert "wait_for_client" in body["error"]["message"]
    # No tool_call was queued for a call nobody waits for.
    assert (await live.client_info("away"))["last_seq"] == 0


@pytest.mark.timeout(10)
@pytest.mark.parametrize("how", ["close", "abort"])
async def test_client_vanishing_mid_call_is_502_at_once(live_gateway: LiveGateway,
                                                        how: str) -> None:
    live = live_gateway
    client = await live.connect(client_id="flaky")
    request = call(live, "flaky", timeout=LONG)
    await incoming_call(client)
    if how == "close":
        await client.close()
    else:
        client.ws._response.connection.transport.abort()  # type: ignore[union-attr]
    status, body = await request  # long before LONG seconds: the pytest timeout is 10
    assert status == 502, body
    assert body["error"]["code"] == "client_disconnected"
    assert body["error"]["call_id"]
    assert not live.holder.pending_calls


@pytest.mark.timeout(10)
async def test_session_ended_mid_call_is_502_at_once(live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="doomed")
    request = call(live, "doomed", timeout=LONG)
    await incoming_call(client)
    status, _ = await live.api("DELETE", "/clients/doomed")
    assert status == 200
    status, body = await request
    assert status == 502, body
    assert await client.recv_close() == 4001


async def test_another_client_cannot_answer_someone_elses_call(
        live_gateway: LiveGateway) -> None:
    live = live_gateway
    owner = await live.connect(client_id="owner")
    thief = await live.connect(client_id="thief")
    request = call(live, "owner", timeout=LONG)
    call_id = (await incoming_call(owner))["data"]["call_id"]
    await thief.send("tool_result", {"call_id": call_id, "result": "forged"}, message_id="f")
    error = await thief.recv_type("error")
    assert error["data"]["code"] == "unknown_call" and error["reply_to"] == "f"
    assert not request.done()
    await owner.send("tool_result", {"call_id": call_id, "result": "genuine"})
    status, body = await request
    assert status == 200 and body["result"] == "genuine"
    # The call is settled: a second answer is refused too.
    await owner.send("tool_result", {"call_id": call_id, "result": "again"}, message_id="2")
    assert (await owner.recv_type("error"))["data"]["code"] == "unknown_call"


@pytest.mark.timeout(10)
async def test_wait_for_client_waits_for_the_session_to_resume(
        live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="sleepy")
    await client.close()
    await live.offline("sleepy")
    request = call(live, "sleepy", timeout=LONG, wait_for_client=True)
    await eventually(lambda: live.client_info("sleepy"), lambda info: info["last_seq"] == 1,
                     what="the tool_call to be queued")
    assert not request.done()
    resumed = await live.connect(client_id="sleepy", session_token=client.session_token,
                                 last_seq=0)
    frame = await incoming_call(resumed)
    await resumed.send("tool_result", {"call_id": frame["data"]["call_id"], "result": "late"})
    status, body = await request
    assert status == 200 and body["result"] == "late"


@pytest.mark.timeout(10)
async def test_wait_for_client_survives_a_drop_mid_call(live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="mobile")
    request = call(live, "mobile", timeout=LONG, wait_for_client=True)
    frame = await incoming_call(client)
    client.ws._response.connection.transport.abort()  # type: ignore[union-attr]
    await live.offline("mobile")
    assert not request.done()
    resumed = await live.connect(client_id="mobile", session_token=client.session_token,
                                 last_seq=frame["seq"])
    await resumed.send("tool_result", {"call_id": frame["data"]["call_id"], "result": "ok"})
    status, body = await request
    assert status == 200 and body["result"] == "ok"


async def test_wait_for_client_still_times_out(live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="gone")
    await client.close()
    await live.offline("gone")
    status, body = await live.api("POST", "/call_tool", {
        "client_id": "gone", "tool_name": "t", "timeout": 0.1, "wait_for_client": True})
    assert status == 504, body


async def test_concurrent_calls_are_matched_by_call_id(live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="busy")
    requests = [call(live, "busy", params={"n": n}, timeout=LONG) for n in range(3)]
    frames = [await incoming_call(client) for _ in range(3)]
    for frame in reversed(frames):  # answer out of order
        await client.send("tool_result", {"call_id": frame["data"]["call_id"],
                                          "result": frame["data"]["params"]["n"] * 10})
    results = [await r for r in requests]
    assert [(status, body["result"]) for status, body in results] == [(200, 0), (200, 10),
                                                                      (200, 20)]


@pytest.mark.timeout(10)
async def test_wait_for_client_fails_at_once_when_the_session_ends_on_disconnect(
        make_gateway: MakeGateway) -> None:
    live = await make_gateway(session_ttl=0)  # nothing is kept: nobody can come back
    client = await live.connect(client_id="ephemeral")
    request = call(live, "ephemeral", timeout=LONG, wait_for_client=True)
    await incoming_call(client)
    await client.close()
    status, body = await request
    assert status == 502, body
    assert (await live.api("GET", "/clients/ephemeral"))[0] == 404


async def observed_api_tool_calls(api_node: LiveGateway, client_node: LiveGateway) -> None:
    """``POST /call_tool`` shows up on ``tool_activity`` (the dashboard's stream): a start and a
    complete (or failed) frame, parameters redacted, not counted as broadcasts. The observer
    is on the API's node, the client on ``client_node``."""
    observer = await api_node.connect_observer(client_type="dashboard")
    await observer.send("subscribe", {"channel": "tool_activity"})
    await observer.recv_type("subscribed")
    worker = await client_node.connect(client_id="observed-worker")
    await wait_for(lambda: True)
    broadcasts = (await api_node.api("GET", "/status"))[1]["total_broadcasts"]

    async def answer() -> None:
        call = await worker.recv_type("tool_call")
        await worker.send("tool_result", {"call_id": call["data"]["call_id"], "result": "done"})

    task = asyncio.ensure_future(answer())
    status, body = await api_node.api("POST", "/call_tool", {
        "client_id": "observed-worker", "tool_name": "deploy",
        "params": {"env": "prod", "api_key": "sk-secret"}, "timeout": 5})
    await task
    assert status == 200, body
    start = await observer.recv_type("mcp_tool_execution_start")
    complete = await observer.recv_type("mcp_tool_execution_complete")
    for frame in (start, complete):
        assert frame["channel"] == "tool_activity"
        assert frame["data"]["origin"] == "api"
        assert frame["data"]["client_id"] == "observed-worker"
        assert frame["data"]["call_id"] == body["call_id"]
        assert frame["data"]["parameters"] == {"env": "prod", "api_key": "***"}
    assert complete["data"]["status"] == "completed" and complete["data"]["success"] is True
    assert complete["data"]["result"]["content"] == "done"

    # A call nobody answers is reported failed, with the reason.
    status, body = await api_node.api("POST", "/call_tool", {
        "client_id": "observed-worker", "tool_name": "slow", "timeout": 0.2})
    assert status == 504
    failed = await observer.recv_type("mcp_tool_execution_complete")
    assert failed["data"]["tool_name"] == "slow"
    assert failed["data"]["status"] == "failed" and failed["data"]["success"] is False
    assert "did not answer" in failed["data"]["result"]["content"]
    status, after = await api_node.api("GET", "/status")
    assert after["total_broadcasts"] == broadcasts


async def test_api_tool_calls_are_seen_on_tool_activity(live_gateway: LiveGateway) -> None:
    await observed_api_tool_calls(live_gateway, live_gateway)
