"""Two gateways (nodes "a" and "b") in one test process over one real redis-server.

Any node's API reaches any client: send, call_tool (the answer travels back to the node that
holds the HTTP request), broadcast with recipients counted across nodes, DELETE; listings show
the whole cluster with each client's node; a client that drops from one node resumes on the
other with nothing lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from typing import Any

import aiohttp
import pytest

from tests.api.test_call_tool import observed_api_tool_calls
from tests.conftest import LiveGateway, MakeGateway, WSClient, wait_for

pytestmark = pytest.mark.redis


@pytest.fixture
async def pair(make_gateway: MakeGateway, redis_url: str) -> tuple[LiveGateway, LiveGateway]:
    a = await make_gateway(broker_url=redis_url, node_id="a")
    b = await make_gateway(broker_url=redis_url, node_id="b")
    assert a.gateway.backend.healthy and b.gateway.backend.healthy
    return a, b


async def close_code(client: WSClient, wait: float = 5.0) -> int | None:
    """The code in the server's CLOSE frame (aiohttp's ``close_code`` may say 1006 when the
    server drops the TCP connection right after its close frame)."""
    while True:
        msg = await client.ws.receive(timeout=wait)
        if msg.type is aiohttp.WSMsgType.CLOSE:
            return int(msg.data)
        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING,
                        aiohttp.WSMsgType.ERROR):
            return client.ws.close_code


async def _in_redis(live: LiveGateway, client_id: str, **expected: str) -> bool:
    fields = await live.gateway.backend.store.redis.hgetall(f"sb:s:{client_id}")  # type: ignore
    got = {k.decode(): v.decode() for k, v in fields.items()}
    return all(got.get(k) == v for k, v in expected.items())


async def wait_redis(live: LiveGateway, client_id: str, **expected: str) -> None:
    """Wait until the write-behind has recorded ``expected`` in the session's hash."""
    for _ in range(1000):
        if await _in_redis(live, client_id, **expected):
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{client_id} never reached {expected} in Redis")


async def test_send_from_either_node(pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    client = await b.connect(client_id="cross", client_type="web")
    await wait_redis(a, "cross", node="b", connected="1")
    status, body = await a.api("POST", "/send_message", {"client_id": "cross", "content": "hi"})
    assert status == 200 and body["status"] == "delivered", body
    frame = await client.recv_type("message")
    assert frame["data"]["content"] == "hi" and frame["seq"] == body["seq"]
    # and the local path on b continues the same sequence
    status, body2 = await b.api("POST", "/send_message", {"client_id": "cross", "content": 2})
    assert body2["seq"] == body["seq"] + 1


async def test_call_tool_across_nodes(pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    client = await b.connect(client_id="worker")
    await wait_redis(a, "worker", node="b")

    async def answer() -> None:
        call = await client.recv_type("tool_call")
        await client.send("tool_result", {"call_id": call["data"]["call_id"],
                                          "result": call["data"]["params"]["x"] * 2})

    task = asyncio.create_task(answer())
    status, body = await a.api("POST", "/call_tool", {"client_id": "worker", "tool_name": "dbl",
                                                     "params": {"x": 21}, "timeout": 5})
    await task
    assert status == 200, body
    assert body == {"call_id": body["call_id"], "tool_name": "dbl", "client_id": "worker",
                    "success": True, "result": 42}


async def test_call_tool_offline_across_nodes_is_409(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    client = await b.connect(client_id="sleepy")
    await client.close()
    await wait_redis(a, "sleepy", node="b", connected="0")
    status, body = await a.api("POST", "/call_tool", {"client_id": "sleepy", "tool_name": "x"})
    assert status == 409, body
    assert body["error"]["code"] == "client_offline"


async def test_broadcast_counts_recipients_on_every_node(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    on_a = [await a.connect(client_id=f"a{i}", client_type="web") for i in range(2)]
    on_b = [await b.connect(client_id=f"b{i}", client_type="bot") for i in range(3)]
    await on_b[0].send("subscribe", {"channel": "ops"})
    await on_b[0].recv_type("subscribed")
    await on_a[1].send("subscribe", {"channel": "ops"})
    await on_a[1].recv_type("subscribed")

    status, body = await a.api("POST", "/broadcast", {"message_type": "all", "data": {"x": 1}})
    assert status == 200, body
    assert body["recipients"] == 5 and body["nodes"] == 2 and body["nodes_answered"] == 2, body
    for client in on_a + on_b:
        frame = await client.recv_type("all")
        assert frame["message_id"] == body["message_id"] and frame["data"] == {"x": 1}

    status, body = await b.api("POST", "/broadcast", {"message_type": "ch", "channel": "ops"})
    assert body["recipients"] == 2, body
    await on_b[0].recv_type("ch")
    await on_a[1].recv_type("ch")

    status, body = await b.api("POST", "/broadcast", {"message_type": "t", "client_type": "web"})
    assert body["recipients"] == 2, body

    # an offline session on b keeps the broadcast for resume, counted as queued
    await on_b[2].close()
    await wait_for(lambda: not b.gateway.registry.get("b2").connected, what="b2 offline")
    status, body = await a.api("POST", "/broadcast", {"message_type": "later"})
    assert body["recipients"] == 4 and body["queued"] == 1, body


async def test_delete_across_nodes(pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    client = await b.connect(client_id="doomed")
    await wait_redis(a, "doomed", node="b")
    status, body = await a.api("DELETE", "/clients/doomed")
    assert status == 200 and body["ended"] is True and body["disconnected"] is True, body
    assert await close_code(client) == 4001
    status, _ = await a.api("GET", "/clients/doomed")
    assert status == 404
    status, _ = await b.api("GET", "/clients/doomed")
    assert status == 404


async def test_listing_status_and_channels_show_the_cluster(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    one = await a.connect(client_id="one", client_type="web")
    two = await b.connect(client_id="two", client_type="bot")
    await two.send("subscribe", {"channel": "room"})
    await two.recv_type("subscribed")
    await one.send("subscribe", {"channel": "room"})
    await one.recv_type("subscribed")
    await wait_redis(a, "two", node="b", channels='["room"]')
    await wait_redis(b, "one", node="a", channels='["room"]')
    for live in (a, b):
        status, body = await live.api("GET", "/clients")
        assert status == 200 and body["total"] == 2, body
        nodes = {c["client_id"]: c["node"] for c in body["clients"]}
        assert nodes == {"one": "a", "two": "b"}
        status, body = await live.api("GET", "/clients?client_type=bot")
        assert [c["client_id"] for c in body["clients"]] == ["two"]
        status, body = await live.api("GET", "/channels")
        assert {"channel": "room", "subscribers": 2} in body["channels"], body
        status, body = await live.api("GET", "/clients/two")
        assert status == 200 and body["node"] == "b" and body["connected"] is True
    await wait_for(lambda: True)
    status, body = await a.api("GET", "/status")
    assert body["connected_clients"] == 2 and body["total_sessions"] == 2, body
    assert body["local"]["connected_clients"] == 1
    assert body["channel_stats"] == {"room": 2}


async def test_resume_on_the_other_node_loses_nothing(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    client = await a.connect(client_id="mover")
    for i in range(3):
        await a.api("POST", "/send_message", {"client_id": "mover", "content": f"live{i}"})
    got = [await client.recv_type("message") for _ in range(3)]
    last_seq = got[-1]["seq"]
    await client.close()
    await wait_redis(b, "mover", node="a", connected="0")

    # sent through b while the client is away: a still owns the session and queues them
    sent = []
    for i in range(4):
        status, body = await b.api("POST", "/send_message",
                                   {"client_id": "mover", "content": f"away{i}"})
        assert status == 202 and body["status"] == "queued", body
        sent.append(body["seq"])
    assert sent == list(range(last_seq + 1, last_seq + 5))

    again = await b.connect(client_id="mover", session_token=client.session_token,
                            last_seq=last_seq)
    data = again.hello["data"]
    assert data["resumed"] is True and data["recovered"] is True and data["replayed"] == 4
    replayed = [await again.recv_type("message") for _ in range(4)]
    assert [f["seq"] for f in replayed] == sent
    assert [f["data"]["content"] for f in replayed] == [f"away{i}" for i in range(4)]
    assert a.gateway.registry.get("mover") is None
    assert b.gateway.registry.get("mover") is not None

    # live frames follow from either node, no gap, no duplicate
    status, body = await a.api("POST", "/send_message", {"client_id": "mover", "content": "x"})
    assert status == 200 and body["seq"] == sent[-1] + 1, body
    frame = await again.recv_type("message")
    assert frame["seq"] == sent[-1] + 1

    # history of the moved session is complete on its owner at once, and on the other node
    # as soon as the owner's write-behind has flushed
    expected = list(range(1, sent[-1] + 2))
    for live in (b, a):
        seqs: list[int] = []
        for _ in range(500):
            status, page = await live.api("GET", "/clients/mover/messages?limit=100")
            seqs = [m["seq"] for m in page["messages"] if m["direction"] == "out"]
            if seqs == expected:
                break
            assert live is a, seqs
        assert seqs == expected


async def test_resume_while_still_connected_elsewhere_replaces(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    first = await a.connect(client_id="twin")
    await wait_redis(b, "twin", node="a", connected="1")
    second = await b.connect(client_id="twin", session_token=first.session_token, last_seq=0)
    assert second.hello["data"]["resumed"] is True
    assert await close_code(first) == 4000
    status, body = await a.api("POST", "/send_message", {"client_id": "twin", "content": "?"})
    assert status == 200, body
    await second.recv_type("message")


async def test_wrong_token_on_the_other_node_is_refused(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    owner = await a.connect(client_id="safe")
    await wait_redis(b, "safe", node="a")
    intruder = await b.connect(client_id="safe", session_token="forged", expect_hello=False)
    assert await close_code(intruder) == 4003
    status, body = await b.api("POST", "/send_message", {"client_id": "safe", "content": "ok"})
    assert status == 200 and body["status"] == "delivered"
    await owner.recv_type("message")


async def test_requested_client_id_is_unique_across_nodes(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    first = await a.connect(client_id="unique")
    second = await b.connect(client_id="unique")
    assert first.client_id == "unique"
    assert second.client_id != "unique"


@pytest.mark.parametrize("query", [{}, {"client_id": "named"}, {"user_id": "alice"}],
                         ids=["generated", "requested", "user"])
async def test_a_new_session_is_found_from_every_node_before_the_write_behind(
        pair: tuple[LiveGateway, LiveGateway], query: dict[str, str]) -> None:
    """A client learns its id from the greeting and may hand it to a backend, which calls the
    API of another node at once. The id (a generated one too) is claimed in Redis before the
    greeting, so that call finds the session even while the holder has not yet written it."""
    a, b = pair
    journal = b.gateway.backend.journal  # type: ignore[attr-defined]
    journal._task.cancel()  # the holder's write-behind stalls (a busy node, a slow Redis)
    with contextlib.suppress(asyncio.CancelledError):
        await journal._task
    try:
        client = await b.connect(**query)
        status, info = await a.api("GET", f"/clients/{client.client_id}")
        assert status == 200 and info["client_id"] == client.client_id, info
        status, sent = await a.api("POST", "/send_message",
                                   {"client_id": client.client_id, "content": "first"})
        assert status == 200 and sent["status"] == "delivered", sent
        assert (await client.recv_type("message"))["data"]["content"] == "first"
    finally:
        journal.start()


async def test_session_of_a_stopped_node_is_adopted(
        make_gateway: MakeGateway, redis_url: str) -> None:
    a = await make_gateway(broker_url=redis_url, node_id="a")
    b = await make_gateway(broker_url=redis_url, node_id="b")
    client = await a.connect(client_id="orphan")
    await client.close()
    await wait_redis(b, "orphan", node="a", connected="0")
    # node a stops (its alive key and subscription go with it)
    await a.ws_server.close()
    await a.api_server.close()
    await wait_for(lambda: not a.gateway.backend.healthy, what="a stopped")
    status, body = await b.api("POST", "/send_message", {"client_id": "orphan", "content": "hi"})
    assert status == 202 and body["status"] == "queued", body
    assert b.gateway.registry.get("orphan") is not None
    assert body["seq"] == 1  # a stopped cleanly: no crash gap, the sequence just goes on
    again = await b.connect(client_id="orphan", session_token=client.session_token, last_seq=0)
    assert again.hello["data"]["resumed"] is True and again.hello["data"]["recovered"] is True
    assert (await again.recv_type("message"))["data"]["content"] == "hi"


async def test_idempotent_retry_on_the_other_node_delivers_once(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    client = await a.connect(client_id="once")
    await wait_redis(b, "once", node="a")
    request = {"client_id": "once", "content": "pay", "idempotency_key": "k-1"}
    status, first = await a.api("POST", "/send_message", request)
    assert status == 200, first
    status, retry = await b.api("POST", "/send_message", request)
    assert status == 200 and retry["message_id"] == first["message_id"], retry
    assert retry.get("idempotent_replay") is True
    status, other = await b.api("POST", "/send_message",
                                {**request, "content": "something else"})
    assert status == 422 and other["error"]["code"] == "idempotency_key_reused", other
    await client.recv_type("message")
    status, _ = await b.api("POST", "/send_message", {"client_id": "once", "content": "end"})
    assert status == 200
    frame = await client.recv_type("message")
    assert frame["data"]["content"] == "end" and frame["seq"] == first["seq"] + 1


async def test_redis_keeps_only_a_digest_of_the_session_token(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    client = await a.connect(client_id="secret")
    await wait_redis(b, "secret", node="a", connected="1")  # written, not just reserved
    stored = await a.gateway.backend.store.redis.hget("sb:s:secret", "token")  # type: ignore
    assert stored is not None and client.session_token.encode() not in stored
    assert stored.decode() == hashlib.sha256(client.session_token.encode()).hexdigest()


async def test_call_tool_waiting_for_a_client_that_resumes_on_another_node(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    client = await a.connect(client_id="roamer")
    await client.close()
    await wait_redis(b, "roamer", node="a", connected="0")

    call = asyncio.create_task(b.api("POST", "/call_tool", {
        "client_id": "roamer", "tool_name": "where", "params": {}, "timeout": 10,
        "wait_for_client": True}))
    # the call waits on a (the owner); the client comes back on b instead
    await wait_for(lambda: bool(a.gateway.pending_calls), what="call pending on a")
    again = await b.connect(client_id="roamer", session_token=client.session_token,
                            last_seq=0)
    frame = await again.recv_type("tool_call")
    await again.send("tool_result", {"call_id": frame["data"]["call_id"], "result": "here"})
    ack = await again.recv_type("tool_result_ack")
    assert ack["data"]["call_id"] == frame["data"]["call_id"]
    status, body = await call
    assert status == 200 and body["result"] == "here" and body["success"] is True, body


@pytest.mark.parametrize("close_first", [True, False], ids=["closed", "replaced"])
async def test_hopping_client_under_broadcasts_from_both_nodes_gets_each_frame_once(
        pair: tuple[LiveGateway, LiveGateway], close_first: bool) -> None:
    """A client hops between the nodes (close, resume on the other) while both nodes keep
    broadcasting and sending to it: every frame arrives exactly once, seq has no gap and no
    duplicate."""
    a, b = pair
    per_node = 40
    total = 3 * per_node
    sent: list[str] = []
    DEBUG: dict = {}

    async def broadcaster(live: LiveGateway) -> None:
        for i in range(per_node):
            status, body = await live.api("POST", "/broadcast",
                                          {"message_type": "tick", "data": {"i": i}})
            assert status == 200, body
            sent.append(body["message_id"])

    async def sender() -> None:
        for i in range(per_node):
            live = a if i % 2 else b
            status, body = await live.api("POST", "/send_message",
                                          {"client_id": "hopper", "content": i})
            assert status in (200, 202), body
            sent.append(body["message_id"])

    client = await a.connect(client_id="hopper")
    token = client.session_token
    task = asyncio.gather(broadcaster(a), broadcaster(b), sender())  # all at once
    seen: list[str] = []
    last_seq = 0
    nodes = [a, b]
    hop = 0

    def take(frame: dict[str, Any]) -> None:
        nonlocal last_seq
        if frame.get("seq") is None or frame["seq"] <= last_seq:
            return  # what a client does with a duplicate
        assert frame["seq"] == last_seq + 1, (frame["seq"], last_seq)
        last_seq = frame["seq"]
        if frame["type"] in ("tick", "message"):
            seen.append(frame["message_id"])
            DEBUG.setdefault(frame["message_id"], []).append((frame["seq"], frame["type"], hop))

    while len(seen) < total:
        # read a few frames (or whatever is left), then hop to the other node
        target = min(total, len(seen) + 4)
        while len(seen) < target:
            take(await client.recv(timeout=10))
        old = client
        if close_first:
            await old.close()
        hop += 1
        client = await nodes[hop % 2].connect(client_id="hopper", session_token=token,
                                              last_seq=last_seq)
        if not close_first:  # the resume replaced the still-open connection on the other node
            assert await close_code(old) == 4000
        assert client.hello["data"]["recovered"] is True, client.hello
        for _ in range(client.hello["data"]["replayed"]):
            take(await client.recv())
    await task
    print("DEBUG", {k: v for k, v in DEBUG.items() if len(v) > 1})
    assert hop >= 5
    assert sorted(seen) == sorted(sent) and len(seen) == len(set(seen)) == total


async def test_sends_racing_a_resume_on_the_same_node_reach_the_resumed_connection(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    """Sends through node b while the client resumes on b (its session still on a): b must
    not adopt a second copy of the session behind the resuming connection's back."""
    a, b = pair
    client = await a.connect(client_id="racer")
    token, last_seq = client.session_token, 0
    for round_ in range(15):
        other = b if round_ % 2 == 0 else a  # the node the client does not hold now
        await client.close()
        sends = [asyncio.create_task(other.api("POST", "/send_message",
                                               {"client_id": "racer", "content": [round_, i]}))
                 for i in range(4)]
        client = await other.connect(client_id="racer", session_token=token,
                                     last_seq=last_seq)
        assert client.hello["data"]["recovered"] is True, client.hello
        answers = await asyncio.gather(*sends)
        assert all(status in (200, 202) for status, _ in answers), answers
        wanted = {body["message_id"] for _, body in answers}
        got: set[str] = set()
        for _ in range(client.hello["data"]["replayed"]):
            frame = await client.recv()
            got.add(frame["message_id"])
            last_seq = frame["seq"]
        while not wanted <= got:  # the rest arrive live on this very connection
            frame = await client.recv()
            got.add(frame["message_id"])
            last_seq = frame["seq"]
        held = other.gateway.registry.get("racer")
        assert held is not None and held.outbox is not None, "session copy without socket"


async def test_api_tool_calls_are_seen_on_tool_activity_across_nodes(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    a, b = pair
    await observed_api_tool_calls(a, b)


async def test_stream_reaches_a_client_held_by_the_other_node(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    """POST /stream on node a for a client on node b: relayed there, live and in order (it
    answered 404 client_not_found when the route only looked in a's registry)."""
    a, b = pair
    client = await b.connect(client_id="far")
    status, answer = await a.api("POST", "/stream/far?reply_to=q-1", data=b"hello there",
                                 headers={"Content-Type": "text/plain"})
    assert status == 200, answer
    assert answer["status"] == "delivered" and answer["delivered"] == 3
    frames = [await client.recv() for _ in range(3)]
    assert [f["type"] for f in frames] == ["stream_start", "stream_chunk", "stream_end"]
    assert [f["seq"] for f in frames] == [1, 2, 3]
    assert all(f["reply_to"] == "q-1" for f in frames)
    assert frames[-1]["data"]["full_content"] == "hello there"


async def test_jwt_client_resumes_its_own_session_on_the_other_node_without_token(
        make_gateway: MakeGateway, redis_url: str) -> None:
    """A WS_AUTH=jwt client reconnecting on the other node with its client_id but without
    session_token gets its own session back (the session is its sub's) with what was
    queued (it got a random client_id when the id check only looked in the local
    registry)."""
    import time

    import jwt

    secret = "s" * 32
    settings = {"broker_url": redis_url, "ws_auth": "jwt", "ws_jwt_secret": secret}
    a = await make_gateway(node_id="a", **settings)
    b = await make_gateway(node_id="b", **settings)

    def token() -> str:
        return jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, secret, "HS256")

    first = await a.connect(token=token(), client_id="alice")
    assert first.client_id == "alice" and first.hello["data"]["user_id"] == "alice"
    await first.close()
    await wait_redis(b, "alice", node="a", connected="0")
    status, body = await b.api("POST", "/send_message",
                               {"client_id": "alice", "content": "while away"})
    assert status == 202, body
    again = await b.connect(token=token(), client_id="alice", last_seq=0)
    assert again.client_id == "alice"
    assert again.hello["data"]["resumed"] is True and again.hello["data"]["recovered"] is True
    frame = await again.recv()
    assert frame["data"]["content"] == "while away" and frame["seq"] == body["seq"]
    status, body = await a.api("GET", "/clients/alice")
    assert status == 200 and body["node"] == "b" and body["connected"] is True, body


async def test_permission_granted_after_resuming_on_the_other_node_runs_the_tool(
        pair: tuple[LiveGateway, LiveGateway]) -> None:
    """A high-risk tool call waits for permission on node a; the client resumes on node b
    and grants it there: the answer reaches a, the tool runs, and its completion and
    tool_response reach the client on b."""
    a, b = pair
    client = await a.connect(client_id="admin")
    await client.send("tool_call", {"tool_name": "notify_all", "params": {"message": "hi"},
                                    "call_id": "risky"}, message_id="m1")
    waiting = await client.recv_type("mcp_tool_waiting_permission")
    await client.close()
    await wait_redis(b, "admin", node="a", connected="0")
    again = await b.connect(client_id="admin", session_token=client.session_token,
                            last_seq=waiting["seq"])
    assert again.hello["data"]["recovered"] is True
    await again.send("permission_response", {"call_id": "risky", "granted": True},
                     message_id="p1")
    frames = []
    while not frames or frames[-1]["type"] != "tool_response":
        frames.append(await again.recv())
    types = [f["type"] for f in frames]
    assert "notification" in types and "mcp_tool_execution_complete" in types, types
    assert "error" not in types, frames
    assert frames[-1]["reply_to"] == "m1" and frames[-1]["data"]["success"] is True
    assert [f["seq"] for f in frames if "seq" in f] == list(
        range(waiting["seq"] + 1, waiting["seq"] + 1 + sum("seq" in f for f in frames)))
