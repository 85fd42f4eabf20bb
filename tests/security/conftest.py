"""Security tests run both apps exactly as production does: same ``AppRunner`` options
(access log off, REQUEST_HEADER_TIMEOUT as the keep-alive/header timer), so a test that proves
"the secret never reaches the logs" or "a slow client is cut off" proves it of the real setup.

``make_gateway`` here overrides the one in ``tests/conftest.py`` with the same signature;
:func:`start_gateway` / :func:`stop_gateway` serve tests that drive their own event loop
(the hypothesis tests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from server.app import create_apps
from server.config import Settings
from server.router import MessageRouter
from server.runner import runner_options
from tests.conftest import API_TOKEN, LiveGateway, MakeGateway


async def start_gateway(*, router: MessageRouter | None = None, api_token: str = API_TOKEN,
                        **overrides: Any) -> LiveGateway:
    values: dict[str, Any] = {"ws_host": "127.0.0.1", "api_host": "127.0.0.1",
                              "api_token": api_token, "ws_port": 0, "api_port": 1,
                              "shutdown_timeout": 2.0}
    values.update(overrides)
    settings = Settings(**values)
    settings.check()
    ws_app, api_app = create_apps(settings, router=router)
    ws_server = TestServer(ws_app, host="127.0.0.1")
    api_server = TestServer(api_app, host="127.0.0.1")
    await ws_server.start_server(**runner_options(settings))
    await api_server.start_server(**runner_options(settings))
    return LiveGateway(settings, ws_server, api_server, aiohttp.ClientSession(), api_token)


async def stop_gateway(live: LiveGateway) -> None:
    for client in live.clients:
        if not client.ws.closed:
            await client.ws.close()
    await live.http.close()
    await live.ws_server.close()
    await live.api_server.close()


@pytest.fixture
async def make_gateway() -> AsyncIterator[MakeGateway]:
    started: list[LiveGateway] = []

    async def factory(**kwargs: Any) -> LiveGateway:
        live = await start_gateway(**kwargs)
        started.append(live)
        return live

    yield factory
    for live in started:
        await stop_gateway(live)
