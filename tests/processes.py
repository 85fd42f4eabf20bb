"""Real gateway processes for tests: ``run_websocket_server.py`` started as an operator would,
configured through the environment only, on free loopback ports.

``spawn(tmp_path, name, **env)`` starts one (its output goes to ``{name}.log``); the ``nodes``
fixture kills whatever a test left running; ``until`` polls a probe against a process with a
deadline (and fails at once if the process died); ``ready`` waits for ``GET /ready``.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import pytest

from tests.conftest import WSClient
from tests.conftest_redis import free_port

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0


@dataclass
class Node:
    proc: subprocess.Popen[bytes]
    ws_port: int
    api_port: int
    log: Path

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def rss(self) -> int:
        """The process's resident memory in bytes."""
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def stop(self) -> int:
        """SIGTERM, then the exit status (the test fails if it does not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"process did not exit on SIGTERM:\n{self.output()}") from None


def spawn(tmp_path: Path, name: str, *, ports: tuple[int, int] | None = None, **env: str
          ) -> Node:
    """Start ``run_websocket_server.py`` configured by ``env``, on free ports or ``ports``
    (WebSocket, API: a restarted node keeps its addresses)."""
    ws_port, api_port = ports or (free_port(), free_port())
    log = tmp_path / f"{name}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("WS_", "API_"))}
    full_env.update({"WS_HOST": "127.0.0.1", "WS_PORT": str(ws_port), "API_PORT": str(api_port),
                     "LOG_LEVEL": "info", "SHUTDOWN_TIMEOUT": "3", **env})
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "run_websocket_server.py")],
                                env=full_env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    return Node(proc, ws_port, api_port, log)


def spawn_ready(tmp_path: Path, name: str, **env: str) -> Node:
    """:func:`spawn`, then wait (blocking, for synchronous fixtures) until it answers
    ``GET /health``; a process that exits or never answers fails with its output."""
    node = spawn(tmp_path, name, **env)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if node.proc.poll() is not None:
            raise AssertionError(f"process exited ({node.proc.returncode}):\n{node.output()}")
        try:
            with urllib.request.urlopen(f"{node.api}/health", timeout=1) as resp:
                if resp.status == 200:
                    return node
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            node.proc.kill()
            raise AssertionError(f"process never answered /health:\n{node.output()}")
        time.sleep(0.05)  # polling a separate process; the deadline bounds it


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started
    for node in started:
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as resp:
        return resp.status, orjson.loads(await resp.read())


async def metric(http: aiohttp.ClientSession, node: Node, name: str, **labels: str) -> float:
    """One sample of the process's ``GET /metrics`` (0 when the series is absent)."""
    async with http.get(f"{node.api}/metrics") as resp:
        text = await resp.text()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + wanted + '}') if wanted else ''} (\S+)$"
    found = re.search(pattern, text, flags=re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any],
               method: str = "POST") -> tuple[int, Any]:
    async with http.request(method, url, json=body) as resp:
        return resp.status, orjson.loads(await resp.read())


async def until(probe: Any, accept: Any, node: Node, what: str,
                timeout: float = START_TIMEOUT) -> Any:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while True:
        if node.proc.poll() is not None:
            raise AssertionError(f"process exited ({node.proc.returncode}):\n{node.output()}")
        try:
            result = await probe()
        except aiohttp.ClientError:
            result = None
        if result is not None and accept(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{node.output()}")
        await asyncio.sleep(0.05)  # polling a separate process; the deadline bounds it


async def ready(http: aiohttp.ClientSession, node: Node) -> None:
    await until(lambda: get(http, f"{node.api}/ready"), lambda r: r[0] == 200, node, "/ready")


async def connect(http: aiohttp.ClientSession, node: Node, **query: Any) -> WSClient:
    ws = await http.ws_connect(node.ws, params={k: str(v) for k, v in query.items()})
    msg = await ws.receive(timeout=5)
    hello = orjson.loads(msg.data)
    assert hello["type"] == "connection_established", hello
    return WSClient(ws, hello)
