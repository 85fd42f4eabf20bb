"""The OpenAPI 3 document of the HTTP API, served at ``GET /openapi.json``.

Hand-written as Python dicts so it stays precise: request bodies mirror the validation in
:mod:`api.routes` (required fields, lengths, ranges), and every operation lists every status it
can answer with, errors included (``{"error": {"code", "message"}}``). ``tests/api`` checks that
every route registered on the API app is documented here and that real answers fit these
schemas; schemathesis fuzzes the live API against it.

OpenAPI 3.0.3 (not 3.1) because the packaged Swagger UI renders 3.0.
"""

from __future__ import annotations

import copy
from itertools import combinations
from typing import Any

import orjson
from aiohttp import web

from api.middleware import is_public, public_routes_text
from server.tools import PARAMS_NAMES

JSON = "application/json"
Schema = dict[str, Any]

API_VERSION = "1.0.0"
#: The largest integer query parameters accept (api.routes.query_int).
MAX_QUERY_INT = 2**62

# --- reusable pieces ---------------------------------------------------------------------------


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _resp(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def _json(schema: Schema, description: str, **extra: Any) -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def _obj(properties: dict[str, Schema], required: tuple[str, ...] = (), **extra: Any) -> Schema:
    out: Schema = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    out.update(extra)
    return out


STRING: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NONNEG: Schema = {"type": "integer", "minimum": 0}
NUMBER: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
DATETIME: Schema = {"type": "string", "format": "date-time"}
ANY_OBJECT: Schema = {"type": "object", "additionalProperties": True}
#: Any JSON value (OpenAPI 3.0 has no ``{}`` shorthand for "anything including null").
ANY: Schema = {"nullable": True,
               "oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"},
                         {"type": "array", "items": {}}, {"type": "object"}]}

SCHEMAS: dict[str, Schema] = {
    "Error": _obj({
        "error": _obj({
            "code": {"type": "string", "description": "machine-readable error code",
                     "example": "invalid_field"},
            "message": {"type": "string", "description": "what went wrong, for a person"},
            "field": {"type": "string", "description": "the offending field (422)"},
            "call_id": {"type": "string", "description": "the tool call concerned (502, 504)"},
        }, ("code", "message"), additionalProperties=True),
    }, ("error",)),
    "Broker": _obj({
        "backend": {"type": "string", "example": "memory"},
        "node_id": STRING,
        "healthy": BOOL,
    }, ("backend", "node_id", "healthy"), additionalProperties=True),
    "Status": _obj({
        "status": {"type": "string", "enum": ["running", "shutting_down"]},
        "connected_clients": NONNEG,
        "total_clients": NONNEG,
        "active_connections": NONNEG,
        "total_sessions": NONNEG,
        "offline_sessions": NONNEG,
        "total_channels": NONNEG,
        "channel_stats": {"type": "object", "additionalProperties": NONNEG},
        "active_channels": {"type": "array", "items": STRING},
        "total_messages_sent": NONNEG,
        "total_messages_received": NONNEG,
        "total_messages": NONNEG,
        "total_connections_ever": NONNEG,
        "total_connections": NONNEG,
        "total_broadcasts": NONNEG,
        "total_resumes": NONNEG,
        "total_sessions_expired": NONNEG,
        "total_slow_disconnects": NONNEG,
        "uptime": {"type": "number", "minimum": 0, "description": "seconds since start"},
        "server_time": DATETIME,
        "max_connections": NONNEG,
        "pending_tool_calls": NONNEG,
        "node_id": STRING,
        "broker": ref("Broker"),
    }, ("status", "connected_clients", "server_time", "uptime", "total_sessions",
        "total_messages_sent", "total_messages_received", "total_broadcasts",
        "pending_tool_calls", "broker"), additionalProperties=True),
    "Client": _obj({
        "client_id": STRING,
        "user_id": {"type": "string", "nullable": True,
                    "description": "the session's user (JWT sub or the declared user_id); "
                                   "null: anonymous"},
        "client_type": STRING,
        "connected": BOOL,
        "connected_at": DATETIME,
        "last_activity": DATETIME,
        "disconnected_at": {**DATETIME, "nullable": True},
        "message_count": NONNEG,
        "messages_in": NONNEG,
        "messages_out": NONNEG,
        "channels": {"type": "array", "items": STRING},
        "last_seq": NONNEG,
        "history_size": NONNEG,
        "node": STRING,
        "remote": STRING,
        "user_agent": STRING,
    }, ("client_id", "client_type", "connected", "connected_at", "last_activity",
        "disconnected_at", "message_count", "channels", "last_seq"),
        additionalProperties=True),
    "ClientList": _obj({
        "clients": {"type": "array", "items": ref("Client")},
        "total": NONNEG,
        "limit": {"type": "integer", "minimum": 1},
        "offset": NONNEG,
    }, ("clients", "total", "limit", "offset")),
    "Frame": _obj({
        "type": STRING,
        "data": ANY_OBJECT,
        "message_id": STRING,
        "timestamp": STRING,
        "seq": {"type": "integer", "minimum": 1},
        "reply_to": {"type": "string", "nullable": True},
    }, ("type",), additionalProperties=True,
        description="A WebSocket frame as stored in history (client frames are kept as sent)."),
    "HistoryEntry": _obj({
        "direction": {"type": "string", "enum": ["in", "out"]},
        "seq": {"type": "integer", "nullable": True,
                "description": "the frame's seq (server frames); null for client frames"},
        "after_seq": {"type": "integer", "nullable": True,
                      "description": "the seq of the last server frame before this client "
                                     "frame; null for server frames"},
        "frame": ANY,
    }, ("direction", "seq", "after_seq", "frame")),
    "History": _obj({
        "client_id": STRING,
        "messages": {"type": "array", "items": ref("HistoryEntry")},
        "count": NONNEG,
        "has_more": BOOL,
        "last_seq": NONNEG,
        "oldest_seq": {"type": "integer", "nullable": True},
    }, ("client_id", "messages", "count", "has_more", "last_seq", "oldest_seq")),
    "Disconnected": _obj({
        "client_id": STRING,
        "disconnected": {"type": "boolean", "description": "whether a socket was open"},
        "ended": BOOL,
    }, ("client_id", "disconnected", "ended")),
    "SendMessageRequest": _obj({
        "client_id": {"type": "string", "minLength": 1, "maxLength": 128,
                      "example": "alice", "description": "one session"},
        "user_id": {"type": "string", "minLength": 1, "maxLength": 128,
                    "description": "every session of this user, instead of client_id"},
        "content": {**ANY, "description": "the message; becomes data.content of the frame"},
        "message_type": {"type": "string", "maxLength": 64, "nullable": True,
                         "description": "the frame's type (default `message`)"},
        "data": {**ANY_OBJECT, "nullable": True,
                 "description": "extra fields merged into the frame's data"},
        "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 256,
                            "nullable": True,
                            "description": "retries with the same key within "
                                           "IDEMPOTENCY_TTL get the first answer"},
    }, (), additionalProperties=True,
        allOf=[{"anyOf": [{"required": ["content"]}, {"required": ["data"]}]},
               {"oneOf": [{"required": ["client_id"]}, {"required": ["user_id"]}]}],
        description="Exactly one of `client_id` and `user_id`; `content` or `data` (or "
                    "both).",
        example={"client_id": "alice", "content": "hello"}),
    "SendMessageResult": _obj({
        "status": {"type": "string", "enum": ["delivered", "queued"]},
        "message_id": STRING,
        "seq": {"type": "integer", "minimum": 1},
        "client_id": STRING,
        "idempotent_replay": BOOL,
    }, ("status", "message_id", "seq", "client_id")),
    "SendToUserResult": _obj({
        "user_id": STRING,
        "message_id": {"type": "string", "description": "the same in every session's frame"},
        "sessions": {"type": "array", "items": _obj({
            "client_id": STRING,
            "status": {"type": "string", "enum": ["delivered", "queued", "failed"]},
            "seq": {"type": "integer", "minimum": 1},
            "error": {**ANY_OBJECT, "description": "why it failed (`failed` only)"},
        }, ("client_id", "status"))},
        "delivered": NONNEG,
        "queued": NONNEG,
        "failed": NONNEG,
        "idempotent_replay": BOOL,
    }, ("user_id", "message_id", "sessions", "delivered", "queued", "failed")),
    "User": _obj({
        "user_id": STRING,
        "sessions": {"type": "array", "items": ref("Client")},
        "total": NONNEG,
        "connected": NONNEG,
    }, ("user_id", "sessions", "total", "connected")),
    "SubscriptionRequest": _obj({
        "channel": {"type": "string", "minLength": 1, "maxLength": 128,
                    "example": "room:42"},
    }, ("channel",), additionalProperties=True),
    "Subscription": _obj({
        "client_id": STRING,
        "channel": STRING,
        "subscribed": {"type": "boolean", "description": "subscribed now"},
        "changed": {"type": "boolean",
                    "description": "false when it already was (un)subscribed"},
        "channel_count": NONNEG,
    }, ("client_id", "channel", "subscribed", "changed", "channel_count")),
    "UserSubscription": _obj({
        "user_id": STRING,
        "channel": STRING,
        "sessions": {"type": "array", "items": ref("Subscription")},
    }, ("user_id", "channel", "sessions")),
    "Presence": _obj({
        "channel": STRING,
        "count": {"type": "integer", "minimum": 0,
                  "description": "every session in the channel, on every node"},
        "sessions": {"type": "array", "items": _obj({
            "client_id": STRING,
            "user_id": {"type": "string", "nullable": True},
            "connected": {"type": "boolean",
                          "description": "false: kept for resume (it leaves when it expires)"},
        }, ("client_id", "user_id", "connected"))},
        "users": {"type": "array", "items": STRING,
                  "description": "the users of the sessions listed"},
        "truncated": {"type": "boolean", "description": "more sessions than listed"},
    }, ("channel", "count", "sessions", "users", "truncated")),
    "BroadcastRequest": _obj({
        "message_type": {"type": "string", "minLength": 1, "maxLength": 64,
                         "example": "mcp_event"},
        "data": {**ANY_OBJECT, "nullable": True},
        "channel": {"type": "string", "maxLength": 128, "nullable": True,
                    "description": "only subscribers of this channel"},
        "client_type": {"type": "string", "maxLength": 64, "nullable": True,
                        "description": "only clients of this type"},
        "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 256,
                            "nullable": True},
    }, ("message_type",), additionalProperties=True,
        example={"message_type": "mcp_event",
                 "data": {"event_type": "service_connected", "service_name": "agent_coder"}}),
    "BroadcastResult": _obj({
        "recipients": {"type": "integer", "minimum": 0,
                       "description": "live connections the frame was handed to"},
        "queued": {"type": "integer", "minimum": 0,
                   "description": "offline sessions that keep it for resume"},
        "message_id": STRING,
        "idempotent_replay": BOOL,
        "nodes": {"type": "integer", "minimum": 1,
                  "description": "with BROKER_URL=redis://: nodes the broadcast reached "
                                 "(counts are summed over them)"},
        "nodes_answered": {"type": "integer", "minimum": 1,
                           "description": "nodes whose counts arrived in time"},
        "partial": {"type": "boolean",
                    "description": "true when some node did not answer in time (its "
                                   "clients may still have received the frame)"},
    }, ("recipients", "queued", "message_id")),
    "CallToolRequest": _obj({
        "client_id": {"type": "string", "minLength": 1, "maxLength": 128},
        "tool_name": {"type": "string", "minLength": 1, "maxLength": 128},
        "params": {**ANY_OBJECT, "nullable": True},
        "arguments": {**ANY_OBJECT, "nullable": True,
                      "description": "MCP's name for params (give one of the two)"},
        "parameters": {**ANY_OBJECT, "nullable": True,
                       "description": "the seed-001 name for params (give one)"},
        "timeout": {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                    "maximum": 3600, "nullable": True,
                    "description": "seconds to wait for the client's tool_result "
                                   "(default CALL_TOOL_TIMEOUT)"},
        "wait_for_client": {"type": "boolean", "nullable": True,
                            "description": "wait for an offline client to resume instead of "
                                           "answering 409"},
    }, ("client_id", "tool_name"), additionalProperties=True,
        **{"not": {"anyOf": [{"required": list(pair)}
                             for pair in combinations(PARAMS_NAMES, 2)]}},
        description="The tool's parameters go under one of `params`, `arguments` or "
                    "`parameters`.",
        example={"client_id": "alice", "tool_name": "get_time", "params": {}}),
    "CallToolResult": _obj({
        "call_id": STRING,
        "tool_name": STRING,
        "client_id": STRING,
        "success": BOOL,
        "result": {**ANY, "description": "what the client returned"},
        "error": {**ANY, "description": "the client's error, when success is false"},
    }, ("call_id", "tool_name", "client_id", "success", "result")),
    "StreamResult": _obj({
        "stream_id": STRING,
        "client_id": STRING,
        "chunks": NONNEG,
        "bytes": NONNEG,
        "status": {"type": "string", "enum": ["delivered", "queued"]},
        "delivered": NONNEG,
        "queued": NONNEG,
    }, ("stream_id", "client_id", "chunks", "bytes", "status", "delivered", "queued")),
    "Channels": _obj({
        "channels": {"type": "array", "items": _obj({
            "channel": STRING, "subscribers": {"type": "integer", "minimum": 1},
        }, ("channel", "subscribers"))},
        "total_channels": NONNEG,
        "available_channels": {"type": "array", "items": STRING},
    }, ("channels", "total_channels", "available_channels")),
    "Handlers": _obj({
        "handlers": {"type": "array", "items": _obj({
            "type": STRING,
            "aliases": {"type": "array", "items": STRING},
            "description": STRING,
            "fields": {"type": "object", "additionalProperties": _obj({
                "type": STRING, "required": BOOL}, ("type", "required"))},
            "replies": {"type": "array", "items": STRING},
            "handler": STRING,
        }, ("type", "aliases", "description", "fields", "replies"),
            additionalProperties=True)},
        "types": {"type": "array", "items": STRING},
    }, ("handlers", "types")),
    "Tools": _obj({
        "tools": {"type": "array", "items": _obj({
            "name": STRING,
            "description": STRING,
            "parameters": {**ANY_OBJECT, "description": "JSON Schema of the parameters"},
            "risk_level": {"type": "string", "enum": ["low", "medium", "high"]},
        }, ("name", "description", "parameters", "risk_level"))},
    }, ("tools",)),
    "Health": _obj({"status": {"type": "string", "enum": ["ok"]}}, ("status",)),
    "ObserverTicket": _obj({
        "ticket": STRING, "expires_at": DATETIME, "expires_in": INT,
        "query_parameter": {"type": "string", "enum": ["observer_ticket"]},
    }, ("ticket", "expires_at", "expires_in", "query_parameter")),
    "Ready": _obj({
        "status": {"type": "string", "enum": ["ready", "unavailable"]},
        "broker": ref("Broker"),
        "accepting": BOOL,
    }, ("status", "broker", "accepting")),
}


def _error(description: str, **extra: Any) -> Schema:
    return _json(ref("Error"), description, **extra)


RESPONSES: dict[str, Schema] = {
    "BadRequest": _error("Malformed request: the body is not valid JSON or not an object "
                         "(`invalid_json`)."),
    "Unauthorized": _error("No credentials: send `Authorization: Bearer <API_TOKEN>` or "
                           "`X-API-Key`.",
                           headers={"WWW-Authenticate": {"schema": STRING}}),
    "Forbidden": _error("Wrong API token."),
    "NotFound": _error("No session with this client_id (unknown or expired): "
                       "`client_not_found`."),
    "RequestTimeout": _error("The body did not arrive within REQUEST_BODY_TIMEOUT "
                             "(`request_timeout`); the connection is closed."),
    "PayloadTooLarge": _error("The body exceeds API_MAX_BODY."),
    "UnsupportedMediaType": _error("The body is not `application/json`."),
    "Unprocessable": _error("A field is missing or wrong; `error.field` names it "
                            "(`invalid_field`)."),
    "RateLimited": _error("Too many requests from this caller (API_RATE_LIMIT).",
                          headers={"Retry-After": {"schema": {"type": "integer"},
                                                   "description": "seconds to wait"}}),
    "Unavailable": _error("The message could be neither delivered nor queued (the broker "
                          "is down): nothing was accepted."),
}

_AUTH_ERRORS = {"401": _resp("Unauthorized"), "403": _resp("Forbidden"),
                "429": _resp("RateLimited")}
_BODY_ERRORS = {"400": _resp("BadRequest"), "408": _resp("RequestTimeout"),
                "413": _resp("PayloadTooLarge"),
                "415": _resp("UnsupportedMediaType"), "422": _resp("Unprocessable")}

CLIENT_ID_PARAM: Schema = {"name": "client_id", "in": "path", "required": True,
                           "description": "the session's client_id",
                           "schema": {"type": "string", "minLength": 1}}
USER_ID_PARAM: Schema = {"name": "user_id", "in": "path", "required": True,
                         "description": "the user (JWT sub, or a connection's user_id)",
                         "schema": {"type": "string", "minLength": 1}}
CHANNEL_PARAM: Schema = {"name": "channel", "in": "path", "required": True,
                         "description": "the channel's name",
                         "schema": {"type": "string", "minLength": 1}}
IDEMPOTENCY_HEADER: Schema = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "same as the body's `idempotency_key`",
    "schema": {"type": "string", "minLength": 1, "maxLength": 256}}


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


def _op(summary: str, tag: str, responses: dict[str, Schema], *, description: str = "",
        parameters: list[Schema] | None = None,
        body: str | None = None, operation_id: str | None = None) -> Schema:
    op: Schema = {"summary": summary, "tags": [tag], "responses": dict(responses)}
    if operation_id:
        op["operationId"] = operation_id
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {"required": True,
                             "content": {JSON: {"schema": ref(body)}}}
        op["responses"].update(_BODY_ERRORS)
    return op


def _apply_auth(paths: dict[str, Schema]) -> dict[str, Schema]:
    """Mark each operation public or token-protected as the auth middleware treats its path
    (``api.middleware.is_public``: the one list of public routes)."""
    for path, item in paths.items():
        for method, op in item.items():
            if method == "parameters":
                continue
            if is_public(path):
                op["security"] = []
            else:
                op["responses"].update(_AUTH_ERRORS)
    return paths


def _status_op(operation_id: str, summary: str) -> Schema:
    return _op(summary, "introspection", {"200": _json(ref("Status"), "Counters and state.")},
               operation_id=operation_id)


def _handlers_op(operation_id: str) -> Schema:
    return _op("Registered WebSocket frame types", "introspection",
               {"200": _json(ref("Handlers"), "Handlers and every accepted type (aliases "
                                              "included).")},
               operation_id=operation_id)


def _health_op(operation_id: str) -> Schema:
    return _op("Liveness", "health", {"200": _json(ref("Health"), "The process answers.")},
               operation_id=operation_id,
               description="Public (no token). For readiness use `/ready`.")


def _stream_op() -> Schema:
    op = _op(
        "Stream text to a client, live", "delivery",
        {"200": _json(ref("StreamResult"), "Every frame reached the live connection."),
         "202": _json(ref("StreamResult"), "Some frames were kept in the session's history "
                                           "(the client is offline or dropped mid-stream)."),
         "400": _error("A bad NDJSON line, or the upload was interrupted."),
         "404": _resp("NotFound"),
         "408": _error("Nothing received for WS_TIMEOUT seconds (`request_timeout`)."),
         "413": _error("More than MAX_MESSAGE_SIZE of content."),
         "415": _error("Not text/plain, application/octet-stream or application/x-ndjson."),
         "422": _resp("Unprocessable")},
        operation_id="streamToClient",
        description="The request body is relayed as it arrives (send it chunked) as "
                    "`stream_start`, one `stream_chunk` per piece and `stream_end` "
                    "{full_content}. NDJSON lines are `{\"content\": \"...\"}` (or "
                    "`delta`); a `model` key may appear on any line.",
        parameters=[_query(name, {"type": "string", "maxLength": 128}, description)
                    for name, description in (
                        ("stream_id", "the stream's id (else the server picks one)"),
                        ("reply_to", "message_id of the client frame this stream answers"),
                        ("model", "model name put on stream_start / stream_end"))])
    op["requestBody"] = {"required": True, "content": {
        "text/plain": {"schema": {"type": "string"}},
        "application/x-ndjson": {"schema": {"type": "string"}},
    }}
    return op


ASSET_TYPES = ("application/javascript", "text/css", "text/html", "image/png",
               "application/json", "application/octet-stream")


def _static_op(operation_id: str, summary: str, example: str) -> Schema:
    return _op(summary, "docs", {
        "200": {"description": "The file.",
                "content": {ctype: {"schema": {"type": "string"}} for ctype in ASSET_TYPES}},
        "404": _error("No such file."),
    }, operation_id=operation_id, parameters=[{
        "name": "path", "in": "path", "required": True, "description": "file name",
        "schema": {"type": "string", "minLength": 1}, "example": example}])


def build_paths() -> dict[str, Schema]:
    html = {"text/html": {"schema": {"type": "string"}}}
    return _apply_auth({
        "/status": {"get": _status_op("getStatus", "Server state and counters")},
        "/ws/status": {"get": _status_op("getWsStatus", "Alias of /status (seed spelling)")},
        "/clients": {"get": _op(
            "List sessions", "clients",
            {"200": _json(ref("ClientList"), "One page of sessions, oldest first."),
             "422": _resp("Unprocessable")},
            operation_id="listClients",
            description="Connected sessions and sessions kept for resume (`connected` "
                        "tells them apart).",
            parameters=[
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000,
                                 "default": 100}, "page size"),
                _query("offset", {"type": "integer", "minimum": 0, "maximum": MAX_QUERY_INT,
                                  "default": 0},
                       "sessions to skip"),
                _query("connected", {"type": "boolean"},
                       "only connected (true) or only offline (false) sessions"),
                _query("channel", STRING, "only subscribers of this channel"),
                _query("client_type", STRING, "only clients of this type"),
                _query("user_id", STRING, "only this user's sessions"),
            ])},
        "/clients/{client_id}": {
            "parameters": [CLIENT_ID_PARAM],
            "get": _op("One session", "clients",
                       {"200": _json(ref("Client"), "The session."),
                        "404": _resp("NotFound")}, operation_id="getClient"),
            "delete": _op("End a session", "clients",
                          {"200": _json(ref("Disconnected"), "Socket closed with 4001, "
                                                             "session and history dropped."),
                           "404": _resp("NotFound")},
                          operation_id="deleteClient",
                          description="Closes the client's socket with close code 4001 "
                                      "(do not reconnect) and forgets its session."),
        },
        "/clients/{client_id}/messages": {
            "parameters": [CLIENT_ID_PARAM],
            "get": _op(
                "A session's history", "clients",
                {"200": _json(ref("History"), "Frames in both directions, oldest first."),
                 "404": _resp("NotFound"), "422": _resp("Unprocessable")},
                operation_id="getClientMessages",
                parameters=[
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000,
                                     "default": 100}, "page size"),
                    _query("after_seq", {"type": "integer", "minimum": 0,
                                         "maximum": MAX_QUERY_INT},
                           "only frames after this seq"),
                    _query("before_seq", {"type": "integer", "minimum": 0,
                                          "maximum": MAX_QUERY_INT},
                           "only frames before this seq (alone: the newest page before it)"),
                ])},
        "/send_message": {"post": _op(
            "Send a message to one client, or to every session of a user", "delivery",
            {"200": _json({"oneOf": [ref("SendMessageResult"), ref("SendToUserResult")]},
                          "Delivered to the live connection (with user_id: to at least one "
                          "of the user's)."),
             "202": _json({"oneOf": [ref("SendMessageResult"), ref("SendToUserResult")]},
                          "The client is offline (with user_id: every session of the user "
                          "is): queued in its session, delivered on resume."),
             "404": _error("No session with this client_id (`client_not_found`), or the "
                           "user has none (`user_not_found`)."),
             "503": _resp("Unavailable")},
            operation_id="sendMessage", body="SendMessageRequest",
            parameters=[IDEMPOTENCY_HEADER],
            description="The client receives `{type: message_type, data: {content, "
                        "...data}}` with the next `seq` of its session. With `user_id` "
                        "instead of `client_id`, the same frame (one message_id) goes to "
                        "every session of the user, on every node; the answer lists each "
                        "session's client_id, status and seq.")},
        "/broadcast": {"post": _op(
            "Broadcast to many clients", "delivery",
            {"200": _json(ref("BroadcastResult"), "Fanned out."),
             "503": _resp("Unavailable")},
            operation_id="broadcast", body="BroadcastRequest",
            parameters=[IDEMPOTENCY_HEADER],
            description="To every session, or to a channel's subscribers and/or one "
                        "client_type. Offline sessions keep the frame for resume.")},
        "/call_tool": {"post": _op(
            "Call a tool on a client and wait for its result", "delivery",
            {"200": _json(ref("CallToolResult"), "The client's `tool_result`."),
             "404": _resp("NotFound"),
             "409": _error("The client is offline (`client_offline`); pass "
                           "`wait_for_client: true` to wait for it to resume."),
             "502": _error("The client disconnected before answering "
                           "(`client_disconnected`)."),
             "503": _resp("Unavailable"),
             "504": _error("The client did not answer within `timeout` (`timeout`).")},
            operation_id="callTool", body="CallToolRequest",
            description="Sends the client a `tool_call` frame {call_id, tool_name, params} "
                        "and answers with its `tool_result` frame.")},
        "/stream/{client_id}": {
            "parameters": [CLIENT_ID_PARAM],
            "post": _stream_op()},
        "/observer_ticket": {"post": _op(
            "A ticket to read system channels over WebSocket", "clients",
            {"200": _json(ref("ObserverTicket"), "A ticket, valid for `expires_in` seconds.")},
            operation_id="observerTicket",
            description="Open a WebSocket with `?observer_ticket=<ticket>` (within its "
                        "validity) and that connection may subscribe to system channels "
                        "such as `tool_activity` (others get `forbidden_channel`). The "
                        "dashboard does this; the API token never reaches the WebSocket "
                        "port.")},
        "/channels": {"get": _op(
            "Channels and subscriber counts", "introspection",
            {"200": _json(ref("Channels"), "Channels with at least one subscriber.")},
            operation_id="listChannels")},
        "/channels/{channel}/presence": {
            "parameters": [CHANNEL_PARAM],
            "get": _op(
                "Who is in a channel", "channels",
                {"200": _json(ref("Presence"), "The channel's sessions and users on every "
                                               "node (empty when nobody is in it)."),
                 "422": _resp("Unprocessable")},
                operation_id="channelPresence",
                description="Sessions subscribed to the channel now, on every node, by "
                            "client_id; an offline session stays until it expires. At most "
                            "`limit` (PRESENCE_LIMIT) are listed; `count` is all of them.",
                parameters=[_query("limit", {"type": "integer", "minimum": 1,
                                             "maximum": 100_000},
                                   "most sessions listed (above PRESENCE_LIMIT: "
                                   "PRESENCE_LIMIT)")])},
        "/users/{user_id}": {
            "parameters": [USER_ID_PARAM],
            "get": _op("A user's sessions", "clients",
                       {"200": _json(ref("User"), "Every session of the user, connected or "
                                                  "kept for resume, oldest first."),
                        "404": _error("The user has no session (`user_not_found`).")},
                       operation_id="getUser")},
        "/clients/{client_id}/channels": {
            "parameters": [CLIENT_ID_PARAM],
            "post": _op(
                "Subscribe a session to a channel (server-side)", "channels",
                {"200": _json(ref("Subscription"), "Subscribed (the client gets a "
                                                   "`subscribed` frame, server_side: true)."),
                 "403": _error("A system channel (`forbidden_channel`)."),
                 "404": _resp("NotFound")},
                operation_id="subscribeClient", body="SubscriptionRequest",
                description="The backend vouches for the subscription: the channel's "
                            "subscribe rule is not asked; system channels and the CHANNELS "
                            "allow-list (422 `invalid_channel`) still apply, and "
                            "MAX_CHANNELS_PER_CLIENT (422 `too_many_channels`).")},
        "/clients/{client_id}/channels/{channel}": {
            "parameters": [CLIENT_ID_PARAM, CHANNEL_PARAM],
            "delete": _op(
                "Unsubscribe a session from a channel", "channels",
                {"200": _json(ref("Subscription"), "Unsubscribed (`changed`: it was "
                                                   "subscribed; the client gets "
                                                   "`unsubscribed`)."),
                 "404": _resp("NotFound")},
                operation_id="unsubscribeClient")},
        "/users/{user_id}/channels": {
            "parameters": [USER_ID_PARAM],
            "post": _op(
                "Subscribe every session of a user to a channel", "channels",
                {"200": _json(ref("UserSubscription"), "Each session of the user, "
                                                       "subscribed."),
                 "403": _error("A system channel (`forbidden_channel`)."),
                 "404": _error("The user has no session (`user_not_found`).")},
                operation_id="subscribeUser", body="SubscriptionRequest")},
        "/users/{user_id}/channels/{channel}": {
            "parameters": [USER_ID_PARAM, CHANNEL_PARAM],
            "delete": _op(
                "Unsubscribe every session of a user from a channel", "channels",
                {"200": _json(ref("UserSubscription"), "Each session of the user, "
                                                       "unsubscribed."),
                 "404": _error("The user has no session (`user_not_found`).")},
                operation_id="unsubscribeUser")},
        "/handlers": {"get": _handlers_op("listHandlers")},
        "/ws/handlers": {"get": _handlers_op("listWsHandlers")},
        "/tools": {"get": _op(
            "Server-side tools", "introspection",
            {"200": _json(ref("Tools"), "Tools clients may call with `tool_call` frames.")},
            operation_id="listTools")},
        "/health": {"get": _health_op("health")},
        "/healthz": {"get": _health_op("healthz")},
        "/ready": {"get": _op(
            "Readiness", "health",
            {"200": _json(ref("Ready"), "Accepting connections and the broker is up."),
             "503": _json(ref("Ready"), "Shutting down or the broker is unreachable.")},
            operation_id="ready",
            description="Public (no token), for load balancers and orchestrator probes.")},
        "/metrics": {"get": _op(
            "Prometheus metrics", "health",
            {"200": {"description": "Prometheus text exposition format 0.0.4.",
                     "content": {"text/plain": {"schema": {"type": "string"}}}}},
            operation_id="metrics")},
        "/openapi.json": {"get": _op(
            "This document", "docs",
            {"200": _json({"type": "object"}, "The OpenAPI 3 document.")},
            operation_id="openapi")},
        "/asyncapi.json": {"get": _op(
            "The WebSocket protocol (AsyncAPI 3.0)", "docs",
            {"200": _json({"type": "object"}, "A JSON Schema for every client and server "
                                              "frame.")},
            operation_id="asyncapi")},
        **{path: {"get": _op(
            summary, "docs",
            {"200": {"description": "The file, with an ETag and a day's cache.",
                     "content": {ctype: {"schema": {"type": "string"}}}},
             "304": {"description": "Not modified (If-None-Match)."}},
            operation_id=operation_id)}
           for path, summary, ctype, operation_id in (
               ("/switchboard.js", "The browser client (ES module)", "text/javascript",
                "clientModule"),
               ("/switchboard.d.ts", "The browser client's TypeScript declarations",
                "application/typescript", "clientTypes"),
               ("/frames.d.ts", "TypeScript declarations of every frame",
                "application/typescript", "frameTypes"))},
        "/docs": {"get": _op(
            "Interactive API docs (Swagger UI, served locally)", "docs",
            {"200": {"description": "HTML page.", "content": html}}, operation_id="docs")},
        "/dashboard": {"get": _op(
            "Live dashboard", "docs",
            {"200": {"description": "HTML page (it asks for the API token).",
                     "content": html}}, operation_id="dashboard")},
        "/static/{path}": {"get": _static_op(
            "staticFile", "The dashboard's and the docs page's files (api/static)",
            "dashboard.js")},
        "/static/swagger-ui/{path}": {"get": _static_op(
            "swaggerUiFile", "Swagger UI's files, from the swagger-ui-bundle package",
            "swagger-ui-bundle.js")},
        "/": {"get": _op(
            "Redirect to the dashboard", "docs",
            {"302": {"description": "To /dashboard.",
                     "headers": {"Location": {"schema": STRING}}}}, operation_id="root")},
    })


DESCRIPTION = f"""\
Switchboard's HTTP API: reach WebSocket clients from any service.

Authenticate with `Authorization: Bearer $API_TOKEN` (or `X-API-Key: $API_TOKEN`).
{public_routes_text()} are public.

Every error is JSON: `{{"error": {{"code": "...", "message": "..."}}}}`. Unsupported methods
answer 405 with an `Allow` header; unknown paths 404.
"""

_SPEC: Schema = {
    "openapi": "3.0.3",
    "info": {"title": "Switchboard HTTP API", "version": API_VERSION,
             "description": DESCRIPTION, "license": {"name": "MIT"}},
    "tags": [
        {"name": "delivery", "description": "Send, broadcast, call tools"},
        {"name": "clients", "description": "Sessions, users and their history"},
        {"name": "channels", "description": "Server-side subscriptions and presence"},
        {"name": "introspection", "description": "Counters, channels, handlers, tools"},
        {"name": "health", "description": "Liveness, readiness, metrics"},
        {"name": "docs", "description": "This document, the docs and the dashboard"},
    ],
    "paths": build_paths(),
    "components": {
        "schemas": SCHEMAS,
        "responses": RESPONSES,
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer",
                           "description": "API_TOKEN as a bearer token"},
            "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                           "description": "API_TOKEN in the X-API-Key header"},
        },
    },
    "security": [{"bearerAuth": []}, {"apiKeyAuth": []}],
}


def build_spec(server_url: str | None = None) -> Schema:
    """A fresh copy of the document; ``server_url`` fills ``servers`` when given (without it,
    clients such as Swagger UI use the URL they loaded the document from)."""
    spec = copy.deepcopy(_SPEC)
    if server_url:
        spec["servers"] = [{"url": server_url}]
    return spec


def documented_operations(spec: Schema | None = None) -> set[tuple[str, str]]:
    """``{(METHOD, path)}`` of every operation in the document."""
    spec = spec or _SPEC
    methods = ("get", "post", "put", "patch", "delete")
    return {(method.upper(), path) for path, item in spec["paths"].items()
            for method in methods if method in item}


_SPEC_BYTES = orjson.dumps(_SPEC)


async def openapi_json(request: web.Request) -> web.Response:
    """``GET /openapi.json``: the document (relative to wherever it was loaded from)."""
    return web.Response(body=_SPEC_BYTES, content_type=JSON)
