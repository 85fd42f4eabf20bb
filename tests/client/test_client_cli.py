"""SwitchboardAPI and the CLI against the in-process FakeGateway (HTTP API on the same port).

The CLI runs in-process through ``amain`` with captured streams, plus one real
``python -m switchboard_client`` subprocess.
"""

from __future__ import annotations

import asyncio
import io
import sys
from typing import Any

import orjson
import pytest

from switchboard_client import APIConnectionError, APIError, SwitchboardAPI, SwitchboardClient
from switchboard_client.cli import amain
from switchboard_client.format import format_frame, frame_family
from switchboard_client.protocol import Frame
from switchboard_client.testing import FakeGateway, FrameRecorder
from tests.client.conftest import within


async def run_cli(gw: FakeGateway | None, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    common = []
    if gw is not None:
        common = ["--url", gw.ws_url, "--api", gw.api_url, "--token", gw.api_token]
    code = await amain([*common, *argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text


# ---------------------------------------------------------------------- SwitchboardAPI


async def test_api_wrapper_round_trip(gw: FakeGateway) -> None:
    async with SwitchboardClient(gw.ws_url, client_id="bob", heartbeat=None) as client:
        rec = FrameRecorder(client)

        @client.tool("echo")
        def echo(**params: Any) -> Any:
            return params

        async with SwitchboardAPI(gw.api_url, gw.api_token) as api:
            status = await api.status()
            assert status["status"] == "running" and status["connected_clients"] == 1
            listing = await api.clients()
            assert [c["client_id"] for c in listing["clients"]] == ["bob"]
            assert (await api.client("bob"))["connected"] is True

            sent = await api.send_message("bob", "hi", data={"extra": 1})
            assert sent["status"] == "delivered"
            frame = await within(rec.next("message"))
            assert frame.data == {"extra": 1, "content": "hi"}
            assert frame.seq == sent["seq"] and frame.message_id == sent["message_id"]

            out = await api.call_tool("bob", "echo", {"q": 2}, timeout=5)
            assert out["success"] is True and out["result"] == {"q": 2}

            cast = await api.broadcast("notice", {"n": 1}, client_type="generic")
            assert cast["recipients"] == 1
            assert (await within(rec.next("notice"))).data == {"n": 1}

            with pytest.raises(APIError) as err:
                await api.client("nobody")
            assert err.value.status == 404 and err.value.code == "client_not_found"
            assert str(err.value) == "HTTP 404 client_not_found: unknown client"

        async with SwitchboardAPI(gw.api_url, "wrong") as bad:
            with pytest.raises(APIError) as err:
                await bad.status()
            assert err.value.status == 401 and err.value.code == "unauthorized"


async def test_api_connection_refused_is_readable() -> None:
    async with FakeGateway() as gone:
        url = gone.api_url
    async with SwitchboardAPI(url, "t") as api:
        with pytest.raises(APIConnectionError) as err:
            await api.status()
    assert str(err.value) == f"cannot reach the API at {url}: connection refused"


# ---------------------------------------------------------------------- CLI: api


async def test_cli_api_status_and_clients(gw: FakeGateway) -> None:
    async with SwitchboardClient(gw.ws_url, client_id="carol", heartbeat=None) as client:
        await client.subscribe("news")
        code, out, err = await run_cli(gw, "api", "status")
        assert code == 0, err
        lines = out.splitlines()
        assert any(line.split() == ["status", "running"] for line in lines)
        assert any(line.split() == ["connected_clients", "1"] for line in lines)

        code, out, err = await run_cli(gw, "api", "clients")
        assert code == 0, err
        header, row, total = out.splitlines()
        assert header.split() == ["CLIENT_ID", "TYPE", "CONNECTED", "MESSAGES", "CHANNELS"]
        assert row.split() == ["carol", "generic", "yes", "1", "news"]
        assert total == "1 client(s)"

        code, out, _ = await run_cli(gw, "--json", "api", "status")
        assert code == 0 and orjson.loads(out)["status"] == "running"


async def test_cli_api_send_broadcast_call(gw: FakeGateway) -> None:
    client = SwitchboardClient(gw.ws_url, client_id="dave", heartbeat=None)
    rec = FrameRecorder(client)

    @client.tool("echo")
    def echo(**params: Any) -> Any:
        return params

    async with client:
        code, out, err = await run_cli(gw, "api", "send", "dave", "hello there")
        assert code == 0, err
        assert out.startswith("delivered: message ") and "seq 1 to dave" in out
        assert (await within(rec.next("message"))).data["content"] == "hello there"

        code, out, _ = await run_cli(gw, "api", "broadcast", "alert", '{"level": "high"}')
        assert code == 0
        assert out.startswith("broadcast alert to 1 recipient(s)")
        assert (await within(rec.next("alert"))).data == {"level": "high"}

        code, out, _ = await run_cli(gw, "api", "call", "dave", "echo", '{"x": [1, 2]}')
        assert code == 0
        assert out.splitlines()[0] == "✅ echo on dave:"
        assert orjson.loads("".join(out.splitlines()[1:])) == {"x": [1, 2]}

        code, out, _ = await run_cli(gw, "api", "call", "dave", "nope")
        assert code == 1
        assert out.startswith("❌ nope on dave failed: unknown tool 'nope'")


async def test_cli_api_errors_are_one_readable_line(gw: FakeGateway) -> None:
    code, out, err = await run_cli(gw, "api", "client", "ghost")
    assert code == 1 and out == ""
    assert err == "switchboard-client: error: HTTP 404 client_not_found: unknown client\n"

    code, _, err = await run_cli(gw, "api", "broadcast", "t", "{not json")
    assert code == 2 and err.startswith("switchboard-client: error: data is not valid JSON")

    code, _, err = await run_cli(gw, "api", "broadcast", "t", "[1]")
    assert code == 2 and "must be a JSON object" in err

    code, _, err = await run_cli(None, "--api", gw.api_url, "--token", "bad", "api", "status")
    assert code == 1 and "HTTP 401 unauthorized" in err
    no_traceback(err)


async def test_cli_connection_refused_exits_1_with_one_line() -> None:
    async with FakeGateway() as gone:
        ws_url, api_url = gone.ws_url, gone.api_url
    code, out, err = await run_cli(None, "--url", ws_url, "listen")
    assert code == 1
    assert err.splitlines()[-1] == (
        f"switchboard-client: error: cannot connect to {ws_url}: connection refused (address "
        f"from --url; is the gateway running? set --url, SWITCHBOARD_URL or WS_PORT)"
    )
    code, out, err = await run_cli(None, "--api", api_url, "api", "status")
    assert code == 1
    assert err == (
        f"switchboard-client: error: cannot reach the API at {api_url}: connection refused "
        f"(address from --api; is the gateway running? set --api, SWITCHBOARD_API or API_PORT)\n"
    )
    no_traceback(out, err)


# ---------------------------------------------------------------------- CLI: WebSocket


async def test_cli_send_prints_the_reply(gw: FakeGateway) -> None:
    code, out, err = await run_cli(gw, "send", "ping")
    assert code == 0, err
    assert "🔗 pong" in out and "↩" in out

    code, out, _ = await run_cli(gw, "--json", "send", "subscribe", '{"channel": "news"}')
    assert code == 0
    frame = orjson.loads(out)
    assert frame["type"] == "subscribed" and frame["data"] == {"channel": "news"}

    code, out, _ = await run_cli(gw, "send", "subscribe", '{"channel": "nope"}')
    assert code == 1
    assert "❌ error" in out and "unknown_channel: unknown channel 'nope'" in out

    code, out, _ = await run_cli(gw, "send", "ping", "--no-wait")
    assert code == 0 and len(out.strip()) == 32


async def test_cli_chat_prints_the_answer(gw: FakeGateway) -> None:
    code, out, err = await run_cli(gw, "chat", "hi there")
    assert code == 0
    assert out == "Echo: hi there\n"
    assert "processing" in err  # interim frames go to stderr


async def test_cli_listen_prints_frames_and_answers_tools(gw: FakeGateway) -> None:
    task = asyncio.ensure_future(
        run_cli(gw, "--client-id", "lis", "listen", "--count", "3", "--echo-tool")
    )
    await within(gw.wait_connected("lis"))
    await gw.push("lis", "message", {"content": "first"})
    answer = await within(gw.call_tool("lis", "echo", {"a": 1}))
    assert answer["result"] == {"a": 1}
    await gw.push("lis", "handoff_call", {"service_name": "coder", "status": "started"})
    code, out, err = await within(task)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    assert "#1 💬 message  first" in lines[0]
    assert "#2 🔧 tool_call  echo(" in lines[1]
    assert "#3 🚀 handoff_call  service_name=coder status=started" in lines[2]
    assert "connected to" in err and "as lis (new session)" in err


async def test_cli_listen_reports_drops_and_resumes(gw: FakeGateway) -> None:
    task = asyncio.ensure_future(
        run_cli(gw, "--client-id", "lr", "--json", "listen", "--count", "2")
    )
    await within(gw.wait_connected("lr"))
    await gw.drop("lr")
    await gw.push("lr", "message", {"content": "while away"})
    await within(gw.wait_connected("lr", connects=2))
    await gw.push("lr", "message", {"content": "back"})
    code, out, err = await within(task)
    assert code == 0, err
    frames = [orjson.loads(line) for line in out.splitlines()]
    assert [f["type"] for f in frames] == [
        "connection_established",
        "connection_established",
        "message",
        "message",
    ]
    assert [f["data"].get("content") for f in frames[2:]] == ["while away", "back"]
    assert "disconnected: 1006 connection lost; will reconnect" in err
    assert "reconnected to" in err and "session resumed" in err


async def test_cli_listen_stops_on_a_final_close(gw: FakeGateway) -> None:
    task = asyncio.ensure_future(run_cli(gw, "--client-id", "end", "listen"))
    await within(gw.wait_connected("end"))
    await gw.close_client("end", 4001, "ended by operator")
    code, _, err = await within(task)
    assert code == 0
    assert "4001 session ended by the API (ended by operator); not reconnecting" in err


async def test_cli_help_and_usage_errors() -> None:
    code, out, _ = await run_cli(None, "--help")
    assert code == 0 and "listen" in out and "SWITCHBOARD_URL" in out
    code, _, err = await run_cli(None, "frobnicate")
    assert code == 2 and "invalid choice" in err


async def test_python_dash_m_entry_point(gw: FakeGateway) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "switchboard_client",
        "api",
        "status",
        "--api",
        gw.api_url,
        "--token",
        gw.api_token,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await within(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert "running" in out.decode()


# ---------------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("type", "data", "family"),
    [
        ("connection_established", {}, "connection"),
        ("client.connected", {}, "connection"),
        ("pong", {}, "connection"),
        ("handoff_call", {"status": "started"}, "handoff"),
        ("handoff_call", {"status": "error"}, "error"),
        ("tool_execution", {"status": "success"}, "tool"),
        ("tool_call", {}, "tool"),
        ("mcp_tool_execution_complete", {"success": True}, "tool"),
        ("mcp_tool_execution_complete", {"success": False}, "error"),
        ("mcp_event", {"event_type": "service_connected"}, "mcp"),
        ("mcp_tool_waiting_permission", {}, "mcp"),
        ("error", {"code": "x"}, "error"),
        ("chat_response", {}, "chat"),
        ("custom_thing", {}, "other"),
    ],
)
def test_frame_families_follow_seed_000(type: str, data: dict[str, Any], family: str) -> None:
    assert frame_family(type, data) == family


def test_colour_codes() -> None:
    frame = Frame.from_raw({"type": "error", "data": {"code": "bad", "message": "no"}, "seq": 4})
    plain = format_frame(frame)
    assert "\033[" not in plain and "#4 ❌ error  bad: no" in plain
    assert "\033[31m" in format_frame(frame, colour=True)  # red
    blue = format_frame(Frame.from_raw({"type": "connection_established", "data": {}}), colour=True)
    assert "\033[34m" in blue
    orange = format_frame(Frame.from_raw({"type": "handoff_call", "data": {}}), colour=True)
    assert "\033[38;5;208m" in orange
    purple = format_frame(Frame.from_raw({"type": "mcp_event", "data": {}}), colour=True)
    assert "\033[35m" in purple
    green = format_frame(Frame.from_raw({"type": "tool_execution", "data": {}}), colour=True)
    assert "\033[32m" in green
