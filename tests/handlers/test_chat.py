"""chat_message (alias text_message): processing, then an echoing chat_response."""

from __future__ import annotations

from tests.conftest import LiveGateway


async def test_chat_message_gets_processing_then_chat_response(
        live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    await client.send("chat_message", {"content": "hello", "role": "user"}, message_id="c1")
    processing = await client.recv()
    response = await client.recv()
    assert processing["type"] == "processing" and processing["reply_to"] == "c1"
    assert response["type"] == "chat_response" and response["reply_to"] == "c1"
    assert response["data"]["content"] == "Echo: hello"
    assert response["data"]["status"] == "completed"
    assert response["data"]["model"]
    assert response["seq"] == processing["seq"] + 1


async def test_text_message_alias_in_envelope_and_flat_form(live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    await client.send("text_message", {"content": "one"}, message_id="t1")
    assert (await client.recv_type("chat_response"))["data"]["content"] == "Echo: one"
    await client.send_raw('{"type": "text_message", "content": "two", "message_id": "t2"}')
    response = await client.recv_type("chat_response")
    assert response["data"]["content"] == "Echo: two" and response["reply_to"] == "t2"


async def test_unicode_and_large_content_round_trip(live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    content = "héllo ✓ 你好 " * 2000
    await client.send("chat_message", {"content": content})
    assert (await client.recv_type("chat_response"))["data"]["content"] == f"Echo: {content}"


async def test_chat_is_counted_and_kept_in_history(live_gateway: LiveGateway) -> None:
    live = live_gateway
    client = await live.connect(client_id="talker")
    await client.send("chat_message", {"content": "remember me"})
    await client.recv_type("chat_response")
    _, described = await live.api("GET", "/clients/talker")
    assert described["messages_in"] == 1 and described["messages_out"] == 2
    _, history = await live.api("GET", "/clients/talker/messages")
    assert history["messages"][0]["frame"]["data"] == {"content": "remember me"}
