"""The one load generator used, identically, against every benchmark target.

Everything here is callback-driven ``asyncio.Protocol`` code (no coroutine per client or
per frame) so that one generator process on one core stays well clear of being the
bottleneck; run it on uvloop. The generator measures its own CPU in each scenario and
reports it next to the server's.

- ``WSClient``: a minimal RFC 6455 client. It sends the upgrade request, parses server
  frames by hand (unmasked, no extensions negotiated: no permessage-deflate for anyone),
  answers server pings, and sends its own text frames masked with the all-zero key (a
  valid mask: the server does the same unmasking work, the generator skips the XOR).
  With ``protocol="socketio"`` it also speaks engine.io v4 / socket.io v5 over that
  WebSocket: ``0{...}`` open -> ``40`` connect, ``42["message",{...}]`` events,
  engine.io ping ``2`` -> pong ``3``. Every benchmark frame is the same JSON object for
  all targets; socket.io just wraps it as the argument of the event ``"message"``.
- ``HttpConn``: a minimal keep-alive HTTP/1.1 client for the API calls.
- Scenario functions: ``fanout``, ``paced``, ``idle``, ``roundtrip``, ``unicast``. Each
  takes an ``Endpoint`` and a ``ServerProbe`` (CPU/RSS of the server process) and returns
  a flat ``dict`` of metrics. Every broadcast carries its index and send time; every
  client keeps a bitmap of what it got, so lost, duplicate and out-of-order deliveries are
  counted exactly, and Switchboard's per-session ``seq`` is checked to be contiguous.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import orjson
import psutil

MONO = time.monotonic_ns
WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # fixed Sec-WebSocket-Key; the accept is not verified
ZERO_MASK = b"\x00\x00\x00\x00"


# ----------------------------------------------------------------------------------------
# Endpoints and server probes
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """Where a running target listens and how to talk to it."""

    name: str
    ws_port: int
    api_port: int
    token: str
    protocol: str = "ws"  # "ws" (Switchboard, bare aiohttp) or "socketio"
    host: str = "127.0.0.1"

    def ws_path(self, client_id: str) -> str:
        if self.protocol == "socketio":
            return f"/socket.io/?EIO=4&transport=websocket&client_id={client_id}"
        return f"/?client_id={client_id}"


class ServerProbe:
    """CPU seconds and RSS bytes of a server process and its children."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.pid = pid
        #: Called when a measured window opens and closes (``bench.run --profile`` hooks in).
        self.on_start: Callable[[], None] | None = None
        self.on_stop: Callable[[], None] | None = None

    def _tree(self) -> list[psutil.Process]:
        procs = [self.proc]
        with contextlib.suppress(psutil.Error):
            procs.extend(self.proc.children(recursive=True))
        return procs

    def cpu(self) -> float:
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds, from the kernel's counters for these processes
        (``/proc/PID/stat``): user time is the interpreter, the event loop and the libraries;
        system time the kernel's work for the process (socket writes and reads, epoll)."""
        user = system = 0.0
        for p in self._tree():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                user += t.user
                system += t.system
        return user, system

    def rss(self) -> int:
        total = 0
        for p in self._tree():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all cores, not idle or iowait)."""
    t = psutil.cpu_times()
    return (
        sum(t)
        - t.idle
        - getattr(t, "iowait", 0.0)
        - getattr(t, "guest", 0.0)
        - getattr(t, "guest_nice", 0.0)
    )


class Meter:
    """Wall time, server CPU, generator CPU and everybody else's CPU over one window."""

    def __init__(self, probe: ServerProbe) -> None:
        self.probe = probe
        if probe.on_start is not None:
            probe.on_start()
        self.t0 = time.perf_counter()
        self.u0, self.k0 = probe.cpu_split()
        self.g0 = time.process_time()
        self.m0 = machine_busy()
        self.wall = self.server_cpu = self.gen_cpu = self.foreign_cpu = 0.0
        self.server_user = self.server_sys = 0.0

    def stop(self) -> Meter:
        self.wall = time.perf_counter() - self.t0
        user, system = self.probe.cpu_split()
        self.server_user, self.server_sys = user - self.u0, system - self.k0
        self.server_cpu = self.server_user + self.server_sys
        self.gen_cpu = time.process_time() - self.g0
        busy = machine_busy() - self.m0
        self.foreign_cpu = max(0.0, busy - self.server_cpu - self.gen_cpu)
        if self.probe.on_stop is not None:
            self.probe.on_stop()
        return self

    def shares(self) -> dict[str, float]:
        wall = max(self.wall, 1e-9)
        return {
            "elapsed_s": round(self.wall, 3),
            "server_cpu_pct": 100.0 * self.server_cpu / wall,
            "gen_cpu_pct": 100.0 * self.gen_cpu / wall,
            "foreign_cpu_pct": 100.0 * self.foreign_cpu / wall,
        }

    def metrics(self, units: float, unit: str) -> dict[str, float]:
        units = max(units, 1.0)
        return {
            f"server_cpu_us_per_{unit}": self.server_cpu * 1e6 / units,
            f"server_user_us_per_{unit}": self.server_user * 1e6 / units,
            f"server_sys_us_per_{unit}": self.server_sys * 1e6 / units,
            f"gen_cpu_us_per_{unit}": self.gen_cpu * 1e6 / units,
            **self.shares(),
        }


def percentile(sorted_values: list[int] | list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def ns_to_ms(values: list[int], q: float) -> float:
    return round(percentile(values, q) / 1e6, 3)


# ----------------------------------------------------------------------------------------
# Shared per-scenario state
# ----------------------------------------------------------------------------------------
@dataclass
class Collector:
    """What every client of a scenario reports into (plain counters, no locks needed)."""

    n_clients: int = 0
    n_broadcasts: int = 0
    counts: list[int] = field(default_factory=list)  # deliveries per broadcast index
    completed: int = 0  # broadcasts delivered to every client
    delivered: int = 0
    duplicates: int = 0
    reordered: int = 0
    seq_gaps: int = 0
    warm: int = 0
    other: int = 0
    record_latency: bool = False
    latencies: list[int] = field(default_factory=list)  # ns, one per delivery
    # round trips
    rt_running: bool = False
    rt_count: int = 0
    rt_outstanding: int = 0
    rt_retries: int = 0  # pings re-sent after no answer (e.g. dropped by a rate limiter)
    rate_limited: int = 0  # error frames with code rate_limited
    error_frames: int = 0  # other error frames
    rtts: list[int] = field(default_factory=list)
    # unicast
    u_seen: bytearray = field(default_factory=bytearray)
    u_delivered: int = 0
    # connection health
    ready: int = 0
    dropped: int = 0
    server_closes: int = 0
    handshake_errors: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    def start_broadcasts(self, n_clients: int, n_broadcasts: int) -> None:
        self.n_clients = n_clients
        self.n_broadcasts = n_broadcasts
        self.counts = [0] * n_broadcasts


# ----------------------------------------------------------------------------------------
# WebSocket client
# ----------------------------------------------------------------------------------------
def text_frame(payload: bytes) -> bytes:
    """A masked (all-zero key) final text frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, 0x80 | n)) + ZERO_MASK + payload
    if n < 65536:
        return bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big") + ZERO_MASK + payload
    return bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big") + ZERO_MASK + payload


def control_frame(opcode: int, payload: bytes) -> bytes:
    return bytes((0x80 | opcode, 0x80 | len(payload))) + ZERO_MASK + payload


class WSClient(asyncio.Protocol):
    """One benchmark WebSocket client; see the module docstring."""

    def __init__(
        self, ep: Endpoint, coll: Collector, idx: int, n_broadcasts: int = 0, prefix: str = "c"
    ) -> None:
        self.coll = coll
        self.idx = idx
        self.client_id = f"{prefix}{idx}"
        self.sio = ep.protocol == "socketio"
        self.request = (
            f"GET {ep.ws_path(self.client_id)} HTTP/1.1\r\n"
            f"Host: {ep.host}:{ep.ws_port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {WS_KEY.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.buf = b""
        self.frag: list[bytes] = []
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.got = bytearray(n_broadcasts)
        self.last_i = -1
        self.last_seq = -1
        self.ping_t = 0
        self.awaiting = False
        self.closing = False
        self.session_token: str | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.coll.dropped += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"{self.client_id}: connection lost"))
        self.transport = None
        self.coll.progress.set()

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status_line = self.buf[: self.buf.find(b"\r\n")]
            rest = self.buf[end + 4 :]
            self.buf = b""
            if b" 101 " not in status_line:
                self.coll.handshake_errors += 1
                if not self.ready.done():
                    self.ready.set_exception(
                        ConnectionError(f"{self.client_id}: {status_line.decode(errors='replace')}")
                    )
                self.close()
                return
            self.upgraded = True
            if not rest:
                return
            data = rest
        if self.buf:
            data = self.buf + data
            self.buf = b""
        now = MONO()
        pos = 0
        n = len(data)
        while n - pos >= 2:
            b0 = data[pos]
            length = data[pos + 1] & 0x7F
            hdr = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                hdr = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                hdr = 10
            end = pos + hdr + length
            if end > n:
                break
            payload = data[pos + hdr : end]
            pos = end
            opcode = b0 & 0x0F
            if opcode == 1 and b0 & 0x80:
                self.on_text(payload, now)
            elif opcode == 1 or opcode == 0:
                self.frag.append(payload)
                if b0 & 0x80:
                    whole = b"".join(self.frag)
                    self.frag.clear()
                    self.on_text(whole, now)
            elif opcode == 9:  # ping -> pong
                self.write(control_frame(0xA, payload))
            elif opcode == 8:  # close: answer and drop
                self.coll.server_closes += 1
                self.write(control_frame(0x8, payload[:2]))
                self.close()
                return
        if pos < n:
            self.buf = data[pos:]

    # -- frames -------------------------------------------------------------------------
    def on_text(self, payload: bytes, now: int) -> None:
        if self.sio:
            if payload[:2] == b"42":
                event = orjson.loads(payload[2:])
                obj = event[1] if len(event) > 1 else {}
            elif payload == b"2":  # engine.io ping
                self.write(text_frame(b"3"))
                return
            elif payload[:1] == b"0":  # engine.io open -> socket.io CONNECT
                self.write(text_frame(b"40"))
                return
            else:  # "40{sid}" connect ack, "3" etc.
                return
        else:
            obj = orjson.loads(payload)
        coll = self.coll
        seq = obj.get("seq")
        if seq is not None:
            if self.last_seq >= 0 and seq != self.last_seq + 1:
                coll.seq_gaps += 1
            self.last_seq = seq
        kind = obj.get("type")
        if kind == "bench":
            i = obj["data"]["i"]
            if self.got[i]:
                coll.duplicates += 1
            else:
                self.got[i] = 1
                c = coll.counts[i] + 1
                coll.counts[i] = c
                if c == coll.n_clients:
                    coll.completed += 1
                    coll.progress.set()
            if i < self.last_i:
                coll.reordered += 1
            self.last_i = i
            coll.delivered += 1
            if coll.record_latency:
                coll.latencies.append(now - obj["data"]["t"])
        elif kind == "message":
            k_str, t_str = obj["data"]["content"].split(":", 1)
            k = int(k_str)
            if coll.u_seen[k]:
                coll.duplicates += 1
            else:
                coll.u_seen[k] = 1
            coll.u_delivered += 1
            coll.latencies.append(now - int(t_str))
            coll.progress.set()
        elif kind == "pong":
            self.awaiting = False
            coll.rtts.append(now - self.ping_t)
            coll.rt_count += 1
            if coll.rt_running:
                self.send_ping()
            else:
                coll.rt_outstanding -= 1
                coll.progress.set()
        elif kind == "warm":
            coll.warm += 1
            coll.progress.set()
        elif kind == "connection_established":
            self.session_token = (obj.get("data") or {}).get("session_token")
            coll.ready += 1
            if not self.ready.done():
                self.ready.set_result(None)
        elif kind == "error":
            code = (obj.get("data") or {}).get("code")
            if code == "rate_limited":
                coll.rate_limited += 1
            else:
                coll.error_frames += 1
        else:
            coll.other += 1

    def write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def send_json(self, obj: dict[str, object]) -> None:
        body = orjson.dumps(obj)
        if self.sio:
            body = b'42["message",' + body + b"]"
        self.write(text_frame(body))

    def send_ping(self) -> None:
        self.awaiting = True
        self.ping_t = MONO()
        self.write(self._ping_frame)

    @property
    def _ping_frame(self) -> bytes:
        return SIO_PING if self.sio else WS_PING

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


WS_PING = text_frame(b'{"type":"ping"}')
SIO_PING = text_frame(b'42["message",{"type":"ping"}]')


async def connect_clients(
    ep: Endpoint,
    coll: Collector,
    n: int,
    *,
    n_broadcasts: int = 0,
    concurrency: int = 64,
    deadline_s: float = 120.0,
    per_client_timeout: float = 15.0,
    prefix: str = "c",
) -> tuple[list[WSClient], list[str]]:
    """Open ``n`` clients (``concurrency`` handshakes in flight), each until its first frame."""
    loop = asyncio.get_running_loop()
    clients: list[WSClient] = []
    errors: list[str] = []
    indexes = iter(range(n))

    async def worker() -> None:
        for idx in indexes:
            client = WSClient(ep, coll, idx, n_broadcasts, prefix)
            clients.append(client)
            try:
                async with asyncio.timeout(per_client_timeout):
                    await loop.create_connection(lambda c=client: c, ep.host, ep.ws_port)
                    await client.ready
            except (OSError, TimeoutError) as exc:
                errors.append(f"{client.client_id}: {exc!r}")
                client.close()

    async with asyncio.timeout(deadline_s):
        await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    return clients, errors


def close_clients(clients: list[WSClient]) -> None:
    for client in clients:
        client.close()


# ----------------------------------------------------------------------------------------
# HTTP client
# ----------------------------------------------------------------------------------------
class HttpConn(asyncio.Protocol):
    """Minimal keep-alive HTTP/1.1 client. Requests may be pipelined: responses come back
    in request order (RFC 9112 section 9.3.2) and resolve a FIFO of futures."""

    def __init__(self, ep: Endpoint) -> None:
        auth = f"Authorization: Bearer {ep.token}\r\n" if ep.token else ""
        self.head = f"Host: {ep.host}:{ep.api_port}\r\n{auth}".encode()
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.pending: deque[asyncio.Future[tuple[int, bytes]]] = deque()

    @classmethod
    async def open(cls, ep: Endpoint) -> HttpConn:
        conn = cls(ep)
        await asyncio.get_running_loop().create_connection(lambda: conn, ep.host, ep.api_port)
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        while self.pending:
            fut = self.pending.popleft()
            if not fut.done():
                fut.set_exception(ConnectionError("HTTP connection lost"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.pending:
            parsed = _parse_response(self.buf)
            if parsed is None:
                return
            status, body, consumed = parsed
            self.buf = self.buf[consumed:]
            fut = self.pending.popleft()
            if not fut.done():
                fut.set_result((status, body))

    def send(self, method: str, path: str, body: bytes = b"") -> asyncio.Future[tuple[int, bytes]]:
        """Write one request now; the future resolves with (status, body)."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("HTTP connection closed")
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self.pending.append(fut)
        extra = (
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
            if method != "GET"
            else b""
        )
        self.transport.write(
            f"{method} {path} HTTP/1.1\r\n".encode() + self.head + extra + b"\r\n" + body
        )
        return fut

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        return await self.send(method, path, body)

    async def post(self, path: str, obj: dict[str, object]) -> tuple[int, bytes]:
        return await self.send("POST", path, orjson.dumps(obj))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _parse_response(buf: bytes) -> tuple[int, bytes, int] | None:
    """(status, body, bytes consumed) of the first complete response in ``buf``."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].lower()
    status = int(head[9:12])
    start = end + 4
    cl = head.find(b"\r\ncontent-length:")
    if cl >= 0:
        line_end = head.find(b"\r\n", cl + 2)
        length = int(head[cl + 17 : line_end if line_end >= 0 else len(head)])
        if len(buf) < start + length:
            return None
        return status, buf[start : start + length], start + length
    if b"transfer-encoding: chunked" in head:
        parsed = _dechunk(buf, start)
        if parsed is None:
            return None
        return status, parsed[0], parsed[1]
    return status, b"", start


def _dechunk(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    parts: list[bytes] = []
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(buf[pos:line_end].split(b";")[0], 16)
        start = line_end + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n", start)
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 2
        if len(buf) < start + size + 2:
            return None
        parts.append(buf[start : start + size])
        pos = start + size + 2


async def wait_http_ready(ep: Endpoint, alive: Callable[[], bool], limit_s: float = 30.0) -> None:
    """Poll ``GET /health`` (bounded) until it answers 200."""
    deadline = time.monotonic() + limit_s
    last: object = None
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{ep.name} exited during start-up")
        try:
            conn = await HttpConn.open(ep)
            try:
                async with asyncio.timeout(2):
                    status, _ = await conn.request("GET", "/health")
            finally:
                conn.close()
            if status == 200:
                return
            last = status
        except (OSError, TimeoutError) as exc:
            last = exc
        await asyncio.sleep(0.05)  # polling interval while the process boots
    raise TimeoutError(f"{ep.name} not ready after {limit_s}s (last: {last!r})")


async def wait_for(coll: Collector, done: Callable[[], bool], idle: float, total: float) -> bool:
    """Wait until ``done()``; give up after ``idle`` seconds without progress or ``total``."""
    deadline = time.monotonic() + total
    while not done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        coll.progress.clear()
        try:
            async with asyncio.timeout(min(idle, remaining)):
                await coll.progress.wait()
        except TimeoutError:
            return done()
    return True


# ----------------------------------------------------------------------------------------
# Scenarios
# ----------------------------------------------------------------------------------------
def _health(coll: Collector, clients: list[WSClient], errors: list[str]) -> dict[str, float]:
    return {
        "connect_errors": len(errors),
        "dropped": coll.dropped,
        "server_closes": coll.server_closes,
        "seq_gaps": coll.seq_gaps,
        "other_frames": coll.other,
        "error_frames": coll.error_frames,
        "rate_limited": coll.rate_limited,
    }


async def _warm_up(ep: Endpoint, http: HttpConn, coll: Collector, n_clients: int, n: int) -> None:
    for _ in range(n):
        await http.post("/broadcast", {"message_type": "warm", "data": {}})
    await wait_for(coll, lambda: coll.warm >= n * n_clients, idle=5, total=30)


def _lost_broadcasts(clients: list[WSClient], n_broadcasts: int) -> int:
    return sum(n_broadcasts - sum(c.got) for c in clients)


async def fanout(
    ep: Endpoint,
    probe: ServerProbe,
    *,
    clients: int = 1000,
    broadcasts: int = 300,
    window: int = 8,
    padding: int = 100,
) -> dict[str, float]:
    """Broadcasts as fast as they are delivered: requests are pipelined on one keep-alive
    connection (so they reach the server in order) and at most ``window`` broadcasts are
    posted but not yet delivered to every client."""
    coll = Collector()
    coll.start_broadcasts(clients, broadcasts)
    conns, errors = await connect_clients(ep, coll, clients, n_broadcasts=broadcasts)
    http = await HttpConn.open(ep)
    pad = "x" * padding
    replies: list[asyncio.Future[tuple[int, bytes]]] = []
    try:
        await _warm_up(ep, http, coll, clients - len(errors), 5)
        meter = Meter(probe)
        for i in range(broadcasts):
            if i - coll.completed >= window:
                await wait_for(coll, lambda i=i: i - coll.completed < window, idle=10, total=60)
            body = {"message_type": "bench", "data": {"i": i, "t": MONO(), "pad": pad}}
            replies.append(http.send("POST", "/broadcast", orjson.dumps(body)))
        await wait_for(coll, lambda: coll.completed >= broadcasts, idle=10, total=120)
        meter.stop()
        async with asyncio.timeout(30):
            answers = await asyncio.gather(*replies)
    finally:
        http.close()
        close_clients(conns)
    http_errors = sum(1 for status, _ in answers if status != 200)
    recipients_short = sum(
        1
        for status, body in answers
        if status == 200 and orjson.loads(body).get("recipients") != clients
    )
    return {
        "clients": clients,
        "broadcasts": broadcasts,
        "deliveries": coll.delivered,
        "deliveries_per_s": coll.delivered / max(meter.wall, 1e-9),
        **meter.metrics(coll.delivered, "delivery"),
        "lost": _lost_broadcasts(conns, broadcasts),
        "duplicates": coll.duplicates,
        "reordered": coll.reordered,
        "http_errors": http_errors,
        "recipients_short": recipients_short,
        **_health(coll, conns, errors),
    }


async def paced(
    ep: Endpoint,
    probe: ServerProbe,
    *,
    clients: int = 1000,
    rate: float = 10.0,
    broadcasts: int = 100,
    padding: int = 100,
) -> dict[str, float]:
    """``rate`` broadcasts/s to ``clients``, open loop: each request is written on schedule
    (pipelined on one keep-alive connection) whether or not the previous one has been
    answered, so a slow server shows up as latency, not as a lower rate. End-to-end latency
    is measured for every delivery, from just before the request is written."""
    coll = Collector(record_latency=True)
    coll.start_broadcasts(clients, broadcasts)
    conns, errors = await connect_clients(ep, coll, clients, n_broadcasts=broadcasts)
    http = await HttpConn.open(ep)
    pad = "x" * padding
    replies: list[asyncio.Future[tuple[int, bytes]]] = []
    late = 0
    loop = asyncio.get_running_loop()
    try:
        await _warm_up(ep, http, coll, clients - len(errors), 3)
        coll.latencies.clear()
        meter = Meter(probe)
        start = loop.time()
        for i in range(broadcasts):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing, not synchronisation
            elif delay < -0.005:
                late += 1  # the generator itself fell behind its schedule
            body = {"message_type": "bench", "data": {"i": i, "t": MONO(), "pad": pad}}
            replies.append(http.send("POST", "/broadcast", orjson.dumps(body)))
        send_span = loop.time() - start
        await wait_for(coll, lambda: coll.completed >= broadcasts, idle=10, total=60)
        meter.stop()
        async with asyncio.timeout(30):
            answers = await asyncio.gather(*replies)
    finally:
        http.close()
        close_clients(conns)
    lat = sorted(coll.latencies)
    http_errors = sum(1 for status, _ in answers if status != 200)
    return {
        "clients": clients,
        "broadcasts": broadcasts,
        "achieved_rate": (broadcasts - 1) / send_span if send_span > 0 else 0.0,
        "deliveries": coll.delivered,
        "p50_ms": ns_to_ms(lat, 0.50),
        "p90_ms": ns_to_ms(lat, 0.90),
        "p99_ms": ns_to_ms(lat, 0.99),
        "max_ms": ns_to_ms(lat, 1.0),
        "late_sends": late,
        **meter.metrics(coll.delivered, "delivery"),
        "lost": _lost_broadcasts(conns, broadcasts),
        "duplicates": coll.duplicates,
        "reordered": coll.reordered,
        "http_errors": http_errors,
        **_health(coll, conns, errors),
    }


async def idle(
    ep: Endpoint, probe: ServerProbe, *, clients: int = 15000, concurrency: int = 64
) -> dict[str, float]:
    """Open ``clients`` idle connections; server RSS per connection and connect rate."""
    coll = Collector()
    rss0 = probe.rss()
    meter = Meter(probe)
    conns, errors = await connect_clients(
        ep, coll, clients, concurrency=concurrency, deadline_s=300
    )
    meter.stop()
    rss1 = probe.rss()
    connected = coll.ready
    # A second sample once the server has settled (all handshakes are answered by now).
    health_ok = await _server_sees(ep, connected)
    rss2 = probe.rss()
    close_clients(conns)
    return {
        "clients": clients,
        "connected": connected,
        "connect_rate": connected / max(meter.wall, 1e-9),
        "rss_before_mb": rss0 / 2**20,
        "rss_after_mb": rss2 / 2**20,
        "rss_per_conn_kb": (max(rss1, rss2) - rss0) / max(connected, 1) / 1024,
        **meter.metrics(connected, "connect"),
        "health_ok": int(health_ok),
        "handshake_errors": coll.handshake_errors,
        **_health(coll, conns, errors),
    }


async def _server_sees(ep: Endpoint, connected: int) -> bool:
    with contextlib.suppress(OSError, TimeoutError):
        conn = await HttpConn.open(ep)
        try:
            async with asyncio.timeout(10):
                status, _ = await conn.request("GET", "/health")
            return status == 200
        finally:
            conn.close()
    return False


RT_TICK = 0.1  # s between checks for unanswered pings
RT_STALL_NS = 250_000_000  # a ping unanswered for this long is sent again


def _resend_stalled(clients: list[WSClient], coll: Collector) -> None:
    """Re-send pings that got no answer (a server may drop frames over its rate limit
    without a word); counted in ``rt_retries`` so it shows."""
    now = MONO()
    for c in clients:
        if c.awaiting and now - c.ping_t > RT_STALL_NS and c.transport is not None:
            coll.rt_retries += 1
            c.send_ping()


async def roundtrip(
    ep: Endpoint, probe: ServerProbe, *, clients: int = 50, duration: float = 5.0
) -> dict[str, float]:
    """``clients`` clients each ping/pong in a closed loop for ``duration`` seconds."""
    coll = Collector()
    conns, errors = await connect_clients(ep, coll, clients)
    live = [c for c in conns if c.ready.done() and not c.ready.exception()]
    try:
        # warm-up: one round trip each
        coll.rt_outstanding = len(live)
        for c in live:
            c.send_ping()
        await wait_for(coll, lambda: coll.rt_outstanding <= 0, idle=5, total=10)
        coll.rtts.clear()
        coll.rt_count = 0
        coll.rt_running = True
        coll.rt_outstanding = len(live)
        meter = Meter(probe)
        for c in live:
            c.send_ping()
        end = time.monotonic() + duration
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, RT_TICK))  # the measured interval itself
            _resend_stalled(live, coll)
        coll.rt_running = False
        count = coll.rt_count
        meter.stop()
        for _ in range(20):
            if await wait_for(coll, lambda: coll.rt_outstanding <= 0, idle=RT_TICK, total=RT_TICK):
                break
            _resend_stalled(live, coll)
    finally:
        close_clients(conns)
    rtts = sorted(coll.rtts)
    return {
        "clients": clients,
        "round_trips": count,
        "rt_per_s": count / max(meter.wall, 1e-9),
        "p50_ms": ns_to_ms(rtts, 0.50),
        "p99_ms": ns_to_ms(rtts, 0.99),
        "rt_retries": coll.rt_retries,
        "rt_unanswered": max(coll.rt_outstanding, 0),
        **meter.metrics(count, "rt"),
        **_health(coll, conns, errors),
    }


async def unicast(
    ep: Endpoint,
    probe: ServerProbe,
    *,
    clients: int = 1000,
    concurrency: int = 16,
    duration: float = 5.0,
    max_requests: int = 500_000,
) -> dict[str, float]:
    """``POST /send_message`` round-robin to distinct clients from ``concurrency`` HTTP
    connections in closed loops for ``duration`` s; requests/s and end-to-end latency."""
    coll = Collector()
    coll.u_seen = bytearray(max_requests)
    conns, errors = await connect_clients(ep, coll, clients)
    live_ids = [c.client_id for c in conns if c.ready.done() and not c.ready.exception()]
    https = [await HttpConn.open(ep) for _ in range(concurrency)]
    counter = itertools.count()
    accepted = 0
    http_errors = 0
    statuses: dict[str, int] = {}
    stop_at = 0.0

    async def worker(http: HttpConn) -> None:
        nonlocal accepted, http_errors
        while time.perf_counter() < stop_at:
            k = next(counter)
            if k >= max_requests:
                return
            status, body = await http.post(
                "/send_message",
                {"client_id": live_ids[k % len(live_ids)], "content": f"{k}:{MONO()}"},
            )
            if status == 200:
                accepted += 1
                st = orjson.loads(body).get("status", "?")
                statuses[st] = statuses.get(st, 0) + 1
            else:
                http_errors += 1

    try:
        stop_at = time.perf_counter() + 0.5  # warm-up
        await asyncio.gather(*(worker(h) for h in https))
        await wait_for(coll, lambda: coll.u_delivered >= accepted, idle=5, total=10)
        base_accepted, base_delivered, base_k = accepted, coll.u_delivered, next(counter)
        coll.latencies.clear()
        statuses.clear()
        meter = Meter(probe)
        stop_at = time.perf_counter() + duration
        async with asyncio.timeout(duration + 30):
            await asyncio.gather(*(worker(h) for h in https))
        meter.stop()
        requests = accepted - base_accepted
        await wait_for(coll, lambda: coll.u_delivered >= accepted, idle=5, total=30)
    finally:
        for h in https:
            h.close()
        close_clients(conns)
    sent_end = min(next(counter), max_requests)
    lat = sorted(coll.latencies)
    lost = sum(1 for k in range(base_k + 1, sent_end) if not coll.u_seen[k])
    return {
        "clients": clients,
        "concurrency": concurrency,
        "requests": requests,
        "req_per_s": requests / max(meter.wall, 1e-9),
        "e2e_p50_ms": ns_to_ms(lat, 0.50),
        "e2e_p99_ms": ns_to_ms(lat, 0.99),
        **meter.metrics(requests, "req"),
        "delivered": coll.u_delivered - base_delivered,
        "lost": lost - http_errors,
        "duplicates": coll.duplicates,
        "http_errors": http_errors,
        "queued": statuses.get("queued", 0),
        **_health(coll, conns, errors),
    }


SCENARIOS = {
    "fanout": fanout,
    "paced": paced,
    "idle": idle,
    "roundtrip": roundtrip,
    "unicast": unicast,
}
