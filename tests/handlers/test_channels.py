"""subscribe / unsubscribe / list_channels, and channel broadcasts."""

from __future__ import annotations

from tests.conftest import LiveGateway, MakeGateway


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
