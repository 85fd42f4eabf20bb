"""The channel service on both topologies: presence over every node, join/leave frames once
per real join and leave (a socket drop and resume is neither), lifecycle events exactly once
over the cluster, and server-side subscriptions (the JWT's subs, the API). On two nodes the
sessions are spread over both (``node=live.api_node`` puts one beside the API)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jwt

from server.metrics import REGISTRY
from tests.backends import Backend, reply_json
from tests.conftest import LiveGateway, MakeGateway, WSClient, eventually
from tests.handlers.test_channels import SECRET, make_jwt, nothing_before, subscribe

RULES = json.dumps({
    "room:*": {"subscribe": "any", "publish": "any", "presence": True, "join_leave": True},
    "quiet:*": {"subscribe": "any", "presence": True},
    "*": {"subscribe": "any"},
})


def limit_hits(limit: str) -> float:
    return REGISTRY.get_sample_value("switchboard_limit_hits_total", {"limit": limit}) or 0


async def presence(live: LiveGateway, channel: str, query: str = "") -> dict[str, Any]:
    status, body = await live.api("GET", f"/channels/{channel}/presence{query}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def test_presence_lists_every_nodes_sessions_with_their_users(
        make_gateway: MakeGateway) -> None:
    """GET /channels/{channel}/presence: the sessions subscribed now on every node (offline
    ones too, until they expire), their users, the count; PRESENCE_LIMIT cuts the list
    (truncated, metric) but never the count."""
    live = await make_gateway(channel_rules=RULES, presence_limit=2)
    alice = await live.connect(node=live.api_node, user_id="alice")
    bob = await live.connect(user_id="bob")
    anonymous = await live.connect()
    for client in (alice, bob):
        await subscribe(client, "room:1")
    assert (await presence(live, "room:1"))["count"] == 2  # read right after, on node a
    await subscribe(anonymous, "room:1")
    await bob.close()
    await live.offline(bob.client_id)
    before = limit_hits("presence_listing")
    body = await presence(live, "room:1")
    assert body["count"] == 3 and body["truncated"] is True and len(body["sessions"]) == 2
    assert limit_hits("presence_listing") > before
    body = await presence(live, "room:1", "?limit=2")
    assert len(body["sessions"]) == 2
    assert len((await presence(live, "room:1", "?limit=3"))["sessions"]) == 2  # the cap
    status, _ = await live.api("GET", "/channels/room:1/presence?limit=0")
    assert status == 422


async def test_presence_is_whole_below_the_limit(make_gateway: MakeGateway) -> None:
    live = await make_gateway(channel_rules=RULES)
    alice = await live.connect(node=live.api_node, user_id="alice")
    tab = await live.connect(user_id="alice")
    bob = await live.connect(user_id="bob")
    for client in (alice, tab, bob):
        await subscribe(client, "room:2")
    await bob.close()
    await live.offline(bob.client_id)
    body = await presence(live, "room:2")
    assert body["count"] == 3 and body["truncated"] is False
    assert body["users"] == ["alice", "bob"]
    sessions = {s["client_id"]: s for s in body["sessions"]}
    assert sessions[bob.client_id] == {"client_id": bob.client_id, "user_id": "bob",
                                       "connected": False}
    assert sessions[tab.client_id]["connected"] is True
    assert [s["client_id"] for s in body["sessions"]] == sorted(sessions)
    await live.api("DELETE", f"/clients/{bob.client_id}")
    assert (await presence(live, "room:2"))["count"] == 2
    assert (await presence(live, "nobody-here"))["count"] == 0


async def collect_until(client: WSClient, marker: str) -> list[dict[str, Any]]:
    """Frames up to (not including) the ``message`` frame whose content is ``marker``."""
    frames = []
    while True:
        frame = await client.recv()
        if frame["type"] == "message" and frame["data"].get("content") == marker:
            return frames
        frames.append(frame)


async def test_join_and_leave_once_per_real_join_and_leave(make_gateway: MakeGateway) -> None:
    """alice watches room:j (join_leave on) from node a. bob, on node b: subscribe (join),
    socket drop and resume (nothing: still a member), unsubscribe (leave), subscribe again
    (join), session ended by the API (leave). carol subscribes and her session is deleted
    while offline (join, leave). Each exactly once, in order; nothing for quiet:* (no
    join_leave) nor for refused or repeated subscribes."""
    live = await make_gateway(channel_rules=RULES)
    alice = await live.connect(node=live.api_node, user_id="alice")
    await subscribe(alice, "room:j")
    bob = await live.connect(user_id="bob")
    await subscribe(bob, "room:j")
    await subscribe(bob, "room:j")  # already subscribed: nothing
    await subscribe(bob, "quiet:1")
    await bob.close()
    await live.offline(bob.client_id)
    again = await live.connect(client_id=bob.client_id, session_token=bob.session_token,
                               last_seq=0, user_id="bob")
    assert again.hello["data"]["resumed"] is True
    await again.send("unsubscribe", {"channel": "room:j"})
    await again.recv_type("unsubscribed")
    await subscribe(again, "room:j")
    carol = await live.connect(user_id="carol")
    await subscribe(carol, "room:j")
    await carol.close()
    await live.offline(carol.client_id)
    for client in (carol, again):
        status, _ = await live.api("DELETE", f"/clients/{client.client_id}")
        assert status == 200
    await presence(live, "room:j")  # every node has announced what it recorded
    status, _ = await live.api("POST", "/send_message", {"client_id": alice.client_id,
                                                         "content": "end"})
    assert status == 200
    frames = await collect_until(alice, "end")
    seen = [(f["type"], f["data"]["client_id"], f["data"]["user_id"]) for f in frames
            if f["type"] in ("join", "leave")]
    assert seen == [("join", bob.client_id, "bob"), ("leave", bob.client_id, "bob"),
                    ("join", bob.client_id, "bob"), ("join", carol.client_id, "carol"),
                    ("leave", carol.client_id, "carol"), ("leave", bob.client_id, "bob")]
    assert all(f["channel"] == "room:j" and f["data"]["channel"] == "room:j" and "seq" in f
               for f in frames if f["type"] in ("join", "leave"))


async def test_an_expired_session_leaves(make_gateway: MakeGateway) -> None:
    """A dropped session is still a member until SESSION_TTL runs out: then it leaves."""
    live = await make_gateway(channel_rules=RULES, session_ttl=1.0)
    alice = await live.connect(node=live.api_node, user_id="alice")
    await subscribe(alice, "room:e")
    bob = await live.connect(user_id="bob")
    await subscribe(bob, "room:e")
    assert (await alice.recv_type("join"))["data"]["client_id"] == bob.client_id
    await bob.close()
    leave = await alice.recv_type("leave", timeout=10)
    assert leave["data"] == {"channel": "room:e", "client_id": bob.client_id,
                             "user_id": "bob"}
    assert (await presence(live, "room:e"))["count"] == 1


def _trail(backend: Backend) -> list[tuple[str, Any, Any, Any]]:
    """Every event posted, with its batch and id: a failure then says whether a duplicate
    was a batch posted twice (a retry: same ids) or an event made twice (new ids)."""
    return [(body["batch_id"], e["id"], e["type"], e.get("client_id") or e.get("channel"))
            for body in backend.requests for e in body["events"]]


async def test_lifecycle_events_once_each_over_the_cluster(make_gateway: MakeGateway,
                                                           backend: Backend) -> None:
    """EVENTS_WEBHOOK_URL gets session_started, member_added, channel_occupied (first member
    anywhere), member_removed, channel_vacated (last member anywhere) and session_ended,
    each once, whichever node saw it; a socket drop and resume reports nothing."""
    backend.handler = reply_json({"ok": True})
    live = await make_gateway(channel_rules=RULES, events_webhook_url=backend.url,
                              events_batch_wait=0.01)
    alice = await live.connect(node=live.api_node, user_id="alice")
    bob = await live.connect(user_id="bob")
    await subscribe(alice, "room:ev")
    await subscribe(bob, "room:ev")
    await bob.close()
    await live.offline(bob.client_id)
    again = await live.connect(client_id=bob.client_id, session_token=bob.session_token,
                               user_id="bob")
    await again.send("unsubscribe", {"channel": "room:ev"})
    await again.recv_type("unsubscribed")
    await live.api("DELETE", f"/clients/{alice.client_id}")
    # A sentinel session on each node: its node's events before it are posted before it.
    sentinels = [await live.connect(node=node, user_id="sentinel") for node in live.nodes]
    ids = {s.client_id for s in sentinels}

    async def delivered() -> list[dict[str, Any]]:
        return [e for body in backend.requests for e in body["events"]]

    everything = await eventually(delivered, lambda events: ids <= {
        e.get("client_id") for e in events if e["type"] == "session_started"})
    events = [e for e in everything if e.get("user_id") != "sentinel"]
    summary = sorted((e["type"], e.get("client_id"), e.get("channel")) for e in events)
    assert summary == sorted([
        ("session_started", alice.client_id, None), ("session_started", bob.client_id, None),
        ("member_added", alice.client_id, "room:ev"), ("channel_occupied", None, "room:ev"),
        ("member_added", bob.client_id, "room:ev"),
        ("member_removed", bob.client_id, "room:ev"),
        ("member_removed", alice.client_id, "room:ev"),
        ("channel_vacated", None, "room:ev"),
        ("session_ended", alice.client_id, None)]), _trail(backend)
    ended = next(e for e in events if e["type"] == "session_ended")
    assert ended["reason"] == "deleted" and ended["user_id"] == "alice"
    assert len({e["id"] for e in events}) == len(events)


async def test_an_acknowledged_join_is_recorded_before_another_nodes_join_and_leave(
        make_gateway: MakeGateway, backend: Backend) -> None:
    """``subscribed`` is answered once the cluster's membership has the join: with the
    recorder of alice's node slowed down, bob joining and leaving on the other node after
    alice's ``subscribed`` does not make the channel look vacated and occupied again (it
    never was empty). Fails when the answer comes before the join is recorded."""
    backend.handler = reply_json({"ok": True})
    live = await make_gateway(channel_rules=RULES, events_webhook_url=backend.url,
                              events_batch_wait=0.01)
    directory = live.api_node.gateway.backend.directory
    record = directory.record_membership

    async def slow_record(changes: Any) -> Any:
        await asyncio.sleep(0.3)  # a busy node or a slow Redis
        return await record(changes)

    directory.record_membership = slow_record  # type: ignore[method-assign]
    alice = await live.connect(node=live.api_node, user_id="alice")
    bob = await live.connect(user_id="bob")
    await subscribe(alice, "room:steady")
    await subscribe(bob, "room:steady")
    await bob.send("unsubscribe", {"channel": "room:steady"})
    await bob.recv_type("unsubscribed")

    def about_the_room(events: list[dict[str, Any]]) -> list[tuple[str, Any]]:
        return [(e["type"], e.get("client_id")) for e in events
                if e.get("channel") == "room:steady"]

    async def delivered() -> list[tuple[str, Any]]:
        return about_the_room([e for body in backend.requests for e in body["events"]])

    events = await eventually(delivered, lambda got: {
        ("member_added", alice.client_id), ("member_removed", bob.client_id)} <= set(got))
    assert ("channel_vacated", None) not in events, _trail(backend)
    assert events.count(("channel_occupied", None)) == 1, _trail(backend)
    assert events[0] == ("member_added", alice.client_id), _trail(backend)


async def test_server_side_subscriptions(make_gateway: MakeGateway) -> None:
    """The JWT's subs are joined at connect (subscribed frames, server_side: true; a system
    channel in them is skipped); the API subscribes and unsubscribes one session, or every
    session of a user wherever it is held; the subscribe rule is not asked, system channels
    and the CHANNELS allow-list are."""
    live = await make_gateway(ws_auth="jwt", ws_jwt_secret=SECRET, channel_rules=json.dumps(
        {"locked:*": {"subscribe": "claim"}, "*": {"subscribe": "any"}}))
    token = make_jwt("alice", channels={"allow": [], "subs": ["locked:1", "tool_activity"]})
    tab = await live.connect(token=token)
    joined = await tab.recv_type("subscribed")
    assert joined["data"]["channel"] == "locked:1" and joined["data"]["server_side"] is True
    assert (await live.client_info(tab.client_id))["channels"] == ["locked:1"]
    phone = await live.connect(node=live.api_node, token=make_jwt("alice"))

    status, body = await live.api("POST", f"/clients/{tab.client_id}/channels",
                                  {"channel": "locked:2"})
    assert status == 200 and body["changed"] is True and body["channel_count"] == 2, body
    frame = await tab.recv_type("subscribed")
    assert frame["data"] == {"channel": "locked:2", "channel_count": 2, "subscribers": 1,
                             "server_side": True}
    status, body = await live.api("POST", f"/clients/{tab.client_id}/channels",
                                  {"channel": "locked:2"})
    assert status == 200 and body["changed"] is False
    status, body = await live.api("POST", "/users/alice/channels", {"channel": "locked:3"})
    assert status == 200 and len(body["sessions"]) == 2, body
    for client in (tab, phone):
        assert (await client.recv_type("subscribed"))["data"]["channel"] == "locked:3"
    status, body = await live.api("DELETE", f"/clients/{tab.client_id}/channels/locked:2")
    assert status == 200 and body["changed"] is True
    left = await tab.recv_type("unsubscribed")
    assert left["data"]["server_side"] is True and left["data"]["channel"] == "locked:2"
    status, body = await live.api("DELETE", "/users/alice/channels/locked:3")
    assert status == 200 and all(s["changed"] for s in body["sessions"]), body
    for client in (tab, phone):
        assert (await client.recv_type("unsubscribed"))["data"]["channel"] == "locked:3"
    status, body = await live.api("POST", f"/clients/{tab.client_id}/channels",
                                  {"channel": "tool_activity"})
    assert status == 403 and body["error"]["code"] == "forbidden_channel", body
    assert (await live.client_info(tab.client_id))["channels"] == ["locked:1"]
    await nothing_before(live, tab, "no more channel frames")


async def test_server_side_subscriptions_respect_the_allow_list(make_gateway: MakeGateway
                                                                ) -> None:
    live = await make_gateway(channels=("news",))
    client = await live.connect(user_id="u")
    status, body = await live.api("POST", f"/clients/{client.client_id}/channels",
                                  {"channel": "secret"})
    assert status == 422 and body["error"]["code"] == "invalid_channel", body
    status, body = await live.api("POST", "/users/u/channels", {"channel": "news"})
    assert status == 200, body


async def test_a_refused_subscribe_announces_nothing(make_gateway: MakeGateway) -> None:
    """A refused subscribe changes nothing anywhere: no join frame, no presence."""
    live = await make_gateway(ws_auth="jwt", ws_jwt_secret=SECRET, channel_rules=json.dumps({
        "team:*": {"subscribe": "claim", "presence": True, "join_leave": True}}))
    insider = await live.connect(node=live.api_node, token=make_jwt(
        "alice", channels=["team:*"]))
    await subscribe(insider, "team:x")
    outsider = await live.connect(token=jwt.encode(
        {"sub": "mallory", "exp": int(time.time()) + 60}, SECRET, "HS256"))
    assert (await subscribe(outsider, "team:x"))["data"]["code"] == "forbidden_channel"
    body = await presence(live, "team:x")
    assert body["count"] == 1 and body["users"] == ["alice"]
    await nothing_before(live, insider, "no join")
