"""Slow and half-open HTTP clients are cut off on both ports (issue 5, slowloris).

Each test opens a raw TCP connection and misbehaves; the server must close it. The read
deadline (``GIVE_UP``) is far above the configured timeout: it only stops a broken server from
hanging the test, it is not a timing assertion.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from yarl import URL

from tests.conftest import API_TOKEN, LiveGateway, MakeGateway

HEADER_TIMEOUT = 0.5
GIVE_UP = 20.0


def _port(live: LiveGateway, which: str) -> int:
    server = live.ws_server if which == "ws" else live.api_server
    port = URL(str(server.make_url("/"))).port
    assert port is not None
    return port


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent until it closed the connection."""
    received = b""
    async with asyncio.timeout(GIVE_UP):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk


@pytest.mark.parametrize("which", ["ws", "api"])
async def test_partial_request_line_is_closed(make_gateway: MakeGateway, which: str) -> None:
    live = await make_gateway(request_header_timeout=HEADER_TIMEOUT)
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(live, which))
    writer.write(b"GET /status HT")
    await writer.drain()
    assert await _closed_by_server(reader) == b""
    writer.close()


@pytest.mark.parametrize("which", ["ws", "api"])
async def test_silent_connection_is_closed(make_gateway: MakeGateway, which: str) -> None:
    live = await make_gateway(request_header_timeout=HEADER_TIMEOUT)
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(live, which))
    assert await _closed_by_server(reader) == b""
    writer.close()


@pytest.mark.parametrize("which", ["ws", "api"])
async def test_trickled_headers_do_not_extend_the_deadline(make_gateway: MakeGateway,
                                                          which: str) -> None:
    """Slowloris proper: a header byte every so often never completes the request and must
    not keep the connection alive."""
    live = await make_gateway(request_header_timeout=HEADER_TIMEOUT)
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(live, which))
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(b"X-a: b\r\n")
                await writer.drain()
                await asyncio.sleep(HEADER_TIMEOUT / 5)  # the attack's pacing, not a sync

    dripping = asyncio.get_running_loop().create_task(trickle())
    try:
        assert await _closed_by_server(reader) == b""
    finally:
        dripping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dripping
    writer.close()


async def test_idle_keep_alive_connection_is_closed(make_gateway: MakeGateway) -> None:
    live = await make_gateway(request_header_timeout=HEADER_TIMEOUT)
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(live, "api"))
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
    await writer.drain()
    received = await _closed_by_server(reader)
    assert received.startswith(b"HTTP/1.1 200"), received
    writer.close()


async def test_a_slow_body_gets_408_and_is_closed(make_gateway: MakeGateway) -> None:
    live = await make_gateway(request_header_timeout=HEADER_TIMEOUT, request_body_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(live, "api"))
    writer.write(b"POST /send_message HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer " + API_TOKEN.encode() + b"\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                 b'{"client_id": ')
    await writer.drain()
    received = await _closed_by_server(reader)
    assert received.startswith(b"HTTP/1.1 408"), received
    assert b'"request_timeout"' in received
    writer.close()


async def test_unauthenticated_slow_body_is_refused_without_reading_it(
        make_gateway: MakeGateway) -> None:
    live = await make_gateway(request_header_timeout=HEADER_TIMEOUT, request_body_timeout=30)
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(live, "api"))
    writer.write(b"POST /send_message HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
    await writer.drain()
    async with asyncio.timeout(GIVE_UP):
        status_line = await reader.readline()
    assert status_line.startswith(b"HTTP/1.1 401"), status_line
    writer.close()


async def test_well_behaved_clients_are_unaffected(make_gateway: MakeGateway) -> None:
    live = await make_gateway(request_header_timeout=HEADER_TIMEOUT, request_body_timeout=0.5)
    client = await live.connect(client_id="steady")
    status, body = await live.api("POST", "/send_message",
                                  {"client_id": "steady", "content": "hi"})
    assert status == 200, body
    assert (await client.recv())["data"]["content"] == "hi"


@pytest.mark.parametrize("which", ["ws", "api"])
async def test_oversized_headers_are_refused(make_gateway: MakeGateway, which: str) -> None:
    """Header lines and counts are bounded too (aiohttp: 8190 bytes a line, 128 headers)."""
    live = await make_gateway(request_header_timeout=HEADER_TIMEOUT)
    for request in (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
                    b"GET /health HTTP/1.1\r\nHost: x\r\n"
                    + b"".join(b"X-%d: y\r\n" % n for n in range(200)) + b"\r\n",
                    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(live, which))
        writer.write(request)
        await writer.drain()
        received = await _closed_by_server(reader)
        assert received[:12] in (b"HTTP/1.1 400", b"HTTP/1.1 431", b"HTTP/1.0 400",
                                 b"HTTP/1.1 414"), received[:200]
        writer.close()
