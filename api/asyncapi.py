"""The WebSocket protocol, machine-readable: an AsyncAPI 3.0 document at ``GET /asyncapi.json``.

Client → server frames are built from the handler table (``handlers.HANDLER_TABLE``: type,
aliases, ``data`` fields), so a new handler is documented by registering it. Server → client
frames are declared once here (:data:`SERVER_FRAMES`); a test checks that every reply a handler
declares has a schema, every frame the test suite receives fits its schema
(``tests/conftest.py``), and the JS client's ``frames.d.ts`` is the TypeScript this module
generates from the same schemas (``python -m api.asyncapi --typescript``).

The document describes the gateway: ``receive`` operations are frames clients send, ``send``
operations frames the gateway sends.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from jsonschema import Draft7Validator

from handlers import HANDLER_TABLE, Registration
from server.protocol import MAX_MESSAGE_ID_LENGTH, MAX_TYPE_LENGTH, Field

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NONNEG: Schema = {"type": "integer", "minimum": 0}
NUMBER: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
OBJECT: Schema = {"type": "object"}
ANY: Schema = {}
DATETIME: Schema = {"type": "string", "format": "date-time"}
STRINGS: Schema = {"type": "array", "items": STRING}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def enum(*values: str) -> Schema:
    return {"type": "string", "enum": list(values)}


def data(required: Mapping[str, Schema] | None = None,
         optional: Mapping[str, Schema] | None = None) -> Schema:
    """A frame's ``data`` object: these fields, more allowed (forward compatibility)."""
    required = dict(required or {})
    properties = {**required, **(optional or {})}
    out: Schema = {"type": "object", "properties": properties, "additionalProperties": True}
    if required:
        out["required"] = list(required)
    return out


TOOL_RESULT = data({"type": enum("text", "structured", "error"), "content": ANY,
                    "raw_data": ANY, "success": BOOL})
TOOL_LIFECYCLE = {"call_id": STRING, "tool_name": STRING, "parameters": ANY,
                  "start_time": DATETIME, "status": STRING}
#: Set on the gateway's own tools; absent on calls a third party made on a client.
RISK = {"risk_level": enum("low", "medium", "high")}
#: ``origin: "api"`` marks a ``POST /call_tool`` seen by tool_activity subscribers (the tool
#: runs on ``client_id``).
OBSERVED = {"client_id": STRING, "origin": enum("api")}
STATUS = data({"status": enum("running", "shutting_down"), "connected_clients": NONNEG,
               "total_sessions": NONNEG, "total_messages_sent": NONNEG,
               "total_messages_received": NONNEG, "uptime": NUMBER, "server_time": DATETIME},
              {"channel_stats": {"type": "object", "additionalProperties": NONNEG},
               "active_channels": STRINGS, "total_broadcasts": NONNEG,
               "pending_tool_calls": NONNEG, "node_id": STRING, "broker": OBJECT})


class ServerFrame:
    """One server → client frame type: what it is for, its ``data``, and whether it is kept in
    history (then it carries ``seq``)."""

    def __init__(self, summary: str, schema: Schema, *, kept: bool = True,
                 seq_optional: bool = False) -> None:
        self.summary = summary
        self.schema = schema
        self.kept = kept
        #: kept, but one case sends it before a session exists (a refused resume's error)
        self.seq_optional = seq_optional


SERVER_FRAMES: dict[str, ServerFrame] = {
    "connection_established": ServerFrame(
        "First frame of every connection: the session and whether it was resumed.",
        data({"client_id": STRING, "user_id": nullable(STRING), "client_type": STRING,
              "session_token": STRING, "resumed": BOOL, "recovered": BOOL,
              "last_seq": NONNEG, "replayed": NONNEG},
             {"heartbeat": NUMBER, "session_ttl": NUMBER, "max_message_size": NONNEG,
              "server_time": DATETIME, "message": STRING}), kept=False),
    "connection_ack": ServerFrame("Seed 000's greeting, after connection_established on "
                                  "/ws/mcplog.", data({}, {"message": STRING}), kept=False),
    "pong": ServerFrame("Answer to ping (not kept).",
                        data({"client_id": STRING}, {"echo_timestamp": ANY}), kept=False),
    "heartbeat_response": ServerFrame("Answer to heartbeat (not kept).",
                                      data({"client_id": STRING}, {"echo_timestamp": ANY}),
                                      kept=False),
    "error": ServerFrame(
        "Something the client sent was refused; the connection stays open unless close_code "
        "is set (a refused resume, followed by that close).",
        data({"code": STRING, "message": STRING},
             {"field": STRING, "supported_types": STRINGS, "available_channels": STRINGS,
              "channel": STRING, "reason": STRING, "retry_after": NUMBER,
              "close_code": INT, "max_channels": NONNEG, "user_id": STRING,
              "max_sessions_per_user": NONNEG,
              "stream_id": STRING, "partial_content": STRING, "call_id": STRING}),
        seq_optional=True),
    "processing": ServerFrame("A chat message is being answered.",
                              data({"status": STRING})),
    "chat_response": ServerFrame("The answer to a chat message.",
                                 data({"content": STRING, "status": STRING, "model": STRING},
                                      {"role": STRING, "conversation_id": STRING})),
    "stream_start": ServerFrame("A streamed answer begins.",
                                data({"stream_id": STRING},
                                     {"source": STRING, "model": STRING,
                                      "conversation_id": STRING})),
    "stream_chunk": ServerFrame("One piece of a streamed answer.",
                                data({"stream_id": STRING, "content": STRING, "index": NONNEG})),
    "stream_end": ServerFrame("A streamed answer ends.",
                              data({"stream_id": STRING, "full_content": STRING},
                                   {"chunks": NONNEG, "model": STRING, "status": STRING,
                                    "role": STRING, "conversation_id": STRING})),
    "tool_call": ServerFrame(
        "A third party (POST /call_tool) asks this client to run a tool: answer with "
        "tool_result.",
        data({"call_id": STRING, "tool_name": STRING, "params": ANY})),
    "tool_result_ack": ServerFrame("The gateway took the client's tool_result.",
                                   data({"call_id": STRING})),
    "tool_response": ServerFrame(
        "The outcome of a client-initiated tool_call.",
        data({"call_id": STRING, "tool_name": STRING, "success": BOOL, "result": ANY},
             {"error": ANY, "available_tools": STRINGS})),
    "mcp_tool_execution_start": ServerFrame(
        "A tool started (seed 001). Also sent to tool_activity subscribers, with those of "
        "POST /call_tool (origin: api).",
        data(TOOL_LIFECYCLE, {**RISK, **OBSERVED})),
    "mcp_tool_waiting_permission": ServerFrame(
        "A high-risk tool waits for permission_response.",
        data({**TOOL_LIFECYCLE, **RISK}, {"client_id": STRING})),
    "mcp_tool_execution_complete": ServerFrame(
        "A tool finished (seed 001). Also sent to tool_activity subscribers, with those of "
        "POST /call_tool (origin: api).",
        data({**TOOL_LIFECYCLE, "end_time": DATETIME, "success": BOOL, "result": TOOL_RESULT},
             {"duration_ms": NUMBER, **RISK, **OBSERVED})),
    "tools_list": ServerFrame("The server-side tools.", data({"tools": {
        "type": "array", "items": data({"name": STRING, "description": STRING,
                                        "parameters": ANY,
                                        "risk_level": enum("low", "medium", "high")})}})),
    "status_response": ServerFrame("The server's counters.", STATUS),
    "subscribed": ServerFrame("Joined a channel (channel_count: how many the session has; "
                              "list_channels lists them; subscribers: the channel's sessions "
                              "on the node holding this one, presence counts every node). "
                              "server_side: the backend subscribed the session (the JWT's "
                              "subs, POST /clients/{id}/channels).",
                              data({"channel": STRING, "channel_count": NONNEG,
                                    "subscribers": NONNEG}, {"server_side": BOOL})),
    "unsubscribed": ServerFrame("Left a channel (server_side: the backend unsubscribed the "
                                "session).",
                                data({"channel": STRING, "was_subscribed": BOOL,
                                      "channel_count": NONNEG}, {"server_side": BOOL})),
    "published": ServerFrame("A publish was delivered to the channel's subscribers (every "
                             "node): live recipients, and offline ones that keep it.",
                             data({"channel": STRING, "message_id": STRING,
                                   "recipients": NONNEG, "queued": NONNEG})),
    "publication": ServerFrame(
        "A client's publication on a channel you are subscribed to: data is what it "
        "published (or what PUBLISH_WEBHOOK_URL rewrote it to); channel and from "
        "{client_id, user_id} are at the frame's top level.", data()),
    "presence": ServerFrame(
        "Who is in a channel: its sessions (at most PRESENCE_LIMIT, by client_id; offline "
        "ones stay until they expire), their users, the whole count.",
        data({"channel": STRING, "count": NONNEG,
              "sessions": {"type": "array", "items": data(
                  {"client_id": STRING, "user_id": nullable(STRING), "connected": BOOL})},
              "users": STRINGS, "truncated": BOOL})),
    "join": ServerFrame("A session joined a channel you are in (its rule has join_leave).",
                        data({"channel": STRING, "client_id": STRING,
                              "user_id": nullable(STRING)})),
    "leave": ServerFrame("A session left a channel you are in (unsubscribed, or its session "
                         "ended or expired; not a socket drop).",
                         data({"channel": STRING, "client_id": STRING,
                               "user_id": nullable(STRING)})),
    "channel_history": ServerFrame(
        "A channel's recent frames (publications and broadcasts), oldest first, each as it "
        "was sent (without seq); a live frame may also be in it: dedupe by message_id.",
        data({"channel": STRING, "frames": {"type": "array", "items": OBJECT},
              "count": NONNEG, "limit": NONNEG})),
    "channels_list": ServerFrame(
        "Channels with subscriber counts.",
        data({"channels": {"type": "object", "additionalProperties": NONNEG},
              "available_channels": STRINGS, "subscribed": STRINGS})),
    "message": ServerFrame("A message from POST /send_message (message_type defaults to "
                           "message).", data({}, {"content": ANY})),
}

#: Any other type: what a third party chose as ``message_type`` (POST /broadcast,
#: POST /send_message). Channel broadcasts carry ``channel``.
BROADCAST = ServerFrame("Any message_type a third party sends or broadcasts.", data())

ENVELOPE_PROPERTIES: Schema = {
    "message_id": STRING,
    "timestamp": DATETIME,
    "reply_to": STRING,
    "seq": {"type": "integer", "minimum": 1,
            "description": "per-session counter of kept frames, +1 each: resume after it"},
    "channel": {"type": "string", "description": "set on channel broadcasts"},
    "from": {"type": "object", "description": "a publication's sender",
             "properties": {"client_id": STRING, "user_id": nullable(STRING)},
             "required": ["client_id", "user_id"]},
}


def server_payload(frame_type: str | None, frame: ServerFrame) -> Schema:
    """The JSON Schema of a whole server frame (``frame_type`` None: any other type)."""
    required = ["type", "data", "message_id", "timestamp"]
    if frame.kept and not frame.seq_optional:
        required.append("seq")
    type_schema: Schema = {"type": "string"} if frame_type is None else {"const": frame_type}
    return {"type": "object", "properties": {"type": type_schema, "data": frame.schema,
                                             **ENVELOPE_PROPERTIES},
            "required": required, "additionalProperties": True}


_KINDS: dict[str, Schema] = {"string": STRING, "object": OBJECT, "array": {"type": "array"},
                             "boolean": BOOL, "integer": INT, "number": NUMBER, "any": ANY}


def field_schema(spec: Field) -> Schema:
    schema = dict(_KINDS[spec.kind])
    if spec.max_length is not None:
        schema["maxLength" if spec.kind == "string" else "maxItems"] = spec.max_length
    if spec.kind == "string" and spec.required:
        schema["minLength"] = 1
    return nullable(schema) if spec.nullable else schema


def client_payload(entry: Registration) -> Schema:
    """The JSON Schema of a client frame, from its handler registration."""
    types = [entry.type, *entry.aliases]
    required = [n for n, f in entry.fields.items() if f.required]
    data_schema: Schema = {"type": "object", "additionalProperties": True,
                           "properties": {n: field_schema(f) for n, f in entry.fields.items()}}
    if required:
        data_schema["required"] = required
    return {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": types, "maxLength": MAX_TYPE_LENGTH},
            "data": data_schema,
            "message_id": {"type": "string", "minLength": 1,
                           "maxLength": MAX_MESSAGE_ID_LENGTH,
                           "description": "optional; answers carry it as reply_to"},
            "timestamp": STRING,
        },
        "required": ["type", "data"] if required else ["type"],
        "additionalProperties": True,
    }


CONNECT_QUERY: Schema = {
    "type": "object",
    "properties": {
        "client_id": {"type": "string", "maxLength": 128,
                      "description": "the id asked for (1-128 of A-Z a-z 0-9 - _ . : @)"},
        "client_type": {"type": "string", "maxLength": 64},
        "user_id": {"type": "string", "maxLength": 128,
                    "description": "the user (WS_AUTH=none/token; a JWT's sub decides with "
                                   "jwt); absent: anonymous"},
        "session_token": {"type": "string", "description": "resume this session"},
        "last_seq": {"type": "integer", "minimum": 0,
                     "description": "the highest seq processed; later frames are replayed"},
        "token": {"type": "string", "description": "WS_AUTH token or JWT"},
    },
}

DESCRIPTION = """\
Switchboard's WebSocket protocol. Every frame is one JSON object in a text frame:
`{"type", "data", "message_id", "timestamp"}`; server frames answering a client frame carry
`reply_to`, and server frames kept in the session's history carry `seq` (+1 per frame) —
reconnect with `client_id`, `session_token` and `last_seq` to resume. Clients may also send
seed 004's flat form (`data` fields beside `type`) and seed 003's legacy form
(`{"action": "subscribe", "channel": ...}`). Close codes: see the README's table.
"""


def build_document() -> Schema:
    messages: dict[str, Schema] = {}
    receive: dict[str, Schema] = {}
    send: dict[str, Schema] = {}
    for entry in HANDLER_TABLE:
        key = f"client.{entry.type}"
        messages[key] = {"name": entry.type, "title": entry.type, "summary": entry.description,
                         "payload": client_payload(entry)}
        op: Schema = {"action": "receive", "channel": {"$ref": "#/channels/gateway"},
                      "summary": entry.description,
                      "messages": [{"$ref": f"#/channels/gateway/messages/{key}"}]}
        replies = [f"server.{r}" for r in entry.replies]
        if replies:
            op["reply"] = {"channel": {"$ref": "#/channels/gateway"},
                           "messages": [{"$ref": f"#/channels/gateway/messages/{r}"}
                                        for r in [*replies, "server.error"]]}
        receive[f"receive_{entry.type}"] = op
    for name, frame in [*SERVER_FRAMES.items(), ("*", BROADCAST)]:
        key = "server.broadcast" if name == "*" else f"server.{name}"
        messages[key] = {"name": name, "title": name, "summary": frame.summary,
                         "payload": server_payload(None if name == "*" else name, frame)}
        send[f"send_{'broadcast' if name == '*' else name}"] = {
            "action": "send", "channel": {"$ref": "#/channels/gateway"},
            "summary": frame.summary,
            "messages": [{"$ref": f"#/channels/gateway/messages/{key}"}]}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "Switchboard WebSocket protocol", "version": "1.0.0",
                 "description": DESCRIPTION, "license": {"name": "MIT"}},
        "defaultContentType": "application/json",
        "servers": {"gateway": {"host": "127.0.0.1:9004", "protocol": "ws",
                                "description": "the WebSocket port (WS_PORT); also /ws, "
                                               "/ws/chat, /ws/mcplog"}},
        "channels": {"gateway": {
            "address": "/", "servers": [{"$ref": "#/servers/gateway"}],
            "messages": {key: {"$ref": f"#/components/messages/{key}"} for key in messages},
            "bindings": {"ws": {"method": "GET", "query": CONNECT_QUERY}},
        }},
        "operations": {**receive, **send},
        "components": {"messages": messages},
    }


DOCUMENT = build_document()
_DOCUMENT_BYTES = orjson.dumps(DOCUMENT)


async def asyncapi_json(request: web.Request) -> web.Response:
    """``GET /asyncapi.json``: the WebSocket protocol as AsyncAPI 3.0 (public)."""
    return web.Response(body=_DOCUMENT_BYTES, content_type="application/json")


# --- validation (tests) ---------------------------------------------------------------------


def _validators(prefix: str) -> dict[str, Draft7Validator]:
    out: dict[str, Draft7Validator] = {}
    for key, message in DOCUMENT["components"]["messages"].items():
        if key.startswith(prefix):
            names = message["payload"]["properties"]["type"].get("enum") or [message["name"]]
            for name in names:
                out[name] = Draft7Validator(message["payload"])
    return out


def server_frame_checker() -> Callable[[Mapping[str, Any]], list[str]]:
    """``check(frame) -> [problems]`` against the server frame schemas (unknown types: the
    generic envelope)."""
    known = _validators("server.")
    generic = known.pop("*")

    def check(frame: Mapping[str, Any]) -> list[str]:
        validator = known.get(frame.get("type"), generic)  # type: ignore[arg-type]
        return [f"{'/'.join(map(str, e.absolute_path)) or '(frame)'}: {e.message}"
                for e in validator.iter_errors(frame)]

    return check


def client_frame_checker() -> Callable[[Mapping[str, Any]], list[str]]:
    known = _validators("client.")

    def check(frame: Mapping[str, Any]) -> list[str]:
        validator = known.get(frame.get("type"))  # type: ignore[arg-type]
        if validator is None:
            return [f"unknown client frame type {frame.get('type')!r}"]
        return [e.message for e in validator.iter_errors(frame)]

    return check


# --- TypeScript (clients/js/frames.d.ts) ----------------------------------------------------


def _ts(schema: Schema, indent: str = "") -> str:
    if "const" in schema:
        return orjson.dumps(schema["const"]).decode()
    if "enum" in schema:
        return " | ".join(orjson.dumps(v).decode() for v in schema["enum"])
    if "anyOf" in schema:
        return " | ".join(_ts(s, indent) for s in schema["anyOf"])
    kind = schema.get("type")
    if kind == "string":
        return "string"
    if kind in ("integer", "number"):
        return "number"
    if kind == "boolean":
        return "boolean"
    if kind == "null":
        return "null"
    if kind == "array":
        items = schema.get("items")
        return f"Array<{_ts(items, indent)}>" if items else "unknown[]"
    if kind == "object":
        props: Schema = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        if not props:
            if isinstance(extra, dict):
                return f"Record<string, {_ts(extra, indent)}>"
            return "Record<string, unknown>"
        required = set(schema.get("required", ()))
        inner = indent + "  "
        lines = [f"{inner}{n}{'' if n in required else '?'}: {_ts(s, inner)};"
                 for n, s in props.items()]
        if extra is not False:
            lines.append(f"{inner}[key: string]: unknown;")
        return "{\n" + "\n".join(lines) + f"\n{indent}}}"
    return "unknown"


TS_HEADER = """\
// Generated by `python -m api.asyncapi --typescript` from the AsyncAPI document the gateway
// serves at /asyncapi.json. Do not edit: tests/api/test_asyncapi.py fails when it drifts.
"""


def typescript() -> str:
    """The frame types of the protocol as TypeScript declarations (``frames.d.ts``)."""
    out = [TS_HEADER, "/** `data` of each server → client frame type. */",
           "export interface ServerFrameData {"]
    for name, frame in SERVER_FRAMES.items():
        out.append(f"  /** {frame.summary} */")
        out.append(f"  {name}: {_ts(frame.schema, '  ')};")
    out.append("}\n")
    out.append("/** Server frame types kept in history: they always carry `seq`. */")
    kept = [n for n, f in SERVER_FRAMES.items() if f.kept and not f.seq_optional]
    out.append("export type KeptServerFrameType =\n  | "
               + "\n  | ".join(orjson.dumps(n).decode() for n in kept) + ";\n")
    out.append("/** `data` of each client → server frame type (aliases included). */")
    out.append("export interface ClientFrameData {")
    for entry in HANDLER_TABLE:
        schema = client_payload(entry)["properties"]["data"]
        for name in (entry.type, *entry.aliases):
            out.append(f"  /** {entry.description} */")
            out.append(f"  {name}: {_ts(schema, '  ')};")
    out.append("}\n")
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover - a developer's command
    if sys.argv[1:] == ["--typescript"]:
        sys.stdout.write(typescript())
    else:
        sys.stdout.write(orjson.dumps(DOCUMENT, option=orjson.OPT_INDENT_2).decode() + "\n")
