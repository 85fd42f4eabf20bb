"""``POST /stream/{client_id}``: a chunked upload relayed live to a client as stream frames."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from tests.conftest import LiveGateway, MakeGateway, WSClient


async def stream_frames(client: WSClient) -> list[dict[str, Any]]:
    """Frames up to and including stream_end (or an error)."""
    frames = []
    while True:
        frame = await client.recv()
        frames.append(frame)
        if frame["type"] in ("stream_end", "error"):
            return frames


async def test_text_upload_reaches_the_client_before_the_upload_finishes(
        live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect(client_id="frontend")
    first_chunk_seen = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"Hello"
        # The upload goes on only once the client has the first chunk.
        await first_chunk_seen.wait()
        yield b", world"

    upload = asyncio.create_task(live_gateway.api(
        "POST", "/stream/frontend", data=body(), headers={"Content-Type": "text/plain"}))
    start = await client.recv()
    assert start["type"] == "stream_start"
    stream_id = start["data"]["stream_id"]
    assert start["data"]["source"] == "api"
    chunk = await client.recv()
    assert chunk["type"] == "stream_chunk"
    assert chunk["data"] == {"stream_id": stream_id, "content": "Hello", "index": 0}
    assert not upload.done()
    first_chunk_seen.set()
    chunk = await client.recv()
    assert chunk["data"] == {"stream_id": stream_id, "content": ", world", "index": 1}
    end = await client.recv()
    assert end["type"] == "stream_end"
    assert end["data"]["full_content"] == "Hello, world"
    assert end["data"]["chunks"] == 2
    assert end["data"]["status"] == "completed"
    status, answer = await upload
    assert status == 200
    assert answer["stream_id"] == stream_id
    assert answer["chunks"] == 2
    assert answer["status"] == "delivered"
    assert answer["delivered"] == 4
    assert answer["queued"] == 0
    assert answer["bytes"] == len(b"Hello, world")
    # Every frame is kept in history with consecutive seqs (resumable).
    seqs = [start["seq"], *(f["seq"] for f in client.frames[-3:])]
    assert seqs == list(range(seqs[0], seqs[0] + 4))


async def test_ndjson_upload_with_lines_split_across_chunks(live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect(client_id="fe")

    async def body() -> AsyncIterator[bytes]:
        yield b'{"content": "Hel'
        yield b'lo"}\n\n{"delta": " there"}\n{"model": "m-1"}\n'
        yield b'{"content": "!"}'  # the last line needs no newline

    status, answer = await live_gateway.api(
        "POST", "/stream/fe?stream_id=s-42&reply_to=chat-7", data=body(),
        headers={"Content-Type": "application/x-ndjson"})
    assert status == 200, answer
    assert answer["stream_id"] == "s-42"
    assert answer["chunks"] == 3
    frames = await stream_frames(client)
    assert [f["type"] for f in frames] == ["stream_start", "stream_chunk", "stream_chunk",
                                           "stream_chunk", "stream_end"]
    assert all(f["reply_to"] == "chat-7" for f in frames)
    assert all(f["data"]["stream_id"] == "s-42" for f in frames)
    assert [f["data"]["content"] for f in frames[1:4]] == ["Hello", " there", "!"]
    assert frames[-1]["data"]["full_content"] == "Hello there!"
    assert frames[-1]["data"]["model"] == "m-1"


async def test_utf8_split_between_pieces_stays_whole(live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect(client_id="fe")
    encoded = "héllo wörld".encode()

    async def body() -> AsyncIterator[bytes]:
        yield encoded[:2]  # ends in the middle of "é"
        yield encoded[2:]

    status, _ = await live_gateway.api("POST", "/stream/fe", data=body(),
                                       headers={"Content-Type": "text/plain; charset=utf-8"})
    assert status == 200
    frames = await stream_frames(client)
    assert frames[-1]["data"]["full_content"] == "héllo wörld"
    assert "\ufffd" not in "".join(f["data"].get("content", "") for f in frames)


async def test_offline_client_gets_the_stream_queued_and_replayed_on_resume(
        live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect(client_id="away")
    token = client.session_token
    await client.close()
    await live_gateway.offline("away")
    status, answer = await live_gateway.api("POST", "/stream/away", data=b"queued text",
                                            headers={"Content-Type": "text/plain"})
    assert status == 202
    assert answer["status"] == "queued"
    assert answer["delivered"] == 0
    assert answer["queued"] == 3
    back = await live_gateway.connect(client_id="away", session_token=token, last_seq=0)
    assert back.hello["data"]["resumed"] is True
    frames = await stream_frames(back)
    assert [f["type"] for f in frames] == ["stream_start", "stream_chunk", "stream_end"]
    assert frames[-1]["data"]["full_content"] == "queued text"


async def test_unknown_client_is_404(live_gateway: LiveGateway) -> None:
    status, body = await live_gateway.api("POST", "/stream/nobody", data=b"x",
                                          headers={"Content-Type": "text/plain"})
    assert status == 404
    assert body["error"]["code"] == "client_not_found"


async def test_the_endpoint_needs_the_api_token(live_gateway: LiveGateway) -> None:
    await live_gateway.connect(client_id="fe")
    status, body = await live_gateway.api("POST", "/stream/fe", data=b"x", auth=False,
                                          headers={"Content-Type": "text/plain"})
    assert status == 401
    assert "error" in body


async def test_other_content_types_are_refused(live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect(client_id="fe")
    status, body = await live_gateway.api("POST", "/stream/fe", json={"content": "x"})
    assert status == 415
    assert body["error"]["code"] == "unsupported_media_type"
    # Nothing was started for the client.
    await live_gateway.api("POST", "/send_message", {"client_id": "fe", "content": "next"})
    assert (await client.recv())["type"] == "message"


async def test_bad_ndjson_line_aborts_the_stream(live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect(client_id="fe")
    status, body = await live_gateway.api(
        "POST", "/stream/fe", data=b'{"content": "fine"}\nnot json\n',
        headers={"Content-Type": "application/x-ndjson"})
    assert status == 400
    assert body["error"]["code"] == "invalid_json"
    assert body["error"]["line"] == 2
    frames = await stream_frames(client)
    assert [f["type"] for f in frames] == ["stream_start", "stream_chunk", "error"]
    error = frames[-1]["data"]
    assert error["code"] == "stream_aborted"
    assert error["stream_id"] == body["error"]["stream_id"] == frames[0]["data"]["stream_id"]
    assert error["partial_content"] == "fine"


async def test_non_string_content_is_named(live_gateway: LiveGateway) -> None:
    await live_gateway.connect(client_id="fe")
    status, body = await live_gateway.api("POST", "/stream/fe", data=b'{"content": 5}\n',
                                          headers={"Content-Type": "application/x-ndjson"})
    assert status == 422
    assert body["error"]["field"] == "content"


async def test_content_larger_than_max_message_size_is_413(make_gateway: MakeGateway) -> None:
    live = await make_gateway(max_message_size=1024)
    client = await live.connect(client_id="fe")
    status, body = await live.api("POST", "/stream/fe", data=b"x" * 2048,
                                  headers={"Content-Type": "text/plain"})
    assert status == 413
    assert body["error"]["code"] == "payload_too_large"
    frames = await stream_frames(client)
    assert frames[-1]["type"] == "error"
    assert frames[-1]["data"]["code"] == "stream_aborted"


async def test_an_interrupted_upload_ends_the_stream_with_an_error(
        live_gateway: LiveGateway) -> None:
    client = await live_gateway.connect(client_id="fe")
    first_chunk_seen = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"partial"
        await first_chunk_seen.wait()
        raise RuntimeError("uploader crashed")

    async def upload() -> None:
        async with aiohttp.ClientSession() as http:
            try:
                await http.post(f"{live_gateway.api_url}/stream/fe", data=body(),
                                headers={**live_gateway.auth(), "Content-Type": "text/plain"})
            except (aiohttp.ClientError, RuntimeError):
                pass  # the upload is meant to break

    task = asyncio.create_task(upload())
    assert (await client.recv())["type"] == "stream_start"
    assert (await client.recv())["data"]["content"] == "partial"
    first_chunk_seen.set()
    error = await client.recv()
    assert error["type"] == "error"
    assert error["data"]["code"] == "stream_aborted"
    assert error["data"]["partial_content"] == "partial"
    await task


async def test_an_upload_that_goes_silent_is_cut_off(make_gateway: MakeGateway) -> None:
    live = await make_gateway(request_body_timeout=0.2)
    client = await live.connect(client_id="fe")
    never = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        await never.wait()
        yield b"never sent"

    upload = asyncio.create_task(live.api("POST", "/stream/fe", data=body(),
                                          headers={"Content-Type": "text/plain"}))
    frames = await stream_frames(client)
    assert [f["type"] for f in frames] == ["stream_start", "stream_chunk", "error"]
    assert frames[-1]["data"]["code"] == "stream_aborted"
    assert "0.2s" in frames[-1]["data"]["message"]
    status, answer = await upload
    assert status == 408
    assert answer["error"]["code"] == "request_timeout"
    never.set()
