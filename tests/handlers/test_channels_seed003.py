"""Seeds 003, 000 and 004: channels (legacy form, allow-list, cleanup, counters), client-type
broadcast, the seed WebSocket paths and the router's listing endpoints."""

from __future__ import annotations

import orjson

from tests.conftest import LiveGateway, MakeGateway, WSClient


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
    assert frame["data"]["channels"] == ["db_pool_stats", "error_firewall"]
    await client.send_raw(orjson.dumps({"action": "unsubscribe",
                                        "channel": "error_firewall"}).decode())
    frame = await client.recv()
    assert frame["type"] == "unsubscribed"
    assert frame["data"]["was_subscribed"] is True
    assert frame["data"]["channels"] == ["db_pool_stats"]


async def test_allow_list_refuses_other_channels_listing_the_available_ones(
        make_gateway: MakeGateway) -> None:
    live = await make_gateway(channels=("error_firewall", "system_alerts"))
    client = await live.connect()
    await client.send_raw(orjson.dumps({"action": "subscribe", "channel": "nope",
                                        "message_id": "bad"}).decode())
    frame = await client.recv()
    assert frame["type"] == "error"
    assert frame["reply_to"] == "bad"
    assert frame["data"]["code"] == "invalid_channel"
    assert "nope" in frame["data"]["message"]
    available = frame["data"]["available_channels"]
    assert {"error_firewall", "system_alerts"} <= set(available)
    assert "nope" not in available
    # The connection stays open and allowed channels work.
    await client.send("subscribe", {"channel": "system_alerts"})
    assert (await client.recv())["type"] == "subscribed"
    status, body = await live.api("GET", "/channels")
    assert status == 200
    assert set(body["available_channels"]) >= {"error_firewall", "system_alerts"}


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


async def test_ws_status_is_an_alias_of_status(live_gateway: LiveGateway) -> None:
    await live_gateway.connect()
    status, body = await live_gateway.api("GET", "/ws/status")
    assert status == 200
    assert body["total_clients"] == 1
    assert body["status"] == "running"


async def test_broadcast_by_client_type(live_gateway: LiveGateway) -> None:
    log_viewer = await live_gateway.connect("/ws/mcplog", client_type="MCPLog")
    await log_viewer.recv_type("connection_ack")
    app = await live_gateway.connect(client_type="MCPClient")
    status, body = await live_gateway.api("POST", "/broadcast", {
        "message_type": "tool_execution", "client_type": "MCPLog",
        "data": {"service_name": "agent_coder", "tool_name": "generate_code",
                 "status": "started"}})
    assert status == 200
    assert body["recipients"] == 1
    frame = await log_viewer.recv()
    assert frame["type"] == "tool_execution"
    assert frame["data"]["tool_name"] == "generate_code"
    await next_is(app, live_gateway)
    _, clients = await live_gateway.api("GET", "/clients?client_type=MCPLog")
    assert [c["client_id"] for c in clients["clients"]] == [log_viewer.client_id]


async def test_mcplog_path_sends_connection_ack_after_connection_established(
        live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect("/ws/mcplog")
    assert client.hello["type"] == "connection_established"
    ack = await client.recv()
    assert ack["type"] == "connection_ack"
    assert ack["message"]
    assert ack["timestamp"].endswith("Z")


async def test_ws_chat_path_is_accepted_and_answers_chat(live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect("/ws/chat")
    # Seed 004's flat form: fields beside `type`.
    await client.send_raw(orjson.dumps({"type": "text_message", "content": "Hello",
                                        "message_id": "t1"}).decode())
    processing = await client.recv()
    assert processing["type"] == "processing"
    answer = await client.recv()
    assert answer["type"] == "chat_response"
    assert answer["reply_to"] == "t1"
    assert answer["data"]["content"] == "Echo: Hello"
    assert answer["data"]["status"] == "completed"
    await client.send_raw(orjson.dumps({"type": "heartbeat", "timestamp": 1.5}).decode())
    beat = await client.recv()
    assert beat["type"] == "heartbeat_response"


async def test_handlers_are_listed_on_both_paths(live_gateway: LiveGateway) -> None:
    status, body = await live_gateway.api("GET", "/handlers")
    assert status == 200
    for frame_type in ("chat_message", "text_message", "tool_call", "tool_result",
                       "permission_response", "ping", "heartbeat", "subscribe",
                       "unsubscribe", "get_status"):
        assert frame_type in body["types"], frame_type
    chat = next(h for h in body["handlers"] if h["type"] == "chat_message")
    assert chat["aliases"] == ["text_message"]
    assert "stream_chunk" in chat["replies"]
    assert chat["fields"]["content"]["required"] is True
    status, alias = await live_gateway.api("GET", "/ws/handlers")
    assert status == 200
    assert alias == body
