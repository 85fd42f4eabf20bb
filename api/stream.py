"""``POST /stream/{client_id}``: a third party streams text to one client, live.

The request body is read as it arrives (send it chunked, e.g. ``curl -T -`` or an async
generator body) and relayed to the client as seed 004's stream frames:

* ``stream_start`` {stream_id, source: "api", model?}
* ``stream_chunk`` {stream_id, content, index} — one per piece, as soon as it arrives
* ``stream_end`` {stream_id, full_content, chunks, status: "completed", model?}

Body formats (by ``Content-Type``):

* ``text/plain`` (the default when none is given): every piece of the body that arrives is one
  chunk (UTF-8; a character split between two pieces is kept whole).
* ``application/x-ndjson``: one JSON object a line, ``{"content": "…"}`` (or ``{"delta": "…"}``);
  an empty line is skipped; ``{"model": "…"}`` may appear on any line.

Query parameters, all optional: ``stream_id`` (else the server picks one), ``reply_to`` (the
``message_id`` of the client frame this stream answers; set on every frame), ``model``.

The answer is ``{stream_id, client_id, chunks, bytes, status, delivered, queued}``: ``status``
is ``"delivered"`` (200) when every frame reached the live connection, ``"queued"`` (202)
when some were kept in the session's history for the client to get on resume (the client is
offline, or dropped mid-stream). Unknown client → 404. A broken upload (the caller went away,
a bad NDJSON line (400), more than MAX_MESSAGE_SIZE of content (413), nothing received for
REQUEST_BODY_TIMEOUT seconds between two pieces (408)) ends the client's stream with an ``error`` frame
{code: "stream_aborted", stream_id, partial_content}.
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import AsyncIterator
from typing import Any

import orjson
import structlog
from aiohttp import web

from api.middleware import streams_body
from server import protocol
from server.errors import ProtocolError, SwitchboardError, ValidationError
from server.gateway import Gateway
from server.keys import GATEWAY
from server.sessions import Session
from server.webhooks import NDJSON_TYPES, new_stream_id

log = structlog.get_logger("switchboard.api.stream")

routes = web.RouteTableDef()

TEXT_TYPES = frozenset({"text/plain", "application/octet-stream"})
MAX_ID = 128


class _Relay:
    """Delivers one stream's frames to a session, counting delivered and queued frames."""

    def __init__(self, gateway: Gateway, session: Session, stream_id: str,
                 reply_to: str | None, model: str | None) -> None:
        self.gateway = gateway
        self.session = session
        self.stream_id = stream_id
        self.reply_to = reply_to
        self.model = model
        self.delivered = 0
        self.queued = 0
        self.index = 0
        self.size = 0
        self.parts: list[str] = []

    def send(self, frame_type: str, data: dict[str, Any]) -> None:
        frame = protocol.server_frame(frame_type, data, reply_to=self.reply_to)
        _, pushed = self.gateway.registry.deliver(self.session, protocol.encode(frame))
        if pushed:
            self.delivered += 1
        else:
            self.queued += 1

    def start(self) -> None:
        data: dict[str, Any] = {"stream_id": self.stream_id, "source": "api"}
        if self.model is not None:
            data["model"] = self.model
        self.send("stream_start", data)

    def chunk(self, content: str) -> None:
        if not content:
            return
        self.send("stream_chunk", {"stream_id": self.stream_id, "content": content,
                                   "index": self.index})
        self.index += 1
        self.parts.append(content)

    def end(self) -> None:
        data: dict[str, Any] = {"stream_id": self.stream_id, "full_content": "".join(self.parts),
                                "chunks": self.index, "status": "completed", "source": "api"}
        if self.model is not None:
            data["model"] = self.model
        self.send("stream_end", data)

    def abort(self, message: str) -> None:
        self.send("error", {"code": "stream_aborted", "message": message,
                            "stream_id": self.stream_id, "partial_content": "".join(self.parts)})


def _optional_query(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    if len(value) > MAX_ID:
        raise ValidationError(f"{name} must be at most {MAX_ID} characters",
                              code="invalid_field", details={"field": name})
    return value


async def _pieces(request: web.Request, idle: float) -> AsyncIterator[bytes]:
    """The body's pieces as they arrive; ``TimeoutError`` after ``idle`` seconds of silence."""
    while True:
        async with asyncio.timeout(idle):
            data = await request.content.readany()
        if not data:
            return
        yield data


async def _relay_text(request: web.Request, relay: _Relay, limit: int, idle: float) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    async for data in _pieces(request, idle):
        _count(relay, len(data), limit)
        relay.chunk(decoder.decode(data))
    relay.chunk(decoder.decode(b"", final=True))


async def _relay_ndjson(request: web.Request, relay: _Relay, limit: int, idle: float) -> None:
    buffer = b""
    number = 0

    def line_out(line: bytes) -> None:
        nonlocal number
        number += 1
        if not line.strip():
            return
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise ProtocolError(f"NDJSON line {number} is not JSON",
                                code="invalid_json", details={"line": number}) from None
        if not isinstance(obj, dict):
            raise ProtocolError(f"NDJSON line {number} is not a JSON object",
                                code="invalid_json", details={"line": number})
        if isinstance(obj.get("model"), str):
            relay.model = obj["model"]
        content = obj.get("content", obj.get("delta"))
        if content is None:
            return
        if not isinstance(content, str):
            raise ValidationError(f"NDJSON line {number}: content must be a string",
                                  code="invalid_field", details={"line": number,
                                                                 "field": "content"})
        relay.chunk(content)

    async for data in _pieces(request, idle):
        _count(relay, len(data), limit)
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            line_out(line)
    line_out(buffer)


def _count(relay: _Relay, size: int, limit: int) -> None:
    relay.size += size
    if relay.size > limit:
        raise SwitchboardError(f"stream larger than {limit} bytes (MAX_MESSAGE_SIZE: "
                               f"stream_end carries the whole content in one frame)",
                               code="payload_too_large", http_status=413)


@routes.post("/stream/{client_id}")
@streams_body
async def stream_to_client(request: web.Request) -> web.Response:
    """Relay a chunked request body to a client as stream frames (see the module doc)."""
    gateway: Gateway = request.app[GATEWAY]
    session = gateway.require(request.match_info["client_id"])
    ctype = request.content_type  # application/octet-stream when none was sent
    if ctype in NDJSON_TYPES:
        relay_body = _relay_ndjson
    elif ctype in TEXT_TYPES:
        relay_body = _relay_text
    else:
        raise SwitchboardError(
            f"expected Content-Type text/plain or application/x-ndjson, got {ctype}",
            code="unsupported_media_type", http_status=415)
    stream_id = _optional_query(request, "stream_id") or new_stream_id()
    relay = _Relay(gateway, session, stream_id, _optional_query(request, "reply_to"),
                   _optional_query(request, "model"))
    settings = gateway.settings
    idle = settings.request_body_timeout
    relay.start()
    try:
        await relay_body(request, relay, settings.max_message_size, idle)
    except SwitchboardError as exc:
        relay.abort(f"the upload failed: {exc.message}")
        log.info("api_stream_aborted", client_id=session.client_id, stream_id=stream_id,
                 code=exc.code, chunks=relay.index)
        exc.details.setdefault("stream_id", stream_id)
        raise
    except TimeoutError:
        relay.abort(f"the upload went silent for {idle:g}s")
        response = web.Response(body=orjson.dumps({"error": {
            "code": "request_timeout", "message": f"no data for {idle:g}s",
            "stream_id": stream_id}}), status=408, content_type="application/json")
        response.force_close()
        return response
    except asyncio.CancelledError:
        # The caller hung up and the server cancels handlers of lost connections
        # (handler_cancellation), or the server is stopping: the client's stream still ends.
        relay.abort("the upload was interrupted")
        log.info("api_stream_interrupted", client_id=session.client_id, stream_id=stream_id,
                 error="cancelled", chunks=relay.index)
        raise
    except Exception as exc:
        # The caller went away or the body was cut short (aiohttp's payload errors).
        relay.abort("the upload was interrupted")
        log.info("api_stream_interrupted", client_id=session.client_id, stream_id=stream_id,
                 error=type(exc).__name__, chunks=relay.index)
        raise SwitchboardError("the upload was interrupted", code="upload_interrupted",
                               http_status=400, details={"stream_id": stream_id}) from None
    relay.end()
    status = "queued" if relay.queued else "delivered"
    log.info("api_stream_relayed", client_id=session.client_id, stream_id=stream_id,
             chunks=relay.index, bytes=relay.size, status=status)
    body = {"stream_id": stream_id, "client_id": session.client_id, "chunks": relay.index,
            "bytes": relay.size, "status": status, "delivered": relay.delivered,
            "queued": relay.queued}
    return web.Response(body=orjson.dumps(body), status=200 if status == "delivered" else 202,
                        content_type="application/json")
