"""The OpenAPI document matches the API: every route is documented, every answer fits.

``test_every_route_is_documented`` introspects the API app's router; the live tests drive a
real gateway through every operation and many of its error statuses and validate each answer
(status, Content-Type and body) against the document with jsonschema.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from api.openapi import build_spec, documented_operations
from server.app import create_apps
from server.config import Settings
from tests.api.openapi_check import SpecChecker
from tests.conftest import API_TOKEN, LiveGateway, MakeGateway, WSClient

#: HEAD and OPTIONS come with GET and CORS; "*" is the catch-all that answers 404/405
#: (``api.middleware.guard_routes``), not an operation.
IMPLICIT_METHODS = frozenset({"HEAD", "OPTIONS", "*"})


def registered_operations(app: web.Application) -> set[tuple[str, str]]:
    """``{(METHOD, path template)}`` of every route on ``app`` (IMPLICIT_METHODS aside)."""
    found: set[tuple[str, str]] = set()
    for route in app.router.routes():
        if route.method in IMPLICIT_METHODS:
            continue
        resource = route.resource
        assert resource is not None
        # aiohttp spells a regex variable {path:.+}; OpenAPI just {path}.
        template = resource.canonical.replace(":.+}", "}")
        found.add((route.method, template))
    return found


def api_app() -> web.Application:
    _, app = create_apps(Settings(ws_host="127.0.0.1", api_host="127.0.0.1",
                                  api_token=API_TOKEN, ws_port=0, api_port=1))
    return app


def test_every_route_is_documented() -> None:
    registered = registered_operations(api_app())
    documented = documented_operations()
    missing = sorted(registered - documented)
    assert not missing, f"routes missing from the OpenAPI document: {missing}"
    stale = sorted(documented - registered)
    assert not stale, f"documented operations with no route: {stale}"


def test_document_is_well_formed() -> None:
    spec = build_spec()
    assert spec["openapi"].startswith("3.0")
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {"type": "http", "scheme": "bearer",
                                     "description": schemes["bearerAuth"]["description"]}
    assert schemes["apiKeyAuth"]["in"] == "header"
    assert schemes["apiKeyAuth"]["name"] == "X-API-Key"

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if "$ref" in node else []
            return found + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    for ref in refs(spec):
        _, section, kind, name = ref.split("/")
        assert name in spec[section][kind], f"dangling $ref {ref}"

    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            protected = op.get("security", spec["security"]) != []
            if protected:
                for status in ("401", "403", "429"):
                    assert status in op["responses"], f"{method} {path} lacks {status}"
            if "requestBody" in op:
                assert op["requestBody"]["required"] is True
                for status in ("400", "413", "415", "422"):
                    if op["requestBody"]["content"].keys() == {"application/json"}:
                        assert status in op["responses"], f"{method} {path} lacks {status}"
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")):
                    schema = response.get("$ref") or response["content"]["application/json"][
                        "schema"]["$ref"]
                    assert schema.endswith(("Error", "Unauthorized", "Forbidden", "NotFound",
                                            "PayloadTooLarge", "UnsupportedMediaType",
                                            "Unprocessable", "RateLimited", "Unavailable",
                                            "BadRequest", "RequestTimeout")) or status == "503", (
                        f"{method} {path} {status} does not use the error schema")


def test_document_loads_in_schemathesis() -> None:
    import schemathesis

    schema = schemathesis.openapi.from_dict(build_spec())
    labels = {op.ok().label for op in schema.get_all_operations()}
    assert {f"{m} {p}" for m, p in documented_operations()} == labels


async def test_served_document_is_the_spec(live_gateway: LiveGateway) -> None:
    status, body = await live_gateway.api("GET", "/openapi.json", auth=False)
    assert status == 200
    assert body == build_spec()


class Driver:
    """Calls the live API and validates every answer against the document."""

    def __init__(self, live: LiveGateway, checker: SpecChecker) -> None:
        self.live = live
        self.checker = checker

    async def call(self, method: str, template: str, *, path: dict[str, str] | None = None,
                   query: str = "", json: Any = None, data: Any = None, auth: bool = True,
                   headers: dict[str, str] | None = None, expect: int | None = None
                   ) -> tuple[int, Any]:
        url_path = template.format(**(path or {}))
        hdrs = dict(self.live.auth() if auth else {})
        hdrs.update(headers or {})
        url = f"{self.live.api_url}{url_path}{'?' + query if query else ''}"
        async with self.live.http.request(method, url, json=json, data=data, headers=hdrs,
                                          allow_redirects=False) as resp:
            raw = await resp.read()
            ctype = resp.headers.get("Content-Type", "")
            body: Any = raw
            if ctype.startswith("application/json"):
                body = orjson.loads(raw)
            self.checker.check(method, template, resp.status, ctype, body)
            if expect is not None:
                assert resp.status == expect, (method, url_path, resp.status, body)
            return resp.status, body


async def answer_tool_calls(client: WSClient, count: int) -> None:
    """Play a client that answers ``count`` tool_call frames with a tool_result."""
    for _ in range(count):
        frame = await client.recv_type("tool_call")
        await client.send("tool_result", {"call_id": frame["data"]["call_id"],
                                          "result": {"echo": frame["data"]["params"]}})


async def test_every_answer_fits_the_document(make_gateway: MakeGateway) -> None:
    live = await make_gateway(api_max_body=64 * 1024, session_ttl=60.0)
    checker = SpecChecker()
    api = Driver(live, checker)

    # Public pages and liveness.
    for template in ("/health", "/healthz", "/openapi.json", "/asyncapi.json", "/docs",
                     "/dashboard", "/switchboard.js", "/switchboard.d.ts", "/frames.d.ts"):
        await api.call("GET", template, auth=False, expect=200)
    await api.call("GET", "/", auth=False, expect=302)
    await api.call("GET", "/static/{path}", path={"path": "dashboard.js"}, auth=False,
                   expect=200)
    await api.call("GET", "/static/{path}", path={"path": "nope.js"}, auth=False, expect=404)
    await api.call("GET", "/static/swagger-ui/{path}", path={"path": "swagger-ui.css"},
                   auth=False, expect=200)
    await api.call("GET", "/static/swagger-ui/{path}", path={"path": "index.html"},
                   auth=False, expect=404)

    # Auth: missing, wrong, and the X-API-Key spelling.
    await api.call("GET", "/status", auth=False, expect=401)
    await api.call("GET", "/status", auth=False,
                   headers={"Authorization": "Bearer wrong"}, expect=403)
    await api.call("GET", "/status", auth=False, headers={"X-API-Key": API_TOKEN},
                   expect=200)
    await api.call("GET", "/ws/status", expect=200)

    alice = await live.connect(client_id="alice", client_type="browser", user_id="ann")
    await alice.send("subscribe", {"channel": "news"})
    await alice.recv_type("subscribed")
    bob = await live.connect(client_id="bob", user_id="bo")
    await bob.close()
    live.clients.remove(bob)
    await live.offline("bob")

    await api.call("GET", "/clients", expect=200)
    await api.call("GET", "/clients", query="connected=true&channel=news&limit=5", expect=200)
    await api.call("GET", "/clients", query="limit=0", expect=422)
    await api.call("GET", "/clients", query="connected=maybe", expect=422)
    await api.call("GET", "/clients", query="limit=1&limit=2", expect=422)
    await api.call("GET", "/clients/{client_id}", path={"client_id": "alice"}, expect=200)
    await api.call("GET", "/clients/{client_id}", path={"client_id": "bob"}, expect=200)
    await api.call("GET", "/clients/{client_id}", path={"client_id": "nobody"}, expect=404)
    await api.call("GET", "/clients", query="user_id=ann", expect=200)
    await api.call("GET", "/users/{user_id}", path={"user_id": "ann"}, expect=200)
    await api.call("GET", "/users/{user_id}", path={"user_id": "nobody"}, expect=404)

    # Server-side subscriptions and presence.
    await api.call("POST", "/clients/{client_id}/channels", path={"client_id": "alice"},
                   json={"channel": "sports"}, expect=200)
    await api.call("POST", "/clients/{client_id}/channels", path={"client_id": "alice"},
                   json={"channel": "tool_activity"}, expect=403)
    await api.call("POST", "/clients/{client_id}/channels", path={"client_id": "nobody"},
                   json={"channel": "sports"}, expect=404)
    await api.call("POST", "/clients/{client_id}/channels", path={"client_id": "alice"},
                   json={}, expect=422)
    await api.call("DELETE", "/clients/{client_id}/channels/{channel}",
                   path={"client_id": "alice", "channel": "sports"}, expect=200)
    await api.call("DELETE", "/clients/{client_id}/channels/{channel}",
                   path={"client_id": "nobody", "channel": "sports"}, expect=404)
    await api.call("POST", "/users/{user_id}/channels", path={"user_id": "ann"},
                   json={"channel": "sports"}, expect=200)
    await api.call("POST", "/users/{user_id}/channels", path={"user_id": "ann"},
                   json={"channel": "tool_activity"}, expect=403)
    await api.call("POST", "/users/{user_id}/channels", path={"user_id": "nobody"},
                   json={"channel": "sports"}, expect=404)
    await api.call("DELETE", "/users/{user_id}/channels/{channel}",
                   path={"user_id": "ann", "channel": "sports"}, expect=200)
    await api.call("DELETE", "/users/{user_id}/channels/{channel}",
                   path={"user_id": "nobody", "channel": "sports"}, expect=404)
    await api.call("GET", "/channels/{channel}/presence", path={"channel": "news"},
                   expect=200)
    await api.call("GET", "/channels/{channel}/presence", path={"channel": "news"},
                   query="limit=0", expect=422)

    # Delivery.
    await api.call("POST", "/send_message", json={"client_id": "alice", "content": "hi"},
                   expect=200)
    await api.call("POST", "/send_message", json={"client_id": "bob", "content": "later"},
                   expect=202)
    await api.call("POST", "/send_message", json={"client_id": "alice", "content": "again",
                                                   "idempotency_key": "k1"}, expect=200)
    await api.call("POST", "/send_message", json={"client_id": "alice", "content": "again"},
                   headers={"Idempotency-Key": "k1"}, expect=200)
    await api.call("POST", "/send_message", json={"client_id": "nobody", "content": "x"},
                   expect=404)
    await api.call("POST", "/send_message", json={"user_id": "ann", "content": "x"},
                   expect=200)
    await api.call("POST", "/send_message", json={"user_id": "bo", "content": "x"},
                   expect=202)
    await api.call("POST", "/send_message", json={"user_id": "nobody", "content": "x"},
                   expect=404)
    await api.call("POST", "/send_message", json={"user_id": "ann", "client_id": "alice",
                                                   "content": "x"}, expect=422)
    await api.call("POST", "/send_message", json={"content": "x"}, expect=422)
    await api.call("POST", "/send_message", json={"client_id": "alice"}, expect=422)
    await api.call("POST", "/send_message", data=b"{not json",
                   headers={"Content-Type": "application/json"}, expect=400)
    await api.call("POST", "/send_message", data=b"[1]",
                   headers={"Content-Type": "application/json"}, expect=400)
    await api.call("POST", "/send_message", data=b"client_id=alice",
                   headers={"Content-Type": "text/plain"}, expect=415)
    await api.call("POST", "/send_message",
                   json={"client_id": "alice", "content": "x" * (100 * 1024)}, expect=413)
    await api.call("POST", "/send_message", auth=False, json={"client_id": "alice"},
                   expect=401)

    await api.call("POST", "/broadcast", json={"message_type": "mcp_event", "data": {"a": 1}},
                   expect=200)
    await api.call("POST", "/broadcast", json={"message_type": "news", "channel": "news",
                                               "client_type": "browser"}, expect=200)
    await api.call("POST", "/broadcast", json={"data": {}}, expect=422)

    await api.call("POST", "/stream/{client_id}", path={"client_id": "alice"},
                   data=b"hello stream", headers={"Content-Type": "text/plain"}, expect=200)
    await api.call("POST", "/stream/{client_id}", path={"client_id": "bob"},
                   data=b"for later", headers={"Content-Type": "text/plain"}, expect=202)
    await api.call("POST", "/stream/{client_id}", path={"client_id": "alice"},
                   data=b"{}", headers={"Content-Type": "application/json"}, expect=415)
    await api.call("POST", "/stream/{client_id}", path={"client_id": "nobody"},
                   data=b"x", headers={"Content-Type": "text/plain"}, expect=404)

    # Tools: answered, offline, timed out, client gone, unknown client, bad field.
    answering = asyncio.ensure_future(answer_tool_calls(alice, 1))
    await api.call("POST", "/call_tool", json={"client_id": "alice", "tool_name": "echo",
                                               "params": {"x": 1}}, expect=200)
    await answering
    await api.call("POST", "/call_tool", json={"client_id": "bob", "tool_name": "echo"},
                   expect=409)
    await api.call("POST", "/call_tool", json={"client_id": "alice", "tool_name": "echo",
                                               "timeout": 0.05}, expect=504)
    await api.call("POST", "/call_tool", json={"client_id": "nobody", "tool_name": "echo"},
                   expect=404)
    await api.call("POST", "/call_tool", json={"client_id": "alice", "tool_name": "echo",
                                               "timeout": -1}, expect=422)
    carol = await live.connect(client_id="carol")

    async def leave_on_call() -> None:
        await carol.recv_type("tool_call")
        await carol.close()

    leaving = asyncio.ensure_future(leave_on_call())
    await api.call("POST", "/call_tool", json={"client_id": "carol", "tool_name": "echo"},
                   expect=502)
    await leaving

    # History.
    await api.call("GET", "/clients/{client_id}/messages", path={"client_id": "alice"},
                   expect=200)
    await api.call("GET", "/clients/{client_id}/messages", path={"client_id": "alice"},
                   query="after_seq=1&limit=2", expect=200)
    await api.call("GET", "/clients/{client_id}/messages", path={"client_id": "alice"},
                   query="before_seq=3", expect=200)
    await api.call("GET", "/clients/{client_id}/messages", path={"client_id": "alice"},
                   query="after_seq=x", expect=422)
    await api.call("GET", "/clients/{client_id}/messages", path={"client_id": "nobody"},
                   expect=404)

    # Introspection and health.
    for template in ("/status", "/channels", "/handlers", "/ws/handlers", "/tools",
                     "/metrics", "/ready"):
        await api.call("GET", template, expect=200)
    live.api_node.gateway.accepting = False
    await api.call("GET", "/ready", expect=503)
    live.api_node.gateway.accepting = True
    await api.call("POST", "/observer_ticket", expect=200)

    # Ending sessions.
    await api.call("DELETE", "/clients/{client_id}", path={"client_id": "alice"}, expect=200)
    await api.call("DELETE", "/clients/{client_id}", path={"client_id": "alice"}, expect=404)
    await api.call("DELETE", "/clients/{client_id}", path={"client_id": "bob"}, expect=200)

    answered = {(method, template) for method, template, _ in checker.seen}
    assert answered == documented_operations(), (
        f"operations not exercised: {sorted(documented_operations() - answered)}")


async def test_rate_limited_answer_fits_the_document(make_gateway: MakeGateway) -> None:
    live = await make_gateway(api_rate_limit=0.001, api_rate_burst=1)
    api = Driver(live, SpecChecker())
    await api.call("GET", "/status", expect=200)
    _, body = await api.call("GET", "/status", expect=429)
    assert body["error"]["code"] == "rate_limited"


async def test_unsupported_method_is_405_with_allow(live_gateway: LiveGateway) -> None:
    async with live_gateway.http.put(f"{live_gateway.api_url}/send_message",
                                     headers=live_gateway.auth()) as resp:
        assert resp.status == 405
        assert "POST" in resp.headers["Allow"]
        body = await resp.json()
        assert body["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/docs", "/dashboard"])
async def test_pages_reference_only_local_assets(live_gateway: LiveGateway, path: str) -> None:
    import re

    async with live_gateway.http.get(f"{live_gateway.api_url}{path}") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        html = await resp.text()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets, html
    assert not [a for a in assets if "//" in a], f"non-local assets in {path}: {assets}"
    for asset in assets:
        async with live_gateway.http.get(f"{live_gateway.api_url}{asset}",
                                         allow_redirects=False) as resp:
            assert resp.status == 200, (asset, resp.status)
    if path == "/docs":
        js = await _text(live_gateway, "/static/docs.js")
        assert 'preauthorizeApiKey("bearerAuth"' in js
        assert "validatorUrl: null" in js


async def _text(live: LiveGateway, path: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{live.api_url}{path}") as resp:
        assert resp.status == 200
        return await resp.text()


async def test_slow_body_answer_fits_the_document(make_gateway: MakeGateway) -> None:
    live = await make_gateway(request_body_timeout=0.2)
    port = live.api_server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /send_message HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + API_TOKEN.encode() +
                 b"\r\nContent-Length: 100\r\n\r\n{\"client_id\":")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    headers = dict(line.decode().split(":", 1) for line in head.split(b"\r\n")[1:] if line)
    headers = {k.strip().lower(): v.strip() for k, v in headers.items()}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    writer.close()
    status = int(head.split()[1])
    ctype = headers["content-type"]
    assert status == 408
    SpecChecker().check("POST", "/send_message", status, ctype, orjson.loads(body))
