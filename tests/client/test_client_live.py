"""The client library and CLI end to end against the real gateway (``live_gateway``).

Offline windows are made deterministic without sleeps: the client's token callable (sent as
``?token=``, ignored with WS_AUTH=none) blocks reconnect attempts until the test opens a gate.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from typing import Any

import pytest

from switchboard_client import (
    Backoff,
    Lifecycle,
    RequestError,
    SwitchboardAPI,
    SwitchboardClient,
)
from switchboard_client.cli import amain
from switchboard_client.testing import FrameRecorder
from tests.client.conftest import WAIT, within
from tests.conftest import LiveGateway, MakeGateway, check_server_frame, wait_for

FAST = Backoff(initial=0.005, maximum=0.05, rate_limited=0.01)


class Gate:
    """A token callable that lets the first connection through, then waits for ``open()``."""

    def __init__(self) -> None:
        self.calls = 0
        self._open = asyncio.Event()
        self._open.set()

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    async def __call__(self) -> str:
        self.calls += 1
        await self._open.wait()
        return "unused"


def make_client(live: LiveGateway, **kwargs: Any) -> SwitchboardClient:
    kwargs.setdefault("backoff", FAST)
    client = SwitchboardClient(live.ws_url, **kwargs)
    # What the Python client receives is checked against /asyncapi.json too; handler errors
    # are only logged, so misfits are collected and the fixture below fails the test.
    client.on("*", lambda frame: MISFITS.extend(check_server_frame(frame.to_dict())))
    return client


MISFITS: list[str] = []


@pytest.fixture(autouse=True)
def frames_fit_the_protocol() -> Iterator[None]:
    MISFITS.clear()
    yield
    assert MISFITS == [], f"frames that do not fit /asyncapi.json: {MISFITS[:5]}"


async def offline(live: LiveGateway, client_id: str) -> None:
    async def check() -> bool:
        status, body = await live.api("GET", f"/clients/{client_id}")
        return status == 200 and body.get("connected") is False

    deadline = asyncio.get_running_loop().time() + WAIT
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "client never showed as offline"
        await asyncio.sleep(0.005)


async def test_api_send_message_reaches_the_client(live_gateway: LiveGateway) -> None:
    client = make_client(live_gateway, client_id="live-a", client_type="agent")
    rec = FrameRecorder(client)
    async with client, SwitchboardAPI(live_gateway.api_url, live_gateway.api_token) as api:
        assert client.client_id == "live-a"
        sent = await api.send_message("live-a", "hello from HTTP")
        assert sent["status"] == "delivered"
        frame = await within(rec.next("message"))
        assert frame.data["content"] == "hello from HTTP"
        assert frame.seq == sent["seq"] and frame.message_id == sent["message_id"]
        listing = await api.clients()
        assert "live-a" in [c["client_id"] for c in listing["clients"]]


async def test_requests_against_the_real_handlers(live_gateway: LiveGateway) -> None:
    async with make_client(live_gateway) as client:
        assert (await client.ping()).type in ("pong", "heartbeat_response")
        status = await client.get_status()
        assert status  # the server's counters
        reply = await client.chat("hi")
        assert reply.type in ("chat_response", "stream_end")
        try:
            await client.request("no_such_type", {})
        except RequestError as exc:
            assert exc.code
        else:
            raise AssertionError("an unknown frame type must be answered with an error")


async def test_drop_then_offline_messages_arrive_once_after_resume(
    live_gateway: LiveGateway,
) -> None:
    gate = Gate()
    client = make_client(live_gateway, client_id="live-r", token=gate)
    rec = FrameRecorder(client)
    async with client, SwitchboardAPI(live_gateway.api_url, live_gateway.api_token) as api:
        first = await api.send_message("live-r", "online")
        assert (await within(rec.next("message"))).seq == first["seq"]

        gate.close()
        client.simulate_network_drop()
        await within(rec.event(Lifecycle.DISCONNECTED))
        await offline(live_gateway, "live-r")
        queued = [await api.send_message("live-r", f"offline-{i}") for i in range(5)]
        assert {q["status"] for q in queued} == {"queued"}

        gate.open()
        info = await within(rec.event(Lifecycle.CONNECTED))
        while not info["reconnect"]:
            info = await within(rec.event(Lifecycle.CONNECTED))
        assert info["resumed"] is True and info["recovered"] is True
        for i in range(5):
            frame = await within(rec.next("message"))
            assert frame.data["content"] == f"offline-{i}"
            assert frame.seq == queued[i]["seq"]
        live = await api.send_message("live-r", "live again")
        assert live["status"] == "delivered"
        assert (await within(rec.next("message"))).data["content"] == "live again"

    messages = [f for f in rec.frames if f.type == "message"]
    assert [f.data["content"] for f in messages] == (
        ["online"] + [f"offline-{i}" for i in range(5)] + ["live again"]
    )
    seqs = rec.seqs()
    assert seqs == sorted(set(seqs)), "a seq was delivered twice or out of order"
    assert client.stats.resumes == 1


async def test_tool_call_from_the_api_is_answered_by_the_client(
    live_gateway: LiveGateway,
) -> None:
    client = make_client(live_gateway, client_id="live-t")

    @client.tool("add")
    async def add(a: int, b: int) -> int:
        return a + b

    @client.tool("explode")
    def explode() -> None:
        raise RuntimeError("kaboom")

    async with client, SwitchboardAPI(live_gateway.api_url, live_gateway.api_token) as api:
        ok = await api.call_tool("live-t", "add", {"a": 2, "b": 40}, timeout=5)
        assert ok["success"] is True and ok["result"] == 42
        bad = await api.call_tool("live-t", "explode", {}, timeout=5)
        assert bad["success"] is False
        assert "kaboom" in str(bad.get("error"))


async def test_history_overflow_reports_recovery_failed(make_gateway: MakeGateway) -> None:
    live = await make_gateway(history_limit=3)
    gate = Gate()
    client = make_client(live, client_id="live-g", token=gate)
    rec = FrameRecorder(client)
    async with client, SwitchboardAPI(live.api_url, live.api_token) as api:
        await api.send_message("live-g", "seen")
        await within(rec.next("message"))
        gate.close()
        client.simulate_network_drop()
        await offline(live, "live-g")
        for i in range(6):
            await api.send_message("live-g", f"m{i}")
        gate.open()
        failed = await within(rec.event(Lifecycle.RECOVERY_FAILED))
        assert failed["reason"] == "history_gap"
        while (await within(rec.next("message"))).data["content"] != "m5":
            pass


async def test_delete_client_ends_the_session_without_reconnect(
    live_gateway: LiveGateway,
) -> None:
    client = make_client(live_gateway, client_id="live-d")
    await client.connect()
    status, _ = await live_gateway.api("DELETE", "/clients/live-d")
    assert status in (200, 202, 204)
    code, _ = await within(client.wait_closed())
    assert code == 4001


async def test_second_resume_replaces_the_first(live_gateway: LiveGateway) -> None:
    first = make_client(live_gateway, client_id="live-2")
    await first.connect()
    second = make_client(
        live_gateway,
        client_id="live-2",
        session_token=first.session_token,
        last_seq=first.last_seq,
    )
    async with second:
        code, _ = await within(first.wait_closed())
        assert code == 4000
        assert second.connected


async def test_stale_session_token_starts_a_fresh_session(live_gateway: LiveGateway) -> None:
    client = make_client(live_gateway, client_id="live-stale", session_token="not-it")
    rec = FrameRecorder(client)
    async with client:
        reset = await within(rec.event(Lifecycle.SESSION_RESET))
        assert reset["code"] == 4003
        assert client.connected and client.session_token not in (None, "not-it")
        assert client.client_id == "live-stale"


async def test_gateway_forgetting_the_session_reconnects_fresh_with_the_same_id(
    live_gateway: LiveGateway,
) -> None:
    gate = Gate()
    client = make_client(live_gateway, client_id="live-forgot", token=gate)
    rec = FrameRecorder(client)
    async with client:
        old_token = client.session_token
        gate.close()
        client.simulate_network_drop()
        await offline(live_gateway, "live-forgot")
        status, _ = await live_gateway.api("DELETE", "/clients/live-forgot")
        assert status in (200, 202, 204)
        gate.open()
        await within(rec.event(Lifecycle.SESSION_RESET))
        failed = await within(rec.event(Lifecycle.RECOVERY_FAILED))
        assert failed["reason"] == "session_lost"
        info = await within(rec.event(Lifecycle.CONNECTED))
        while not info["reconnect"]:
            info = await within(rec.event(Lifecycle.CONNECTED))
        assert client.client_id == "live-forgot"
        assert client.session_token != old_token and client.last_seq == 0
        status, body = await live_gateway.api(
            "POST", "/send_message", {"client_id": "live-forgot", "content": "fresh"}
        )
        assert status == 200 and body["seq"] == 1
        frame = await within(rec.next("message"))
        assert frame.data["content"] == "fresh" and frame.seq == 1


async def test_cli_api_status_prints_readable_output(live_gateway: LiveGateway) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = await amain(
        ["--api", live_gateway.api_url, "--token", live_gateway.api_token, "api", "status"],
        stdout=out,
        stderr=err,
    )
    assert code == 0, err.getvalue()
    lines = out.getvalue().splitlines()
    assert any(line.split()[:2] == ["status", "running"] for line in lines)
    assert all("{" not in line.split()[0] for line in lines)  # key/value lines, not raw JSON

    code = await amain(
        ["--api", live_gateway.api_url, "--token", "wrong", "api", "status"],
        stdout=out,
        stderr=err,
    )
    assert code == 1
    message = err.getvalue()
    assert message.startswith(
        ("switchboard-client: error: HTTP 401", "switchboard-client: error: HTTP 403")
    )
    assert message.count("\n") == 1 and "Traceback" not in message


async def test_cli_listen_against_the_gateway(live_gateway: LiveGateway) -> None:
    out, err = io.StringIO(), io.StringIO()
    task = asyncio.ensure_future(
        amain(
            ["--url", live_gateway.ws_url, "--client-id", "live-cli", "listen", "--count", "1"],
            stdout=out,
            stderr=err,
        )
    )
    await wait_for(lambda: "connected to" in err.getvalue(), what="the CLI to connect")
    status, _ = await live_gateway.api(
        "POST", "/send_message", {"client_id": "live-cli", "content": "to the CLI"}
    )
    assert status == 200
    assert await within(task) == 0
    assert "💬 message  to the CLI" in out.getvalue()


async def test_cli_api_messages_shows_the_history(live_gateway: LiveGateway) -> None:
    async with make_client(live_gateway, client_id="live-h") as client:
        await client.get_status()
        status, _ = await live_gateway.api(
            "POST", "/send_message", {"client_id": "live-h", "content": "kept"}
        )
        assert status == 200
        out, err = io.StringIO(), io.StringIO()
        code = await amain(
            [
                "--api",
                live_gateway.api_url,
                "--token",
                live_gateway.api_token,
                "api",
                "messages",
                "live-h",
            ],
            stdout=out,
            stderr=err,
        )
        assert code == 0, err.getvalue()
        lines = out.getvalue().splitlines()
        assert any(line.startswith("→") and "get_status" in line for line in lines)
        assert any(line.startswith("←") and "💬 message  kept" in line for line in lines)


async def test_users_channels_and_presence_from_the_python_client(make_gateway: MakeGateway
                                                                  ) -> None:
    """Two sessions of one user (user_id=), publish / presence / channel_history and the
    join frame from the client; send to the user, presence and server-side subscriptions
    from SwitchboardAPI."""
    live = await make_gateway(channel_rules=(
        '{"room:*": {"subscribe": "any", "publish": "any", "presence": true, '
        '"join_leave": true, "history": 5}}'))
    tab, phone = make_client(live, user_id="ann"), make_client(live, user_id="ann")
    watcher = make_client(live, user_id="bo")
    recorder = FrameRecorder(watcher)
    async with tab, phone, watcher, SwitchboardAPI(live.api_url, live.api_token) as api:
        assert tab.user_id == phone.user_id == "ann" and tab.client_id != phone.client_id
        await watcher.subscribe("room:1")
        await tab.subscribe("room:1")
        join = await within(recorder.next("join"))
        assert join.data == {"channel": "room:1", "client_id": tab.client_id, "user_id": "ann"}
        published = await tab.publish("room:1", {"text": "hi"})
        assert published.data["recipients"] == 2
        publication = await within(recorder.next("publication"))
        assert publication.data == {"text": "hi"}
        assert publication.get("from") == {"client_id": tab.client_id, "user_id": "ann"}
        who = await watcher.presence("room:1")
        assert who["count"] == 2 and who["users"] == ["ann", "bo"]
        assert [f["data"] for f in await watcher.channel_history("room:1")] == [{"text": "hi"}]
        with pytest.raises(RequestError) as refused:
            await tab.publish("elsewhere", {})
        assert refused.value.code == "forbidden_channel"

        sent = await api.send_to_user("ann", "to both tabs")
        assert sent["delivered"] == 2
        assert (await api.user("ann"))["total"] == 2
        assert (await api.presence("room:1"))["count"] == 2
        subscribed = await api.subscribe("room:2", user_id="ann")
        assert len(subscribed["sessions"]) == 2
        await api.unsubscribe("room:2", client_id=phone.client_id)
        assert (await api.presence("room:2"))["count"] == 1
