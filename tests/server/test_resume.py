"""Issue 4, nothing lost: resume with replay, queued delivery, slow clients, idempotency,
expiry and history paging. HTTP in, WebSocket out, over real loopback sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from server.errors import CloseCode
from tests.conftest import LiveGateway, MakeGateway, WSClient, eventually


def abort(client: WSClient) -> None:
    """Kill the client's TCP connection without a closing handshake (a network drop)."""
    transport = client.ws._response.connection.transport  # type: ignore[union-attr]
    assert transport is not None
    transport.abort()


async def dropped(live: LiveGateway, client_id: str) -> None:
    """Wait until the server has noticed the drop and keeps the session offline."""
    await live.offline(client_id)


async def expired(live: LiveGateway, client_id: str) -> None:
    """Wait until the session expired (404). The node holding it expires sessions once a
    second; it is asked to sweep now rather than waiting for that."""
    async def probe() -> int:
        live.holder.sweep()
        return (await live.api("GET", f"/clients/{client_id}"))[0]

    await eventually(probe, lambda status: status == 404, what=f"{client_id} to expire")


async def send(live: LiveGateway, client_id: str, content: Any, **extra: Any
               ) -> tuple[int, Any]:
    return await live.api("POST", "/send_message",
                          {"client_id": client_id, "content": content, **extra})


async def resume(live: LiveGateway, client: WSClient, last_seq: int | None,
                 **query: Any) -> WSClient:
    return await live.connect(client_id=client.client_id, session_token=client.session_token,
                              last_seq=last_seq, **query)


async def recv_messages(client: WSClient, count: int) -> list[dict[str, Any]]:
    return [await client.recv() for _ in range(count)]


async def test_resume_after_a_network_drop_replays_exactly_the_missed_frames(
        live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="alice")
    for i in range(1, 6):
        status, body = await send(live, "alice", f"live {i}")
        assert (status, body["status"], body["seq"]) == (200, "delivered", i)
    # The client processed two frames; three more were on the wire when the network dropped.
    processed = await recv_messages(client, 2)
    last_seq = processed[-1]["seq"]
    abort(client)
    await dropped(live, "alice")

    k = 4
    for i in range(1, k + 1):
        status, body = await send(live, "alice", f"queued {i}")
        assert status == 202, body
        assert body["status"] == "queued"
        assert body["seq"] == 5 + i

    resumed = await resume(live, client, last_seq)
    hello = resumed.hello["data"]
    assert hello["client_id"] == "alice"
    assert hello["resumed"] is True and hello["recovered"] is True
    assert hello["replayed"] == 3 + k and hello["last_seq"] == 5 + k
    assert hello["session_token"] == client.session_token

    replay = await recv_messages(resumed, 3 + k)
    assert [f["seq"] for f in replay] == list(range(last_seq + 1, 5 + k + 1))
    assert [f["data"]["content"] for f in replay] == [
        "live 3", "live 4", "live 5", *(f"queued {i}" for i in range(1, k + 1))]

    # Then live frames follow, with no gap and no duplicate.
    status, body = await send(live, "alice", "after resume")
    assert status == 200 and body["status"] == "delivered"
    after = await resumed.recv()
    assert after["seq"] == 5 + k + 1 and after["data"]["content"] == "after resume"
    await resumed.send("ping", message_id="p")
    pong = await resumed.recv()
    assert pong["type"] == "pong"  # nothing else (no duplicate) came before the pong
    assert [f["seq"] for f in resumed.frames[1:] if "seq" in f] == list(
        range(last_seq + 1, 5 + k + 2))


async def test_drops_and_resumes_while_messages_keep_coming_lose_and_repeat_nothing(
        live_gateway: LiveGateway) -> None:
    live = live_gateway
    total = 60
    client = await live.connect(client_id="roamer")
    token = client.session_token

    async def producer() -> None:
        for i in range(1, total + 1):
            status, body = await send(live, "roamer", i)
            assert status in (200, 202), body

    sending = asyncio.get_running_loop().create_task(producer())
    processed: list[int] = []
    for drop_after, wait_for_drop in ((10, True), (30, False)):
        while len(processed) < drop_after:
            frame = await client.recv()
            assert frame["seq"] == (processed[-1] if processed else 0) + 1  # no gap, no dup
            processed.append(frame["data"]["content"])
        abort(client)
        if wait_for_drop:
            await dropped(live, "roamer")
        # Without waiting, the server may still hold the dead socket: the resume replaces it.
        client = await live.connect(client_id="roamer", session_token=token,
                                    last_seq=processed[-1])
        assert client.hello["data"]["recovered"] is True
    while len(processed) < total:
        frame = await client.recv()
        assert frame["seq"] == processed[-1] + 1
        processed.append(frame["data"]["content"])
    await sending
    assert processed == list(range(1, total + 1))

async def test_resume_keeps_subscriptions_and_queues_broadcasts(
        live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="sub")
    await client.send("subscribe", {"channel": "news"})
    subscribed = await client.recv_type("subscribed")
    abort(client)
    await dropped(live, "sub")
    status, body = await live.api("POST", "/broadcast", {"message_type": "headline",
                                                          "data": {"t": 1}, "channel": "news"})
    assert status == 200 and body["recipients"] == 0 and body["queued"] == 1
    resumed = await resume(live, client, subscribed["seq"])
    frame = await resumed.recv()
    assert frame["type"] == "headline" and frame["data"] == {"t": 1}
    assert frame["seq"] == subscribed["seq"] + 1
    assert frame["channel"] == "news"
    # Still subscribed after the resume: live broadcasts arrive.
    await live.api("POST", "/broadcast", {"message_type": "headline", "data": {"t": 2},
                                          "channel": "news"})
    assert (await resumed.recv())["data"] == {"t": 2}


async def test_resume_after_history_overflow_is_not_recovered(
        make_gateway: MakeGateway) -> None:
    live = await make_gateway(history_limit=3)
    client = await live.connect(client_id="a")
    abort(client)
    await dropped(live, "a")
    for i in range(1, 8):
        assert (await send(live, "a", i))[0] == 202
    resumed = await resume(live, client, 0)
    assert resumed.hello["data"]["resumed"] is True
    assert resumed.hello["data"]["recovered"] is False  # frames 1-4 are gone: reload state
    replay = await recv_messages(resumed, 3)
    assert [f["seq"] for f in replay] == [5, 6, 7]  # what history still holds, in order


async def test_resume_without_missing_anything_is_recovered(live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="a")
    await send(live, "a", "one")
    frame = await client.recv()
    await client.close()
    await dropped(live, "a")
    resumed = await resume(live, client, frame["seq"])
    assert resumed.hello["data"]["recovered"] is True
    assert resumed.hello["data"]["replayed"] == 0
    await resumed.send("ping")
    assert (await resumed.recv())["type"] == "pong"


@pytest.mark.parametrize("token", ["wrong", "", None])
async def test_wrong_token_is_refused_and_the_session_is_untouched(
        live_gateway: LiveGateway, token: str | None) -> None:
    live = live_gateway
    client = await live.connect(client_id="victim")
    await send(live, "victim", "secret 1")
    await client.recv()
    abort(client)
    await dropped(live, "victim")
    await send(live, "victim", "secret 2")

    if token is None:
        # No token at all: a brand-new session with another id, nothing of the victim's.
        intruder = await live.connect(client_id="victim", last_seq=0)
        assert intruder.client_id != "victim"
        assert intruder.hello["data"]["resumed"] is False
        assert intruder.hello["data"]["last_seq"] == 0
    else:
        intruder = await live.connect(client_id="victim", session_token=token or "x",
                                      last_seq=0, expect_hello=False)
        error = await intruder.recv()
        assert error["type"] == "error"
        assert error["data"]["code"] == "invalid_session"
        assert error["data"]["close_code"] == 4003
        assert "secret" not in str(error) and client.session_token not in str(error)
        assert await intruder.recv_close() == CloseCode.INVALID_SESSION == 4003

    assert (await live.client_info("victim"))["connected"] is False
    # The real owner still resumes with everything intact.
    resumed = await resume(live, client, 0)
    assert resumed.hello["data"]["recovered"] is True
    assert [f["data"]["content"] for f in await recv_messages(resumed, 2)] == [
        "secret 1", "secret 2"]


async def test_wrong_token_does_not_disturb_a_connected_session(
        live_gateway: LiveGateway) -> None:
    live = live_gateway
    owner = await live.connect(client_id="owner")
    intruder = await live.connect(client_id="owner", session_token="guess", expect_hello=False)
    assert (await intruder.recv())["data"]["code"] == "invalid_session"
    assert await intruder.recv_close() == 4003
    status, body = await send(live, "owner", "still mine")
    assert status == 200 and body["status"] == "delivered"
    assert (await owner.recv())["data"]["content"] == "still mine"


async def test_resume_of_an_unknown_session_is_refused(live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect(client_id="ghost", session_token="t", last_seq=0,
                                        expect_hello=False)
    assert (await client.recv())["data"]["code"] == "invalid_session"
    assert await client.recv_close() == 4003
    assert (await live_gateway.api("GET", "/clients/ghost"))[0] == 404


async def test_a_second_connection_resuming_replaces_the_first_with_4000(
        live_gateway: LiveGateway) -> None:
    live = live_gateway
    first = await live.connect(client_id="tab")
    await send(live, "tab", "one")
    one = await first.recv()
    second = await resume(live, first, one["seq"])
    assert second.hello["data"]["resumed"] is True
    assert await first.recv_close() == CloseCode.REPLACED == 4000
    # the first connection closing did not detach the session from the second
    assert (await live.client_info("tab"))["connected"] is True
    status, body = await send(live, "tab", "two")
    assert status == 200 and body["status"] == "delivered"
    two = await second.recv()
    assert two["data"]["content"] == "two" and two["seq"] == one["seq"] + 1


async def test_slow_client_is_closed_with_4008_then_resumes_with_nothing_lost(
        make_gateway: MakeGateway) -> None:
    big = 32 * 1024
    live = await make_gateway(send_queue_frames=4, send_queue_bytes=3 * big + 4096,
                              max_message_size=big)
    slow = await live.connect(client_id="slow")
    conn = next(c for c in live.connections if c.session.client_id == "slow")
    sent = 0
    while conn.close_code is None:
        sent += 1
        assert sent < 2000, "never overflowed"
        status, _ = await send(live, "slow", f"{sent}:" + "x" * big)
        assert status in (200, 202)
    # Nothing accepted is lost: the frames that overflowed were kept in history.
    for _ in range(3):
        sent += 1
        status, body = await send(live, "slow", f"{sent}:late")
        assert (status, body["status"]) == (202, "queued")  # the overflowed socket is closing
    # The client now reads what reached it, sees 4008, and resumes from its last seq.
    got: list[int] = []
    while True:
        msg = await slow.ws.receive(timeout=10)
        if msg.type.name != "TEXT":
            break
        got.append(int(orjson.loads(msg.data)["seq"]))
    assert slow.ws.close_code == CloseCode.SLOW_CONSUMER == 4008
    assert got == list(range(1, len(got) + 1))
    await dropped(live, "slow")
    last_seq = got[-1] if got else 0
    resumed = await resume(live, slow, last_seq)
    assert resumed.hello["data"]["recovered"] is True
    replay = await recv_messages(resumed, sent - last_seq)
    assert [f["seq"] for f in replay] == list(range(last_seq + 1, sent + 1))
    assert [int(f["data"]["content"].split(":")[0]) for f in replay] == list(
        range(last_seq + 1, sent + 1))



async def test_a_replay_longer_than_the_send_queue_is_delivered_whole(
        make_gateway: MakeGateway) -> None:
    live = await make_gateway(send_queue_frames=2)
    client = await live.connect(client_id="away")
    abort(client)
    await dropped(live, "away")
    for i in range(1, 11):
        assert (await send(live, "away", i))[0] == 202
    resumed = await resume(live, client, 0)
    assert resumed.hello["data"]["replayed"] == 10
    assert [f["data"]["content"] for f in await recv_messages(resumed, 10)] == list(
        range(1, 11))
    # The live queue limit still applies to what comes next, and the client is still open.
    assert (await send(live, "away", "live"))[1]["status"] == "delivered"
    assert (await resumed.recv())["seq"] == 11

@pytest.mark.parametrize("where", ["body", "header"])
async def test_retried_send_message_with_the_same_idempotency_key_delivers_once(
        live_gateway: LiveGateway, where: str) -> None:
    live = live_gateway
    client = await live.connect(client_id="a")

    async def post() -> tuple[int, Any]:
        if where == "body":
            return await send(live, "a", "pay once", idempotency_key="order-42")
        return await live.api("POST", "/send_message", {"client_id": "a", "content": "pay once"},
                              headers={"Idempotency-Key": "order-42"})

    first_status, first = await post()
    retry_status, retry = await post()
    assert first_status == retry_status == 200
    assert retry["message_id"] == first["message_id"] and retry["seq"] == first["seq"]
    assert retry.get("idempotent_replay") is True
    await send(live, "a", "marker")
    frames = await recv_messages(client, 2)
    assert [f["data"]["content"] for f in frames] == ["pay once", "marker"]
    # Another key is another message.
    status, other = await send(live, "a", "pay once", idempotency_key="order-43")
    assert status == 200 and other["message_id"] != first["message_id"]


async def test_an_idempotency_key_reused_for_another_request_is_refused(
        live_gateway: LiveGateway) -> None:
    live = live_gateway
    a = await live.connect(client_id="a")
    b = await live.connect(client_id="b")
    status, first = await send(live, "a", "for a", idempotency_key="k1")
    assert status == 200
    # Same key, different request: refused, never answered with a's result.
    status, body = await send(live, "b", "for b", idempotency_key="k1")
    assert status == 422, body
    assert body["error"]["code"] == "idempotency_key_reused"
    assert body["error"]["field"] == "idempotency_key"
    status, body = await send(live, "a", "changed", idempotency_key="k1")
    assert status == 422, body
    # The genuine retry (key order and all) still gets the first answer.
    status, retry = await live.api("POST", "/send_message", {
        "idempotency_key": "k1", "content": "for a", "client_id": "a"})
    assert status == 200 and retry["message_id"] == first["message_id"]
    await send(live, "b", "marker")
    assert (await b.recv())["data"]["content"] == "marker"  # b got nothing else
    await send(live, "a", "marker")
    assert [f["data"]["content"] for f in await recv_messages(a, 2)] == ["for a", "marker"]

async def test_retried_broadcast_with_the_same_idempotency_key_delivers_once(
        live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect()
    body = {"message_type": "alert", "data": {"n": 1}, "idempotency_key": "alert-1"}
    first = await live.api("POST", "/broadcast", body)
    retry = await live.api("POST", "/broadcast", body)
    assert first[0] == retry[0] == 200
    assert retry[1]["message_id"] == first[1]["message_id"]
    await live.api("POST", "/broadcast", {"message_type": "marker"})
    assert [f["type"] for f in await recv_messages(client, 2)] == ["alert", "marker"]


async def test_a_failed_request_is_not_remembered_by_its_idempotency_key(
        live_gateway: LiveGateway) -> None:
    live = live_gateway
    status, _ = await send(live, "later", "x", idempotency_key="k")
    assert status == 404
    client = await live.connect(client_id="later")
    status, body = await send(live, "later", "x", idempotency_key="k")
    assert status == 200 and body["status"] == "delivered"
    assert (await client.recv())["data"]["content"] == "x"


async def test_idempotency_keys_are_forgotten_after_idempotency_ttl(
        make_gateway: MakeGateway) -> None:
    live = await make_gateway(idempotency_ttl=0.05)
    client = await live.connect(client_id="a")
    _, first = await send(live, "a", "x", idempotency_key="k")
    # While the key is remembered a retry is a replay (nothing delivered); once it expired,
    # the same key is a new request.
    _, second = await eventually(lambda: send(live, "a", "x", idempotency_key="k"),
                                 lambda r: r[1]["message_id"] != first["message_id"],
                                 what="the key to expire")
    assert second.get("idempotent_replay") is None
    assert [f["seq"] for f in await recv_messages(client, 2)] == [1, 2]


async def test_sessions_expire_after_session_ttl_and_are_freed(
        make_gateway: MakeGateway) -> None:
    live = await make_gateway(session_ttl=0.2)
    client = await live.connect(client_id="brief")
    await client.send("subscribe", {"channel": "news"})
    await client.recv_type("subscribed")
    keeper = await live.connect(client_id="keeper")
    await keeper.send("subscribe", {"channel": "news"})
    await keeper.recv_type("subscribed")
    abort(client)
    await dropped(live, "brief")
    # Within SESSION_TTL the session is kept and messages are queued.
    status, body = await send(live, "brief", "queued")
    assert status == 202, body
    await expired(live, "brief")
    _, channels = await live.api("GET", "/channels")
    assert channels["channels"] == [{"channel": "news", "subscribers": 1}]
    _, status = await live.api("GET", "/status")
    assert status["total_sessions_expired"] >= 1
    # After expiry: 404 on every endpoint, and resuming is refused.
    assert (await send(live, "brief", "late"))[0] == 404
    assert (await live.api("GET", "/clients/brief"))[0] == 404
    assert (await live.api("GET", "/clients/brief/messages"))[0] == 404
    late = await resume(live, client, 0, expect_hello=False)
    assert (await late.recv())["data"]["code"] == "invalid_session"
    assert await late.recv_close() == 4003
    # A connected session never expires.
    assert (await live.client_info("keeper"))["connected"] is True
    assert (await send(live, "keeper", "hi"))[0] == 200


async def test_expiry_drops_channel_when_its_last_member_expires(
        make_gateway: MakeGateway) -> None:
    live = await make_gateway(session_ttl=0.1)
    client = await live.connect(client_id="only")
    await client.send("subscribe", {"channel": "solo"})
    await client.recv_type("subscribed")
    abort(client)
    await expired(live, "only")
    status, body = await live.api("GET", "/channels")
    assert status == 200 and body["channels"] == []


async def test_history_pages_by_after_seq_before_seq_and_limit(
        live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="h")
    for i in range(1, 11):
        await send(live, "h", f"m{i}")
    await recv_messages(client, 10)

    async def page(query: str) -> dict[str, Any]:
        status, body = await live.api("GET", f"/clients/h/messages?{query}")
        assert status == 200, body
        return body

    def out_seqs(body: dict[str, Any]) -> list[int]:
        return [m["seq"] for m in body["messages"] if m["direction"] == "out"]

    everything = await page("")
    assert out_seqs(everything) == list(range(1, 11))
    assert everything["last_seq"] == 10 and everything["oldest_seq"] == 1
    assert everything["has_more"] is False
    assert [m["frame"]["data"]["content"] for m in everything["messages"]] == [
        f"m{i}" for i in range(1, 11)]

    first = await page("limit=3")
    assert out_seqs(first) == [1, 2, 3] and first["has_more"] is True
    second = await page("after_seq=3&limit=3")
    assert out_seqs(second) == [4, 5, 6]
    tail = await page("after_seq=8&limit=3")
    assert out_seqs(tail) == [9, 10] and tail["has_more"] is False
    newest_before = await page("before_seq=8&limit=3")
    assert out_seqs(newest_before) == [5, 6, 7] and newest_before["has_more"] is True
    window = await page("after_seq=2&before_seq=6")
    assert out_seqs(window) == [3, 4, 5]
    for bad in ("limit=0", "limit=abc", "after_seq=-1", "before_seq=x", "limit=100000"):
        status, body = await live.api("GET", f"/clients/h/messages?{bad}")
        assert status == 422, (bad, body)
        assert body["error"]["field"] == bad.split("=")[0]


async def test_history_holds_both_directions_in_order(live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="both")
    await client.send("chat_message", {"content": "hello"}, message_id="c1")
    await client.recv_type("chat_response")
    status, body = await live.api("GET", "/clients/both/messages")
    assert status == 200
    kinds = [(m["direction"], m["frame"]["type"]) for m in body["messages"]]
    assert kinds == [("in", "chat_message"), ("out", "processing"), ("out", "chat_response")]
    assert body["messages"][0]["frame"]["message_id"] == "c1"
    assert body["messages"][2]["frame"]["reply_to"] == "c1"
