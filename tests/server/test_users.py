"""Users: one user, many sessions (tabs, devices), each with its own client_id, session_token,
seq and resume; sends to a user reach all of them; MAX_SESSIONS_PER_USER. Every test runs on
one node and on two (clients on node b, the API on node a; where it matters, one session on
each node)."""

from __future__ import annotations

import time
from typing import Any

import jwt

from server.errors import CloseCode
from server.metrics import REGISTRY
from tests.conftest import LiveGateway, MakeGateway, WSClient, eventually
from tests.security.test_ws_handshake import _refused

SECRET = "users-test-secret-" + "0123456789abcdef" * 3


def make_jwt(sub: str, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600, **claims}, SECRET, "HS256")


def limit_hits(limit: str) -> float:
    return REGISTRY.get_sample_value("switchboard_limit_hits_total", {"limit": limit}) or 0


async def jwt_gateway(make_gateway: MakeGateway, **settings: Any) -> LiveGateway:
    return await make_gateway(ws_auth="jwt", ws_jwt_secret=SECRET, **settings)


async def tabs(live: LiveGateway, count: int, **query: Any) -> list[WSClient]:
    """``count`` sessions of one user, alternating between the nodes (on two nodes)."""
    return [await live.connect(node=live.nodes[i % len(live.nodes)], **query)
            for i in range(count)]


async def test_a_jwt_user_holds_several_sessions_at_once(make_gateway: MakeGateway) -> None:
    """Two tabs of alice (HS256 JWT, no client_id): two sessions, both stay connected (no
    4000 for the first), each with its own client_id and session_token, both listed."""
    live = await jwt_gateway(make_gateway)
    first, second = await tabs(live, 2, token=make_jwt("alice"))
    assert first.client_id != second.client_id
    assert first.session_token != second.session_token
    for tab in (first, second):
        assert tab.hello["data"]["user_id"] == "alice"
        assert tab.hello["data"]["resumed"] is False
    for tab in (first, second):
        await tab.send("ping", message_id="p")
        assert (await tab.recv_type("pong"))["reply_to"] == "p"  # nobody was replaced
    status, user = await live.api("GET", "/users/alice")
    assert status == 200, user
    assert user["total"] == 2 and user["connected"] == 2
    assert sorted(s["client_id"] for s in user["sessions"]) == sorted(
        [first.client_id, second.client_id])
    assert {s["user_id"] for s in user["sessions"]} == {"alice"}
    status, listed = await live.api("GET", "/clients?user_id=alice")
    assert status == 200 and listed["total"] == 2, listed
    status, nobody = await live.api("GET", "/users/bob")
    assert status == 404 and nobody["error"]["code"] == "user_not_found", nobody


async def test_each_session_resumes_on_its_own(make_gateway: MakeGateway) -> None:
    """Dropping one tab leaves the other connected; the dropped one resumes with its own
    token and last_seq (only what it missed is replayed), and resuming it is no 4000 for
    the other tab."""
    live = await make_gateway()
    laptop, phone = await tabs(live, 2, user_id="alice")
    await live.api("POST", "/send_message", {"user_id": "alice", "content": "one"})
    for tab in (laptop, phone):
        assert (await tab.recv_type("message"))["data"]["content"] == "one"
    await phone.close()
    await live.offline(phone.client_id)
    status, body = await live.api("POST", "/send_message", {"user_id": "alice",
                                                            "content": "two"})
    assert status == 200, body  # delivered to the laptop, queued for the phone
    assert (await laptop.recv_type("message"))["data"]["content"] == "two"
    again = await live.connect(client_id=phone.client_id, session_token=phone.session_token,
                               last_seq=1, user_id="alice")
    assert again.hello["data"]["resumed"] is True and again.hello["data"]["recovered"] is True
    frame = await again.recv()
    assert frame["data"]["content"] == "two" and frame["seq"] == 2
    await laptop.send("ping", message_id="still")
    assert (await laptop.recv_type("pong"))["reply_to"] == "still"


async def test_send_message_to_a_user_reaches_every_session(make_gateway: MakeGateway
                                                            ) -> None:
    """POST /send_message {user_id}: one frame (one message_id) to every session of the
    user, on every node: delivered to the connected ones, queued for the offline one; the
    answer lists each with its status and seq. Another user's session gets nothing."""
    live = await make_gateway()
    online = await tabs(live, 2, user_id="alice")
    offline = await live.connect(user_id="alice")
    await offline.close()
    await live.offline(offline.client_id)
    bob = await live.connect(user_id="bob")
    status, body = await live.api("POST", "/send_message", {
        "user_id": "alice", "content": "hi all", "data": {"n": 1}})
    assert status == 200, body
    assert body["user_id"] == "alice" and body["delivered"] == 2 and body["queued"] == 1
    by_client = {s["client_id"]: s for s in body["sessions"]}
    assert by_client[offline.client_id]["status"] == "queued"
    for tab in online:
        frame = await tab.recv_type("message")
        assert frame["message_id"] == body["message_id"]
        assert frame["data"] == {"content": "hi all", "n": 1}
        assert by_client[tab.client_id] == {"client_id": tab.client_id, "status": "delivered",
                                            "seq": frame["seq"]}
    history = await live.api("GET", f"/clients/{offline.client_id}/messages")
    assert history[1]["messages"][-1]["frame"]["message_id"] == body["message_id"]
    await bob.send("ping", message_id="b")
    assert (await bob.recv())["type"] == "pong"  # nothing for bob came first

    only_offline = await live.api("POST", "/send_message", {"user_id": "carol",
                                                            "content": "x"})
    assert only_offline[0] == 404 and only_offline[1]["error"]["code"] == "user_not_found"
    for bad in ({"content": "x"}, {"client_id": "c", "user_id": "alice", "content": "x"},
                {"user_id": 5, "content": "x"}):
        status, error = await live.api("POST", "/send_message", bad)
        assert status == 422, (bad, error)
    status, all_queued = await live.api("POST", "/send_message", {
        "user_id": "bob", "content": "x", "idempotency_key": "k"})
    assert status == 200 and all_queued["delivered"] == 1
    await bob.close()
    await live.offline(bob.client_id)
    status, queued = await live.api("POST", "/send_message", {"user_id": "bob",
                                                              "content": "later"})
    assert status == 202 and queued["queued"] == 1, queued


async def test_max_sessions_per_user_ends_the_oldest_offline_then_refuses(
        make_gateway: MakeGateway) -> None:
    """At MAX_SESSIONS_PER_USER (2 here) a new session of the user ends the one offline
    longest (its resume then gets 4003); when every session is connected the new connection
    is closed with 4012 and nothing changes. Other users are not affected."""
    live = await make_gateway(max_sessions_per_user=2)
    old, newer = await tabs(live, 2, user_id="alice")
    await old.close()
    await live.offline(old.client_id)
    await newer.close()
    await live.offline(newer.client_id)
    evicted_before = limit_hits("sessions_per_user")
    third = await live.connect(user_id="alice")
    assert third.hello["data"]["resumed"] is False
    _, user = await live.api("GET", "/users/alice")
    assert sorted(s["client_id"] for s in user["sessions"]) == sorted(
        [newer.client_id, third.client_id]), user
    assert limit_hits("sessions_per_user") > evicted_before
    gone = await live.connect(client_id=old.client_id, session_token=old.session_token,
                              user_id="alice", expect_hello=False)
    assert await gone.recv_close() == CloseCode.INVALID_SESSION
    back = await live.connect(client_id=newer.client_id, session_token=newer.session_token,
                              user_id="alice")
    assert back.hello["data"]["resumed"] is True

    refused_before = limit_hits("sessions_per_user")
    refused = await live.connect(user_id="alice", expect_hello=False)
    error = await refused.recv()
    assert error["type"] == "error" and error["data"]["code"] == "too_many_sessions", error
    assert error["data"]["max_sessions_per_user"] == 2
    assert await refused.recv_close() == CloseCode.TOO_MANY_SESSIONS == 4012
    assert not CloseCode.TOO_MANY_SESSIONS.reconnect
    assert limit_hits("sessions_per_user") > refused_before
    _, user = await live.api("GET", "/users/alice")
    assert user["total"] == 2 and user["connected"] == 2, user
    await live.connect(user_id="bob")  # another user is not concerned


async def test_a_session_is_resumed_only_by_its_own_user(make_gateway: MakeGateway) -> None:
    """A session_token resumes a session for a connection that names no user or its user;
    a connection saying it is another user is refused (4003) and changes nothing."""
    live = await make_gateway()
    alice = await live.connect(user_id="alice")
    await alice.close()
    await live.offline(alice.client_id)
    other = await live.connect(client_id=alice.client_id, session_token=alice.session_token,
                               user_id="mallory", expect_hello=False)
    assert await other.recv_close() == CloseCode.INVALID_SESSION
    assert (await live.client_info(alice.client_id))["connected"] is False
    same = await live.connect(client_id=alice.client_id, session_token=alice.session_token)
    assert same.hello["data"]["resumed"] is True and same.hello["data"]["user_id"] == "alice"
    status, body = await _refused(live, user_id="not a valid id!")
    assert status == 400 and "user_id" in body["error"]["message"], body


async def test_anonymous_sessions_have_no_user(make_gateway: MakeGateway) -> None:
    live = await make_gateway()
    client = await live.connect()
    assert client.hello["data"]["user_id"] is None
    info = await live.client_info(client.client_id)
    assert info["user_id"] is None
    status, _ = await live.api("GET", "/clients?user_id=nobody")
    assert status == 200


async def test_the_api_sees_a_users_sessions_on_every_node(make_gateway: MakeGateway) -> None:
    """Sessions of one user on both nodes: listed, sent to and counted against the cap
    together (the cap's count spans nodes)."""
    live = await make_gateway(max_sessions_per_user=2)
    await tabs(live, 2, user_id="alice")
    user = await eventually(lambda: live.api("GET", "/users/alice"),
                            lambda r: r[0] == 200 and r[1]["connected"] == 2)
    assert {s.get("node") for s in user[1]["sessions"]} == {n.gateway.node_id
                                                           for n in live.nodes}
    refused = await live.connect(node=live.nodes[0], user_id="alice", expect_hello=False)
    assert await refused.recv_close() == CloseCode.TOO_MANY_SESSIONS
