"""Backend webhooks: a real service behind ``chat_message`` and behind unknown tools.

Two optional settings plug a backend into the gateway; each is off (empty) by default:

``CHAT_WEBHOOK_URL``
    Every ``chat_message`` is POSTed there as JSON::

        {"client_id": "…", "message_id": "…", "content": "…", "role": "user",
         "conversation_id": "…"?, "data": {…the frame's whole data…},
         "history": [{"role": "user"|"assistant", "content": "…"}, …]?}

    The backend answers in one of three ways, and the client sees (all ``reply_to`` the chat
    frame):

    * ``application/json`` ``{"content": "…", "model": "…"?}`` → ``chat_response``
      ``{content, status: "completed", model, role: "assistant"}``. (OpenAI's
      ``{"choices": [{"message": {"content": …}}]}`` is understood too.)
    * ``application/x-ndjson`` — one JSON object a line, ``{"content": "…"}`` or
      ``{"delta": "…"}`` — or ``text/event-stream`` — ``data: {…}`` events, ``data: [DONE]``
      ends — → ``stream_start`` {stream_id}, ``stream_chunk`` {stream_id, content, index} per
      piece as it arrives, ``stream_end`` {stream_id, full_content, chunks, model,
      status: "completed"}.
    * ``202 Accepted`` / ``204 No Content`` → nothing is relayed: the backend will answer later
      through the HTTP API (``POST /send_message`` or ``POST /stream/{client_id}``).

    When the backend is slow (nothing within ``WEBHOOK_TIMEOUT`` seconds: before the answer's
    headers, or between two pieces of a stream), down, answers non-2xx or garbage, the client
    gets an ``error`` frame (``reply_to`` the chat frame) with ``code`` one of
    :data:`BACKEND_ERROR_CODES`; a stream that breaks after ``stream_start`` ends with that
    ``error`` frame carrying the ``stream_id`` and the ``partial_content`` received so far.
    The session is unharmed and a ``chat_backend_failed`` log line names the code.

``TOOL_WEBHOOK_URL``
    A ``tool_call`` for a tool not in the local registry is POSTed there as
    ``{"tool_name", "params", "call_id", "client_id"}``. The backend answers ``{"result": …}``,
    ``{"error": "…"}`` or an MCP ``CallToolResult`` (``{"content": [{"type": "text", …}],
    "isError": false}``); the result goes through the usual seed-001 lifecycle
    (``mcp_tool_execution_start`` … ``mcp_tool_execution_complete``) and ``tool_response``.
    A backend failure is a failed call whose reason starts with the code, e.g.
    ``"backend_timeout: tool backend did not answer within 0.2s"``.

Both share one ``aiohttp.ClientSession`` owned by the WebSocket app (:func:`webhooks_ctx`), and
neither sends the gateway's own credentials to the backend.

``WEBHOOK_SECRET``
    When set, every request carries ``X-Switchboard-Timestamp`` (Unix seconds) and
    ``X-Switchboard-Signature: sha256=<hex>``, the HMAC-SHA256 of ``{timestamp}.{body}`` under
    the secret (Stripe's and Slack's scheme): a backend recomputes it over the raw body,
    compares in constant time, and refuses old timestamps (replays). See :func:`sign`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import orjson
import structlog
from aiohttp import web

from server import protocol
from server.errors import SwitchboardError, UpstreamError
from server.keys import CHANNEL_WEBHOOKS, GATEWAY
from server.logging_setup import url_for_logs as _where
from server.metrics import HOT
from server.protocol import json_too_deep_message, too_deep
from server.streams import StreamRelay

if TYPE_CHECKING:
    from server.config import Settings
    from server.gateway import Gateway
    from server.protocol import ClientFrame
    from server.router import HandlerContext
    from server.sessions import Session
    from server.tools import ToolContext

log = structlog.get_logger("switchboard.webhooks")
_T = TypeVar("_T")

#: The ``code`` of an ``error`` frame (and the prefix of a failed tool's reason) when a backend
#: fails: slow, unreachable, non-2xx, or an answer that is not one of the documented shapes.
BACKEND_TIMEOUT = "backend_timeout"
BACKEND_UNAVAILABLE = "backend_unavailable"
BACKEND_ERROR = "backend_error"
BACKEND_INVALID_RESPONSE = "backend_invalid_response"
BACKEND_ERROR_CODES = (BACKEND_TIMEOUT, BACKEND_UNAVAILABLE, BACKEND_ERROR,
                       BACKEND_INVALID_RESPONSE)

#: Largest backend answer accepted (a JSON body, or a stream's total content).
MAX_REPLY_BYTES = 8 * 1024 * 1024
#: How many earlier turns of the conversation are sent as ``history``.
HISTORY_TURNS = 20

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl",
                          "application/x-jsonlines", "application/jsonlines"})
SSE_TYPE = "text/event-stream"
ACCEPT = "application/json, application/x-ndjson, text/event-stream"
_CHAT_REQUEST_TYPES = frozenset({"chat_message", "text_message"})

class BackendError(UpstreamError):
    """A backend webhook failed; ``code`` is one of :data:`BACKEND_ERROR_CODES`."""

    code = BACKEND_ERROR


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Switchboard-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of
    ``{timestamp}.{body}`` under ``secret``. A backend verifies with the same function (or
    three lines of its own) and ``hmac.compare_digest``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def request_headers(settings: Settings, payload: bytes, request_id: str, *,
                    client_id: str | None = None, accept: str = ACCEPT) -> dict[str, str]:
    """Headers of one webhook request: JSON body, request id, client id when there is one, and
    the ``WEBHOOK_SECRET`` signature (a fresh timestamp) when a secret is set."""
    headers = {"Content-Type": "application/json", "Accept": accept,
               "X-Switchboard-Request-Id": request_id}
    if client_id is not None:
        headers["X-Switchboard-Client-Id"] = client_id
    if settings.webhook_secret:
        timestamp = str(int(time.time()))
        headers["X-Switchboard-Timestamp"] = timestamp
        headers["X-Switchboard-Signature"] = sign(settings.webhook_secret, timestamp, payload)
    return headers


def backend_session(settings: Settings, *, limit: int = 200) -> aiohttp.ClientSession:
    """An HTTP client for webhook backends: no proxy or netrc from the environment, connect
    bounded by WEBHOOK_TIMEOUT (each call bounds the rest itself)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ttl_dns_cache=60),
        timeout=aiohttp.ClientTimeout(total=None, connect=settings.webhook_timeout),
        headers={"User-Agent": "switchboard-webhooks"}, trust_env=False)


class Webhooks:
    """The gateway's HTTP client for its backends. Build it with :func:`webhooks_ctx` (or
    directly with a session you own) and :meth:`install` it on the gateway."""

    def __init__(self, settings: Settings, http: aiohttp.ClientSession | None, *,
                 timeout: float | None = None) -> None:
        self.settings = settings
        #: Set by :func:`webhooks_ctx` at start-up for objects built before it.
        self.http = http
        self.timeout = settings.webhook_timeout if timeout is None else timeout

    def install(self, gateway: Gateway) -> None:
        """Set ``gateway.chat_backend`` / ``gateway.tool_fallback`` for each URL configured."""
        if self.settings.chat_webhook_url:
            gateway.chat_backend = self.chat
        if self.settings.tool_webhook_url:
            gateway.tool_fallback = self.call_tool

    # --- chat -----------------------------------------------------------------------------------

    async def chat(self, ctx: HandlerContext, frame: ClientFrame) -> None:
        """Answer one chat frame from the chat backend (run by ``gateway.spawn``). Never raises
        for a backend failure: the client gets an ``error`` frame instead."""
        url = self.settings.chat_webhook_url
        data = frame.data
        body: dict[str, Any] = {
            "client_id": ctx.session.client_id,
            "message_id": frame.message_id,
            "content": data["content"],
            "role": data.get("role") or "user",
            "data": data,
        }
        conversation_id = data.get("conversation_id")
        if conversation_id is not None:
            body["conversation_id"] = conversation_id
        history = conversation_history(ctx.session, frame, conversation_id)
        if history:
            body["history"] = history
        relay = ChatRelay(ctx, conversation_id)
        started = time.perf_counter()
        try:
            async with self._post(url, body, ctx.session.client_id, frame.message_id) as resp:
                await self._check_status(resp, "chat")
                if resp.status in (202, 204):
                    log.info("chat_backend_deferred", client_id=ctx.session.client_id,
                             message_id=frame.message_id, status=resp.status)
                    return
                ctype = resp.content_type
                if ctype in NDJSON_TYPES:
                    await relay.stream(self._ndjson_pieces(resp))
                elif ctype == SSE_TYPE:
                    await relay.stream(self._sse_pieces(resp))
                else:
                    reply = await self._read_json(resp)
                    await relay.complete(*_chat_reply(reply))
        except BackendError as exc:
            await relay.fail(exc)
            log.warning("chat_backend_failed", client_id=ctx.session.client_id,
                        message_id=frame.message_id, type=frame.type, code=exc.code,
                        error=exc.message, backend=_where(url),
                        ms=_ms(started), chunks=relay.out.index)
            return
        except SwitchboardError as exc:
            # The answer could not be delivered: the session ended meanwhile, or the node
            # holding it now cannot be reached.
            log.warning("chat_answer_undelivered", client_id=ctx.session.client_id,
                        message_id=frame.message_id, code=exc.code, error=exc.message)
            return
        log.info("chat_backend_answered", client_id=ctx.session.client_id,
                 message_id=frame.message_id, type=frame.type, backend=_where(url),
                 streamed=relay.out.started, chunks=relay.out.index, ms=_ms(started))

    # --- tools ----------------------------------------------------------------------------------

    async def call_tool(self, tool_name: str, params: dict[str, Any], ctx: ToolContext) -> Any:
        """Run a tool the local registry does not have on the tool backend (the gateway's
        ``tool_fallback``). Returns the raw result for ``shape_result``; raises
        :class:`BackendError` (its message starts with the code) when the backend fails or
        answers ``{"error": …}``."""
        url = self.settings.tool_webhook_url
        client_id = ctx.session.client_id if ctx.session is not None else None
        body = {"tool_name": tool_name, "params": params, "call_id": ctx.call_id,
                "client_id": client_id}
        started = time.perf_counter()
        try:
            async with self._post(url, body, client_id, ctx.call_id) as resp:
                await self._check_status(resp, "tool")
                reply = await self._read_json(resp)
            result = _tool_reply(reply)
        except BackendError as exc:
            log.warning("tool_backend_failed", client_id=client_id, call_id=ctx.call_id,
                        tool=tool_name, code=exc.code, error=exc.message, backend=_where(url),
                        ms=_ms(started))
            raise BackendError(f"{exc.code}: {exc.message}", code=exc.code,
                               details=exc.details) from None
        log.info("tool_backend_answered", client_id=client_id, call_id=ctx.call_id,
                 tool=tool_name, backend=_where(url), ms=_ms(started))
        return result

    # --- HTTP plumbing --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _post(self, url: str, body: Mapping[str, Any], client_id: str | None,
                    request_id: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST ``body``; yields the response once its headers arrived within the timeout."""
        payload = orjson.dumps(body)
        headers = request_headers(self.settings, payload, request_id, client_id=client_id)
        if self.http is None:
            raise BackendError("webhook client not started", code=BACKEND_UNAVAILABLE)
        try:
            async with asyncio.timeout(self.timeout):
                resp = await self.http.post(url, data=payload, headers=headers,
                                            allow_redirects=False)
        except TimeoutError:
            raise BackendError(f"backend did not answer within {self.timeout:g}s",
                               code=BACKEND_TIMEOUT) from None
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            # RuntimeError: the client session was closed (the app is shutting down).
            raise BackendError(f"backend unreachable: {_describe(exc)}",
                               code=BACKEND_UNAVAILABLE) from None
        try:
            yield resp
        finally:
            resp.release()

    async def _check_status(self, resp: aiohttp.ClientResponse, what: str) -> None:
        if 200 <= resp.status < 300:
            return
        detail = ""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.timeout):
                detail = (await resp.content.read(500)).decode("utf-8", "replace")
        log.info(f"{what}_backend_http_error", status=resp.status, detail=detail)
        raise BackendError(f"{what} backend answered HTTP {resp.status}", code=BACKEND_ERROR,
                           details={"status": resp.status})

    async def _read_json(self, resp: aiohttp.ClientResponse) -> Any:
        """The whole body parsed as JSON (whatever the Content-Type says)."""
        raw = await self._read(resp.content.read(MAX_REPLY_BYTES + 1))
        if len(raw) > MAX_REPLY_BYTES:
            raise BackendError(f"backend answer larger than {MAX_REPLY_BYTES} bytes",
                               code=BACKEND_INVALID_RESPONSE)
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BackendError(
                f"backend answer is not JSON (Content-Type {resp.content_type or 'none'}, "
                f"{len(raw)} bytes)", code=BACKEND_INVALID_RESPONSE) from None
        max_depth = self.settings.max_json_depth
        if too_deep(answer, max_depth, raw):
            HOT.limit_hit("json_depth")
            raise BackendError(json_too_deep_message("backend answer", max_depth),
                               code=BACKEND_INVALID_RESPONSE)
        return answer

    async def _read(self, read: Awaitable[_T]) -> _T:
        """Await one read from the backend within the timeout, mapping failures."""
        try:
            async with asyncio.timeout(self.timeout):
                return await read
        except TimeoutError:
            raise BackendError(f"backend went silent for {self.timeout:g}s",
                               code=BACKEND_TIMEOUT) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendError(f"backend connection broke: {_describe(exc)}",
                               code=BACKEND_UNAVAILABLE) from None

    async def _lines(self, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """The body's lines as they arrive (without the line ending); each within the timeout."""
        total = 0
        while True:
            line = await self._read(resp.content.readline())
            if not line:
                return
            total += len(line)
            if total > MAX_REPLY_BYTES:
                raise BackendError(f"backend stream larger than {MAX_REPLY_BYTES} bytes",
                                   code=BACKEND_INVALID_RESPONSE)
            yield line.rstrip(b"\r\n")

    async def _ndjson_pieces(self, resp: aiohttp.ClientResponse) -> AsyncIterator[Piece]:
        number = 0
        async for line in self._lines(resp):
            number += 1
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise BackendError(f"NDJSON line {number} is not JSON",
                                   code=BACKEND_INVALID_RESPONSE) from None
            piece = _piece(obj, f"NDJSON line {number}")
            if piece is not None:
                yield piece
                if piece.done:
                    return

    async def _sse_pieces(self, resp: aiohttp.ClientResponse) -> AsyncIterator[Piece]:
        data: list[bytes] = []
        event = 0
        async for line in self._lines(resp):
            if line:
                if line.startswith(b"data:"):
                    value = line[5:]
                    data.append(value[1:] if value.startswith(b" ") else value)
                continue  # comments, event:, id:, retry: are not relayed
            if not data:
                continue
            event += 1
            payload = b"\n".join(data)
            data = []
            piece = _sse_piece(payload, event)
            if piece is not None:
                yield piece
                if piece.done:
                    return
        if data:  # a last event without its blank line
            piece = _sse_piece(b"\n".join(data), event + 1)
            if piece is not None:
                yield piece


@dataclass(slots=True)
class Piece:
    """One piece of a streamed reply: text to relay, and/or the model, and/or the end."""

    content: str = ""
    model: str | None = None
    done: bool = False


def _sse_piece(payload: bytes, event: int) -> Piece | None:
    if payload.strip() == b"[DONE]":
        return Piece(done=True)
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        # Plain-text SSE data is a chunk of text as it stands.
        return Piece(content=payload.decode("utf-8", "replace"))
    return _piece(obj, f"event {event}")


def _piece(obj: Any, where: str) -> Piece | None:
    """Read one streamed object: {"content"} / {"delta"} (a string or OpenAI's
    {"content": …}), OpenAI's {"choices": [{"delta": {"content"}}]}, {"done": true},
    {"error": …} (→ backend_error)."""
    if not isinstance(obj, Mapping):
        raise BackendError(f"{where} is not a JSON object", code=BACKEND_INVALID_RESPONSE)
    if obj.get("error"):
        error = obj["error"]
        message = error.get("message") if isinstance(error, Mapping) else error
        raise BackendError(f"backend reported an error mid-stream: {message}",
                           code=BACKEND_ERROR)
    text: Any = obj.get("content")
    if text is None:
        text = obj.get("delta")
    if isinstance(text, Mapping):
        text = text.get("content")
    if text is None and isinstance(obj.get("choices"), list) and obj["choices"]:
        choice = obj["choices"][0]
        if isinstance(choice, Mapping):
            delta = choice.get("delta") or choice.get("message") or {}
            text = delta.get("content") if isinstance(delta, Mapping) else None
    if text is not None and not isinstance(text, str):
        raise BackendError(f"{where}: content must be a string", code=BACKEND_INVALID_RESPONSE)
    model = obj.get("model") if isinstance(obj.get("model"), str) else None
    done = obj.get("done") is True
    if not text and model is None and not done:
        return None
    return Piece(text or "", model, done)


def _chat_reply(reply: Any) -> tuple[str, str | None]:
    """``(content, model)`` from a JSON chat reply."""
    if not isinstance(reply, Mapping):
        raise BackendError("backend answer must be a JSON object with 'content'",
                           code=BACKEND_INVALID_RESPONSE)
    content = reply.get("content")
    if content is None and isinstance(reply.get("choices"), list) and reply["choices"]:
        choice = reply["choices"][0]
        message = choice.get("message") if isinstance(choice, Mapping) else None
        content = message.get("content") if isinstance(message, Mapping) else None
    if content is None and reply.get("error"):
        raise BackendError(f"backend reported an error: {reply['error']}", code=BACKEND_ERROR)
    if not isinstance(content, str):
        raise BackendError("backend answer has no string 'content'",
                           code=BACKEND_INVALID_RESPONSE)
    model = reply.get("model")
    return content, model if isinstance(model, str) else None


def _tool_reply(reply: Any) -> Any:
    """The raw tool result from ``{"result"}`` / ``{"error"}`` / an MCP CallToolResult."""
    if not isinstance(reply, Mapping):
        raise BackendError("tool backend answer must be a JSON object with 'result' or "
                           "'error'", code=BACKEND_INVALID_RESPONSE)
    if reply.get("error") is not None:
        error = reply["error"]
        message = error.get("message", error) if isinstance(error, Mapping) else error
        raise BackendError(f"tool backend reported an error: {message}", code=BACKEND_ERROR)
    if "result" in reply:
        return reply["result"]
    if isinstance(reply.get("content"), list):
        return dict(reply)  # MCP CallToolResult; shape_result reads content/isError
    raise BackendError("tool backend answer has neither 'result' nor 'error'",
                       code=BACKEND_INVALID_RESPONSE)


class ChatRelay:
    """Turns a chat backend's answer into frames for one chat frame (all ``reply_to`` it): a
    whole answer as ``chat_response``, a streamed one as ``stream_start`` / ``stream_chunk`` /
    ``stream_end``. Used for webhook backends and for the default echo alike; the frames go
    wherever the client's session is by then (a backend may answer after a reconnect)."""

    def __init__(self, ctx: HandlerContext, conversation_id: str | None,
                 default_model: str = "backend") -> None:
        self.conversation = ({"conversation_id": conversation_id}
                             if conversation_id is not None else {})
        self.default_model = default_model
        self.out = StreamRelay(ctx.gateway, ctx.session.client_id,
                               reply_to=ctx.frame.message_id, tags=self.conversation)
        self.model: str | None = None

    async def complete(self, content: str, model: str | None) -> None:
        await self.out.send("chat_response", {
            "content": content, "status": "completed", "model": model or self.default_model,
            "role": "assistant", **self.conversation})

    async def stream(self, pieces: AsyncIterator[Piece]) -> None:
        await self.out.start()
        async for piece in pieces:
            if piece.model is not None:
                self.model = piece.model
            await self.out.chunk(piece.content)
        await self.out.end(model=self.model or self.default_model, role="assistant")

    async def fail(self, exc: BackendError) -> None:
        await self.out.fail(exc.code, f"chat backend: {exc.message}", backend="chat",
                            **exc.details)


def conversation_history(session: Session, frame: ClientFrame,
                         conversation_id: str | None) -> list[dict[str, str]]:
    """Earlier chat turns of this session still in its history (oldest first, at most
    :data:`HISTORY_TURNS`): the client's chat messages before ``frame`` and the answers relayed
    to it, in the same ``conversation_id`` (frames without one form one conversation)."""
    entries = list(session.history)
    decoded: list[tuple[bool, dict[str, Any]]] = []
    for _, outbound, data, _ in entries:
        try:
            obj = protocol.decode(data)
        except Exception:  # history keeps what clients sent; skip what does not decode
            continue
        if isinstance(obj, dict):
            decoded.append((outbound, obj))
    # Everything before the current frame is history (later frames may already be recorded).
    for position in range(len(decoded) - 1, -1, -1):
        outbound, obj = decoded[position]
        if not outbound and obj == frame.raw:
            decoded = decoded[:position]
            break
    turns: list[dict[str, str]] = []
    for outbound, obj in decoded:
        kind = obj.get("type") or obj.get("action")
        data = obj.get("data")
        if not isinstance(data, dict):
            data = {k: v for k, v in obj.items() if k not in protocol.ENVELOPE_KEYS}
        if data.get("conversation_id") != conversation_id:
            continue
        if not outbound and kind in _CHAT_REQUEST_TYPES:
            content = data.get("content")
            if isinstance(content, str):
                role = data.get("role") if isinstance(data.get("role"), str) else "user"
                turns.append({"role": role, "content": content})
        elif outbound and kind == "chat_response" and isinstance(data.get("content"), str):
            turns.append({"role": "assistant", "content": data["content"]})
        elif outbound and kind == "stream_end" and isinstance(data.get("full_content"), str):
            turns.append({"role": "assistant", "content": data["full_content"]})
    return turns[-HISTORY_TURNS:]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


async def webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx`` of the WebSocket app: with any backend URL set (chat, tool, subscribe,
    publish), open one ClientSession, install the chat/tool hooks on the gateway and hand the
    session to the channel webhooks (``app[CHANNEL_WEBHOOKS]``); at shutdown, cancel in-flight
    webhook work, unset the hooks and close the session."""
    gateway = app[GATEWAY]
    settings = gateway.settings
    channel_hooks = app.get(CHANNEL_WEBHOOKS)
    urls = {"chat": settings.chat_webhook_url, "tools": settings.tool_webhook_url,
            "subscribe": settings.subscribe_webhook_url,
            "publish": settings.publish_webhook_url}
    if not any(urls.values()):
        yield
        return
    http = backend_session(settings)
    hooks = Webhooks(settings, http)
    hooks.install(gateway)
    if channel_hooks is not None:
        channel_hooks.http = http
    log.info("webhooks_enabled", timeout=settings.webhook_timeout,
             channel_timeout=settings.channel_webhook_timeout,
             **{name: _where(url) if url else None for name, url in urls.items()})
    try:
        yield
    finally:
        if gateway.chat_backend == hooks.chat:
            gateway.chat_backend = None
        if gateway.tool_fallback == hooks.call_tool:
            gateway.tool_fallback = None
        if channel_hooks is not None:
            channel_hooks.http = None
        await gateway.cancel_tasks()
        await http.close()
