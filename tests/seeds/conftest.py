"""Clients written from the seeds (``/work/shared/seeds``), run unchanged against a live gateway.

Each module here is one seed. Its client code follows the seed's own text: the paths it
connects to, the frames it sends (verbatim from the seed's examples) and the fields its client
code reads, transcribed into assertions at the same place (a JavaScript ``msg.content`` is
``frame["content"]``, not ``frame["data"]["content"]``). Like the seeds' ``onmessage``
``switch`` statements, a client skips frame types it has no case for.

The gateway runs with nothing but what the seed itself names (its channels, its connection
limit...), and no API token: the seeds' third parties call the API without one, which
Switchboard allows on loopback. Every test runs on both topologies: one node, and two nodes
over a real redis-server with the client on the node the API is *not* called on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import RECV_TIMEOUT, LiveGateway, MakeGateway


@dataclass
class Seed:
    """Where a seed's clients connect (``client``) and where its third party calls the API
    (``api``): the same node, or two nodes of one cluster."""

    client: LiveGateway
    api: LiveGateway

    def url(self, path: str) -> str:
        """A WebSocket URL on the client's node, e.g. ``ws://127.0.0.1:1234/ws/mcplog``."""
        return self.client.ws_url.rstrip("/") + path

    def http_url(self, path: str) -> str:
        """A plain HTTP URL on the WebSocket port (seed 004's REST routes live there)."""
        return str(self.client.ws_server.make_url(path))

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """The third party's HTTP API call (no token, like the seeds' curl lines)."""
        return await self.api.api(method, path, body, auth=False)

    async def visible(self, client_id: str, connected: bool = True) -> None:
        """Wait until the API's node sees the session in that state (a cluster writes sessions
        behind; on one node this is at once)."""
        deadline = time.monotonic() + RECV_TIMEOUT
        while True:
            status, body = await self.call("GET", f"/clients/{client_id}")
            if status == 200 and body["connected"] is connected:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{client_id} never became visible: {status} {body}")
            await asyncio.sleep(0.005)


SeedFactory = Callable[..., Awaitable[Seed]]


@pytest.fixture
async def seed_gateway(make_gateway: MakeGateway) -> AsyncIterator[SeedFactory]:
    """``await seed_gateway(**the_seed_s_own_settings)`` starts the gateway on this test's
    topology (tests/conftest.py): on two nodes, clients connect to one and the API is called
    on the other."""

    async def start(**settings: Any) -> Seed:
        live = await make_gateway(api_token="", **settings)
        return Seed(client=live, api=live)

    yield start


async def on_message(ws: aiohttp.ClientWebSocketResponse, *types: str,
                     timeout: float = RECV_TIMEOUT) -> dict[str, Any]:  # noqa: ASYNC109
    """A seed's ``ws.onmessage``: ``JSON.parse`` every text frame and return the first whose
    ``type`` has a case in the client's ``switch`` (the others fall through, as in the seed)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        assert msg.type is aiohttp.WSMsgType.TEXT, f"socket ended: {msg.type!r} {msg.data!r}"
        data = orjson.loads(msg.data)
        if data.get("type") in types:
            return data
