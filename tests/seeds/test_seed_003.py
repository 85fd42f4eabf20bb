"""Seed 003: the channel subscriber (``Channels`` with six core channels).

Its TypeScript client connects to ``ws://host/ws?client_id=my_client``, subscribes with the
legacy ``{action: 'subscribe', channel}`` form and routes every frame by ``data.channel`` to
``showErrorNotification(data.data)`` / ``updatePoolChart(data.data)``. The server side is
``notify_channel(channel, type, data)`` / ``manager.broadcast(channel, {type, data})`` — here
``POST /broadcast`` with ``channel`` — and an unknown channel is refused with
``{"type": "error", "message": "Invalid channel: …", "available_channels": [...]}``.
The seed's own setting: its six channels, ``CHANNELS=error_firewall,vector_search,...``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from tests.conftest import RECV_TIMEOUT, LiveGateway, WSClient
from tests.seeds.conftest import SeedFactory, on_message

CHANNELS = ("error_firewall", "vector_search", "db_pool_stats", "ai_analysis",
            "memory_updates", "system_alerts")


class Dashboard:
    """The seed's ``ws.onmessage``: route by ``data.channel``."""

    def __init__(self) -> None:
        self.error_notifications: list[Any] = []
        self.pool_chart: list[Any] = []

    def onmessage(self, data: dict[str, Any]) -> None:
        if data.get("channel") == "error_firewall":
            self.error_notifications.append(data["data"])
        elif data.get("channel") == "db_pool_stats":
            self.pool_chart.append(data["data"])


async def test_the_typescript_client_gets_its_channels_notifications(
        seed_gateway: SeedFactory) -> None:
    seed = await seed_gateway(channels=CHANNELS)
    ws = await seed.client.http.ws_connect(seed.url("/ws?client_id=my_client"))
    dashboard = Dashboard()
    for channel in ("error_firewall", "db_pool_stats"):  # ws.onopen
        await ws.send_str(orjson.dumps({"action": "subscribe", "channel": channel}).decode())
    for _ in range(2):
        dashboard.onmessage(await on_message(ws, "subscribed"))
    await seed.visible("my_client")
    blocked = {"error_id": "ios_build_no_device_iphone15_17.0",
               "solution": "使用可用设备: iPhone 15 Pro (iOS 17.2)",
               "timestamp": "2025-11-20T14:30:00"}
    status, body = await seed.call("POST", "/broadcast", {
        "message_type": "error_blocked", "channel": "error_firewall", "data": blocked})
    assert status == 200 and body["recipients"] == 1, body
    resized = {"old_size": 20, "new_size": 30, "reason": "高负载扩容"}
    status, body = await seed.call("POST", "/broadcast", {
        "message_type": "pool_resized", "channel": "db_pool_stats", "data": resized})
    assert body["recipients"] == 1, body  # count = await manager.broadcast(...)
    frames = [await on_message(ws, "error_blocked"), await on_message(ws, "pool_resized")]
    for frame in frames:
        assert frame["timestamp"]
        dashboard.onmessage(frame)
    # The subscription confirmations were not mistaken for channel notifications.
    assert dashboard.error_notifications == [blocked]
    assert dashboard.pool_chart == [resized]
    await ws.close()


async def test_an_invalid_channel_is_refused_the_seeds_way(seed_gateway: SeedFactory) -> None:
    seed = await seed_gateway(channels=CHANNELS)
    async with seed.client.http.ws_connect(seed.url("/ws?client_id=my_client")) as ws:
        await ws.send_json({"action": "subscribe", "channel": "not_a_channel",
                            "message_id": "bad"})
        data = await on_message(ws, "error")
        assert data["message"] == "Invalid channel: not_a_channel"
        assert sorted(data["available_channels"]) == sorted(CHANNELS)  # not tool_activity
        # ... and the envelope as for every error: code and all in data, reply_to
        assert data["data"]["code"] == "invalid_channel"
        assert data["data"]["available_channels"] == data["available_channels"]
        assert data["reply_to"] == "bad"
        # the connection carries on: a real channel works
        await ws.send_json({"action": "subscribe", "channel": "system_alerts"})
        assert (await on_message(ws, "subscribed"))["data"]["channel"] == "system_alerts"
    status, body = await seed.call("GET", "/channels")
    assert status == 200 and sorted(body["available_channels"]) == sorted(CHANNELS)


async def test_the_python_client_receives_what_it_subscribed_to(
        seed_gateway: SeedFactory) -> None:
    seed = await seed_gateway(channels=CHANNELS)
    async with seed.client.http.ws_connect(seed.url("/ws?client_id=my_client")) as ws:
        await ws.send_json({"action": "subscribe", "channel": "system_alerts"})
        await on_message(ws, "subscribed")
        await seed.visible("my_client")
        status, body = await seed.call("POST", "/broadcast", {
            "message_type": "alert", "channel": "system_alerts", "data": {"level": "high"}})
        assert status == 200 and body["recipients"] == 1, body
        async with asyncio.timeout(RECV_TIMEOUT):
            async for msg in ws:  # the seed's loop
                if msg.type == aiohttp.WSMsgType.TEXT:
                    data = msg.json()
                    if data["type"] == "alert":
                        break
        assert data["channel"] == "system_alerts"
        assert data["data"] == {"level": "high"}


# --- channels, counters and cleanup (moved from tests/handlers/test_channels_seed003.py) -------


async def next_is(client: WSClient, live: LiveGateway, content: str = "marker") -> None:
    """Assert nothing else is queued for ``client``: the next frame it gets is a marker
    message sent now."""
    await live.api("POST", "/send_message", {"client_id": client.client_id,
                                             "content": content})
    frame = await client.recv()
    assert frame["type"] == "message" and frame["data"] == {"content": content}, frame


async def test_subscribe_and_unsubscribe_in_envelope_and_legacy_forms(
        live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    await client.send("subscribe", {"channel": "error_firewall"}, message_id="s1")
    frame = await client.recv()
    assert frame["type"] == "subscribed"
    assert frame["reply_to"] == "s1"
    assert frame["data"]["channel"] == "error_firewall"
    assert frame["data"]["subscribers"] == 1
    await client.send_raw(orjson.dumps({"action": "subscribe",
                                        "channel": "db_pool_stats"}).decode())
    frame = await client.recv()
    assert frame["type"] == "subscribed"
    assert frame["data"]["channel"] == "db_pool_stats"
    assert frame["data"]["channel_count"] == 2
    await client.send_raw(orjson.dumps({"action": "unsubscribe",
                                        "channel": "error_firewall"}).decode())
    frame = await client.recv()
    assert frame["type"] == "unsubscribed"
    assert frame["data"]["was_subscribed"] is True
    assert frame["data"]["channel"] == "error_firewall"
    assert frame["data"]["channel_count"] == 1


async def test_empty_channels_are_cleaned_up(live_gateway: LiveGateway) -> None:
    a = await live_gateway.connect()
    b = await live_gateway.connect()
    for client in (a, b):
        await client.send("subscribe", {"channel": "memory_updates"})
        await client.recv()
    _, body = await live_gateway.api("GET", "/channels")
    assert {"channel": "memory_updates", "subscribers": 2} in body["channels"]
    await a.send("unsubscribe", {"channel": "memory_updates"})
    await a.recv()
    _, body = await live_gateway.api("GET", "/channels")
    assert {"channel": "memory_updates", "subscribers": 1} in body["channels"]
    # Ending b's session (not just dropping its socket: that keeps it for resume) leaves the
    # channel empty, and an empty channel is gone.
    status, _ = await live_gateway.api("DELETE", f"/clients/{b.client_id}")
    assert status == 200
    _, body = await live_gateway.api("GET", "/channels")
    assert body["channels"] == []
    assert body["total_channels"] == 0


async def test_broadcast_to_a_channel_reaches_subscribers_and_counts_them(
        live_gateway: LiveGateway) -> None:
    subscribers = [await live_gateway.connect() for _ in range(2)]
    outsider = await live_gateway.connect()
    for client in subscribers:
        await client.send("subscribe", {"channel": "error_firewall"})
        await client.recv()
    data = {"error_id": "ios_build_no_device", "solution": "use iPhone 15 Pro"}
    status, body = await live_gateway.api("POST", "/broadcast", {
        "message_type": "error_blocked", "channel": "error_firewall", "data": data})
    assert status == 200
    assert body["recipients"] == 2
    for client in subscribers:
        frame = await client.recv()
        assert frame["type"] == "error_blocked"
        assert frame["channel"] == "error_firewall"
        assert frame["data"] == data
        assert frame["message_id"] == body["message_id"]
        assert frame["timestamp"]
    await next_is(outsider, live_gateway)


async def test_broadcast_to_an_empty_channel_answers_zero(live_gateway: LiveGateway) -> None:
    status, body = await live_gateway.api("POST", "/broadcast", {
        "message_type": "pool_resized", "channel": "db_pool_stats", "data": {"new_size": 30}})
    assert status == 200
    assert body["recipients"] == 0


async def test_seed_003_counters_in_status_and_get_status(live_gateway: LiveGateway) -> None:
    a = await live_gateway.connect()
    b = await live_gateway.connect()
    await a.send("subscribe", {"channel": "error_firewall"})
    await a.recv()
    await a.send("subscribe", {"channel": "system_alerts"})
    await a.recv()
    await b.send("subscribe", {"channel": "system_alerts"})
    await b.recv()
    status, body = await live_gateway.api("GET", "/status")
    assert status == 200
    assert body["status"] == "running"
    assert body["total_clients"] == 2
    assert body["connected_clients"] == 2
    assert body["total_channels"] == 2
    assert body["channel_stats"] == {"error_firewall": 1, "system_alerts": 2}
    assert sorted(body["active_channels"]) == ["error_firewall", "system_alerts"]
    assert body["total_connections_ever"] == 2
    assert body["total_messages_sent"] >= 3  # the three `subscribed` answers
    assert "uptime" in body and "server_time" in body
    sent_before = body["total_messages_sent"]
    await b.send("get_status")
    frame = await b.recv()
    assert frame["type"] == "status_response"
    counters = frame["data"]
    for key in ("total_clients", "total_channels", "total_messages_sent",
                "total_connections_ever", "channel_stats", "active_channels"):
        assert key in counters, key
    assert counters["channel_stats"] == body["channel_stats"]
    assert counters["total_messages_sent"] >= sent_before
    await b.close()
    await a.close()
    c = await live_gateway.connect()
    _, body = await live_gateway.api("GET", "/status")
    assert body["total_connections_ever"] == 3
    assert c.client_id
