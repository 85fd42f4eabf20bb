"""subscribe / unsubscribe / list_channels, channel broadcasts, and the channel frames of
CHANNEL_RULES (with real JWTs and webhook servers): refused subscribes, publish and
publication, the publish webhook, channel history and the presence frame."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
from aiohttp import web

from tests.backends import Backend
from tests.conftest import LiveGateway, MakeGateway, WSClient, eventually


async def test_subscribe_and_unsubscribe(live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="s")
    await client.send("subscribe", {"channel": "news"}, message_id="a")
    subscribed = await client.recv()
    assert subscribed["type"] == "subscribed" and subscribed["reply_to"] == "a"
    assert subscribed["data"]["channel"] == "news"
    assert subscribed["data"]["channel_count"] == 1
    assert subscribed["data"]["subscribers"] == 1
    status, body = await live.api("POST", "/broadcast",
                                  {"message_type": "n", "channel": "news"})
    assert status == 200 and body["recipients"] == 1
    assert (await client.recv())["type"] == "n"

    await client.send("unsubscribe", {"channel": "news"}, message_id="b")
    unsubscribed = await client.recv()
    assert unsubscribed["type"] == "unsubscribed" and unsubscribed["data"]["was_subscribed"]
    assert unsubscribed["data"]["channel_count"] == 0
    _, body = await live.api("POST", "/broadcast", {"message_type": "n", "channel": "news"})
    assert body["recipients"] == 0
    await client.send("unsubscribe", {"channel": "news"})
    assert (await client.recv())["data"]["was_subscribed"] is False


async def test_legacy_action_form(live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    await client.send_raw('{"action": "subscribe", "channel": "alerts"}')
    assert (await client.recv())["data"]["channel"] == "alerts"


async def test_allow_list_refuses_other_channels(make_gateway: MakeGateway) -> None:
    live = await make_gateway(channels=("news", "sport"))
    client = await live.connect()
    await client.send("subscribe", {"channel": "secret"}, message_id="x")
    error = await client.recv()
    assert error["type"] == "error" and error["reply_to"] == "x"
    assert error["data"]["code"] == "invalid_channel"
    assert {"news", "sport"} <= set(error["data"]["available_channels"])
    await client.send("subscribe", {"channel": "news"})
    assert (await client.recv())["type"] == "subscribed"


async def test_list_channels(live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    await client.send("subscribe", {"channel": "news"})
    await client.recv()
    await client.send("list_channels")
    listing = await client.recv()
    assert listing["type"] == "channels_list"
    assert listing["data"]["channels"] == {"news": 1}
    assert listing["data"]["subscribed"] == ["news"]


async def test_ending_a_session_leaves_its_channels(live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="leaver")
    await client.send("subscribe", {"channel": "temp"})
    await client.recv()
    await live.api("DELETE", "/clients/leaver")
    _, body = await live.api("GET", "/channels")
    assert body["channels"] == []


# --- CHANNEL_RULES applied (issue 13) -----------------------------------------------------------

SECRET = "channels-test-secret-" + "0123456789abcdef" * 3
RULES = {
    "user:{user}": {"subscribe": "owner", "publish": "owner", "presence": True},
    "team:*": {"subscribe": "claim", "publish": "claim", "presence": True},
    "room:*": {"subscribe": "authenticated", "publish": "authenticated", "presence": True,
               "history": 3},
    "news": {"subscribe": "any", "history": 5},
    "*": {"subscribe": "any"},
}
#: With SUBSCRIBE_WEBHOOK_URL / PUBLISH_WEBHOOK_URL set: support:* asks them.
WEBHOOK_RULES = {"support:*": {"subscribe": "webhook", "publish": "webhook", "presence": True},
                 **RULES}


def make_jwt(sub: str, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600, **claims}, SECRET, "HS256")


async def rules_gateway(make_gateway: MakeGateway, **settings: Any) -> LiveGateway:
    webhooks = "subscribe_webhook_url" in settings
    values: dict[str, Any] = {"ws_auth": "jwt", "ws_jwt_secret": SECRET,
                              "channel_rules": json.dumps(WEBHOOK_RULES if webhooks else RULES)}
    values.update(settings)
    return await make_gateway(**values)


async def subscribe(client: WSClient, channel: str) -> dict[str, Any]:
    """Send ``subscribe`` and return the answer (``subscribed`` or ``error``)."""
    await client.send("subscribe", {"channel": channel}, message_id=f"sub-{channel}")
    while True:
        frame = await client.recv()
        if frame.get("reply_to") == f"sub-{channel}":
            return frame


async def nothing_before(live: LiveGateway, client: WSClient, marker: str) -> None:
    """Assert the next frame ``client`` gets is the ``marker`` message the API sends now:
    nothing else was delivered before it."""
    status, body = await live.api("POST", "/send_message", {"client_id": client.client_id,
                                                            "content": marker})
    assert status == 200, body
    frame = await client.recv()
    assert frame["type"] == "message" and frame["data"]["content"] == marker, frame


async def test_a_refused_subscribe_says_why_and_changes_nothing(make_gateway: MakeGateway
                                                                ) -> None:
    """owner / claim / authenticated / system channels, with real HS256 JWTs: each refusal
    is an error forbidden_channel {channel, reason}, the connection stays open and the
    session's channels are what they were."""
    live = await rules_gateway(make_gateway)
    alice = await live.connect(token=make_jwt("alice", channels=["team:red"]))
    for allowed in ("user:alice", "team:red", "room:1", "anything"):
        answer = await subscribe(alice, allowed)
        assert answer["type"] == "subscribed", answer
    for refused, why in (("user:bob", "belongs to another user"),
                         ("team:blue", "channels claim"),
                         ("tool_activity", "observers")):
        answer = await subscribe(alice, refused)
        assert answer["type"] == "error", answer
        assert answer["data"]["code"] == "forbidden_channel"
        assert answer["data"]["channel"] == refused and why in answer["data"]["reason"]
    info = await live.client_info(alice.client_id)
    assert info["channels"] == ["anything", "room:1", "team:red", "user:alice"]
    await alice.send("ping", message_id="alive")
    assert (await alice.recv())["reply_to"] == "alive"


async def test_authenticated_rules_need_ws_auth(make_gateway: MakeGateway) -> None:
    """A user declared with ?user_id= (WS_AUTH=none) is no authenticated user: room:* and
    user:{user} refuse it; `any` channels do not."""
    live = await make_gateway(channel_rules=json.dumps(RULES))
    client = await live.connect(user_id="alice")
    for channel in ("room:1", "user:alice"):
        answer = await subscribe(client, channel)
        assert answer["data"]["code"] == "forbidden_channel", answer
        assert "authenticated" in answer["data"]["reason"]
    assert (await subscribe(client, "news"))["type"] == "subscribed"


async def test_the_subscribe_webhook_decides_webhook_channels(make_gateway: MakeGateway,
                                                              backend: Backend) -> None:
    seen: list[dict[str, Any]] = []

    async def decide(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        if body["channel"] == "support:vip":
            return web.json_response({"allow": False, "reason": "not a VIP"})
        return web.json_response({"allow": True})

    backend.handler = decide
    live = await rules_gateway(make_gateway, subscribe_webhook_url=backend.url,
                               publish_webhook_url=backend.url)
    client = await live.connect(token=make_jwt("alice"))
    assert (await subscribe(client, "support:1"))["type"] == "subscribed"
    refused = await subscribe(client, "support:vip")
    assert refused["data"]["code"] == "forbidden_channel"
    assert refused["data"]["reason"] == "not a VIP"
    assert [(s["action"], s["channel"], s["user_id"]) for s in seen] == [
        ("subscribe", "support:1", "alice"), ("subscribe", "support:vip", "alice")]
    assert (await live.client_info(client.client_id))["channels"] == ["support:1"]


async def test_publish_where_the_rule_allows(make_gateway: MakeGateway) -> None:
    """A publication reaches every subscriber (the publisher too) with channel, data, from
    and its own seq; the publisher's answer says how many; a refused publish gets an error
    and nobody receives anything."""
    live = await rules_gateway(make_gateway)
    alice = await live.connect(token=make_jwt("alice"))
    bob = await live.connect(node=live.api_node, token=make_jwt("bob"))
    for client in (alice, bob):
        assert (await subscribe(client, "room:1"))["type"] == "subscribed"
    assert (await subscribe(bob, "news"))["type"] == "subscribed"
    await alice.send("publish", {"channel": "room:1", "data": {"text": "hi"}},
                     message_id="pub-1")
    frames = [await alice.recv(), await alice.recv()]
    publication = next(f for f in frames if f["type"] == "publication")
    answer = next(f for f in frames if f["type"] == "published")
    assert answer["reply_to"] == "pub-1"
    assert answer["data"]["recipients"] == 2 and answer["data"]["channel"] == "room:1"
    assert answer["data"]["message_id"] == publication["message_id"]
    got = await bob.recv_type("publication")
    for frame in (publication, got):
        assert frame["channel"] == "room:1" and frame["data"] == {"text": "hi"}
        assert frame["from"] == {"client_id": alice.client_id, "user_id": "alice"}
        assert isinstance(frame["seq"], int)

    for channel, data, why in (("news", {"text": "x"}, "nobody may publish"),
                               ("user:bob", {"x": 1}, "another user")):
        await alice.send("publish", {"channel": channel, "data": data}, message_id="no")
        error = await alice.recv()
        assert error["type"] == "error" and error["reply_to"] == "no", error
        assert error["data"]["code"] == "forbidden_channel" and why in error["data"]["reason"]
    await alice.send("publish", {"channel": "room:1"}, message_id="bad")
    assert (await alice.recv())["data"]["code"] == "invalid_field"
    await nothing_before(live, bob, "after the refusals")


async def test_without_channel_rules_nobody_publishes(make_gateway: MakeGateway) -> None:
    live = await make_gateway()
    client = await live.connect()
    assert (await subscribe(client, "news"))["type"] == "subscribed"
    await client.send("publish", {"channel": "news", "data": {}}, message_id="p")
    error = await client.recv()
    assert error["data"]["code"] == "forbidden_channel"
    assert "CHANNEL_RULES" in error["data"]["reason"]
    await nothing_before(live, client, "nothing published")


async def test_the_publish_webhook_rewrites_or_rejects(make_gateway: MakeGateway,
                                                       backend: Backend) -> None:
    async def review(request: web.Request) -> web.Response:
        body = await request.json()
        if body["data"].get("spam"):
            return web.json_response({"allow": False, "reason": "looks like spam"})
        return web.json_response({"allow": True, "data": {"text": body["data"]["text"].upper()}})

    backend.handler = review
    live = await rules_gateway(make_gateway, subscribe_webhook_url=backend.url,
                               publish_webhook_url=backend.url)
    alice = await live.connect(token=make_jwt("alice"))
    watcher = await live.connect(token=make_jwt("bob"))
    for client in (alice, watcher):
        await subscribe(client, "room:2")
    await alice.send("publish", {"channel": "room:2", "data": {"spam": True}}, message_id="s")
    error = await alice.recv()
    assert error["data"]["code"] == "forbidden_channel"
    assert error["data"]["reason"] == "looks like spam"
    await nothing_before(live, watcher, "no spam")
    await alice.send("publish", {"channel": "room:2", "data": {"text": "quiet"}})
    assert (await watcher.recv_type("publication"))["data"] == {"text": "QUIET"}


async def test_a_new_subscriber_fetches_the_channels_recent_frames(make_gateway: MakeGateway
                                                                   ) -> None:
    """room:* keeps 3 frames: publications and API broadcasts alike, kept once however many
    nodes; a subscriber gets the newest (``limit`` fewer), oldest first; a non-subscriber
    and a channel without history are refused."""
    live = await rules_gateway(make_gateway)
    alice = await live.connect(node=live.api_node, token=make_jwt("alice"))
    await subscribe(alice, "room:h")
    for i in range(4):
        await alice.send("publish", {"channel": "room:h", "data": {"i": i}})
        await alice.recv_type("published")
    status, _ = await live.api("POST", "/broadcast", {"message_type": "notice",
                                                      "channel": "room:h", "data": {"i": 4}})
    assert status == 200
    late = await live.connect(token=make_jwt("bob"))
    await late.send("channel_history", {"channel": "room:h"}, message_id="h0")
    refused = await late.recv()
    assert refused["data"]["code"] == "forbidden_channel", refused
    assert "subscribe" in refused["data"]["reason"]
    await subscribe(late, "room:h")
    await late.send("channel_history", {"channel": "room:h"}, message_id="h1")
    history = await late.recv_type("channel_history")
    assert history["reply_to"] == "h1" and history["data"]["count"] == 3
    frames = history["data"]["frames"]
    assert [f["data"]["i"] for f in frames] == [2, 3, 4]
    assert [f["type"] for f in frames] == ["publication", "publication", "notice"]
    assert all("seq" not in f and f["channel"] == "room:h" for f in frames)
    assert frames[0]["from"]["user_id"] == "alice"
    await late.send("channel_history", {"channel": "room:h", "limit": 1})
    assert [f["data"]["i"] for f in (await late.recv_type("channel_history"))["data"][
        "frames"]] == [4]
    await subscribe(late, "anything")
    await late.send("channel_history", {"channel": "anything"})
    assert "no history" in (await late.recv())["data"]["reason"]
    await late.send("channel_history", {"channel": "room:h", "limit": 0})
    assert (await late.recv())["data"]["code"] == "invalid_field"


async def test_the_presence_frame_where_the_rule_allows(make_gateway: MakeGateway) -> None:
    live = await rules_gateway(make_gateway)
    alice = await live.connect(token=make_jwt("alice"))
    bob = await live.connect(node=live.api_node, token=make_jwt("bob"))
    for client in (alice, bob):
        await subscribe(client, "room:p")
    await subscribe(alice, "news")
    answer = await eventually(lambda: _presence(alice, "room:p"),
                              lambda f: f["data"]["count"] == 2)
    data = answer["data"]
    assert data["users"] == ["alice", "bob"] and data["truncated"] is False
    assert sorted(s["client_id"] for s in data["sessions"]) == sorted(
        [alice.client_id, bob.client_id])
    assert all(s["connected"] for s in data["sessions"])
    refused = await _presence(alice, "news")
    assert refused["data"]["code"] == "forbidden_channel"
    assert "presence is off" in refused["data"]["reason"]


async def _presence(client: WSClient, channel: str) -> dict[str, Any]:
    await client.send("presence", {"channel": channel}, message_id=f"who-{channel}")
    while True:
        frame = await client.recv()
        if frame.get("reply_to") == f"who-{channel}":
            return frame
