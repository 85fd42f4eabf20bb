"""The wire path (``server.ws.Connection.push``): frames written straight to the
transport must be exactly the bytes aiohttp's own writer would send, each session's ``seq``
gapless, and connections that take aiohttp's path (permessage-deflate) unaffected."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType
from aiohttp._websocket.writer import WebSocketWriter

from server.protocol import TEXT_FRAME_HEADERS, text_frame_header
from tests.conftest import LiveGateway, MakeGateway

#: Payload lengths around every RFC 6455 length-encoding boundary and the header cache's.
LENGTHS = [0, 1, 125, 126, 127, 4095, 4096, 65535, 65536, 70_000]


class _Capture:
    """A transport that keeps what is written (aiohttp's writer writes synchronously)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.data += chunk

    def is_closing(self) -> bool:
        return False


class _Protocol:
    _paused = False
    transport = None

    async def _drain_helper(self) -> None:
        return None


async def aiohttp_text_frame(payload: bytes) -> bytes:
    """What ``WebSocketResponse.send_frame(payload, TEXT)`` puts on the wire, uncompressed."""
    transport = _Capture()
    writer = WebSocketWriter(_Protocol(), transport)  # type: ignore[arg-type]
    await writer.send_frame(payload, WSMsgType.TEXT)
    return bytes(transport.data)


@pytest.mark.parametrize("length", LENGTHS)
async def test_the_prepared_header_is_aiohttps_header(length: int) -> None:
    payload = b"x" * length
    expected = await aiohttp_text_frame(payload)
    assert text_frame_header(length) + payload == expected
    assert TEXT_FRAME_HEADERS[length] + payload == expected
    assert TEXT_FRAME_HEADERS[length] == text_frame_header(length)  # cached or not


class RawClient:
    """A WebSocket client that keeps every server frame's bytes as they came off the socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, live: LiveGateway, client_id: str) -> RawClient:
        url = live.ws_server.make_url("/")
        reader, writer = await asyncio.open_connection(url.host, url.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET /?client_id={client_id} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
                     f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                     f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def frame(self) -> tuple[bytes, bytes]:
        """The next server frame: (its bytes on the wire, its payload)."""
        head = await asyncio.wait_for(self.reader.readexactly(2), 10)
        length = head[1] & 0x7F
        extra = b""
        if length == 126:
            extra = await self.reader.readexactly(2)
            length = int.from_bytes(extra, "big")
        elif length == 127:
            extra = await self.reader.readexactly(8)
            length = int.from_bytes(extra, "big")
        payload = await asyncio.wait_for(self.reader.readexactly(length), 10)
        return head + extra + payload, payload

    def close(self) -> None:
        self.writer.close()


async def test_broadcast_frames_are_aiohttps_bytes_and_each_session_counts_its_own_seq(
        live_gateway: LiveGateway) -> None:
    live = live_gateway
    first = await RawClient.connect(live, "raw-1")
    second = await RawClient.connect(live, "raw-2")
    for client in (first, second):
        _, hello = await client.frame()
        assert orjson.loads(hello)["type"] == "connection_established"
    # raw-1 is one frame ahead, so the two sessions stamp different seqs on the same broadcast.
    status, _ = await live.api("POST", "/send_message", {"client_id": "raw-1", "content": "hi"})
    assert status == 200
    sizes = [0, 100, 200, 5000, 70_000]  # 7-bit, 16-bit and 64-bit lengths once wrapped
    for n, size in enumerate(sizes):
        status, body = await live.api("POST", "/broadcast", {
            "message_type": "tick", "data": {"n": n, "pad": "é" * (size // 2)}})
        assert status == 200 and body["recipients"] == 2, body
    seen: dict[str, list[int]] = {}
    for client, name in ((first, "raw-1"), (second, "raw-2")):
        frames = [await client.frame() for _ in range(len(sizes) + (name == "raw-1"))]
        for wire, payload in frames:
            assert wire == await aiohttp_text_frame(payload)
        decoded = [orjson.loads(payload) for _, payload in frames]
        seen[name] = [frame["seq"] for frame in decoded]
        ticks = [frame for frame in decoded if frame["type"] == "tick"]
        assert [frame["data"]["n"] for frame in ticks] == list(range(len(sizes)))
        # Each frame is the one the session's history keeps (resume replays those bytes).
        status, history = await live.api("GET", f"/clients/{name}/messages?limit=100")
        assert status == 200, history
        kept = {m["seq"]: m["frame"] for m in history["messages"] if m["direction"] == "out"}
        assert decoded == [kept[frame["seq"]] for frame in decoded]
    assert seen["raw-1"] == list(range(1, len(sizes) + 2))
    assert seen["raw-2"] == list(range(1, len(sizes) + 1))
    first.close()
    second.close()


async def test_deflate_and_plain_connections_share_broadcasts(make_gateway: MakeGateway
                                                             ) -> None:
    live = await make_gateway(ws_compression=True)
    plain = await live.connect(client_id="plain")
    deflate = await live.http.ws_connect(live.ws_server.make_url("/"),
                                         params={"client_id": "deflate"}, compress=15)
    assert deflate.compress == 15
    assert orjson.loads((await deflate.receive(timeout=5)).data)["type"] == (
        "connection_established")
    # The plain connection takes the wire path; the compressing one goes through aiohttp.
    by_id = {conn.session.client_id: conn for conn in live.connections}
    assert by_id["plain"].direct is not None and by_id["deflate"].direct is None
    for n in range(20):
        status, body = await live.api("POST", "/broadcast", {
            "message_type": "tick", "data": {"n": n, "pad": "y" * (n * 400)}})
        assert status == 200 and body["recipients"] == 2, body
    got = []
    for _ in range(20):
        msg = await deflate.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.TEXT
        got.append(orjson.loads(msg.data))
    assert [f["data"]["n"] for f in got] == list(range(20))
    assert [f["seq"] for f in got] == list(range(1, 21))
    plain_frames = [await plain.recv_type("tick") for _ in range(20)]
    assert [f["data"]["n"] for f in plain_frames] == list(range(20))
    assert [f["seq"] for f in plain_frames] == list(range(1, 21))
    await deflate.close()
