"""The wire path (``server.ws.Connection.push`` and ``push_parts``): frames written straight to
the transport must be exactly the bytes aiohttp's own writer would send, each session's ``seq``
gapless, and connections that take aiohttp's path (permessage-deflate) unaffected. A large
broadcast reaches every connection as its own small head and one shared tail (no copy of the
frame per recipient), on the direct path, through a slow consumer's queue, and to flat-profile
and compressing connections."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections import deque
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType
from aiohttp._websocket.writer import WebSocketWriter

from server import protocol
from server.protocol import TEXT_FRAME_HEADERS, text_frame_header
from server.sessions import SHARED_TAIL_MIN_BYTES, SessionRegistry
from server.ws import ONE_BUFFER_BELOW, Connection
from tests.conftest import LiveGateway, MakeGateway, wait_for

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
    async def connect(cls, live: LiveGateway, client_id: str, rcvbuf: int = 0) -> RawClient:
        """Connect and upgrade; ``rcvbuf`` > 0 shrinks the socket's receive buffer (a slow
        consumer whose kernel buffers fill after a few frames)."""
        url = live.ws_server.make_url("/")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (url.host, url.port))
        reader, writer = await asyncio.open_connection(sock=sock)
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
    # Small frames and large ones (a shared tail: queued as two parts, joined by the writer).
    pads = [n * 400 for n in range(20)] + [70_000, 200_000]
    for n, pad in enumerate(pads):
        status, body = await live.api("POST", "/broadcast", {
            "message_type": "tick", "data": {"n": n, "pad": "y" * pad}})
        assert status == 200 and body["recipients"] == 2, body
    got = []
    for _ in pads:
        msg = await deflate.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.TEXT
        got.append(orjson.loads(msg.data))
    assert [f["data"]["n"] for f in got] == list(range(len(pads)))
    assert [f["seq"] for f in got] == list(range(1, len(pads) + 1))
    assert [len(f["data"]["pad"]) for f in got] == pads
    plain_frames = [await plain.recv_type("tick") for _ in pads]
    assert [f["data"]["n"] for f in plain_frames] == list(range(len(pads)))
    assert [f["seq"] for f in plain_frames] == list(range(1, len(pads) + 1))
    assert [f["data"] for f in plain_frames] == [f["data"] for f in got]
    await deflate.close()


# --- large broadcasts: one shared tail (SessionRegistry.fan_out -> Outbox.push_parts) ----------


def _encoded(size: int) -> bytes:
    """A broadcast frame as the gateway encodes it (no seq), ``size`` bytes long."""
    frame = protocol.encode(protocol.server_frame("tick", {"pad": ""}))
    pad = size - len(frame)
    assert pad >= 0
    return protocol.encode(protocol.server_frame("tick", {"pad": "z" * pad}))


class _RecordingTransport:
    """A transport that keeps the buffers of every ``write`` and ``writelines``, as given."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, ...]] = []

    def write(self, data: bytes) -> None:
        self.calls.append((data,))

    def writelines(self, chunks: Any) -> None:
        self.calls.append(tuple(chunks))

    def is_closing(self) -> bool:
        return False


@pytest.mark.parametrize("size", [SHARED_TAIL_MIN_BYTES - 1, SHARED_TAIL_MIN_BYTES, 5000,
                                  70_000])
async def test_a_large_broadcast_hands_every_connection_the_same_tail(size: int) -> None:
    registry: Any = SessionRegistry(history_limit=10, session_ttl=60.0)
    stub_ws = SimpleNamespace(_writer=SimpleNamespace(compress=0))
    transports = []
    sessions = []
    for n in range(3):
        session = registry.create(f"c{n}", "test")
        transport = _RecordingTransport()
        request = SimpleNamespace(protocol=SimpleNamespace(_paused=False, transport=transport),
                                  transport=transport)
        conn = Connection(stub_ws, request, session, 100, 1 << 24)  # type: ignore[arg-type]
        conn.start()
        registry.attach(session, conn)
        transports.append(transport)
        sessions.append(session)
    registry.fan_out([sessions[0]], _encoded(200))  # c0 one frame ahead: seqs differ
    encoded = _encoded(size)
    assert len(encoded) == size
    assert registry.fan_out(sessions, encoded) == (3, 0)
    last = [transport.calls[-1] for transport in transports]
    for session, chunks in zip(sessions, last, strict=True):
        # Byte-identical to what aiohttp writes for the frame with this session's seq.
        assert b"".join(chunks) == await aiohttp_text_frame(
            protocol.with_seq(encoded, session.seq))
        assert session.history[-1][2] is encoded  # history keeps the one shared object
    assert [s.seq for s in sessions] == [2, 1, 1]
    tails = [chunks[-1] for chunks in last]
    if size >= SHARED_TAIL_MIN_BYTES:
        # Two buffers: header + the session's own head, then the broadcast's one tail.
        assert all(tail is tails[0] for tail in tails) and tails[0] == encoded[1:]
        assert [chunks[0][-len(b'{"seq":1,'):] for chunks in last] == [
            b'{"seq":2,', b'{"seq":1,', b'{"seq":1,']
    else:
        # Smaller frames keep the one-piece copy with the seq spliced in (joined to their
        # header below ONE_BUFFER_BELOW).
        assert [len(chunks) for chunks in last] == [1 if size + 9 < ONE_BUFFER_BELOW else 2] * 3
        assert tails[1] == tails[2] and tails[1] is not tails[2]


def test_shared_tails_start_where_frames_go_as_two_buffers() -> None:
    # Below ONE_BUFFER_BELOW the endpoint joins a frame to its header (the cheaper system
    # call): a shared tail there would be either a dearer writev or a copy after all.
    assert SHARED_TAIL_MIN_BYTES >= ONE_BUFFER_BELOW


async def test_large_broadcasts_around_the_shared_tail_threshold_are_aiohttps_bytes(
        live_gateway: LiveGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    live = live_gateway
    parts: dict[str, list[tuple[bytes, bytes]]] = {"big-1": [], "big-2": []}
    push_parts = Connection.push_parts

    def spy(conn: Connection, head: bytes, tail: bytes) -> bool:
        parts[conn.session.client_id].append((head, tail))
        return push_parts(conn, head, tail)

    monkeypatch.setattr(Connection, "push_parts", spy)
    first = await RawClient.connect(live, "big-1")
    second = await RawClient.connect(live, "big-2")
    for client in (first, second):
        assert orjson.loads((await client.frame())[1])["type"] == "connection_established"
    # Frames below and above the threshold, with 7-, 16- (cached and computed header) and
    # 64-bit lengths.
    pads = [10, SHARED_TAIL_MIN_BYTES - 300, SHARED_TAIL_MIN_BYTES, 5000, 70_000, 200_000]
    for n, pad in enumerate(pads):
        status, body = await live.api("POST", "/broadcast", {
            "message_type": "tick", "data": {"n": n, "pad": "q" * pad}})
        assert status == 200 and body["recipients"] == 2, body
    for client, name in ((first, "big-1"), (second, "big-2")):
        frames = [await client.frame() for _ in pads]
        for wire, payload in frames:
            assert wire == await aiohttp_text_frame(payload)
        decoded = [orjson.loads(payload) for _, payload in frames]
        assert [frame["seq"] for frame in decoded] == list(range(1, len(pads) + 1))
        assert [len(frame["data"]["pad"]) for frame in decoded] == pads
        # Exactly the frames at or above the threshold went as (head, shared tail).
        large = [payload for _, payload in frames
                 if len(payload) - len(b'"seq":%d,' % orjson.loads(payload)["seq"])
                 >= SHARED_TAIL_MIN_BYTES]
        assert 0 < len(large) < len(pads)
        assert [head + tail for head, tail in parts[name]] == large
    # The two sessions were handed the very same tail object for each large broadcast.
    assert all(a[1] is b[1] for a, b in zip(parts["big-1"], parts["big-2"], strict=True))
    first.close()
    second.close()


async def test_a_slow_consumer_gets_queued_large_broadcasts_in_order_once_it_reads(
        make_gateway: MakeGateway) -> None:
    live = await make_gateway(send_queue_bytes=48 * 1024 * 1024,
                              history_bytes=96 * 1024 * 1024)
    slow = await RawClient.connect(live, "slow", rcvbuf=4096)
    assert orjson.loads((await slow.frame())[1])["type"] == "connection_established"
    conn = next(c for c in live.connections if c.session.client_id == "slow")
    pad = "s" * 64_000
    sent = 0

    def queued_parts() -> int:
        return sum(type(item) is tuple for item in conn.queue or ())

    # The client reads nothing: its kernel buffers fill, then the connection's queue, which
    # holds each large frame as (head, shared tail).
    while queued_parts() < 5:
        sent += 1
        assert sent < 400, "the slow consumer's queue never filled"
        status, body = await live.api("POST", "/broadcast", {
            "message_type": "tick", "data": {"n": sent, "pad": pad}})
        assert status == 200 and body["recipients"] == 1, body
    queue: deque[Any] = conn.queue  # type: ignore[assignment]
    # A queued large frame is its small head and the shared tail; the caps count whole frames.
    assert all(len(item[0]) < 20 for item in queue if type(item) is tuple)
    assert conn.queued_bytes == sum(len(item[0]) + len(item[1]) if type(item) is tuple
                                    else len(item) for item in queue)
    assert conn.close_code is None
    frames = [await slow.frame() for _ in range(sent)]
    for wire, payload in frames:
        assert wire == await aiohttp_text_frame(payload)
    decoded = [orjson.loads(payload) for _, payload in frames]
    assert [frame["data"]["n"] for frame in decoded] == list(range(1, sent + 1))
    assert [frame["seq"] for frame in decoded] == list(range(1, sent + 1))
    await wait_for(lambda: conn.queued_frames == 0 and conn.direct is not None,
                   what="the writer task to drain the queue")
    assert conn.queued_bytes == 0
    slow.close()


async def test_a_flat_profile_client_gets_large_broadcasts_whole(live_gateway: LiveGateway
                                                                 ) -> None:
    live = live_gateway
    flat = await live.http.ws_connect(live.ws_server.make_url("/"),
                                      params={"client_id": "flat", "format": "flat"})
    hello = orjson.loads((await flat.receive(timeout=5)).data)
    assert hello["type"] == "connection_established" and hello["client_id"] == "flat"
    envelope = await live.connect(client_id="envelope")
    pads = [10, SHARED_TAIL_MIN_BYTES, 70_000]
    for n, pad in enumerate(pads):
        status, body = await live.api("POST", "/broadcast", {
            "message_type": "tick", "data": {"n": n, "pad": "f" * pad}})
        assert status == 200 and body["recipients"] == 2, body
    for n, pad in enumerate(pads):
        msg = await flat.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.TEXT
        frame = orjson.loads(msg.data)
        # Seed 004's flat form: the data fields and client_id also at the top level.
        assert frame["seq"] == n + 1 and frame["client_id"] == "flat"
        assert frame["n"] == frame["data"]["n"] == n
        assert frame["pad"] == frame["data"]["pad"] == "f" * pad
        plain = await envelope.recv_type("tick")
        assert plain["seq"] == n + 1 and plain["data"] == frame["data"] and "pad" not in plain
    await flat.close()
