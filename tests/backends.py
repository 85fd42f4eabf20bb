"""A real local HTTP backend for webhook tests (a pytest plugin listed in tests/conftest.py).

``backend`` starts an aiohttp server on a loopback port standing in for a chat, tool,
subscribe, publish or events backend. Set ``handler`` per test; every request's raw body,
decoded JSON and headers are recorded, and ``arrived`` is set on each request so a test waits
for the event instead of sleeping. ``release`` frees handlers that hang on purpose.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest_redis import unused_port

BackendHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Backend:
    server: TestServer | None = None
    handler: BackendHandler | None = None
    requests: list[Any] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/hook"))

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.bodies.append(body)
        self.requests.append(orjson.loads(body) if body else None)
        self.headers.append(dict(request.headers))
        async with self.arrived:
            self.arrived.notify_all()
        assert self.handler is not None
        return await self.handler(request)

    async def wait_requests(self, count: int, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until at least ``count`` requests arrived."""
        async with asyncio.timeout(timeout):
            async with self.arrived:
                await self.arrived.wait_for(lambda: len(self.requests) >= count)


def signature_ok(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a backend does with WEBHOOK_SECRET: recompute the HMAC over the raw body."""
    timestamp = headers["X-Switchboard-Timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body,
                                    hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["X-Switchboard-Signature"], expected)


def closed_port_url() -> str:
    """A loopback URL nothing listens on (see ``unused_port``)."""
    return f"http://127.0.0.1:{unused_port()}/hook"


def reply_json(body: Any, status: int = 200) -> BackendHandler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(body, status=status)
    return handler


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    fake = Backend()
    app = web.Application()
    app.router.add_post("/hook", fake.dispatch)
    fake.server = TestServer(app, host="127.0.0.1")
    await fake.server.start_server()
    yield fake
    fake.release.set()
    await fake.server.close()
