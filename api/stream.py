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
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import orjson
import structlog
from aiohttp import web

from api.middleware import streams_body
from server.errors import ProtocolError, SwitchboardError, ValidationError
from server.gateway import Gateway
from server.keys import GATEWAY
from server.streams import StreamRelay
from server.webhooks import NDJSON_TYPES

log = structlog.get_logger("switchboard.api.stream")

routes = web.RouteTableDef()

TEXT_TYPES = frozenset({"text/plain", "application/octet-stream"})
MAX_ID = 128


class _Upload:
    """The upload's side of one relay: the model (an NDJSON line may name it) and the size."""

    def __init__(self, relay: StreamRelay, limit: int, model: str | None) -> None:
        self.relay = relay
        self.limit = limit
        self.model = model
        self.size = 0

    def count(self, size: int) -> None:
        self.size += size
        if self.size > self.limit:
            raise SwitchboardError(f"stream larger than {self.limit} bytes (MAX_MESSAGE_SIZE: "
                                   f"stream_end carries the whole content in one frame)",
                                   code="payload_too_large", http_status=413)

    def model_field(self) -> dict[str, Any]:
        return {"model": self.model} if self.model is not None else {}


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


async def _relay_text(request: web.Request, upload: _Upload, idle: float) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    async for data in _pieces(request, idle):
        upload.count(len(data))
        await upload.relay.chunk(decoder.decode(data))
    await upload.relay.chunk(decoder.decode(b"", final=True))


async def _relay_ndjson(request: web.Request, upload: _Upload, idle: float) -> None:
    buffer = b""
    number = 0

    async def line_out(line: bytes) -> None:
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
            upload.model = obj["model"]
        content = obj.get("content", obj.get("delta"))
        if content is None:
            return
        if not isinstance(content, str):
            raise ValidationError(f"NDJSON line {number}: content must be a string",
                                  code="invalid_field", details={"line": number,
                                                                 "field": "content"})
        await upload.relay.chunk(content)

    async for data in _pieces(request, idle):
        upload.count(len(data))
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            await line_out(line)
    await line_out(buffer)


RelayBody = Callable[[web.Request, _Upload, float], Coroutine[Any, Any, None]]


@routes.post("/stream/{client_id}")
@streams_body
async def stream_to_client(request: web.Request) -> web.Response:
    """Relay a chunked request body to a client as stream frames (see the module doc)."""
    gateway: Gateway = request.app[GATEWAY]
    client_id = request.match_info["client_id"]
    await gateway.require(client_id)
    ctype = request.content_type  # application/octet-stream when none was sent
    relay_body: RelayBody
    if ctype in NDJSON_TYPES:
        relay_body = _relay_ndjson
    elif ctype in TEXT_TYPES:
        relay_body = _relay_text
    else:
        raise SwitchboardError(
            f"expected Content-Type text/plain or application/x-ndjson, got {ctype}",
            code="unsupported_media_type", http_status=415)
    relay = StreamRelay(gateway, client_id, reply_to=_optional_query(request, "reply_to"),
                        stream_id=_optional_query(request, "stream_id"),
                        tags={"source": "api"})
    stream_id = relay.stream_id
    settings = gateway.settings
    upload = _Upload(relay, settings.max_message_size, _optional_query(request, "model"))
    idle = settings.request_body_timeout
    await relay.start(**upload.model_field())
    try:
        await relay_body(request, upload, idle)
    except SwitchboardError as exc:
        await relay.fail("stream_aborted", f"the upload failed: {exc.message}")
        log.info("api_stream_aborted", client_id=client_id, stream_id=stream_id,
                 code=exc.code, chunks=relay.index)
        exc.details.setdefault("stream_id", stream_id)
        raise
    except TimeoutError:
        await relay.fail("stream_aborted", f"the upload went silent for {idle:g}s")
        response = web.Response(body=orjson.dumps({"error": {
            "code": "request_timeout", "message": f"no data for {idle:g}s",
            "stream_id": stream_id}}), status=408, content_type="application/json")
        response.force_close()
        return response
    except asyncio.CancelledError:
        # The caller hung up and the server cancels handlers of lost connections
        # (handler_cancellation), or the server is stopping: the client's stream still ends.
        await asyncio.shield(relay.fail("stream_aborted", "the upload was interrupted"))
        log.info("api_stream_interrupted", client_id=client_id, stream_id=stream_id,
                 error="cancelled", chunks=relay.index)
        raise
    except Exception as exc:
        # The caller went away or the body was cut short (aiohttp's payload errors).
        await relay.fail("stream_aborted", "the upload was interrupted")
        log.info("api_stream_interrupted", client_id=client_id, stream_id=stream_id,
                 error=type(exc).__name__, chunks=relay.index)
        raise SwitchboardError("the upload was interrupted", code="upload_interrupted",
                               http_status=400, details={"stream_id": stream_id}) from None
    await relay.end(**upload.model_field())
    status = "queued" if relay.queued else "delivered"
    log.info("api_stream_relayed", client_id=client_id, stream_id=stream_id,
             chunks=relay.index, bytes=upload.size, status=status)
    body = {"stream_id": stream_id, "client_id": client_id, "chunks": relay.index,
            "bytes": upload.size, "status": status, "delivered": relay.delivered,
            "queued": relay.queued}
    return web.Response(body=orjson.dumps(body), status=200 if status == "delivered" else 202,
                        content_type="application/json")
