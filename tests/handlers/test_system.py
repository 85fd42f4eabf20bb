"""ping / heartbeat and get_status."""

from __future__ import annotations

from tests.conftest import LiveGateway, MakeGateway


async def test_ping_gets_pong_not_kept_in_history(live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect(client_id="p")
    await client.send("ping", message_id="m", timestamp="2026-01-01T00:00:00.000Z")
    pong = await client.recv()
    assert pong["type"] == "pong" and pong["reply_to"] == "m"
    assert pong["data"]["echo_timestamp"] == "2026-01-01T00:00:00.000Z"
    assert "seq" not in pong  # a liveness answer is worthless after a reconnect
    assert (await live_gateway.client_info("p"))["last_seq"] == 0


async def test_pings_do_not_push_real_frames_out_of_history(make_gateway: MakeGateway) -> None:
    """A client pinging often keeps its whole resume window for real frames."""
    live = await make_gateway(history_limit=5)
    client = await live.connect(client_id="chatty")
    status, _ = await live.api("POST", "/send_message", {"client_id": "chatty", "content": "x"})
    assert status == 200
    await client.recv()
    for i in range(20):
        await client.send("heartbeat" if i % 2 else "ping")
        await client.recv()
    status, history = await live.api("GET", "/clients/chatty/messages")
    assert status == 200, history
    assert [(m["direction"], m["seq"]) for m in history["messages"]] == [("out", 1)]


async def test_heartbeat_gets_heartbeat_response(live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    await client.send("heartbeat", message_id="h")
    answer = await client.recv()
    assert answer["type"] == "heartbeat_response" and answer["reply_to"] == "h"


async def test_get_status_reports_the_servers_counters(live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect()
    await live.connect()
    await client.send("get_status", message_id="s")
    status = await client.recv()
    assert status["type"] == "status_response" and status["reply_to"] == "s"
    data = status["data"]
    assert data["status"] == "running"
    assert data["connected_clients"] == 2
    assert data["total_messages_received"] >= 1
    assert "api_token" not in str(data) and "test-token" not in str(data)
