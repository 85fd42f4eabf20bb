"""SwitchboardClient against the in-process FakeGateway: handlers, requests, tools,
reconnect/resume, de-duplication by seq and the close-code policy.

No sleeps: every wait is on an event (a frame, a lifecycle event, a connection) bounded by
``asyncio.wait_for``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from switchboard_client import (
    Backoff,
    ConnectError,
    ConnectionClosed,
    Lifecycle,
    RequestError,
    RequestTimeout,
    SwitchboardClient,
    ToolError,
)
from switchboard_client.testing import FakeGateway, FrameRecorder
from tests.client.conftest import WAIT, within

FAST = Backoff(initial=0.005, maximum=0.02, jitter=0.5, rate_limited=0.01)


def make_client(gw: FakeGateway, **kwargs: Any) -> SwitchboardClient:
    kwargs.setdefault("backoff", FAST)
    kwargs.setdefault("heartbeat", None)
    return SwitchboardClient(gw.ws_url, **kwargs)


# ---------------------------------------------------------------------- basics


async def test_connect_greets_and_reports_session(gw: FakeGateway) -> None:
    client = make_client(gw, client_id="alice", client_type="agent")
    rec = FrameRecorder(client)
    async with client:
        assert client.connected
        assert client.client_id == "alice"
        assert client.session_token == gw.sessions["alice"].token
        hello = await within(rec.next("connection_established"))
        assert hello.data["resumed"] is False
        info = await within(rec.event(Lifecycle.CONNECTED))
        assert info["client_id"] == "alice" and info["resumed"] is False
        assert gw.sessions["alice"].client_type == "agent"
    assert client.closed
    assert client.close_code == 1000
    closed = await within(rec.event(Lifecycle.CLOSED))
    assert closed["code"] == 1000


async def test_server_assigns_an_id_when_none_given(gw: FakeGateway) -> None:
    async with make_client(gw) as client:
        assert client.client_id in gw.sessions


async def test_requests_match_replies_by_reply_to(gw: FakeGateway) -> None:
    async with make_client(gw) as client:
        pong = await client.ping()
        assert pong.type == "pong" and pong.seq is None
        status = await client.get_status()
        assert status["connected_clients"] == 1
        sub = await client.subscribe("news")
        assert sub.type == "subscribed" and sub.data["channel"] == "news"
        assert gw.sessions[client.client_id].channels == {"news"}
        with pytest.raises(RequestError) as err:
            await client.subscribe("nope")
        assert err.value.code == "unknown_channel"
        assert err.value.frame.data["available_channels"] == ["news", "alerts"]


async def test_chat_skips_interim_frames_but_handlers_see_them(gw: FakeGateway) -> None:
    client = make_client(gw)
    rec = FrameRecorder(client)
    async with client:
        reply = await client.chat("hello")
        assert reply.type == "chat_response"
        assert reply.data["content"] == "Echo: hello"
        processing = await within(rec.next("processing"))
        assert processing.reply_to == reply.reply_to


async def test_request_timeout_raises(gw: FakeGateway) -> None:
    async with make_client(gw) as client:
        with pytest.raises(RequestTimeout):
            await client.request("ping", {}, timeout=0.05, expect="never_sent")
        assert not client._pending


async def test_call_tool_returns_result_or_raises_tool_error(gw: FakeGateway) -> None:
    async with make_client(gw) as client:
        assert await client.call_tool("echo", {"x": 1}) == {"x": 1}
        with pytest.raises(ToolError) as err:
            await client.call_tool("fail", {})
        assert err.value.tool_name == "fail"


async def test_unknown_frame_type_is_a_request_error(gw: FakeGateway) -> None:
    async with make_client(gw) as client:
        with pytest.raises(RequestError) as err:
            await client.request("bogus", {})
        assert err.value.code == "unknown_type"


async def test_handlers_sync_async_wildcard_order_and_errors(gw: FakeGateway) -> None:
    client = make_client(gw, client_id="h")
    calls: list[str] = []
    done = asyncio.Event()

    @client.on("message")
    def first(frame: Any) -> None:
        calls.append(f"sync:{frame.data['content']}")
        if frame.data["content"] == "boom":
            raise RuntimeError("handler bug")

    @client.on("message")
    async def second(frame: Any) -> None:
        await asyncio.sleep(0)
        calls.append(f"async:{frame.data['content']}")

    @client.on("*")
    def wildcard(frame: Any) -> None:
        if frame.type == "message":
            calls.append(f"any:{frame.data['content']}")
            if frame.data["content"] == "last":
                done.set()

    async with client:
        for text in ("a", "boom", "last"):
            await gw.push("h", "message", {"content": text})
        await within(done.wait())
    assert calls == [
        "sync:a",
        "async:a",
        "any:a",
        "sync:boom",
        "async:boom",
        "any:boom",
        "sync:last",
        "async:last",
        "any:last",
    ]


async def test_handler_may_await_a_request(gw: FakeGateway) -> None:
    client = make_client(gw, client_id="r")
    answered: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @client.on("message")
    async def ask(frame: Any) -> None:
        reply = await client.ping()
        answered.set_result(reply.type)

    async with client:
        await gw.push("r", "message", {"content": "x"})
        assert await within(answered) == "pong"


async def test_off_unregisters(gw: FakeGateway) -> None:
    client = make_client(gw, client_id="o")
    seen: list[str] = []
    handler = client.on("message", lambda f: seen.append(f.data["content"]))
    rec = FrameRecorder(client)
    async with client:
        await gw.push("o", "message", {"content": "1"})
        await within(rec.next("message"))
        client.off("message", handler)
        await gw.push("o", "message", {"content": "2"})
        await within(rec.next("message"))
    assert seen == ["1"]


async def test_close_from_inside_a_handler(gw: FakeGateway) -> None:
    client = make_client(gw, client_id="c")

    @client.on("message")
    async def stop(frame: Any) -> None:
        await client.close()

    await client.connect()
    await gw.push("c", "message", {"content": "bye"})
    assert await within(client.wait_closed()) == (1000, "closed by the client")


async def test_send_after_close_raises(gw: FakeGateway) -> None:
    client = make_client(gw)
    await client.connect()
    await client.close()
    with pytest.raises(ConnectionClosed):
        await client.send("ping")
    await client.close()  # idempotent


async def test_connect_twice_is_an_error(gw: FakeGateway) -> None:
    async with make_client(gw) as client:
        with pytest.raises(Exception, match="once"):
            await client.connect()


# ---------------------------------------------------------------------- tools and permissions


async def test_registered_tools_answer_server_tool_calls(gw: FakeGateway) -> None:
    client = make_client(gw, client_id="t")

    @client.tool("add")
    def add(a: int, b: int) -> int:
        return a + b

    @client.tool()
    async def shout(text: str) -> str:
        await asyncio.sleep(0)
        return text.upper()

    @client.tool("broken")
    def broken() -> None:
        raise ValueError("no such thing")

    @client.tool("opaque")
    def opaque() -> object:
        return object()

    async with client:
        assert set(client.tools) == {"add", "shout", "broken", "opaque"}
        assert (await within(gw.call_tool("t", "add", {"a": 2, "b": 3})))["result"] == 5
        assert (await within(gw.call_tool("t", "shout", {"text": "hi"})))["result"] == "HI"
        broke = await within(gw.call_tool("t", "broken", {}))
        assert broke["error"] == "ValueError: no such thing" and "result" not in broke
        assert "not JSON-serialisable" in (await within(gw.call_tool("t", "opaque")))["error"]
        unknown = await within(gw.call_tool("t", "missing", {}))
        assert unknown["error"] == "unknown tool 'missing'"
        wrong = await within(gw.call_tool("t", "add", {"a": 1}))
        assert wrong["error"].startswith("TypeError")


async def test_manual_tool_replies_when_a_tool_call_handler_exists(gw: FakeGateway) -> None:
    client = make_client(gw, client_id="m")

    @client.on("tool_call")
    async def manual(frame: Any) -> None:
        await client.reply_tool(frame.data["call_id"], result={"by": "hand"})

    async with client:
        answer = await within(gw.call_tool("m", "anything", {}))
        assert answer["result"] == {"by": "hand"}


async def test_permission_denied_by_default_granted_by_handler(gw: FakeGateway) -> None:
    client = make_client(gw, client_id="p")
    async with client:
        await gw.push("p", "mcp_tool_waiting_permission", {"call_id": "c1", "tool_name": "rm"})
        _, frame = await within(gw.next_frame("permission_response"))
        assert frame["data"] == {"call_id": "c1", "granted": False}

        @client.on_permission
        async def allow(prompt: Any) -> bool:
            return prompt.data["tool_name"] == "ls"

        await gw.push("p", "mcp_tool_waiting_permission", {"call_id": "c2", "tool_name": "ls"})
        _, frame = await within(gw.next_frame("permission_response"))
        assert frame["data"] == {"call_id": "c2", "granted": True}


# ---------------------------------------------------------------------- reconnect and resume


async def test_drop_resumes_and_delivers_offline_frames_once_in_order(gw: FakeGateway) -> None:
    client = make_client(gw, client_id="r1")
    rec = FrameRecorder(client)
    async with client:
        for i in range(3):
            await gw.push("r1", "message", {"content": f"before-{i}"})
        await within(rec.next("message"))
        await within(rec.next("message"))
        await within(rec.next("message"))
        token = client.session_token

        await gw.drop("r1")
        for i in range(4):  # queued in history while the client is away (or just leaving)
            await gw.push("r1", "message", {"content": f"during-{i}"})
        info = await within(rec.event(Lifecycle.CONNECTED))
        while not (info["reconnect"] and info["resumed"]):
            info = await within(rec.event(Lifecycle.CONNECTED))
        assert info["recovered"] is True
        await gw.push("r1", "message", {"content": "after"})
        while (await within(rec.next("message"))).data["content"] != "after":
            pass

    contents = [f.data["content"] for f in rec.frames if f.type == "message"]
    assert contents == [f"before-{i}" for i in range(3)] + [f"during-{i}" for i in range(4)] + [
        "after"
    ]
    assert rec.seqs() == list(range(1, 9))
    resume_query = gw.connection_log[-1]
    assert resume_query["session_token"] == token
    assert int(resume_query["last_seq"]) <= 3
    assert client.stats.reconnects >= 1 and client.stats.resumes >= 1
    assert client.session_token == token


async def test_replayed_duplicates_are_dropped(gw: FakeGateway) -> None:
    gw.replay_overlap = 100  # the server re-sends everything it has (at-least-once)
    client = make_client(gw, client_id="d")
    rec = FrameRecorder(client)
    async with client:
        for i in range(5):
            await gw.push("d", "message", {"content": str(i)})
        for _ in range(5):
            await within(rec.next("message"))
        await gw.drop("d")
        await gw.push("d", "message", {"content": "5"})
        assert (await within(rec.next("message"))).data["content"] == "5"
    assert [f.data["content"] for f in rec.frames if f.type == "message"] == list("012345")
    assert client.stats.duplicates_dropped == 5
    assert client.last_seq == 6


async def test_resume_after_history_overflow_reports_recovery_failed(gw: FakeGateway) -> None:
    gw.history_limit = 3
    client = make_client(gw, client_id="g")
    rec = FrameRecorder(client)
    lost: list[dict[str, Any]] = []
    client.on_recovery_failed(lost.append)
    async with client:
        await gw.push("g", "message", {"content": "seen"})
        await within(rec.next("message"))
        gw.sessions["g"].history = type(gw.sessions["g"].history)(maxlen=3)
        await gw.drop("g")
        for i in range(6):
            await gw.push("g", "message", {"content": f"m{i}"})
        failed = await within(rec.event(Lifecycle.RECOVERY_FAILED))
        assert failed["reason"] == "history_gap"
        assert failed["client_id"] == "g"
        while (await within(rec.next("message"))).data["content"] != "m5":
            pass
    assert lost == [failed]
    assert [f.data["content"] for f in rec.frames if f.type == "message"] == [
        "seen",
        "m3",
        "m4",
        "m5",
    ]
    assert client.stats.recovery_failures == 1


async def test_lost_session_with_fresh_server_session_resets_seq(gw: FakeGateway) -> None:
    gw.unknown_session = "fresh"
    client = make_client(gw, client_id="s")
    rec = FrameRecorder(client)
    async with client:
        await gw.push("s", "message", {"content": "old"})
        await gw.push("s", "message", {"content": "old2"})
        await within(rec.next("message"))
        await within(rec.next("message"))
        await gw.drop("s")  # does not yield: the session is forgotten before any reconnect
        gw.end_session("s")
        failed = await within(rec.event(Lifecycle.RECOVERY_FAILED))
        assert failed["reason"] == "session_lost"
        await within(gw.wait_connected("s"))
        new = await gw.push("s", "message", {"content": "new"})
        assert new["seq"] == 1
        assert (await within(rec.next("message"))).data["content"] == "new"
    assert client.last_seq == 1


async def test_invalid_session_close_starts_a_fresh_session(gw: FakeGateway) -> None:
    client = make_client(gw, client_id="x")
    rec = FrameRecorder(client)
    async with client:
        old_token = client.session_token
        await gw.drop("x")
        gw.end_session("x")  # the gateway forgot it: resuming gets error + 4003
        reset = await within(rec.event(Lifecycle.SESSION_RESET))
        assert reset == {"code": 4003, "old_client_id": "x"}
        failed = await within(rec.event(Lifecycle.RECOVERY_FAILED))
        assert failed["reason"] == "session_lost"
        info = await within(rec.event(Lifecycle.CONNECTED))
        while not info["reconnect"]:
            info = await within(rec.event(Lifecycle.CONNECTED))
        assert info["resumed"] is False
        assert client.client_id == "x"  # the id it asked for, in a brand-new session
        assert client.session_token == gw.sessions["x"].token != old_token
        assert "session_token" not in gw.connection_log[-1]
        assert client.last_seq == 0
        # Nothing waited for a backoff delay between the 4003 and the fresh connection.
        delays = [p["delay"] for n, p in rec.events if n == Lifecycle.RECONNECTING]
        assert delays[-1] == 0.0


async def test_invalid_session_without_a_requested_id_takes_any_id(gw: FakeGateway) -> None:
    client = make_client(gw)
    rec = FrameRecorder(client)
    async with client:
        first_id = client.client_id
        assert first_id is not None
        await gw.drop(first_id)
        gw.end_session(first_id)
        await within(rec.event(Lifecycle.SESSION_RESET))
        info = await within(rec.event(Lifecycle.CONNECTED))
        while not info["reconnect"]:
            info = await within(rec.event(Lifecycle.CONNECTED))
        assert "client_id" not in gw.connection_log[-1]
        assert client.client_id in gw.sessions


async def test_connect_with_a_stale_saved_session_starts_fresh(gw: FakeGateway) -> None:
    client = make_client(gw, client_id="gone", session_token="stale", last_seq=7)
    rec = FrameRecorder(client)
    async with client:
        assert (await within(rec.event(Lifecycle.SESSION_RESET)))["code"] == 4003
        assert client.client_id == "gone" and "gone" in gw.sessions
        assert client.last_seq == 0


async def test_a_taken_client_id_gets_another_id(gw: FakeGateway) -> None:
    async with (
        make_client(gw, client_id="taken") as first,
        make_client(gw, client_id="taken") as second,
    ):
        assert first.client_id == "taken"
        assert second.client_id != "taken" and second.client_id in gw.sessions
        assert first.connected and second.connected


async def test_resume_from_a_saved_session_in_a_new_client(gw: FakeGateway) -> None:
    first = make_client(gw, client_id="saved")
    async with first:
        await gw.push("saved", "message", {"content": "1"})
        rec1 = FrameRecorder(first)
        await within(rec1.next("message"))
        token, seq = first.session_token, first.last_seq
    await gw.push("saved", "message", {"content": "2"})
    second = make_client(gw, client_id="saved", session_token=token, last_seq=seq)
    rec2 = FrameRecorder(second)
    async with second:
        frame = await within(rec2.next("message"))
        assert frame.data["content"] == "2" and frame.seq == 2
        info = await within(rec2.event(Lifecycle.CONNECTED))
        assert info["resumed"] and info["recovered"]


@pytest.mark.parametrize("code", [1001, 1009, 1011, 4008, 4009, 4011])
async def test_reconnect_codes_resume(gw: FakeGateway, code: int) -> None:
    client = make_client(gw, client_id="k")
    rec = FrameRecorder(client)
    async with client:
        await gw.close_client("k", code, "test")
        gone = await within(rec.event(Lifecycle.DISCONNECTED))
        assert gone["code"] == code and gone["will_reconnect"] is True
        assert gone["reason"] == "test"
        again = await within(rec.event(Lifecycle.RECONNECTING))
        assert again["attempt"] == 1
        if code == 4009:
            assert again["delay"] >= FAST.rate_limited
        await within(gw.wait_connected("k", connects=2))
        assert (await client.ping()).type == "pong"
        assert gw.connection_log[-1]["session_token"] == client.session_token


@pytest.mark.parametrize("code", [1000, 4000, 4001])
async def test_stop_codes_close_the_client(gw: FakeGateway, code: int) -> None:
    client = make_client(gw, client_id="n")
    rec = FrameRecorder(client)
    await client.connect()
    # tool_result for an unknown call gets no answer from the fake: the request stays pending.
    pending = asyncio.ensure_future(
        client.request("tool_result", {"call_id": "?"}, timeout=WAIT, expect="x")
    )
    await within(gw.next_frame("tool_result"))
    await gw.close_client("n", code, "bye")
    assert await within(client.wait_closed()) == (code, "bye")
    gone = await within(rec.event(Lifecycle.DISCONNECTED))
    assert gone["will_reconnect"] is False
    assert (await within(rec.event(Lifecycle.CLOSED)))["code"] == code
    with pytest.raises(ConnectionClosed):
        await within(pending)
    assert len(gw.connection_log) == 1
    await client.close()


async def test_replaced_by_a_second_connection(gw: FakeGateway) -> None:
    first = make_client(gw, client_id="dup")
    await first.connect()
    second = make_client(
        gw, client_id="dup", session_token=first.session_token, last_seq=first.last_seq
    )
    async with second:
        code, _ = await within(first.wait_closed())
        assert code == 4000
        assert second.connected
    await first.close()


async def test_token_expired_reconnects_only_with_a_token_callable(gw: FakeGateway) -> None:
    static = make_client(gw, client_id="ts", token="t0")
    await static.connect()
    await gw.close_client("ts", 4010)
    code, reason = await within(static.wait_closed())
    assert code == 4010 and "token" in reason

    tokens = iter(["t1", "t2", "t3"])

    async def fresh_token() -> str:
        return next(tokens)

    dynamic = make_client(gw, client_id="td", token=fresh_token)
    async with dynamic:
        assert gw.connection_log[-1]["token"] == "t1"
        await gw.close_client("td", 4010)
        await within(gw.wait_connected("td", connects=2))
        assert gw.connection_log[-1]["token"] == "t2"


async def test_no_reconnect_when_disabled(gw: FakeGateway) -> None:
    client = make_client(gw, client_id="nr", reconnect=False)
    await client.connect()
    await gw.drop("nr")
    code, _ = await within(client.wait_closed())
    assert code == 1006
    assert len(gw.connection_log) == 1


async def test_send_while_reconnecting_waits_for_the_new_connection(gw: FakeGateway) -> None:
    client = make_client(gw, client_id="w")
    rec = FrameRecorder(client)
    async with client:
        gw.refuse_next(503, count=2)  # the reconnect takes three attempts
        await gw.drop("w")
        await within(rec.event(Lifecycle.DISCONNECTED))
        await within(client.send("chat_message", {"content": "queued by the client"}))
        _, frame = await within(gw.next_frame("chat_message"))
        assert frame["data"]["content"] == "queued by the client"
        assert gw.sessions["w"].connects == 2
        errors = [p["error"] for n, p in rec.events if n == Lifecycle.RECONNECTING]
        assert errors[0] is None and all("HTTP 503" in e for e in errors[1:])


async def test_refused_connections_and_giving_up(gw: FakeGateway) -> None:
    gw.refuse_next(401)
    with pytest.raises(ConnectError) as err:
        await make_client(gw).connect()
    assert err.value.status == 401 and not err.value.retryable
    assert "HTTP 401" in str(err.value)

    gw.refuse_next(503, count=2)
    client = make_client(gw)
    rec = FrameRecorder(client)
    await client.connect(retry=True)
    assert [n for n, _ in rec.events].count(Lifecycle.RECONNECTING) == 2
    await client.close()

    limited = make_client(gw, client_id="lim", max_reconnect_attempts=2)
    await limited.connect()
    gw.refuse_next(503, count=5)
    await gw.drop("lim")
    code, reason = await within(limited.wait_closed())
    assert code is None and "gave up after 2" in reason


async def test_connection_refused_is_a_readable_connect_error() -> None:
    async with FakeGateway() as gone:
        url = gone.ws_url
    client = SwitchboardClient(url, heartbeat=None)
    with pytest.raises(ConnectError) as err:
        await client.connect()
    assert str(err.value) == f"cannot connect to {url}: connection refused"
    assert client.closed


async def test_server_shutdown_then_restart_is_survived() -> None:
    gw = FakeGateway()
    await gw.start()
    port = gw.port
    client = SwitchboardClient(gw.ws_url, client_id="z", backoff=FAST, heartbeat=None)
    rec = FrameRecorder(client)
    await client.connect()
    await gw.stop()  # closes with 1001: reconnect attempts get "connection refused"
    gone = await within(rec.event(Lifecycle.DISCONNECTED))
    assert gone["code"] == 1001 and gone["will_reconnect"]
    await within(rec.event(Lifecycle.RECONNECTING))
    # Same port, sessions carried over: the client resumes where it was.
    restarted = FakeGateway()
    restarted.sessions = gw.sessions
    from aiohttp import web

    restarted._runner = web.AppRunner(restarted.app, handle_signals=False)
    await restarted._runner.setup()
    await web.TCPSite(restarted._runner, "127.0.0.1", port).start()
    restarted.port = port
    try:
        await within(restarted.wait_connected("z", connects=2))
        await restarted.push("z", "message", {"content": "back"})
        assert (await within(rec.next("message"))).data["content"] == "back"
    finally:
        await client.close()
        await restarted.stop()


def test_backoff_is_capped_exponential_with_jitter() -> None:
    b = Backoff(initial=1.0, maximum=8.0, factor=2.0, jitter=0.5)
    for attempt, base in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (10, 8.0), (5000, 8.0)]:
        delays = {b.delay(attempt) for _ in range(50)}
        assert all(base * 0.5 <= d <= base for d in delays)
        assert len(delays) > 1
    assert Backoff(initial=1.0, jitter=0.0).delay(2) == 4.0


async def test_simulated_network_drop_on_the_client_side(gw: FakeGateway) -> None:
    client = make_client(gw, client_id="sim")
    rec = FrameRecorder(client)
    async with client:
        client.simulate_network_drop()
        gone = await within(rec.event(Lifecycle.DISCONNECTED))
        assert gone["code"] == 1006 and gone["will_reconnect"]
        await within(gw.wait_connected("sim", connects=2))
        await gw.push("sim", "message", {"content": "after"})
        assert (await within(rec.next("message"))).data["content"] == "after"


async def test_a_frame_above_max_msg_size_is_final_not_a_replay_loop(gw: FakeGateway) -> None:
    client = make_client(gw, client_id="big", max_msg_size=1024)
    rec = FrameRecorder(client)
    await client.connect()
    await gw.push("big", "message", {"content": "x" * 4096})
    code, reason = await within(client.wait_closed())
    assert code == 1009 and "max_msg_size (1024 bytes)" in reason
    gone = await within(rec.event(Lifecycle.DISCONNECTED))
    assert gone["will_reconnect"] is False
    assert len(gw.connection_log) == 1


async def test_cancelled_connect_releases_everything(gw: FakeGateway) -> None:
    gw.refuse_next(503, count=1000)
    client = SwitchboardClient(gw.ws_url, backoff=Backoff(initial=10.0), heartbeat=None)
    rec = FrameRecorder(client)
    task = asyncio.ensure_future(client.connect(retry=True))
    await within(rec.event(Lifecycle.RECONNECTING))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.closed
    assert client._session is not None and client._session.closed
    assert client._dispatcher is not None and client._dispatcher.done()
