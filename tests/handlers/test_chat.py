"""chat_message (alias text_message): processing, then an echoing chat_response."""

from __future__ import annotations

from handlers.chat import echo_chunks
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


async def test_stream_true_streams_the_echo_in_a_few_chunks(live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect()
    await client.send("chat_message", {"content": "one two three four five", "stream": True,
                                       "conversation_id": "conv-1"}, message_id="s1")
    frames = [await client.recv() for _ in range(2)]
    while frames[-1]["type"] != "stream_end":
        frames.append(await client.recv())
    kinds = [f["type"] for f in frames]
    assert kinds[:2] == ["processing", "stream_start"]
    chunks = [f["data"] for f in frames if f["type"] == "stream_chunk"]
    assert 2 <= len(chunks) <= 4
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    end = frames[-1]["data"]
    assert end["full_content"] == "".join(c["content"] for c in chunks)
    assert end["full_content"] == "Echo: one two three four five"
    assert end["chunks"] == len(chunks) and end["model"] == "echo"
    assert end["conversation_id"] == "conv-1"
    stream_ids = {f["data"]["stream_id"] for f in frames[1:]}
    assert len(stream_ids) == 1
    assert all(f["reply_to"] == "s1" for f in frames)
    first = frames[0]["seq"]
    assert [f["seq"] for f in frames] == list(range(first, first + len(frames)))


def test_echo_chunks_join_back_to_the_answer() -> None:
    for text in ("Echo: x", "Echo: 你好世界", "Echo: a b c d e f g h i", " Echo:  spaced  out "):
        chunks = echo_chunks(text)
        assert "".join(chunks) == text
        assert 1 <= len(chunks) <= 4
