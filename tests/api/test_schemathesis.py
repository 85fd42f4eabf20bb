"""Schemathesis against the live OpenAPI document of a real gateway.

The gateway runs in a background thread with its own event loop on free loopback ports (the
schemathesis pytest integration makes blocking ``requests`` calls, which must not share
pytest-aiohttp's loop). Each operation gets schemathesis's explicit examples, coverage cases
(boundaries, missing and wrong fields) and a bounded number of fuzzed cases, and every answer
goes through all of schemathesis's checks: no 5xx, status codes / content types / headers /
bodies as documented, invalid data rejected, valid data accepted, unsupported methods 405,
and authentication enforced (each 2xx is replayed without and with a wrong token).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings

from api.openapi import build_spec
from server.app import create_apps
from server.config import Settings
from tests.conftest import API_TOKEN

#: Fuzzed cases per operation (explicit examples and coverage cases come on top). A deeper
#: run: ``SCHEMATHESIS_MAX_EXAMPLES=500 SCHEMATHESIS_RANDOM=1 pytest tests/api``.
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "20"))
#: The suite is deterministic (the same cases every run) unless SCHEMATHESIS_RANDOM is set.
DERANDOMIZE = not os.environ.get("SCHEMATHESIS_RANDOM")
START_TIMEOUT = 10.0


class ThreadedGateway:
    """Both apps on loopback in a daemon thread with its own event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gateway",
                                       daemon=True)
        self.runners: list[web.AppRunner] = []
        self.ws_port = 0
        self.api_port = 0
        self._client_task: asyncio.Task[None] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(START_TIMEOUT)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(START_TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(START_TIMEOUT)
        self.loop.close()

    async def _start(self) -> None:
        ws_app, api_app = create_apps(self.settings)
        ports = []
        for app in (ws_app, api_app):
            runner = web.AppRunner(app, shutdown_timeout=1.0)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.runners.append(runner)
            ports.append(runner.addresses[0][1])
        self.ws_port, self.api_port = ports
        connected = asyncio.get_running_loop().create_future()
        self._client_task = asyncio.get_running_loop().create_task(self._client(connected))
        await connected

    async def _client(self, connected: asyncio.Future[None]) -> None:
        """One connected client, subscribed to a channel, so listings are not empty."""
        url = f"ws://127.0.0.1:{self.ws_port}/ws?client_id=fixture-client&client_type=probe"
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            await ws.receive()
            await ws.send_json({"type": "subscribe", "data": {"channel": "news"}})
            await ws.receive()
            connected.set_result(None)
            async for _ in ws:
                pass

    async def _stop(self) -> None:
        if self._client_task is not None:
            self._client_task.cancel()
            await asyncio.gather(self._client_task, return_exceptions=True)
        for runner in reversed(self.runners):
            await runner.cleanup()


@pytest.fixture(scope="module")
def threaded_gateway() -> Iterator[ThreadedGateway]:
    gateway = ThreadedGateway(Settings(
        ws_host="127.0.0.1", api_host="127.0.0.1", api_token=API_TOKEN, ws_port=0,
        api_port=1, call_tool_timeout=0.5, shutdown_timeout=1.0, log_level="warning",
        # Generated cases reuse idempotency keys with other bodies, which is rightly a 422
        # (idempotency_key_reused); keys expiring at once keep every case independent.
        idempotency_ttl=0.0))
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def http_session() -> Iterator[requests.Session]:
    """One keep-alive session for every case (a new connection per case is slow)."""
    with requests.Session() as session:
        session.trust_env = False  # loopback only: skip the per-request proxy lookup
        yield session


# The document the gateway serves at /openapi.json (test_openapi checks they are identical).
# Loaded at import rather than through ``schemathesis.pytest.from_fixture``, whose lazy loader
# does not run under pytest 9.
schema = schemathesis.openapi.from_dict(build_spec())


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: Any, value: Any) -> bytes:
    """POST /stream bodies: the generated string is the NDJSON text."""
    return value.encode() if isinstance(value, str) else bytes(str(value), "utf-8")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=DERANDOMIZE, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_honours_its_document(case: Any, threaded_gateway: ThreadedGateway,
                                  http_session: requests.Session) -> None:
    case.call_and_validate(base_url=threaded_gateway.api_url, session=http_session,
                           headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=10)
