"""Shared fixtures: the gateway on real loopback ports, on one node or two.

``make_gateway(**settings)`` starts a gateway and returns a :class:`LiveGateway` with helpers
to connect clients and call the API, so a test can go HTTP in, WebSocket out.
``live_gateway`` is one with default test settings.

Topologies, by the ``topology`` fixture parameter (one test body, every topology):

* ``one_node``: one process, ``BROKER_URL=memory://``: both apps over one registry.
* ``two_nodes``: nodes ``a`` and ``b`` over a real redis-server (tests/conftest_redis.py).
  Clients connect to node ``b``; the API is called on node ``a`` — the node that does not
  hold them — so every delivery crosses nodes.

Tests under ``tests/api``, ``tests/handlers``, ``tests/server``, ``tests/seeds``,
``tests/security`` and ``tests/client`` that use a gateway run on both (the two-node runs are
marked ``redis``). A test that cannot apply to two nodes says why: ``@pytest.mark.one_node("reason")``
(it is then reported as skipped on ``two_nodes``, with that reason).

Tests never sleep to synchronise: :meth:`WSClient.recv` waits for the next frame with a
timeout, and :func:`wait_for` / :func:`eventually` poll with a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from api.asyncapi import server_frame_checker
from server.app import create_apps
from server.config import Settings
from server.gateway import Gateway
from server.keys import CONNECTIONS, GATEWAY
from server.router import MessageRouter
from server.runner import runner_options

pytest_plugins = ["tests.conftest_redis", "tests.backends", "tests.processes"]

API_TOKEN = "test-token"
RECV_TIMEOUT = 5.0
ONE_NODE = "one_node"
TWO_NODES = "two_nodes"
#: Where every test that starts a gateway runs on both topologies.
BOTH_TOPOLOGIES = ("api", "handlers", "server", "seeds", "security", "client")
TESTS = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "one_node(reason): cannot apply to two nodes, because "
                                       "<reason> (skipped there, with the reason)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "topology" not in metafunc.fixturenames:
        return
    where = Path(str(metafunc.definition.path)).resolve().relative_to(TESTS).parts
    if where[0] not in BOTH_TOPOLOGIES:
        return
    marker = metafunc.definition.get_closest_marker("one_node")
    if marker is not None:
        reason = marker.args[0] if marker.args else ""
        assert reason, f"{metafunc.definition.nodeid}: @pytest.mark.one_node needs a reason"
        # Not generated at all for two nodes (CI runs no skipped tests); the reason stays
        # in the source, beside the test.
        metafunc.parametrize("topology", [ONE_NODE], indirect=True)
        return
    metafunc.parametrize("topology", [ONE_NODE, pytest.param(TWO_NODES,
                                                              marks=[pytest.mark.redis])],
                         indirect=True)

#: Every frame a test receives through :class:`WSClient` is checked against the AsyncAPI
#: document the gateway publishes (/asyncapi.json): the schemas cannot drift from what the
#: server really sends.
check_server_frame = server_frame_checker()


def assert_frame_fits_protocol(frame: dict[str, Any]) -> None:
    problems = check_server_frame(frame)
    if problems:
        raise AssertionError(f"server frame does not fit /asyncapi.json: {problems}: "
                             f"{str(frame)[:500]}")


async def wait_for(condition: Callable[[], bool], timeout: float = RECV_TIMEOUT,  # noqa: ASYNC109
                   what: str = "condition") -> None:
    """Wait until ``condition()`` is true, checking every event-loop tick (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def eventually(probe: Callable[[], Awaitable[Any]], accept: Callable[[Any], bool],
                     wait: float = 15.0, what: str = "condition") -> Any:
    """Call ``probe`` until ``accept(result)``; returns that result, fails after ``wait`` s."""
    deadline = time.monotonic() + wait
    while True:
        result = await probe()
        if accept(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {result!r}")
        await asyncio.sleep(0.005)


class WSClient:
    """A test client over aiohttp's WebSocket client."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, hello: dict[str, Any]) -> None:
        self.ws = ws
        self.hello = hello
        self.frames: list[dict[str, Any]] = [hello]

    @property
    def client_id(self) -> str:
        return self.hello["data"]["client_id"]

    @property
    def session_token(self) -> str:
        return self.hello["data"]["session_token"]

    async def send(self, frame_type: str, data: dict[str, Any] | None = None,
                   message_id: str | None = None, **extra: Any) -> None:
        frame: dict[str, Any] = {"type": frame_type, "data": data or {}, **extra}
        if message_id is not None:
            frame["message_id"] = message_id
        await self.ws.send_str(orjson.dumps(frame).decode())

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:  # noqa: ASYNC109
        """The next text frame, decoded. Fails on close or timeout."""
        msg = await self.ws.receive(timeout=timeout)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"expected a text frame, got {msg.type!r} {msg.data!r} "
                                 f"{msg.extra!r}")
        frame = orjson.loads(msg.data)
        assert_frame_fits_protocol(frame)
        self.frames.append(frame)
        return frame

    async def recv_type(self, frame_type: str, timeout: float = RECV_TIMEOUT  # noqa: ASYNC109
                        ) -> dict[str, Any]:
        """Skip frames until one of ``frame_type`` arrives."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.recv(timeout=max(0.01, deadline - time.monotonic()))
            if frame["type"] == frame_type:
                return frame

    async def recv_close(self, timeout: float = RECV_TIMEOUT) -> int | None:  # noqa: ASYNC109
        """Read until the server closes; returns the close code: the one in the server's
        close frame (aiohttp's ``close_code`` may say 1006 when the server drops the TCP
        connection right after that frame)."""
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.ws.receive(timeout=max(0.01, deadline - time.monotonic()))
            if msg.type is aiohttp.WSMsgType.CLOSE:
                return int(msg.data)
            if msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                return self.ws.close_code
            if msg.type is aiohttp.WSMsgType.ERROR:
                return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()


@dataclass
class Node:
    """One gateway process's two apps."""

    ws_server: TestServer
    api_server: TestServer

    @property
    def gateway(self) -> Gateway:
        return self.ws_server.app[GATEWAY]

    @property
    def connections(self) -> set[Any]:
        return self.ws_server.app[CONNECTIONS]


@dataclass
class LiveGateway:
    settings: Settings
    nodes: list[Node]
    http: aiohttp.ClientSession
    api_token: str
    clients: list[WSClient] = field(default_factory=list)

    @property
    def topology(self) -> str:
        return ONE_NODE if len(self.nodes) == 1 else TWO_NODES

    @property
    def api_node(self) -> Node:
        """The node :meth:`api` calls."""
        return self.nodes[0]

    @property
    def ws_node(self) -> Node:
        """The node :meth:`connect` connects to (on two nodes, not the API's)."""
        return self.nodes[-1]

    @property
    def gateway(self) -> Gateway:
        """The gateway, on one node. On two, say which: :attr:`holder` (the node holding the
        clients' sessions) or ``api_node.gateway``."""
        if len(self.nodes) != 1:
            raise AssertionError("live.gateway is ambiguous on two nodes: use live.holder or "
                                 "live.api_node.gateway")
        return self.nodes[0].gateway

    @property
    def holder(self) -> Gateway:
        """The gateway of the node clients connect to, which holds their sessions."""
        return self.ws_node.gateway

    @property
    def ws_server(self) -> TestServer:
        return self.ws_node.ws_server

    @property
    def api_server(self) -> TestServer:
        return self.api_node.api_server

    @property
    def ws_app(self) -> web.Application:
        return self.ws_node.ws_server.app

    @property
    def connections(self) -> set[Any]:
        """The sockets of the node clients connect to."""
        return self.ws_node.connections

    @property
    def ws_url(self) -> str:
        return str(self.ws_server.make_url("/")).replace("http://", "ws://")

    @property
    def api_url(self) -> str:
        return str(self.api_server.make_url("")).rstrip("/")

    async def client_info(self, client_id: str) -> dict[str, Any]:
        """``GET /clients/{id}`` (asserting 200): what the API says of a session."""
        status, body = await self.api("GET", f"/clients/{client_id}")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    async def session_count(self) -> int:
        """How many sessions the API lists (every node's)."""
        status, body = await self.api("GET", "/clients")
        assert status == 200, body
        return int(body["total"])

    async def offline(self, client_id: str) -> dict[str, Any]:
        """Wait until the API reports the session kept but offline (its socket dropped)."""
        info: dict[str, Any] = await eventually(
            lambda: self.api("GET", f"/clients/{client_id}"),
            lambda r: r[0] == 200 and r[1]["connected"] is False,
            what=f"{client_id} to be seen as offline")
        return info[1]  # type: ignore[no-any-return]

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_token}"} if self.api_token else {}

    async def connect(self, path: str = "/", *, expect_hello: bool = True,
                      headers: dict[str, str] | None = None, node: Node | None = None,
                      **query: Any) -> WSClient:
        """A client on :attr:`ws_node` (or ``node``: on two nodes, ``live.api_node`` puts it
        beside the API, so a test can have one session on each node)."""
        params = {k: str(v) for k, v in query.items() if v is not None}
        server = (node or self.ws_node).ws_server
        ws = await self.http.ws_connect(server.make_url(path), params=params,
                                        headers=headers, autoping=True)
        if not expect_hello:
            return WSClient(ws, {})
        msg = await ws.receive(timeout=RECV_TIMEOUT)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        hello = orjson.loads(msg.data)
        assert hello["type"] == "connection_established", hello
        assert_frame_fits_protocol(hello)
        client = WSClient(ws, hello)
        self.clients.append(client)
        return client

    async def connect_observer(self, **query: Any) -> WSClient:
        """A connection that may read system channels (``tool_activity``): opened with an
        observer ticket from ``POST /observer_ticket``, as the dashboard does."""
        status, ticket = await self.api("POST", "/observer_ticket")
        assert status == 200, ticket
        return await self.connect(observer_ticket=ticket["ticket"], **query)

    async def api(self, method: str, path: str, json: Any = None, *,
                  headers: dict[str, str] | None = None, data: Any = None,
                  auth: bool = True) -> tuple[int, Any]:
        """Call the API; returns (status, decoded JSON or text)."""
        hdrs = dict(self.auth() if auth else {})
        hdrs.update(headers or {})
        async with self.http.request(method, f"{self.api_url}{path}", json=json, data=data,
                                     headers=hdrs) as resp:
            body = await resp.read()
            try:
                return resp.status, orjson.loads(body)
            except orjson.JSONDecodeError:
                return resp.status, body.decode()


MakeGateway = Callable[..., Awaitable[LiveGateway]]


async def start_gateway(*, topology: str = ONE_NODE, redis_url: str | None = None,
                        router: MessageRouter | None = None, api_token: str = API_TOKEN,
                        **overrides: Any) -> LiveGateway:
    """The gateway on free loopback ports — one node, or nodes ``a`` and ``b`` over
    ``redis_url`` — with production's ``AppRunner`` options (access log off, the
    header/keep-alive timer), so what a test proves holds for the real setup."""
    values: dict[str, Any] = {"ws_host": "127.0.0.1", "api_host": "127.0.0.1",
                              "api_token": api_token, "ws_port": 0, "api_port": 1,
                              "shutdown_timeout": 2.0}
    values.update(overrides)
    if topology == TWO_NODES:
        assert redis_url is not None
        configs = [Settings(**{**values, "broker_url": redis_url, "node_id": name})
                   for name in ("a", "b")]
    else:
        configs = [Settings(**values)]
    nodes = []
    for settings in configs:
        ws_app, api_app = create_apps(settings, router=router)
        node = Node(TestServer(ws_app, host="127.0.0.1"), TestServer(api_app, host="127.0.0.1"))
        await node.ws_server.start_server(**runner_options(settings))
        await node.api_server.start_server(**runner_options(settings))
        nodes.append(node)
    return LiveGateway(configs[0], nodes, aiohttp.ClientSession(), api_token)


async def stop_gateway(live: LiveGateway) -> None:
    for client in live.clients:
        if not client.ws.closed:
            await client.ws.close()
    await live.http.close()
    for node in reversed(live.nodes):
        await node.ws_server.close()
        await node.api_server.close()


@pytest.fixture
def topology(request: pytest.FixtureRequest) -> str:
    """``one_node`` unless the test is parametrized over both (see the module doc)."""
    return str(getattr(request, "param", ONE_NODE))


@pytest.fixture
async def make_gateway(topology: str, request: pytest.FixtureRequest
                       ) -> AsyncIterator[MakeGateway]:
    """Factory: ``await make_gateway(history_limit=5, router=...)`` starts a gateway on this
    test's topology."""
    redis_url = request.getfixturevalue("redis_url") if topology == TWO_NODES else None
    started: list[LiveGateway] = []

    async def factory(**kwargs: Any) -> LiveGateway:
        live = await start_gateway(topology=topology, redis_url=redis_url, **kwargs)
        started.append(live)
        return live

    yield factory
    for live in started:
        await stop_gateway(live)


@pytest.fixture
async def live_gateway(make_gateway: MakeGateway) -> LiveGateway:
    return await make_gateway()
