"""The browser client (``clients/js/switchboard.js``) in a real headless Chromium, against two
Redis-backed gateway processes (a real redis-server), through a TCP proxy the test cuts.

One page session, several checks: the page imports the module from the gateway's
``/switchboard.js`` and connects with ``new Switchboard()`` (the URL it was loaded from). It
answers a ``POST /call_tool`` through a registered tool; receives 500 messages sent through the
API of node b while its socket goes to node a when a is up, while the test resets its TCP
connection three times, restarts node a (SIGTERM: 1001, resume on b, later back on the
restarted a from Redis) and reloads the page (the session and ``last_seq`` come back from
sessionStorage), and ends with every message exactly once and in order; then it shows ``recovered: false`` after more was sent while it was away than
the history keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Page, expect

from tests.browser.test_dashboard import chromium
from tests.redis.test_processes import Node, ready, spawn

pytestmark = [pytest.mark.browser, pytest.mark.redis]

MESSAGES = 500
HISTORY_LIMIT = 600  # > MESSAGES plus the tool frames: the 500 always recover fully
CLIENT_ID = "page-1"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>switchboard-client test page</title></head>
<body>
<p>state: <span id="state">loading</span>; recovered: <span id="recovered">–</span>;
   received: <span id="count">0</span></p>
<script type="module">
import { Switchboard } from "{{gateway}}/switchboard.js";

const received = JSON.parse(sessionStorage.getItem("received") || "[]");
window.received = received;
window.connections = [];
function show(e) {
  document.getElementById("recovered").textContent = String(e.recovered);
}
window.start = async () => {
  // No URL: the gateway this module was loaded from (through the test's proxy).
  const sb = new Switchboard({ clientId: "page-1", clientType: "browser",
                               backoff: { initial: 50, max: 400 } });
  window.sb = sb;
  sb.on("message", (frame) => {
    received.push(frame.data.n);
    sessionStorage.setItem("received", JSON.stringify(received));
    document.getElementById("count").textContent = String(received.length);
  });
  sb.on("connected", (e) => { window.connections.push(e.resumed); show(e); });
  sb.on("connecting", () => { document.getElementById("state").textContent = "connecting"; });
  sb.on("connected", () => { document.getElementById("state").textContent = "connected"; });
  sb.tools.register("double", ({ x }) => ({ doubled: x * 2, by: navigator.userAgent.includes("Chrome") ? "chromium" : "?" }));
  await sb.connect();
};
await window.start();
window.ready = true;
</script>
</body></html>
"""


class CuttableProxy:
    """A TCP proxy in front of the gateway nodes, like a load balancer: each new connection
    goes to the first node that accepts it, in order; :meth:`cut` aborts every connection at
    once, as a network failure would (no close frame)."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.transports: set[asyncio.BaseTransport] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        for node in self.nodes:
            with contextlib.suppress(OSError):
                upstream = await asyncio.open_connection("127.0.0.1", node.ws_port)
                break
        if upstream is None:
            writer.transport.abort()
            return
        up_reader, up_writer = upstream
        self.transports |= {writer.transport, up_writer.transport}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.transports -= {writer.transport, up_writer.transport}

    def cut(self) -> int:
        cut = len(self.transports)
        for transport in list(self.transports):
            transport.abort()
        self.transports.clear()
        return cut

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
def node_env(redis_url: str) -> dict[str, str]:
    return {"BROKER_URL": redis_url, "HISTORY_LIMIT": str(HISTORY_LIMIT), "SESSION_TTL": "120"}


@pytest.fixture
async def cluster(tmp_path: Path, node_env: dict[str, str]) -> AsyncIterator[list[Node]]:
    nodes = [spawn(tmp_path, "a", NODE_ID="a", **node_env),
             spawn(tmp_path, "b", NODE_ID="b", **node_env)]
    async with aiohttp.ClientSession() as http:
        for node in nodes:
            await ready(http, node)
    yield nodes
    for node in nodes:
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()


async def post(http: aiohttp.ClientSession, node: Node, path: str, body: dict[str, Any]
               ) -> tuple[int, Any]:
    """POST to the API, retrying what a caller would retry (a node restarting: 503 or a
    refused connection). Sends carry an idempotency key, so a retry never delivers twice."""
    for _ in range(200):
        try:
            async with http.post(f"{node.api}{path}", json=body) as resp:
                if resp.status not in (502, 503):
                    return resp.status, await resp.json()
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)  # the node is restarting; bounded by the loop count
    raise AssertionError(f"{path} kept failing")


async def received(page: Page) -> list[int]:
    return await page.evaluate("window.received")


async def test_browser_client_exactly_once_through_cuts_restarts_and_a_reload(
        tmp_path: Path, cluster: list[Node], node_env: dict[str, str]) -> None:
    a, b = cluster
    proxy = CuttableProxy(cluster)
    await proxy.start()
    # The page comes from its own origin (an app's), the module from the gateway's port.
    app = web.Application()
    html = PAGE.replace("{{gateway}}", f"http://127.0.0.1:{proxy.port}")

    async def serve_page(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    app.router.add_get("/", serve_page)
    site = TestServer(app, host="127.0.0.1")
    await site.start_server()
    async with chromium() as browser, aiohttp.ClientSession() as http:
        page = await browser.new_page()
        crashes: list[str] = []
        page.on("pageerror", lambda exc: crashes.append(str(exc)))
        await page.goto(str(site.make_url("/")))
        await page.wait_for_function("window.ready === true")
        await expect(page.locator("#state")).to_have_text("connected")

        # A tool registered in the page answers POST /call_tool (through the other node).
        status, answer = await post(http, b, "/call_tool", {
            "client_id": CLIENT_ID, "tool_name": "double", "params": {"x": 21}, "timeout": 10})
        assert status == 200, answer
        assert answer["result"] == {"doubled": 42, "by": "chromium"}

        # 500 messages while the connection is cut, a node restarts and the page reloads.
        # The sender never waits for the page; it only holds at two gates until the restart
        # and the reload are done, so that what follows them still happens mid-stream.
        progress = 0
        gates = {300: asyncio.Event(), 450: asyncio.Event()}

        async def send_all() -> None:
            nonlocal progress
            for n in range(MESSAGES):
                if n in gates:
                    await gates[n].wait()
                status, body = await post(http, b, "/send_message", {
                    "client_id": CLIENT_ID, "content": f"m{n}", "data": {"n": n},
                    "idempotency_key": f"page-1-{n}"})
                assert status in (200, 202), body
                progress = n + 1

        async def reached(n: int) -> None:
            while progress < n:
                if sender.done():
                    sender.result()
                    raise AssertionError(f"the sender ended at {progress} before {n}")
                await asyncio.sleep(0.005)  # polls the sender's progress; no ordering role

        async def resumed(connections: int) -> None:
            """Wait for the page's next connection, so disruptions do not merge."""
            await page.wait_for_function(f"window.connections.length >= {connections}")

        sender = asyncio.create_task(send_all())
        try:
            for connections, at in ((2, 60), (3, 140)):
                await reached(at)
                assert proxy.cut() > 0  # a live connection was reset
                await resumed(connections)
            await reached(200)
            # SIGTERM (1001) while sends go on through b: the page resumes on b (a is down).
            assert await asyncio.to_thread(a.stop) == 0, a.output()
            await resumed(4)
            restarted = spawn(tmp_path, "a2", ports=(a.ws_port, a.api_port), NODE_ID="a",
                              **node_env)
            cluster[0] = restarted
            await ready(http, restarted)
            gates[300].set()
            await reached(330)
            await page.reload()  # mid-stream: same session, same last_seq
            await page.wait_for_function("window.ready === true")
            gates[450].set()
            await reached(470)
            assert progress < MESSAGES
            assert proxy.cut() > 0  # back on the restarted node a, resumed from Redis
            await sender
        finally:
            sender.cancel()
        await page.wait_for_function(f"window.received.length >= {MESSAGES}", timeout=30000)
        got = await received(page)
        assert got == list(range(MESSAGES)), (len(got), [n for n in got if got.count(n) > 1][:5])
        connections = await page.evaluate("window.connections")
        assert connections and all(connections), connections  # every reconnect resumed
        stats = await page.evaluate("window.sb.stats")  # since the reload
        assert stats["resumes"] >= 1 and stats["recoveryFailures"] == 0, stats

        # Away longer than the history reaches: the page is told recovered: false.
        await page.evaluate("window.sb.close()")
        last = (await received(page))[-1]
        for n in range(last + 1, last + 1 + HISTORY_LIMIT + 10):
            status, body = await post(http, b, "/send_message", {
                "client_id": CLIENT_ID, "content": "while away", "data": {"n": n}})
            assert status == 202, body
        await page.evaluate("window.start()")  # a new client in the tab: resumes from storage
        await expect(page.locator("#recovered")).to_have_text("false")
        assert not crashes, crashes
        await page.close()
    await proxy.close()
    await site.close()
