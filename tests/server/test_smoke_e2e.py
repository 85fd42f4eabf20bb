"""End to end through both ports: HTTP in, WebSocket out."""

from __future__ import annotations

from tests.conftest import LiveGateway


async def test_send_message_reaches_the_client(live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect(client_id="alice")
    assert client.client_id == "alice"
    status, body = await live_gateway.api("POST", "/send_message",
                                          {"client_id": "alice", "content": "hello"})
    assert status == 200, body
    assert body["status"] == "delivered"
    frame = await client.recv()
    assert frame["type"] == "message"
    assert frame["data"] == {"content": "hello"}
    assert frame["seq"] == body["seq"] == 1
    assert frame["message_id"] == body["message_id"]
