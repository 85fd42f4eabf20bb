"""Every HTTP API endpoint, HTTP in and WebSocket out."""

from __future__ import annotations

import re
from datetime import datetime

from handlers import HANDLER_TABLE
from tests.conftest import LiveGateway, MakeGateway


async def test_status(live_gateway: LiveGateway) -> None:
    live = live_gateway
    await live.connect(client_id="a")
    status, body = await live.api("GET", "/status")
    assert status == 200
    assert body["status"] == "running"
    assert body["connected_clients"] == 1
    assert body["uptime"] >= 0
    assert datetime.fromisoformat(body["server_time"].replace("Z", "+00:00"))
    for counter in ("total_messages_sent", "total_messages_received", "total_connections_ever",
                    "total_broadcasts", "total_resumes"):
        assert isinstance(body[counter], int)
    assert "test-token" not in str(body)


async def test_list_clients_pages_and_filters(live_gateway: LiveGateway) -> None:
    live = live_gateway
    web = [await live.connect(client_id=f"web{i}", client_type="browser") for i in range(3)]
    await live.connect(client_id="bot", client_type="agent")
    await web[0].send("subscribe", {"channel": "news"})
    await web[0].recv_type("subscribed")
    await web[2].close()
    await live.offline("web2")

    status, body = await live.api("GET", "/clients")
    assert status == 200 and body["total"] == 4
    entry = next(c for c in body["clients"] if c["client_id"] == "web0")
    for key in ("client_id", "connected_at", "last_activity", "message_count", "client_type",
                "channels", "connected"):
        assert key in entry
    assert entry["channels"] == ["news"] and entry["client_type"] == "browser"
    assert entry["message_count"] == 2  # the subscribe frame and its answer
    assert "session_token" not in str(body) and web[0].session_token not in str(body)

    _, first = await live.api("GET", "/clients?limit=2")
    _, second = await live.api("GET", "/clients?limit=2&offset=2")
    ids = [c["client_id"] for c in first["clients"] + second["clients"]]
    assert sorted(ids) == ["bot", "web0", "web1", "web2"]
    assert first["total"] == second["total"] == 4

    _, agents = await live.api("GET", "/clients?client_type=agent")
    assert [c["client_id"] for c in agents["clients"]] == ["bot"]
    _, news = await live.api("GET", "/clients?channel=news")
    assert [c["client_id"] for c in news["clients"]] == ["web0"]
    _, offline = await live.api("GET", "/clients?connected=false")
    assert [c["client_id"] for c in offline["clients"]] == ["web2"]
    assert offline["clients"][0]["connected"] is False


async def test_get_one_client(live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect(client_id="solo", client_type="cli")
    await client.send("get_status")
    await client.recv()
    status, body = await live_gateway.api("GET", "/clients/solo")
    assert status == 200
    assert body["client_id"] == "solo" and body["client_type"] == "cli"
    # one frame in (get_status), one kept frame out (status_response)
    assert body["connected"] is True and body["message_count"] == 2


async def test_delete_client_closes_with_4001_and_ends_the_session(
        live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="bye")
    status, body = await live.api("DELETE", "/clients/bye")
    assert status == 200
    assert body == {"client_id": "bye", "disconnected": True, "ended": True}
    assert await client.recv_close() == 4001
    assert (await live.api("GET", "/clients/bye"))[0] == 404
    assert (await live.api("POST", "/send_message", {"client_id": "bye", "content": "x"}))[0] \
        == 404
    # Its token no longer resumes anything.
    again = await live.connect(client_id="bye", session_token=client.session_token,
                               expect_hello=False)
    assert (await again.recv())["data"]["code"] == "invalid_session"


async def test_delete_an_offline_session(live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="idle")
    await client.close()
    await live.offline("idle")
    status, body = await live.api("DELETE", "/clients/idle")
    assert status == 200 and body["disconnected"] is False and body["ended"] is True
    assert (await live.api("GET", "/clients/idle"))[0] == 404


async def test_send_message_with_type_and_data(live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="a")
    status, body = await live.api("POST", "/send_message", {
        "client_id": "a", "content": "hi", "message_type": "notification",
        "data": {"level": "info"}})
    assert status == 200
    assert body["status"] == "delivered" and body["client_id"] == "a"
    frame = await client.recv()
    assert frame["type"] == "notification"
    assert frame["data"] == {"level": "info", "content": "hi"}
    assert frame["message_id"] == body["message_id"] and frame["seq"] == body["seq"]
    assert frame["timestamp"].endswith("Z")
    # data alone (no content) is fine too, and structured content is kept as is.
    await live.api("POST", "/send_message", {"client_id": "a", "data": {"x": 1}})
    assert (await client.recv())["data"] == {"x": 1}
    await live.api("POST", "/send_message", {"client_id": "a", "content": {"k": [1, 2]}})
    assert (await client.recv())["data"] == {"content": {"k": [1, 2]}}


async def test_broadcast_to_everyone_a_channel_or_a_client_type(
        live_gateway: LiveGateway) -> None:
    live = live_gateway
    a = await live.connect(client_id="a", client_type="browser")
    b = await live.connect(client_id="b", client_type="agent")
    await a.send("subscribe", {"channel": "news"})
    await a.recv_type("subscribed")

    status, body = await live.api("POST", "/broadcast",
                                  {"message_type": "hello", "data": {"n": 1}})
    assert status == 200 and body["recipients"] == 2 and body["message_id"]
    for client in (a, b):
        frame = await client.recv()
        assert frame["type"] == "hello" and frame["data"] == {"n": 1}
        assert frame["message_id"] == body["message_id"]

    _, body = await live.api("POST", "/broadcast", {"message_type": "headline",
                                                    "channel": "news"})
    assert body["recipients"] == 1
    assert (await a.recv())["type"] == "headline"

    _, body = await live.api("POST", "/broadcast", {"message_type": "job",
                                                    "client_type": "agent"})
    assert body["recipients"] == 1
    assert (await b.recv())["type"] == "job"

    # Neither got the other's: the next frame each sees is this marker.
    await live.api("POST", "/broadcast", {"message_type": "marker"})
    assert (await a.recv())["type"] == "marker"
    assert (await b.recv())["type"] == "marker"

    _, body = await live.api("POST", "/broadcast", {"message_type": "x", "channel": "empty"})
    assert body["recipients"] == 0


async def test_each_recipient_gets_its_own_seq(live_gateway: LiveGateway) -> None:
    live = live_gateway
    a = await live.connect(client_id="a")
    b = await live.connect(client_id="b")
    await live.api("POST", "/send_message", {"client_id": "a", "content": "only a"})
    await live.api("POST", "/broadcast", {"message_type": "all"})
    assert [f["seq"] for f in (await a.recv(), await a.recv())] == [1, 2]
    assert (await b.recv())["seq"] == 1


async def test_channels(live_gateway: LiveGateway) -> None:
    live = live_gateway
    a = await live.connect()
    b = await live.connect()
    for client, channel in ((a, "news"), (b, "news"), (b, "sport")):
        await client.send("subscribe", {"channel": channel})
        await client.recv_type("subscribed")
    status, body = await live.api("GET", "/channels")
    assert status == 200
    assert body["channels"] == [{"channel": "news", "subscribers": 2},
                                {"channel": "sport", "subscribers": 1}]
    assert body["total_channels"] == 2


async def test_handlers_lists_every_registered_frame_type(live_gateway: LiveGateway) -> None:
    status, body = await live_gateway.api("GET", "/handlers")
    assert status == 200
    listed = {h["type"] for h in body["handlers"]}
    assert listed == {entry.type for entry in HANDLER_TABLE}
    assert {"text_message", "heartbeat"} <= set(body["types"])
    chat = next(h for h in body["handlers"] if h["type"] == "chat_message")
    assert chat["fields"]["content"] == {"type": "string", "required": True}
    assert "chat_response" in chat["replies"]


async def test_health_ready_and_metrics(make_gateway: MakeGateway) -> None:
    live = await make_gateway()
    assert await live.api("GET", "/health", auth=False) == (200, {"status": "ok"})
    status, body = await live.api("GET", "/ready")
    assert status == 200 and body["status"] == "ready"
    await live.connect()
    status, text = await live.api("GET", "/metrics")
    assert status == 200
    assert isinstance(text, str)
    assert re.search(r"^switchboard_connections(\{[^}]*\})? 1(\.0)?$", text, re.MULTILINE), text


async def test_tools_are_listed(live_gateway: LiveGateway) -> None:
    status, body = await live_gateway.api("GET", "/tools")
    assert status == 200
    names = {t["name"] for t in body["tools"]}
    assert {"echo", "calculate"} <= names
    assert all(t["risk_level"] in ("low", "medium", "high") for t in body["tools"])


async def test_health_and_readiness_are_public_for_probes(live_gateway: LiveGateway) -> None:
    for path in ("/health", "/ready"):
        status, body = await live_gateway.api("GET", path, auth=False)
        assert status == 200, (path, body)
    status, _ = await live_gateway.api("GET", "/status", auth=False)
    assert status == 401
