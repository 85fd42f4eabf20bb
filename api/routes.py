"""HTTP API routes (PRODUCT.md section 3). They talk to the gateway, never to a socket."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import hdrs, web

from server.errors import ProtocolError, SwitchboardError, ValidationError
from server.gateway import Gateway
from server.keys import GATEWAY, ROUTER, SECURITY
from server.metrics import HOT, TOOL_CALL, render
from server.protocol import Field, json_too_deep_message, too_deep, validate_fields
from server.security import OBSERVER_TICKET_TTL
from server.sessions import iso_time
from server.tools import PARAMS_NAMES, call_params

MAX_PAGE = 1000
#: The largest PRESENCE_LIMIT (a presence ``limit`` above the configured one is lowered to it).
MAX_PRESENCE_LIMIT = 100_000
JSON_TYPES = ("application/json",)

routes = web.RouteTableDef()


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def read_json(request: web.Request, spec: dict[str, Field], gateway: Gateway | None = None,
                    accept: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    """The request's JSON object body, validated against ``spec``.

    400 when it is not JSON or not an object, 415 for another content type, 422 naming the
    first wrong field, 422 ``json_too_deep`` past MAX_JSON_DEPTH (nothing that could not be
    encoded again is stored or relayed). The body size limit (413) is enforced by aiohttp
    (``client_max_size``). ``accept``: a quick check of the common well-formed body (``True``:
    it passes ``spec``); what it does not vouch for is checked by :func:`validate_fields`,
    which words every error, so the errors are the same either way.
    """
    if request.headers.get(hdrs.CONTENT_TYPE) != "application/json":  # else: no parsing
        ctype = request.content_type
        if ctype not in JSON_TYPES and not ctype.endswith("+json"):
            raise SwitchboardError(
                f"expected Content-Type: application/json, got {ctype or '(none)'}",
                code="unsupported_media_type", http_status=415)
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"request body is not valid JSON: {exc.msg}",
                            code="invalid_json") from None
    if not isinstance(body, dict):
        raise ProtocolError("request body must be a JSON object", code="invalid_json")
    max_depth = (gateway or gw(request)).settings.max_json_depth
    if too_deep(body, max_depth, raw):
        HOT.limit_hit("json_depth")
        raise ValidationError(json_too_deep_message("request body", max_depth),
                              code="json_too_deep", details={"max_depth": max_depth})
    if accept is None or not accept(body):
        validate_fields(body, spec, prefix="")
    return body


def query_value(request: web.Request, name: str) -> str | None:
    """A query parameter given at most once; 422 when it is repeated (which one would win?)."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise ValidationError(f"{name} must be given at most once", code="invalid_field",
                              details={"field": name})
    return values[0] if values else None


def query_int(request: web.Request, name: str, default: int | None, lo: int = 0,
              hi: int = 2**62) -> int | None:
    raw = query_value(request, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"{name} must be an integer", code="invalid_field",
                              details={"field": name}) from None
    if not lo <= value <= hi:
        raise ValidationError(f"{name} must be between {lo} and {hi}", code="invalid_field",
                              details={"field": name})
    return value


def query_bool(request: web.Request, name: str) -> bool | None:
    raw = query_value(request, name)
    if raw is None:
        return None
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise ValidationError(f"{name} must be true or false", code="invalid_field",
                          details={"field": name})


#: The header a retry repeats (or the body's ``idempotency_key``).
IDEMPOTENCY_KEY = "Idempotency-Key"


def idempotency_key(request: web.Request, body: dict[str, Any]) -> str | None:
    header = request.headers.get(IDEMPOTENCY_KEY)
    if header is not None and not 0 < len(header) <= 256:
        raise ValidationError("the Idempotency-Key header must be 1-256 characters",
                              code="invalid_field", details={"field": "Idempotency-Key"})
    key = body.get("idempotency_key")
    if key is None:
        key = header
    if key is None:
        return None
    if not isinstance(key, str) or not 0 < len(key) <= 256:
        raise ValidationError("idempotency_key must be a string of 1-256 characters",
                              code="invalid_field", details={"field": "idempotency_key"})
    return f"{request.path}:{key}"


def request_fingerprint(body: dict[str, Any]) -> str:
    """What a retry must repeat: the body, without its idempotency_key."""
    payload = {k: v for k, v in body.items() if k != "idempotency_key"}
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def run_once(request: web.Request, body: dict[str, Any],
                   operation: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Run ``operation`` once per idempotency key (``Gateway.idempotent``), its answer marked
    ``idempotent_replay`` when it is a retry's. Without a key it just runs: no fingerprint is
    hashed (the common request pays nothing for idempotency)."""
    key = idempotency_key(request, body)
    if key is None:
        return await operation()
    answer, replayed = await gw(request).idempotent(key, operation, request_fingerprint(body))
    return {**answer, "idempotent_replay": True} if replayed else answer


def gw(request: web.Request) -> Gateway:
    return request.app[GATEWAY]


# --- status, clients --------------------------------------------------------------------------


@routes.get("/status")
@routes.get("/ws/status")
async def get_status(request: web.Request) -> web.Response:
    return json_response(await gw(request).status())


@routes.get("/clients")
async def list_clients(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 100, 1, MAX_PAGE)
    offset = query_int(request, "offset", 0)
    connected = query_bool(request, "connected")
    assert limit is not None and offset is not None
    return json_response(await gw(request).list_clients(
        limit=limit, offset=offset, channel=request.query.get("channel") or None,
        client_type=request.query.get("client_type") or None, connected=connected,
        user_id=request.query.get("user_id") or None))


@routes.get("/clients/{client_id}")
async def get_client(request: web.Request) -> web.Response:
    return json_response(await gw(request).describe(request.match_info["client_id"]))


@routes.get("/clients/{client_id}/messages")
async def get_messages(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 100, 1, MAX_PAGE)
    after = query_int(request, "after_seq", None)
    before = query_int(request, "before_seq", None)
    assert limit is not None
    return json_response(await gw(request).history(
        request.match_info["client_id"], limit=limit, after_seq=after, before_seq=before))


@routes.delete("/clients/{client_id}")
async def delete_client(request: web.Request) -> web.Response:
    return json_response(await gw(request).disconnect(request.match_info["client_id"]))


# --- delivery ---------------------------------------------------------------------------------

SEND_FIELDS = {
    "client_id": Field("string", max_length=128),
    "user_id": Field("string", max_length=128),
    "content": Field("any"),
    "message_type": Field("string", max_length=64),
    "data": Field("object"),
}


def _plain_send(body: dict[str, Any]) -> bool:
    """Whether ``body`` is the common ``POST /send_message`` body that passes SEND_FIELDS: a
    client_id, no user_id, and message_type/data absent or of their kind. Type checks by
    identity (``type(x) is str``), so it vouches for a subset of what SEND_FIELDS accepts;
    the rest goes through :func:`validate_fields` (``read_json``'s ``accept``)."""
    client_id = body.get("client_id")
    message_type = body.get("message_type")
    data = body.get("data")
    if type(client_id) is not str or len(client_id) > 128 or body.get("user_id") is not None:
        return False
    if message_type is not None and (type(message_type) is not str or len(message_type) > 64):
        return False
    return data is None or type(data) is dict


@routes.post("/send_message")
async def send_message(request: web.Request) -> web.Response:
    # The hottest route: one request per message to one client. Its path is written for that
    # (docs/BENCHMARKS.md, "Issue 17": Python calls per request, bench/api_calls.py): the
    # gateway is looked up once, the common body is vouched for by _plain_send instead of the
    # generic field walk, and a request without an idempotency key goes straight to the send.
    gateway = gw(request)
    body = await read_json(request, SEND_FIELDS, gateway, _plain_send)
    if "content" not in body and "data" not in body:
        raise ValidationError("content is required (or data)", code="invalid_field",
                              details={"field": "content"})
    client_id, user_id = body.get("client_id"), body.get("user_id")
    if (client_id is None) == (user_id is None):
        raise ValidationError("give exactly one of client_id (one session) or user_id (every "
                              "session of the user)", code="invalid_field",
                              details={"field": "client_id" if client_id is None else "user_id"})
    send = gateway.send_message if user_id is None else gateway.send_to_user
    message_type = body.get("message_type") or "message"
    if body.get("idempotency_key") is None and IDEMPOTENCY_KEY not in request.headers:
        answer = await send(client_id or user_id, body.get("content"),
                            message_type=message_type, data=body.get("data"))
    else:
        answer = await run_once(request, body, lambda: send(
            client_id or user_id, body.get("content"), message_type=message_type,
            data=body.get("data")))
    delivered = answer["status"] == "delivered" if user_id is None else answer["delivered"] > 0
    return json_response(answer, status=200 if delivered else 202)


BROADCAST_FIELDS = {
    "message_type": Field("string", required=True, max_length=64),
    "data": Field("object"),
    "channel": Field("string", max_length=128),
    "client_type": Field("string", max_length=64),
}


@routes.post("/broadcast")
async def broadcast(request: web.Request) -> web.Response:
    body = await read_json(request, BROADCAST_FIELDS)
    gateway = gw(request)
    answer = await run_once(request, body, lambda: gateway.broadcast(
        body["message_type"], body.get("data") or {}, channel=body.get("channel"),
        client_type=body.get("client_type")))
    return json_response(answer)


CALL_FIELDS = {
    "client_id": Field("string", required=True, max_length=128),
    "tool_name": Field("string", required=True, max_length=128),
    **{name: Field("object") for name in PARAMS_NAMES},
    "timeout": Field("number"),
    "wait_for_client": Field("boolean"),
}


@routes.post("/call_tool")
async def call_tool(request: web.Request) -> web.Response:
    body = await read_json(request, CALL_FIELDS)
    timeout = body.get("timeout")
    if timeout is not None and not 0 < timeout <= 3600:
        raise ValidationError("timeout must be between 0 and 3600 seconds",
                              code="invalid_field", details={"field": "timeout"})
    params = call_params(body)
    outcomes = TOOL_CALL["api"]
    try:
        answer = await gw(request).call_tool(
            body["client_id"], body["tool_name"], params, timeout=timeout,
            wait_for_client=bool(body.get("wait_for_client", False)))
    except SwitchboardError as exc:
        outcomes[_TOOL_ERROR_OUTCOMES.get(exc.code, "error")].inc()
        raise
    outcomes["success" if answer.get("success") else "failure"].inc()
    return json_response(answer)


#: ``switchboard_tool_calls_total{origin="api"}`` outcome of each call_tool error code.
_TOOL_ERROR_OUTCOMES = {"client_not_found": "not_found", "client_offline": "client_offline",
                        "client_disconnected": "client_disconnected", "timeout": "timeout"}


@routes.post("/observer_ticket")
async def observer_ticket(request: web.Request) -> web.Response:
    """A short-lived ticket for one WebSocket connection to read system channels
    (``tool_activity``): the dashboard asks for one with the API token and presents it as
    ``?observer_ticket=`` on the WebSocket port, where the token itself never goes."""
    ticket, expires = request.app[SECURITY].issue_observer_ticket()
    return json_response({"ticket": ticket, "expires_at": iso_time(expires),
                          "expires_in": OBSERVER_TICKET_TTL,
                          "query_parameter": "observer_ticket"})


# --- users and server-side subscriptions ------------------------------------------------------


@routes.get("/users/{user_id}")
async def get_user(request: web.Request) -> web.Response:
    return json_response(await gw(request).user(request.match_info["user_id"]))


SUBSCRIPTION_FIELDS = {"channel": Field("string", required=True, max_length=128)}


@routes.post("/clients/{client_id}/channels")
async def subscribe_client(request: web.Request) -> web.Response:
    body = await read_json(request, SUBSCRIPTION_FIELDS)
    return json_response(await gw(request).channels.subscribe_client(
        request.match_info["client_id"], body["channel"], subscribe=True))


@routes.delete("/clients/{client_id}/channels/{channel}")
async def unsubscribe_client(request: web.Request) -> web.Response:
    return json_response(await gw(request).channels.subscribe_client(
        request.match_info["client_id"], request.match_info["channel"], subscribe=False))


@routes.post("/users/{user_id}/channels")
async def subscribe_user(request: web.Request) -> web.Response:
    body = await read_json(request, SUBSCRIPTION_FIELDS)
    return json_response(await gw(request).channels.subscribe_user(
        request.match_info["user_id"], body["channel"], subscribe=True))


@routes.delete("/users/{user_id}/channels/{channel}")
async def unsubscribe_user(request: web.Request) -> web.Response:
    return json_response(await gw(request).channels.subscribe_user(
        request.match_info["user_id"], request.match_info["channel"], subscribe=False))


# --- introspection ----------------------------------------------------------------------------


@routes.get("/channels")
async def channels(request: web.Request) -> web.Response:
    gateway = gw(request)
    stats = await gateway.channel_counts()
    return json_response({"channels": [{"channel": name, "subscribers": count}
                                       for name, count in stats.items()],
                          "total_channels": len(stats),
                          "available_channels": gateway.registry.available_channels(stats)})


@routes.get("/channels/{channel}/presence")
async def presence(request: web.Request) -> web.Response:
    gateway = gw(request)
    most = gateway.settings.presence_limit
    limit = query_int(request, "limit", most, 1, MAX_PRESENCE_LIMIT)
    assert limit is not None
    return json_response(await gateway.channels.presence(
        request.match_info["channel"], limit=min(limit, most), everywhere=True))


@routes.get("/handlers")
@routes.get("/ws/handlers")
async def handlers(request: web.Request) -> web.Response:
    return json_response(request.app[ROUTER].listing())


@routes.get("/tools")
async def tools(request: web.Request) -> web.Response:
    return json_response({"tools": gw(request).tools.describe()})


@routes.get("/health")
@routes.get("/healthz")
async def health(request: web.Request) -> web.Response:
    """Liveness: the process answers. ``?ready=1`` (or ``/ready``) checks readiness."""
    return json_response({"status": "ok"})


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    gateway = gw(request)
    backend = gateway.backend
    ok = backend.healthy and gateway.accepting
    return json_response({"status": "ready" if ok else "unavailable",
                          "broker": backend.describe(), "accepting": gateway.accepting},
                         status=200 if ok else 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=render(), headers={
        "Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
