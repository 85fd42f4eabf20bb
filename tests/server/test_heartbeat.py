"""WS_HEARTBEAT and WS_TIMEOUT on real sockets: the gateway-wide liveness sweep
(``server.ws.liveness_ctx``) keeps the contract aiohttp's per-socket heartbeat had.

A peer from which nothing arrived for WS_HEARTBEAT seconds is pinged; one still silent
WS_HEARTBEAT / 2 after that ping is dropped as aiohttp dropped it (TCP closed without a close
frame, 1006 on the server). Raw sockets (tests/security/rawws.py) stand for the peers: one that
never answers a ping, one that does. The bounds on time are the contract's (a dead peer goes
within 1.5 heartbeats and one sweep interval), with slack for a loaded machine.
"""

from __future__ import annotations

import asyncio
import time

import orjson

from server.errors import CloseCode
from server.ws import SWEEPS_PER_HEARTBEAT, _receive_timeout
from tests.conftest import LiveGateway, MakeGateway, wait_for
from tests.security.rawws import PING, PONG, TEXT, Frame, RawWebSocket

#: How late a loaded, shared machine may run the sweep's timer or deliver the bytes.
SLACK = 0.5


async def _raw(live: LiveGateway) -> tuple[RawWebSocket, float]:
    """A raw client past its greeting, and when its handshake completed (the last bytes it
    sent: from then on the server hears nothing unless the test sends)."""
    client = await asyncio.to_thread(RawWebSocket, live.ws_node.ws_server.port)
    since = time.monotonic()
    assert client.status == 101
    greeting = await asyncio.to_thread(client.recv)
    assert orjson.loads(greeting.payload)["type"] == "connection_established"
    return client, since


def _ping_frame(message_id: str) -> bytes:
    return orjson.dumps({"type": "ping", "message_id": message_id})


async def test_a_peer_that_stops_answering_pings_is_dropped_as_before(
        make_gateway: MakeGateway) -> None:
    heartbeat = 1.0
    live = await make_gateway(ws_heartbeat=heartbeat)
    client, since = await _raw(live)
    await wait_for(lambda: len(live.connections) == 1, what="the connection")
    (conn,) = live.connections

    def silent_until_dropped() -> tuple[Frame, float, Frame | None, float]:
        ping = client.recv()
        pinged = time.monotonic()
        frames, close = client.recv_until_close()
        assert frames == []
        return ping, pinged, close, time.monotonic()

    ping, pinged, close, dropped = await asyncio.to_thread(silent_until_dropped)
    client.close()
    assert ping.opcode == PING and ping.payload == b""
    # Pinged once nothing arrived for a heartbeat, dropped half a heartbeat after the ping.
    assert pinged - since >= heartbeat - 0.05
    assert dropped - pinged >= heartbeat / 2 - 0.05
    assert dropped - since <= heartbeat * (1.5 + 1 / SWEEPS_PER_HEARTBEAT) + SLACK
    # What aiohttp's heartbeat did: no close frame, the TCP connection closed; the server
    # records 1006 and says why.
    assert close is None
    await wait_for(lambda: conn not in live.connections, what="the reader loop ending")
    assert conn.ws.close_code == 1006
    assert str(conn.ws.exception()) == f"No PONG received after {heartbeat / 2} seconds"
    assert (await live.offline(conn.session.client_id))["client_id"]  # kept for resume


async def test_a_peer_that_answers_pings_stays_connected(make_gateway: MakeGateway) -> None:
    heartbeat = 0.5
    live = await make_gateway(ws_heartbeat=heartbeat)
    client, _ = await _raw(live)

    def answer_pings(count: int) -> None:
        for _ in range(count):
            ping = client.recv()
            assert ping.opcode == PING
            client.send(PONG, ping.payload)

    await asyncio.to_thread(answer_pings, 4)  # four heartbeats, each answered
    client.send_text(_ping_frame("alive"))
    answer = await asyncio.to_thread(client.recv)
    assert orjson.loads(answer.payload)["reply_to"] == "alive"
    assert len(live.connections) == 1
    client.close()


async def test_a_client_ping_still_gets_its_pong(make_gateway: MakeGateway) -> None:
    live = await make_gateway(ws_heartbeat=0.5)
    client, _ = await _raw(live)
    client.send(PING, b"are you there")
    pong = await asyncio.to_thread(client.recv)
    assert (pong.opcode, pong.payload) == (PONG, b"are you there")
    client.close()


async def test_traffic_postpones_the_ping(make_gateway: MakeGateway) -> None:
    heartbeat = 0.5
    live = await make_gateway(ws_heartbeat=heartbeat)
    client, _ = await _raw(live)

    def chat_then_fall_silent() -> tuple[list[int], Frame, float]:
        opcodes = []
        until = time.monotonic() + 3 * heartbeat
        n = 0
        while True:
            n += 1
            sent_at = time.monotonic()
            client.send_text(_ping_frame(f"t{n}"))
            opcodes.append(client.recv().opcode)
            if sent_at >= until:
                break
            time.sleep(heartbeat / 5)  # the client's pace, not a synchronisation
        ping = client.recv()
        return opcodes, ping, time.monotonic() - sent_at

    opcodes, ping, silent_for = await asyncio.to_thread(chat_then_fall_silent)
    # Three heartbeats of traffic and no ping among the answers; silence brings the ping.
    assert opcodes == [TEXT] * len(opcodes) and len(opcodes) >= 5
    assert ping.opcode == PING
    assert silent_for >= heartbeat - 0.01  # a heartbeat after the last frame, not before
    client.close()


async def test_heartbeat_zero_sends_no_ping_and_ws_timeout_still_closes(
        make_gateway: MakeGateway) -> None:
    live = await make_gateway(ws_heartbeat=0, ws_timeout=1.0)
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "ws-liveness"]
    client, _ = await _raw(live)
    frames, close = await asyncio.to_thread(client.recv_until_close)
    client.close()
    assert frames == []  # no ping in a whole WS_TIMEOUT of silence
    assert close is not None and close.close_code == CloseCode.IDLE_TIMEOUT == 4011


async def test_ws_timeout_closes_a_silent_peer_before_the_heartbeat_would(
        make_gateway: MakeGateway) -> None:
    """WS_TIMEOUT shorter than the sweep's bound (1.75 heartbeats): the receive timeout
    enforces it, with 4011, whatever the heartbeat does meanwhile."""
    live = await make_gateway(ws_heartbeat=1.0, ws_timeout=1.2)
    client, _ = await _raw(live)
    frames, close = await asyncio.to_thread(client.recv_until_close)
    client.close()
    assert {f.opcode for f in frames} <= {PING}
    assert close is not None and close.close_code == CloseCode.IDLE_TIMEOUT


def test_ws_timeout_is_left_to_the_heartbeat_only_when_the_sweep_covers_it() -> None:
    assert _receive_timeout(30, 300) is None
    assert _receive_timeout(30, 52.5) is None  # 1.5 heartbeats and one sweep interval
    assert _receive_timeout(30, 50) == 50
    assert _receive_timeout(0, 300) == 300
