"""The machine-readable protocol: ``GET /asyncapi.json`` (AsyncAPI 3.0) and what hangs off it.

Every frame the suite receives is validated against this document (``tests/conftest.py``);
these tests check the document itself, that it cannot drift from the handler table, that the
JS client's generated ``frames.d.ts`` is current, and that the gateway serves the browser
client from ``clients/js`` (ETag, 304, CORS).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft7Validator

from api.asyncapi import (
    DOCUMENT,
    SERVER_FRAMES,
    client_frame_checker,
    server_frame_checker,
    typescript,
)
from handlers import HANDLER_TABLE
from tests.conftest import LiveGateway

ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "clients" / "js"
#: The AsyncAPI Initiative's JSON Schema of AsyncAPI 3.0 documents, from the JS client's dev
#: dependencies (``@asyncapi/specs``, pinned by clients/js/package-lock.json; ``make test``
#: installs it before running pytest).
ASYNCAPI_3_SCHEMA = JS / "node_modules" / "@asyncapi" / "specs" / "schemas" / "3.0.0-without-$id.json"


def resolve(ref: str) -> Any:
    node: Any = DOCUMENT
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_the_document_is_valid_asyncapi_3() -> None:
    if not ASYNCAPI_3_SCHEMA.exists():
        pytest.fail("the AsyncAPI 3.0 schema is missing: run `make test` (npm ci in clients/js)",
                    pytrace=False)
    validator = Draft7Validator(json.loads(ASYNCAPI_3_SCHEMA.read_text(encoding="utf-8")))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(DOCUMENT)]
    assert errors == []
    broken = {**DOCUMENT, "operations": {"x": {"action": "publish",
                                                "channel": {"$ref": "#/channels/gateway"}}}}
    assert list(validator.iter_errors(broken))  # the schema does check what it is given


def test_the_document_is_asyncapi_3_with_every_reference_resolving() -> None:
    assert DOCUMENT["asyncapi"] == "3.0.0"
    for ref in refs(DOCUMENT):
        assert resolve(ref) is not None, ref
    for key, message in DOCUMENT["components"]["messages"].items():
        Draft7Validator.check_schema(message["payload"])
        assert message["name"] and message["summary"], key
    actions = {op["action"] for op in DOCUMENT["operations"].values()}
    assert actions == {"send", "receive"}


def test_every_handler_and_every_reply_it_declares_is_documented() -> None:
    messages = DOCUMENT["components"]["messages"]
    for entry in HANDLER_TABLE:
        payload = messages[f"client.{entry.type}"]["payload"]
        assert set(payload["properties"]["type"]["enum"]) == {entry.type, *entry.aliases}
        assert set(payload["properties"]["data"]["properties"]) == set(entry.fields)
        for reply in entry.replies:
            assert reply in SERVER_FRAMES, f"{entry.type} replies {reply}: no schema"


def test_client_frames_are_checked_by_their_handler_fields() -> None:
    check = client_frame_checker()
    assert check({"type": "subscribe", "data": {"channel": "news"}}) == []
    assert check({"type": "text_message", "data": {"content": "hi"}}) == []
    assert check({"type": "subscribe", "data": {}})  # channel is required
    assert check({"type": "permission_response", "data": {"call_id": "c", "granted": "yes"}})
    assert check({"type": "nope"})


def test_the_frame_checker_can_fail() -> None:
    check = server_frame_checker()
    good = {"type": "chat_response", "data": {"content": "hi", "status": "completed",
                                              "model": "echo"},
            "message_id": "m", "timestamp": "2026-01-01T00:00:00.000Z", "seq": 3}
    assert check(good) == []
    assert check({k: v for k, v in good.items() if k != "seq"})  # kept frames carry seq
    assert check({**good, "data": {"content": 1, "status": "x", "model": "m"}})
    # A type the gateway does not know (a third party's broadcast) gets the envelope check.
    assert check({**good, "type": "deploy_notice", "data": {"anything": [1]}}) == []
    assert check({**good, "type": "deploy_notice", "data": "text"})


def test_frames_d_ts_is_generated_from_the_document() -> None:
    current = (JS / "frames.d.ts").read_text(encoding="utf-8")
    assert current == typescript(), (
        "clients/js/frames.d.ts is stale: run `.venv/bin/python -m api.asyncapi --typescript "
        "> clients/js/frames.d.ts`")


async def test_asyncapi_json_is_public(live_gateway: LiveGateway) -> None:
    status, body = await live_gateway.api("GET", "/asyncapi.json", auth=False)
    assert status == 200 and body == DOCUMENT


@pytest.mark.parametrize("path,source,ctype", [
    ("/switchboard.js", "switchboard.js", "text/javascript"),
    ("/switchboard.d.ts", "switchboard.d.ts", "application/typescript"),
    ("/frames.d.ts", "frames.d.ts", "application/typescript"),
])
async def test_the_gateway_serves_the_browser_client_with_an_etag(
        live_gateway: LiveGateway, path: str, source: str, ctype: str) -> None:
    http = live_gateway.http
    ws_port = live_gateway.ws_url.replace("ws://", "http://").rstrip("/")
    for base in (ws_port, live_gateway.api_url):
        async with http.get(base + path, headers={"Origin": "http://app.example"}) as resp:
            body = await resp.read()
            assert resp.status == 200
            assert resp.content_type == ctype
            # Module scripts load with CORS: any page may import it from the WebSocket port;
            # the API port answers as its ALLOWED_ORIGINS say (any, by default).
            assert resp.headers["Access-Control-Allow-Origin"] in (
                "*" if base == ws_port else "http://app.example")
            assert "max-age=86400" in resp.headers["Cache-Control"]
            etag = resp.headers["ETag"]
        assert body == (JS / source).read_bytes()  # served from clients/js, no second copy
        for if_none_match in (etag, f"W/{etag}", f'"other", {etag}'):
            async with http.get(base + path, headers={"If-None-Match": if_none_match}) as resp:
                assert resp.status == 304 and resp.headers["ETag"] == etag
                assert await resp.read() == b""
        async with http.get(base + path, headers={"If-None-Match": '"stale"'}) as resp:
            assert resp.status == 200
        async with http.head(base + path) as resp:
            assert resp.status == 200 and resp.headers["ETag"] == etag


async def test_the_websocket_port_still_refuses_plain_http_on_socket_paths(
        live_gateway: LiveGateway) -> None:
    async with aiohttp.ClientSession() as http, http.get(
            live_gateway.ws_url.replace("ws://", "http://") + "ws") as resp:
        assert resp.status == 426
