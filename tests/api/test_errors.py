"""The HTTP side of the bad-input table: every bad request gets its exact status and a JSON
``{"error": {"code", "message"}}`` body, never a 500, and the server keeps serving."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp import web

from server.app import create_apps
from server.config import Settings
from server.errors import StartupError
from tests.conftest import API_TOKEN, LiveGateway, MakeGateway

JSON = {"Content-Type": "application/json"}

# id, method, path, raw body (str) or JSON (anything else), headers, status, code, field
HTTP_BAD_INPUT: list[tuple[str, str, str, Any, dict[str, str], int, str, str | None]] = [
    ("malformed-json", "POST", "/send_message", '{"client_id": "a", ', JSON, 400,
     "invalid_json", None),
    ("empty-body", "POST", "/send_message", "", JSON, 400, "invalid_json", None),
    ("array-body", "POST", "/send_message", "[1, 2]", JSON, 400, "invalid_json", None),
    ("string-body", "POST", "/broadcast", '"hello"', JSON, 400, "invalid_json", None),
    ("number-body", "POST", "/call_tool", "42", JSON, 400, "invalid_json", None),
    ("text-plain", "POST", "/send_message", '{"client_id": "a", "content": "x"}',
     {"Content-Type": "text/plain"}, 415, "unsupported_media_type", None),
    ("form-encoded", "POST", "/broadcast", "message_type=x",
     {"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type",
     None),
    ("send-no-client-id", "POST", "/send_message", {"content": "x"}, {}, 422,
     "invalid_field", "client_id"),
    ("send-client-id-number", "POST", "/send_message", {"client_id": 5, "content": "x"}, {},
     422, "invalid_field", "client_id"),
    ("send-no-content", "POST", "/send_message", {"client_id": "a"}, {}, 422,
     "invalid_field", "content"),
    ("send-message-type-number", "POST", "/send_message",
     {"client_id": "a", "content": "x", "message_type": 1}, {}, 422, "invalid_field",
     "message_type"),
    ("send-data-array", "POST", "/send_message", {"client_id": "a", "data": [1]}, {}, 422,
     "invalid_field", "data"),
    ("send-idempotency-key-number", "POST", "/send_message",
     {"client_id": "a", "content": "x", "idempotency_key": 7}, {}, 422, "invalid_field",
     "idempotency_key"),
    ("broadcast-no-type", "POST", "/broadcast", {"data": {}}, {}, 422, "invalid_field",
     "message_type"),
    ("broadcast-data-string", "POST", "/broadcast", {"message_type": "x", "data": "y"}, {},
     422, "invalid_field", "data"),
    ("broadcast-channel-number", "POST", "/broadcast", {"message_type": "x", "channel": 1},
     {}, 422, "invalid_field", "channel"),
    ("call-no-tool-name", "POST", "/call_tool", {"client_id": "a"}, {}, 422,
     "invalid_field", "tool_name"),
    ("call-params-array", "POST", "/call_tool",
     {"client_id": "a", "tool_name": "t", "params": []}, {}, 422, "invalid_field", "params"),
    ("call-timeout-string", "POST", "/call_tool",
     {"client_id": "a", "tool_name": "t", "timeout": "5"}, {}, 422, "invalid_field",
     "timeout"),
    ("call-timeout-zero", "POST", "/call_tool",
     {"client_id": "a", "tool_name": "t", "timeout": 0}, {}, 422, "invalid_field", "timeout"),
    ("call-timeout-huge", "POST", "/call_tool",
     {"client_id": "a", "tool_name": "t", "timeout": 1e9}, {}, 422, "invalid_field",
     "timeout"),
    ("call-wait-not-bool", "POST", "/call_tool",
     {"client_id": "a", "tool_name": "t", "wait_for_client": "yes"}, {}, 422,
     "invalid_field", "wait_for_client"),
    ("send-unknown-client", "POST", "/send_message", {"client_id": "nobody", "content": "x"},
     {}, 404, "client_not_found", None),
    ("call-unknown-client", "POST", "/call_tool", {"client_id": "nobody", "tool_name": "t"},
     {}, 404, "client_not_found", None),
    ("get-unknown-client", "GET", "/clients/nobody", None, {}, 404, "client_not_found", None),
    ("history-unknown-client", "GET", "/clients/nobody/messages", None, {}, 404,
     "client_not_found", None),
    ("delete-unknown-client", "DELETE", "/clients/nobody", None, {}, 404, "client_not_found",
     None),
    ("unknown-path", "GET", "/no/such/thing", None, {}, 404, "not_found", None),
    ("get-send-message", "GET", "/send_message", None, {}, 405, "method_not_allowed", None),
    ("put-broadcast", "PUT", "/broadcast", {}, {}, 405, "method_not_allowed", None),
    ("post-status", "POST", "/status", {}, {}, 405, "method_not_allowed", None),
    ("delete-clients", "DELETE", "/clients", None, {}, 405, "method_not_allowed", None),
    ("clients-limit-text", "GET", "/clients?limit=ten", None, {}, 422, "invalid_field",
     "limit"),
    ("clients-limit-zero", "GET", "/clients?limit=0", None, {}, 422, "invalid_field", "limit"),
    ("clients-offset-negative", "GET", "/clients?offset=-1", None, {}, 422, "invalid_field",
     "offset"),
    ("clients-connected-maybe", "GET", "/clients?connected=maybe", None, {}, 422,
     "invalid_field", "connected"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "code", "field_name"),
                         [case[1:] for case in HTTP_BAD_INPUT],
                         ids=[case[0] for case in HTTP_BAD_INPUT])
async def test_bad_request_gets_the_exact_status_and_a_json_error(
        live_gateway: LiveGateway, method: str, path: str, body: Any, headers: dict[str, str],
        status: int, code: str, field_name: str | None) -> None:
    if isinstance(body, str):
        got_status, got = await live_gateway.api(method, path, data=body.encode(),
                                                 headers=headers)
    else:
        got_status, got = await live_gateway.api(method, path, body, headers=headers)
    assert got_status == status, got
    assert isinstance(got, dict) and set(got) == {"error"}, got
    assert got["error"]["code"] == code, got
    assert isinstance(got["error"]["message"], str) and got["error"]["message"]
    assert "Traceback" not in got["error"]["message"]
    if field_name is not None:
        assert got["error"]["field"] == field_name, got
        assert field_name in got["error"]["message"]
    # The server keeps serving.
    ok_status, ok = await live_gateway.api("GET", "/status")
    assert ok_status == 200 and ok["status"] == "running"


async def test_405_names_the_allowed_methods(live_gateway: LiveGateway) -> None:
    async with live_gateway.http.get(f"{live_gateway.api_url}/send_message",
                                     headers=live_gateway.auth()) as resp:
        assert resp.status == 405
        assert "POST" in resp.headers["Allow"]


async def test_body_over_api_max_body_is_413(make_gateway: MakeGateway) -> None:
    live = await make_gateway(api_max_body=2048)
    status, body = await live.api("POST", "/send_message",
                                  {"client_id": "a", "content": "x" * 4096})
    assert status == 413, body
    assert body["error"]["code"] == "payload_too_large"
    assert "2048" in body["error"]["message"]
    assert (await live.api("POST", "/broadcast", {"message_type": "small"}))[0] == 200


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({}, 401, "unauthorized"),
    ({"Authorization": "Bearer not-the-token"}, 403, "forbidden"),
])
@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/send_message", {"client_id": "a", "content": "x"}),
    ("POST", "/call_tool", {"client_id": "a", "tool_name": "t"}),
    ("POST", "/broadcast", {"message_type": "x"}),
    ("GET", "/clients", None),
    ("DELETE", "/clients/a", None),
])
async def test_credentials_are_checked_before_anything_else(
        live_gateway: LiveGateway, headers: dict[str, str], status: int, code: str,
        method: str, path: str, body: Any) -> None:
    client = await live_gateway.connect(client_id="a")
    got_status, got = await live_gateway.api(method, path, body, headers=headers, auth=False)
    assert got_status == status, got
    assert got["error"]["code"] == code
    # Nothing happened: the client got nothing and is still connected.
    info = await live_gateway.client_info("a")
    assert info["connected"] is True and info["last_seq"] == 0
    await client.send("ping")
    assert (await client.recv())["type"] == "pong"


async def test_a_crashing_route_is_a_json_500_without_a_traceback(
        live_gateway: LiveGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = live_gateway.api_node.gateway

    async def broken() -> dict[str, Any]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(gateway, "status", broken)
    status, body = await live_gateway.api("GET", "/status")
    assert status == 500
    assert body == {"error": {"code": "internal_error", "message": "internal server error"}}


async def test_unknown_routes_and_methods_say_what_to_do(live_gateway: LiveGateway) -> None:
    status, body = await live_gateway.api("PUT", "/status")
    assert status == 405
    assert body["error"]["message"].startswith("PUT is not allowed on /status; allowed: GET")
    status, body = await live_gateway.api("GET", "/no/such/thing")
    assert status == 404
    assert "see /docs" in body["error"]["message"]


@pytest.mark.parametrize(("target", "method", "status", "message"), [
    ("*", "OPTIONS", 404, "no route OPTIONS *; see /docs for the API"),
    ("/static/a%0A", "GET", 404, "no route GET /static/a\n; see /docs for the API"),
    ("/send_message", "GET", 405, "GET is not allowed on /send_message; allowed: "),
])
async def test_targets_no_route_matches_get_a_json_error(
        live_gateway: LiveGateway, target: str, method: str, status: int, message: str) -> None:
    """What no route's pattern matches (the asterisk form, a path with a newline) or no
    route's method allows is answered in JSON like any error, through a raw socket."""
    reader, writer = await asyncio.open_connection("127.0.0.1", live_gateway.api_server.port)
    writer.write(f"{method} {target} HTTP/1.1\r\nHost: x\r\n"
                 f"Authorization: Bearer {API_TOKEN}\r\nConnection: close\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == str(status).encode(), answer
    assert b"content-type: application/json" in head.lower(), answer
    assert orjson.loads(body)["error"]["message"].startswith(message)


async def test_a_route_added_after_the_guard_stops_start_up() -> None:
    """Every API route runs behind api.middleware.guard_routes (token, limits, JSON errors):
    one added to the app afterwards would skip the token check, so the app refuses to start."""
    _, api_app = create_apps(Settings(ws_host="127.0.0.1", api_host="127.0.0.1",
                                      api_token=API_TOKEN))

    async def unguarded(request: web.Request) -> web.Response:
        return web.json_response({"secret": True})

    api_app.router.add_get("/late", unguarded)
    runner = web.AppRunner(api_app)
    with pytest.raises(StartupError, match="GET /late"):
        await runner.setup()
    await runner.cleanup()


@pytest.mark.parametrize("query", ["limit=", "limit=&limit=5", "limit=5&limit=6", "offset=x",
                                   "connected=maybe", "connected=&connected=true"])
async def test_query_parameters_are_exact(live_gateway: LiveGateway, query: str) -> None:
    """Empty, repeated or malformed query parameters are 422, never silently defaulted."""
    status, body = await live_gateway.api("GET", f"/clients?{query}")
    assert status == 422, body
    assert body["error"]["code"] == "invalid_field"
    assert body["error"]["field"] == query.split("=")[0]
