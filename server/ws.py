"""The WebSocket endpoint: the only module that touches sockets.

One :class:`Connection` per socket: a reader loop (this request handler) that decodes frames and
dispatches them, and a writer task that drains the connection's own bounded send queue, so a
client that stops reading delays nobody else. When its queue overflows (``SEND_QUEUE_FRAMES`` /
``SEND_QUEUE_BYTES``) the client is closed with 4008 and can resume: every frame is in history.

Connect with ``?client_id=&client_type=``; resume with ``client_id``, ``session_token`` and
``last_seq``. The first frame is always ``connection_established``.

Compatibility with the seed servers (PRODUCT.md section 10) is decided here, per connection:
``/ws/mcplog`` defaults ``client_type`` to ``MCPLog``; ``/agent_backend/ws/{session_id}`` makes
the path's ``session_id`` the ``client_id``; and a connection in the *flat profile* (path
``/ws/chat``, ``?format=flat``, or a first frame in seed 004's flat form) is a
:class:`FlatConnection`, whose encoder re-encodes every frame with
:func:`server.protocol.to_flat` as it is sent — the one place that does it. History keeps the
canonical envelope, so a replay is re-encoded the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import Any

import aiohttp
import structlog
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp._websocket.models import WebSocketError
from aiohttp._websocket.reader import WebSocketDataQueue
from aiohttp._websocket.writer import WebSocketWriter
from aiohttp.base_protocol import BaseProtocol
from aiohttp.web_protocol import RequestHandler

from server import protocol
from server.auth import Identity
from server.errors import (
    ClientNotFound,
    CloseCode,
    ForbiddenError,
    ProtocolError,
    StartupError,
    SwitchboardError,
    TooManySessions,
)
from server.gateway import SYSTEM_CHANNELS, Gateway
from server.keys import CONNECTIONS, GATEWAY, PUBLIC_STATUS, ROUTER, SECURITY
from server.metrics import (
    CONNECTS_NEW,
    CONNECTS_RESUMED,
    HOT,
    REFUSED_AUTH,
    REFUSED_BAD_REQUEST,
    REFUSED_MAX_CONNECTIONS,
    REFUSED_NOT_WEBSOCKET,
    REFUSED_ORIGIN,
    REFUSED_PER_IP,
    REFUSED_SHUTTING_DOWN,
    RESUME_PARTIAL,
    RESUME_RECOVERED,
    RESUME_REFUSED,
    SLOW_CLIENTS,
    disconnect_counter,
)
from server.router import HandlerContext, MessageRouter
from server.security import FrameLimiter
from server.sessions import Session, valid_client_id

log = structlog.get_logger("switchboard.ws")

#: Socket paths: the gateway's own, then seed 004's, seed 000's and seed 001's.
WS_PATHS = ("/", "/ws", "/ws/chat", "/ws/mcplog", "/agent_backend/ws/{session_id}")
#: Paths whose connections are in the flat profile unless ``?format=envelope``.
FLAT_PATHS = frozenset({"/ws/chat"})
#: ``client_type`` when the query names none, per path (seed 000's viewer connects bare).
DEFAULT_CLIENT_TYPES = {"/ws/mcplog": "MCPLog"}
FORMATS = ("envelope", "flat")
CLIENT_TYPE_MAX = 64
#: Longest header value kept with a session (User-Agent): the rest is cut.
HEADER_VALUE_MAX = 256
#: How long a closing handshake may take before the transport is aborted (slow consumers),
#: and how long after a connection ended its TCP connection may linger with unsent data.
CLOSE_GRACE = 5.0


_LIVENESS_TYPES = frozenset({"ping", "heartbeat"})
#: The liveness sweep (:func:`liveness_ctx`) passes over every socket this many times per
#: WS_HEARTBEAT: a socket is pinged after 5 quiet passes (nothing arrived for more than
#: WS_HEARTBEAT, at most 1.25 WS_HEARTBEAT) and dropped 2 passes later (WS_HEARTBEAT / 2 after
#: the ping) unless something (its pong) arrived meanwhile.
SWEEPS_PER_HEARTBEAT = 4
_PING_AT = SWEEPS_PER_HEARTBEAT + 1
_DEAD_AT = _PING_AT + SWEEPS_PER_HEARTBEAT // 2
#: Sockets checked per event-loop turn: a pass over 15,000 sockets yields to the loop a few
#: times instead of holding it for the whole pass.
SWEEP_CHUNK = 2048
#: RFC 6455 ping, FIN set, no payload (server frames are not masked).
_PING_FRAME = b"\x89\x00"
_TEXT_FRAME_HEADERS = protocol.TEXT_FRAME_HEADERS
#: Frames shorter than this are written as one buffer, header and payload joined; longer ones
#: as two (``writelines``: uvloop hands both to one ``writev``, the payload uncopied). uvloop
#: writes at once, one system call per frame either way, and on Linux a two-buffer ``writev``
#: of a small frame costs ~0.35-0.45 µs more kernel time than a ``write`` of the same bytes
#: (150-byte frames, 8 alternating rounds of 50,000: docs/BENCHMARKS.md, "One buffer or two"),
#: where joining them costs ~0.04 µs; from a few KB the copy costs what the second buffer does.
ONE_BUFFER_BELOW = 2048
#: The aiohttp series the private attributes below were checked against (setup.cfg pins it).
AIOHTTP_SERIES = "3.14"


def check_aiohttp() -> None:
    """Fail loudly at start-up when this aiohttp lacks a private attribute Switchboard uses.

    :meth:`Connection.push` writes frames straight to the transport of aiohttp's
    protocol (``BaseProtocol._paused``, its public ``transport``) unless the connection
    compresses (``WebSocketResponse._writer``, ``WebSocketWriter.compress``), and
    :class:`StrictWebSocketResponse` puts its RFC 6455 guard in front of aiohttp's parser
    (``_post_start``, ``RequestHandler._payload_parser`` / ``_message_tail``,
    ``WebSocketDataQueue.set_exception``), and the liveness sweep drops a peer that missed its
    pong the way aiohttp's own heartbeat does (``_handle_ping_pong_exception``): private API,
    checked here once, so an aiohttp upgrade that renames one stops start-up with one clear
    line instead of silently sending frames another way or skipping a check. Raises
    StartupError.
    """
    missing: list[str] = []
    for name in ("_paused", "transport"):
        if name not in BaseProtocol.__slots__:
            missing.append(f"BaseProtocol.{name}")
    # Checked on the class (aiohttp declares it there): looking into an instance's attributes
    # (dir(), vars()) would cost every later WebSocketResponse a materialised __dict__.
    if not hasattr(web.WebSocketResponse, "_writer"):
        missing.append("WebSocketResponse._writer")
    probe = WebSocketWriter(None, None)  # type: ignore[arg-type] # only its attributes
    if not hasattr(probe, "compress"):
        missing.append("WebSocketWriter.compress")
    if not callable(getattr(web.WebSocketResponse, "_post_start", None)):
        missing.append("WebSocketResponse._post_start")
    for name in ("_payload_parser", "_message_tail"):
        if name not in RequestHandler.__slots__:
            missing.append(f"RequestHandler.{name}")
    if not callable(getattr(WebSocketDataQueue, "set_exception", None)):
        missing.append("WebSocketDataQueue.set_exception")
    if not callable(getattr(web.WebSocketResponse, "_handle_ping_pong_exception", None)):
        missing.append("WebSocketResponse._handle_ping_pong_exception")
    if missing:
        raise StartupError(
            f"aiohttp {aiohttp.__version__} lacks {', '.join(missing)}, which Switchboard's "
            f"socket endpoint uses; install aiohttp {AIOHTTP_SERIES}.x (pinned in setup.cfg)")


class Connection:
    """One live socket bound to a session. Implements the registry's ``Outbox``.

    Frames are written straight to the transport while nothing is waiting (:meth:`push`);
    only when the transport pushes back (or at connect, with a greeting and a replay to send)
    does a writer task exist, draining the connection's own bounded queue and then ending. An
    idle connection holds no task.
    """

    __slots__ = (
        "backlog",
        "close_code",
        "closed",
        "closing",
        "direct",
        "expiry",
        "max_bytes",
        "max_frames",
        "queue",
        "queued_bytes",
        "request",
        "session",
        "writer",
        "ws",
    )

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, session: Session,
                 max_frames: int, max_bytes: int) -> None:
        self.ws = ws
        self.request = request
        self.session = session
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        #: Frames waiting for the writer; made on the first backlog (an empty deque costs
        #: about 0.6 KB, and most connections never need one).
        self.queue: deque[bytes | tuple[bytes, bytes]] | None = None
        self.queued_bytes = 0
        #: The greeting and the resume replay, sent before the live queue. Not counted against
        #: the queue limits: the replayed frames are the history's frames (bounded by
        #: HISTORY_LIMIT and HISTORY_BYTES), and counting them would close a resuming client
        #: with 4008 at once. Once sent it is the shared empty tuple (an empty list kept for
        #: the connection's life would cost every idle connection 56 bytes).
        self.backlog: list[bytes] | tuple[()] = []
        self.close_code: int | None = None
        self.closed = False
        #: aiohttp's protocol for this socket while frames may be written straight to its
        #: transport (:meth:`push`); None before :meth:`start`, while a writer task drains a
        #: backlog or queue (order), once closing, and with permessage-deflate (frames then go
        #: through aiohttp's compressor).
        self.direct: RequestHandler | None = None
        self.writer: asyncio.Task[None] | None = None
        self.closing: asyncio.Task[None] | None = None
        #: Closes the socket with 4010 when the client's JWT expires (cancelled on close).
        self.expiry: asyncio.TimerHandle | None = None

    @property
    def queued_frames(self) -> int:
        """Frames waiting in the send queue."""
        return len(self.queue) if self.queue is not None else 0

    # Outbox ----------------------------------------------------------------------------------

    def push(self, data: bytes, queue: bool = True) -> bool:
        """Send or queue an encoded frame; never blocks. False when closing or full (or, with
        ``queue=False``, when it could not be written at once: :meth:`start`'s backlog).

        The wire path of every frame the gateway sends, in one place (one Python call per
        frame: a fan-out calls it once per recipient). While nothing is waiting to go first
        (:attr:`direct`), the transport takes more (aiohttp's protocol is not paused:
        back-pressure goes through the writer task's drain) and it is not closing, the frame
        is written synchronously with its RFC 6455 header
        (:data:`protocol.TEXT_FRAME_HEADERS`, a dict lookup by length): joined into one buffer
        below :data:`ONE_BUFFER_BELOW` bytes, else as two buffers, the payload uncopied
        (``writelines``); uvloop makes the system call at once. A broadcast is encoded once;
        its per-session ``seq`` is the only per-recipient work (``SessionRegistry.fan_out``);
        on its way to the kernel a frame costs no task and no await. Anything else is queued
        for the writer task.

        Why not ``WebSocketResponse.send_frame``: per frame that is two coroutines and three
        Python calls in aiohttp plus a copy of header and payload together, for what is a
        header and a write (docs/BENCHMARKS.md, "Issue 17"). This reads aiohttp's
        private ``_paused`` (:func:`check_aiohttp` verifies it at start-up). Everything else
        — a backlog draining, a paused transport, permessage-deflate — goes through the queue
        and the writer task, which sends with aiohttp.
        """
        handler = self.direct
        if handler is not None and not handler._paused:
            transport = handler.transport
            if transport is not None and not transport.is_closing():
                size = len(data)
                try:
                    if size < ONE_BUFFER_BELOW:
                        transport.write(_TEXT_FRAME_HEADERS[size] + data)
                    else:
                        transport.writelines((_TEXT_FRAME_HEADERS[size], data))
                except (ConnectionError, RuntimeError):  # the transport went away under us
                    self.closed = True
                    self.direct = None
                    return False
                return True
        return queue and self._enqueue(data, len(data))

    def push_parts(self, head: bytes, tail: bytes) -> bool:
        """:meth:`push` for the frame ``head + tail`` whose ``tail`` is shared: a large
        broadcast's bytes, the same object for every recipient (``SessionRegistry.fan_out``).

        Same checks as :meth:`push` and one ``writelines``, kept apart so that the small
        frames of :meth:`push` pay nothing for it: the header for the whole length and the
        small per-session head go as one buffer, the shared tail as the other, uncopied (only
        frames of at least ``SHARED_TAIL_MIN_BYTES`` come here: two buffers, as :meth:`push`
        writes frames from :data:`ONE_BUFFER_BELOW` up).

        Queued (slow consumer, backlog, permessage-deflate), the queue holds the two parts,
        so a frame waiting for a slow client costs it its head, not a copy of the frame; the
        caps count the whole frame. The writer task joins them as it sends the frame.
        """
        handler = self.direct
        if handler is not None and not handler._paused:
            transport = handler.transport
            if transport is not None and not transport.is_closing():
                try:
                    transport.writelines(
                        (_TEXT_FRAME_HEADERS[len(head) + len(tail)] + head, tail))
                except (ConnectionError, RuntimeError):  # the transport went away under us
                    self.closed = True
                    self.direct = None
                    return False
                return True
        return self._enqueue((head, tail), len(head) + len(tail))

    def ping(self) -> None:
        """Send an RFC 6455 ping (the liveness sweep's) straight to the transport. A control
        frame may go between any two frames, and every writer here and in aiohttp writes a
        frame whole, with no await inside it, so the ping never splits one; it goes behind
        whatever the transport still buffers, as aiohttp's heartbeat ping does."""
        if self.close_code is not None or self.closed:
            return
        transport = self.request.transport
        if transport is not None and not transport.is_closing():
            with contextlib.suppress(ConnectionError, RuntimeError):
                transport.write(_PING_FRAME)

    def _enqueue(self, data: bytes | tuple[bytes, bytes], size: int) -> bool:
        """Queue a frame of ``size`` bytes (whole, or as :meth:`push_parts`'s two parts) for
        the writer task (starting it); past the queue's caps the connection is closed with
        4008 (the frame stays in history for resume)."""
        if self.close_code is not None or self.closed:
            return False
        queue = self.queue
        if queue is None:
            queue = self.queue = deque()
        if len(queue) >= self.max_frames or self.queued_bytes + size > self.max_bytes:
            SLOW_CLIENTS.inc()
            self.close_soon(CloseCode.SLOW_CONSUMER, CloseCode.SLOW_CONSUMER.explanation)
            return False
        queue.append(data)
        self.queued_bytes += size
        if self.writer is None:
            self._start_writer()
        return True

    def preload(self, data: bytes) -> None:
        """Add a frame to the backlog (before :meth:`start`: greeting, replay)."""
        self.backlog.append(data)  # type: ignore[union-attr]  # before start: the list

    def close_soon(self, code: int, reason: str) -> None:
        """Close with ``code`` as soon as possible (queued frames stay in history): the close
        frame follows the frame being written, and the transport is aborted when that cannot
        happen within CLOSE_GRACE (a peer that stopped reading)."""
        if self.close_code is not None or self.closed:
            return
        code = int(code)  # a CloseCode arrives here too: logs and metrics want the number
        self.close_code = code
        self.direct = None
        self._drop_pending()
        self.closing = asyncio.get_running_loop().create_task(self._close(code, reason))

    def answer_close(self, received: int) -> None:
        """The peer sent a close frame with ``received`` (0: no code). Answer it, with 1002
        when RFC 6455 section 7.4 forbids that code on the wire; the connection then ends
        with the peer's code."""
        if received and not protocol.valid_close_code(received):
            code = CloseCode.PROTOCOL_ERROR
            self.close_soon(code, f"close code {received} is not allowed on the wire")
        else:
            self.close_soon(CloseCode.NORMAL, "")
            self.close_code = received

    def finish(self) -> None:
        """The reader loop ended: nothing more is written. The writer task ends after the
        frame it is writing. If bytes are still waiting for the peer to take them
        (``transport.close()`` would wait for that forever, holding the socket and its
        buffers), the transport is aborted CLOSE_GRACE seconds from now unless it is gone by
        then; a connection with nothing pending holds no timer."""
        self.closed = True
        self.direct = None
        self._drop_pending()
        if self.expiry is not None:
            self.expiry.cancel()
        transport = self.request.transport
        if transport is not None and (self.writer is not None
                                      or transport.get_write_buffer_size()):
            asyncio.get_running_loop().call_later(CLOSE_GRACE, transport.abort)

    def _drop_pending(self) -> None:
        if self.queue is not None:
            self.queue.clear()
        self.queued_bytes = 0
        if self.backlog:
            self.backlog.clear()  # type: ignore[union-attr]  # not empty: the list

    # Writer ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Send the backlog (greeting, replay): directly while the transport takes it, the rest
        through a writer task, ahead of anything pushed later."""
        self._resume_direct()
        backlog = self.backlog
        sent = 0
        for data in backlog:
            # Connection's own push: a flat connection's backlog is flat already (preload).
            if not Connection.push(self, data, queue=False):
                break
            sent += 1
        del backlog[:sent]  # type: ignore[union-attr]  # before start: the list
        if backlog:
            self._start_writer()
        else:
            self.backlog = ()

    def _resume_direct(self) -> None:
        """Write straight to the transport from now on (:meth:`push`), unless the connection
        is closing or compresses (permessage-deflate goes through aiohttp's writer)."""
        writer = self.ws._writer
        if (self.close_code is None and not self.closed and writer is not None
                and not writer.compress):
            self.direct = self.request.protocol

    def _start_writer(self) -> None:
        self.direct = None  # frames queue behind the ones the writer is draining
        self.writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def _write_loop(self) -> None:
        """Drain the backlog then the queue, awaiting the transport's drain, then end (frames
        are written directly again). No await separates the last emptiness check from ending,
        so nothing pushed meanwhile is left behind.

        This task is never cancelled (see :meth:`_close`): closing empties the backlog and
        the queue, so it ends after the frame it is writing, or with ConnectionError when
        the transport is aborted under it."""
        ws = self.ws
        backlog = self.backlog
        text = WSMsgType.TEXT
        try:
            while backlog:
                await ws.send_frame(backlog.pop(0), text)  # type: ignore[union-attr]
            self.backlog = ()
            # Read only now: a push made while the backlog drained may have created it (once
            # made, the deque is never replaced).
            queue = self.queue
            while queue:
                data = queue.popleft()
                if type(data) is tuple:  # push_parts: joined only now, aiohttp takes one
                    data = b"".join(data)
                self.queued_bytes -= len(data)
                await ws.send_frame(data, text)  # type: ignore[arg-type]  # bytes by now
        except (ConnectionError, RuntimeError):
            # The peer went away mid-write; the reader sees the close and cleans up.
            self.closed = True
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # Not our cancellation: aiohttp cancelled the drain future this write waited on
            # (another write of aiohttp's waiting on it — its automatic pong, or its heartbeat
            # ping when that was on — was cancelled while the socket closed).
            # Nothing can be written any more; the close path ends the connection.
            self.closed = True
        finally:
            if self.writer is asyncio.current_task():
                self.writer = None
                self._resume_direct()

    async def _close(self, code: int, reason: str) -> None:
        """Send the close frame after the writer's current frame, within CLOSE_GRACE, or abort
        the transport.

        aiohttp shares one drain future among every write waiting on a paused transport, so
        cancelling one waiter cancels it for all, and every later write (the close frame
        too) then raises CancelledError: that is how slow consumers used to stay connected
        forever. So nothing here cancels a wait on the transport: the writer task is awaited
        with ``asyncio.wait`` (which never cancels it), the close runs shielded, and when the
        grace runs out the transport is aborted, which fails the drain future with
        ConnectionError for everyone still waiting on it.
        """
        try:
            async with asyncio.timeout(CLOSE_GRACE):
                writer = self.writer
                if writer is not None:
                    await asyncio.wait((writer,))
                await asyncio.shield(self.ws.close(code=code, message=reason.encode()[:120]))
            return
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                _abort(self.request)
                raise
            # The close itself was cancelled from inside aiohttp (see _write_loop): abort.
        except (TimeoutError, ConnectionError, RuntimeError):
            pass
        _abort(self.request)


def _abort(request: web.Request) -> None:
    """Drop the TCP connection at once (unsent data and all), if it is still there."""
    transport = request.transport
    if transport is not None:
        transport.abort()


# --- RFC 6455 checks aiohttp leaves to the application ---------------------------------------

#: The parser's answer when it gives up on the stream (aiohttp's own ``EMPTY_FRAME_ERROR``).
_FAILED = (True, b"")


class FrameGuard:
    """RFC 6455 section 5.1: a server MUST close the connection (1002) when a client frame is
    not masked. aiohttp's parser reads the mask bit and does not check it, so this sits in
    front of it (see :class:`StrictWebSocketResponse`) and walks the frame headers of the
    bytes it is fed: a few integer operations per frame, the payloads are skipped, not read.

    Every byte the peer sends passes here, so the guard also keeps the connection's liveness
    clock for the gateway-wide sweep (:func:`liveness_ctx`): :attr:`quiet` counts the sweep's
    passes since bytes last arrived, and arriving bytes set it back to 0 — one attribute store
    per read, where aiohttp's per-socket heartbeat rescheduled a timer (six Python calls).
    """

    __slots__ = ("failed", "header", "parser", "queue", "quiet", "skip")

    def __init__(self, parser: Any, queue: Any) -> None:
        self.parser = parser
        self.queue = queue
        #: Liveness sweeps since the peer last sent anything (any frame, pongs included).
        self.quiet = 0
        #: Payload bytes of the current frame still to come in later chunks.
        self.skip = 0
        #: The start of a frame header split across chunks.
        self.header = b""
        self.failed = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.quiet = 0
        # The common case first: a read that is exactly one small masked frame.
        size = len(data)
        if not (self.skip or self.header or self.failed) and size > 1:
            second = data[1]
            if second & 0x80 and (second & 0x7F) + 6 == size:
                return self.parser.feed_data(data)  # type: ignore[no-any-return]
        return self._check(data)

    def _check(self, data: bytes) -> tuple[bool, bytes]:
        if self.failed:
            return _FAILED
        buf = data
        if self.header:
            buf = self.header + data
            self.header = b""
        pos = self.skip
        end = len(buf)
        while pos < end:
            if end - pos < 2:
                self.header = buf[pos:]
                pos = end
                break
            second = buf[pos + 1]
            if not second & 0x80:
                self.failed = True
                self.queue.set_exception(WebSocketError(
                    WSCloseCode.PROTOCOL_ERROR, "client frames must be masked (RFC 6455 5.1)"))
                return _FAILED
            length = second & 0x7F
            if length < 126:
                pos += 6 + length  # header, mask, payload
            elif end - pos < (4 if length == 126 else 10):
                self.header = buf[pos:]
                pos = end
                break
            elif length == 126:
                pos += 8 + int.from_bytes(buf[pos + 2:pos + 4])
            else:
                pos += 14 + int.from_bytes(buf[pos + 2:pos + 10])
        self.skip = pos - end
        return self.parser.feed_data(data)  # type: ignore[no-any-return]

    def feed_eof(self) -> None:
        self.parser.feed_eof()


class StrictWebSocketResponse(web.WebSocketResponse):
    """aiohttp's WebSocketResponse with its parser behind a :class:`FrameGuard`.

    The one place that hooks aiohttp's parser (checked at start-up by :func:`check_aiohttp`):
    ``_post_start`` installs the parser on the request handler (``_payload_parser``), feeding
    it any bytes the client sent right behind its handshake (``_message_tail``); those are
    held back and fed through the guard instead.
    """

    def _post_start(self, request: web.BaseRequest, protocol: str | None,
                    writer: WebSocketWriter) -> None:
        handler = request.protocol
        tail = handler._message_tail
        handler._message_tail = b""
        super()._post_start(request, protocol, writer)
        parser = handler._payload_parser
        if parser is None or parser is not self._parser:
            raise RuntimeError("aiohttp did not install the WebSocket parser where "
                               "StrictWebSocketResponse expects it")
        guard = FrameGuard(parser, self._reader)
        handler._payload_parser = guard
        if tail and guard.feed_data(tail)[0]:
            handler.close()




class FlatConnection(Connection):
    """A connection in the flat profile (seed 004): the frame encoder for such clients.

    Every frame, live or replayed, is re-encoded by :func:`server.protocol.to_flat` just
    before it is sent (the ``data`` fields and ``client_id`` also at the top level, seed 004's
    frame names). History and every other connection keep the envelope, and a broadcast is
    still encoded once: only flat connections pay for the second encoding. A connection whose
    first frame is flat becomes one (``conn.__class__ = FlatConnection``: same slots), so the
    default :meth:`Connection.push` carries no test for the profile at all.
    """

    __slots__ = ()

    def push(self, data: bytes, queue: bool = True) -> bool:
        if self.close_code is not None or self.closed:
            return False
        return Connection.push(self, protocol.to_flat(data, self.session.client_id), queue)

    def push_parts(self, head: bytes, tail: bytes) -> bool:
        # Re-encoded whole anyway: the shared tail cannot be kept.
        return self.push(head + tail)

    def preload(self, data: bytes) -> None:
        Connection.preload(self, protocol.to_flat(data, self.session.client_id))


def _receive_timeout(heartbeat: float, idle_timeout: float) -> float | None:
    """The receive timeout that enforces WS_TIMEOUT, or None when the heartbeat already does.

    The liveness sweep pings a socket quiet for more than ``heartbeat`` seconds and drops it
    ``heartbeat / 2`` later: nothing can then stay silent longer than 1.5 heartbeats and one
    sweep interval, so a WS_TIMEOUT at least that long is implied, and skipping the
    per-receive timer (an ``asyncio.timeout`` on every frame) keeps it off the hot path.
    """
    if heartbeat and idle_timeout >= (1.5 + 1 / SWEEPS_PER_HEARTBEAT) * heartbeat:
        return None
    return idle_timeout


async def liveness_ctx(app: web.Application) -> AsyncIterator[None]:
    """WS_HEARTBEAT, enforced by one task for the whole gateway (``cleanup_ctx``).

    The contract is aiohttp's heartbeat's: a socket from which nothing arrived for
    WS_HEARTBEAT seconds is pinged, and one from which nothing (its pong or any frame) arrived
    WS_HEARTBEAT / 2 after that ping is dropped the way aiohttp drops it (TCP closed without a
    close frame, close code 1006, ``ws.exception()`` saying no pong came). aiohttp does it
    with a timer per socket, rescheduled as data arrives: 0.65 KB per idle connection and six
    Python calls per read (docs/BENCHMARKS.md, "Heartbeat sweep"). Here arriving
    bytes reset a counter on the socket's :class:`FrameGuard`, and every WS_HEARTBEAT / 4 one
    pass counts each socket one quiet interval more, so a dead peer goes within 1.5 to 1.75
    WS_HEARTBEAT. Client pings are still answered by aiohttp's ``receive()`` (autoping).
    """
    heartbeat = app[GATEWAY].settings.ws_heartbeat
    if not heartbeat:
        yield
        return
    task = asyncio.get_running_loop().create_task(
        _sweep_forever(app[CONNECTIONS], heartbeat), name="ws-liveness")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _sweep_forever(connections: set[Connection], heartbeat: float) -> None:
    interval = heartbeat / SWEEPS_PER_HEARTBEAT
    # aiohttp's own words for the same failure (what ws.exception() and the log line say).
    reason = f"No PONG received after {heartbeat / 2.0} seconds"
    while True:
        await asyncio.sleep(interval)
        try:
            # A snapshot: sockets open and close while the pass yields between chunks.
            snapshot = list(connections)
            for start in range(0, len(snapshot), SWEEP_CHUNK):
                if start:
                    await asyncio.sleep(0)
                sweep_liveness(snapshot[start:start + SWEEP_CHUNK], reason)
        except Exception:  # housekeeping must never die
            log.exception("liveness_sweep_failed")


def sweep_liveness(connections: Iterable[Connection], reason: str) -> None:
    """One pass of the liveness sweep (:func:`liveness_ctx`): count each socket one more quiet
    interval; ping those quiet for :data:`_PING_AT` passes, drop those still quiet
    :data:`_DEAD_AT` passes after the last bytes they sent."""
    for conn in connections:
        if conn.close_code is not None or conn.closed:
            continue  # closing already: the close has its own deadline (CLOSE_GRACE)
        guard = conn.request.protocol._payload_parser
        if type(guard) is not FrameGuard:
            continue  # the socket is gone: aiohttp released its parser
        quiet = guard.quiet + 1
        if quiet > _DEAD_AT:
            continue  # dropped already; its reader loop is ending
        guard.quiet = quiet
        if quiet == _PING_AT:
            conn.ping()
        elif quiet == _DEAD_AT:
            conn.ws._handle_ping_pong_exception(TimeoutError(reason))


def _bad_request(message: str, code: str = "invalid_request", status: int = 400
                 ) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _int_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ProtocolError(f"{name} must be a non-negative integer",
                            code="invalid_request") from None
    if value < 0:
        raise ProtocolError(f"{name} must be a non-negative integer", code="invalid_request")
    return value


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    """A socket's whole life: admit, open (:func:`_open`), read until it ends, close.

    The reader loop is written out here rather than awaited as a coroutine of its own: an
    idle connection then keeps one coroutine frame of Switchboard's (this one, waiting in
    ``ws.receive()``), as a bare aiohttp handler does; a nested reader coroutine cost every
    idle connection another 0.3 KB (docs/BENCHMARKS.md, "Issue 17"). The admission and the
    opening coroutines have returned by the time the connection idles.
    """
    admitted = await _admit(request)
    if not isinstance(admitted, tuple):
        return admitted  # refused
    ws, identity, peer = admitted
    del admitted  # the tuple is not kept for the connection's life (64 bytes)
    app = request.app
    gateway: Gateway = app[GATEWAY]
    security = app[SECURITY]
    # From here on this connection holds an admission slot (taken by _admit, with no await
    # since): released exactly once, however the handshake or the session ends (refusal,
    # error, cancellation).
    try:
        conn = await _open(request, ws, identity, peer)
        if not isinstance(conn, Connection):
            return conn  # refused
        try:
            # --- the reader loop --------------------------------------------------------------
            router: MessageRouter = app[ROUTER]
            session = conn.session
            # Made on the first text frame: an idle connection holds none (it would start full
            # either way: a bucket refills while nothing arrives).
            limiter: FrameLimiter | None = None
            rate_limited = gateway.settings.ws_rate_limit > 0
            # The first text frame may choose the flat profile (seed 004 speaks flat from the
            # start).
            sniff = type(conn) is Connection
            # Only a decompressed frame can be one byte over (see _max_msg_size).
            max_size = (gateway.settings.max_message_size if gateway.settings.ws_compression
                        else 0)
            while True:
                try:
                    msg = await ws.receive()
                except TimeoutError:
                    conn.close_soon(CloseCode.IDLE_TIMEOUT, CloseCode.IDLE_TIMEOUT.explanation)
                    break
                kind = msg.type
                if max_size and kind in _DATA_TYPES and len(msg.data) > max_size:
                    conn.close_soon(CloseCode.MESSAGE_TOO_BIG,
                                    CloseCode.MESSAGE_TOO_BIG.explanation)
                    break
                if kind is WSMsgType.TEXT:
                    if limiter is None and rate_limited:
                        limiter = security.frame_limiter()
                    if limiter is not None and not limiter.allow():
                        HOT.frame_in_special("rate_limited")
                        if not _is_utf8(msg.data):  # dropped unread, but RFC 6455 applies
                            _invalid_utf8(conn)
                            break
                        _rate_limited(conn, gateway, limiter)
                        continue
                    pending = _handle_text(conn, gateway, router, msg.data, sniff)
                    if pending is not None:
                        await pending
                    sniff = False
                elif kind is WSMsgType.BINARY:
                    HOT.frame_in_special("binary")
                    gateway.emit(session, "error", {
                        "code": "binary_not_supported",
                        "message": "binary frames are not supported; send JSON in text frames"})
                elif kind is WSMsgType.CLOSE:
                    conn.answer_close(msg.data)
                    break
                elif kind in (WSMsgType.CLOSING, WSMsgType.CLOSED):
                    break
                elif kind is WSMsgType.ERROR:
                    _read_failed(conn, msg.data)
                    break
                if conn.close_code is not None or conn.closed:
                    break
        finally:
            _closed(conn, gateway, app[CONNECTIONS])
        if conn.closing is not None:
            # When the reader stopped first (idle timeout), our close frame must go out
            # before aiohttp finishes the response, which would otherwise close with 1000.
            with contextlib.suppress(Exception):
                await conn.closing
        return ws
    finally:
        security.release_ip(peer)


async def _admit(request: web.Request
                 ) -> tuple[StrictWebSocketResponse, Any, str] | web.StreamResponse:
    """The checks before the upgrade (HTTP status codes, PRODUCT.md section 5). Admitted:
    ``(ws, identity, peer)``, and the caller holds an admission slot for ``peer`` (it must
    call ``security.release_ip(peer)``); else the refusal."""
    app = request.app
    gateway: Gateway = app[GATEWAY]
    settings = gateway.settings
    connections: set[Connection] = app[CONNECTIONS]
    security = app[SECURITY]
    peer = security.client_ip(request)  # X-Forwarded-For only from TRUSTED_PROXIES

    ws = StrictWebSocketResponse(
        # WS_HEARTBEAT is enforced by one sweep for every socket (liveness_ctx), not by a
        # timer per socket; receive() still answers the client's pings (autoping).
        heartbeat=None,
        receive_timeout=_receive_timeout(settings.ws_heartbeat, settings.ws_timeout),
        max_msg_size=_max_msg_size(settings.max_message_size),
        compress=settings.ws_compression,
        decode_text=False,
        # The reader loop answers close frames itself (RFC 6455 section 7.4 codes).
        autoclose=False,
    )
    if not ws.can_prepare(request).ok:
        REFUSED_NOT_WEBSOCKET.inc()
        return _bad_request("this is a WebSocket endpoint: connect with a WebSocket client "
                            "(Upgrade: websocket)", code="upgrade_required", status=426)

    if not gateway.accepting:
        REFUSED_SHUTTING_DOWN.inc()
        return _bad_request("server is shutting down", code="unavailable", status=503)
    refusal = security.check_handshake(request)
    if refusal is not None:
        REFUSED_ORIGIN.inc()
        return refusal
    # Awaited: with WS_JWKS_URL a token may need the key set fetched first (issue 13).
    identity = await security.authenticate_client(request)
    if isinstance(identity, web.StreamResponse):
        REFUSED_AUTH.inc()
        return identity
    if max(len(connections), security.admitted) >= settings.max_connections:
        REFUSED_MAX_CONNECTIONS.inc()
        return _bad_request("too many connections", code="too_many_connections", status=503)
    if not security.admit_ip(peer):
        REFUSED_PER_IP.inc()
        return _bad_request("too many connections from this address",
                            code="too_many_connections", status=429)
    return ws, identity, peer


@functools.cache
def _max_msg_size(max_message_size: int) -> int:
    """aiohttp's ``max_msg_size`` for MAX_MESSAGE_SIZE: aiohttp refuses a frame of exactly
    ``max_msg_size``, and MAX_MESSAGE_SIZE is the largest accepted (the reader loop checks
    decompressed frames, which aiohttp lets through one byte longer). Cached: the same int
    object for every connection (a new one would be 32 bytes per idle connection)."""
    return max_message_size + 1


async def _open(request: web.Request, ws: web.WebSocketResponse, identity: Any,
                peer: str) -> Connection | web.StreamResponse:
    """Upgrade, create or resume the session and attach a started connection to it; the
    response when the request or session is refused."""
    app = request.app
    gateway: Gateway = app[GATEWAY]
    settings = gateway.settings
    connections: set[Connection] = app[CONNECTIONS]
    try:
        last_seq = _int_param(request, "last_seq")
        client_id, addressed = _requested_client_id(request, identity)
        user_id = _user_id(request, identity)
        flat = _wants_flat(request)
    except SwitchboardError as exc:
        REFUSED_BAD_REQUEST.inc()
        return _bad_request(exc.message, exc.code, exc.http_status)

    query = request.query
    client_type = (query.get("client_type") or DEFAULT_CLIENT_TYPES.get(request.path)
                   or "default")[:CLIENT_TYPE_MAX]
    token = query.get("session_token")

    await ws.prepare(request)
    registry = gateway.registry
    session: Session | None = None
    try:
        if token:
            session = await gateway.resume(client_id, token, user_id) if client_id else None
            if session is None:
                await _refuse(ws, CloseCode.INVALID_SESSION,
                              "invalid session: unknown client_id, expired session, wrong "
                              "session_token or another user's session; connect without "
                              "session_token to start a new session", flat)
                RESUME_REFUSED.inc()
                log.info("resume_refused", client_id=client_id, peer=peer)
                return ws
        elif identity is not None and identity.verified and client_id:
            # A JWT proves the user: asking for one of its own sessions by client_id resumes
            # it without session_token (another user's id is not resumed: a new session).
            session = await gateway.resume(client_id, None, user_id)
        resumed = session is not None
        if session is None:
            if addressed and client_id:
                await _take_over(gateway, client_id, peer)
            user_agent = request.headers.get("User-Agent", "")
            if len(user_agent) > HEADER_VALUE_MAX:
                user_agent = user_agent[:HEADER_VALUE_MAX]
                HOT.limit_hit("header_value")
            session = await gateway.open_session(client_id, client_type, meta={
                "remote": peer, "user_agent": user_agent}, user_id=user_id)
    except TooManySessions as exc:
        await _refuse(ws, CloseCode.TOO_MANY_SESSIONS, exc.message, flat, **exc.details)
        log.info("session_refused", user_id=user_id, peer=peer, reason=exc.code)
        return ws
    except SwitchboardError as exc:  # the cluster cannot say right now: retry soon
        await _refuse(ws, CloseCode.INTERNAL_ERROR,
                      f"cannot {'resume' if token else 'open'} a session right now "
                      f"({exc.message}); reconnect with backoff", flat)
        return ws
    conn = (FlatConnection if flat else Connection)(
        ws, request, session, settings.send_queue_frames, settings.send_queue_bytes)
    replay: list[bytes] = []
    recovered = False
    if resumed:
        replay, recovered = session.replay_after(last_seq if last_seq is not None else 0)
        registry.counters.total_resumes += 1
        (RESUME_RECOVERED if recovered else RESUME_PARTIAL).inc()
        HOT.frames_out_replayed += len(replay)
    # Greeting, replay and attach happen without awaiting, so no frame can slip in between:
    # everything after last_seq arrives in order, then live frames, with no gap or duplicate.
    hello = protocol.server_frame("connection_established", {
        "client_id": session.client_id,
        "user_id": session.user_id,
        "client_type": session.client_type,
        "session_token": session.token,
        "resumed": resumed,
        "recovered": recovered if resumed else True,
        "last_seq": session.seq,
        "replayed": len(replay),
        "heartbeat": settings.ws_heartbeat,
        "session_ttl": settings.session_ttl,
        "max_message_size": settings.max_message_size,
        "server_time": protocol.now_iso(),
        "message": "WebSocket connection established",
    })
    conn.preload(protocol.encode(hello))
    if request.path == "/ws/mcplog":
        # Seed 000's clients wait for connection_ack.
        conn.preload(protocol.encode(protocol.server_frame(
            "connection_ack", {"message": "WebSocket connection established"},
            extra={"message": "WebSocket connection established"})))
    for data in replay:
        conn.preload(data)
    previous = registry.attach(session, conn)
    if previous is not None:
        previous.close_soon(CloseCode.REPLACED, CloseCode.REPLACED.explanation)
    # Reading system channels takes an observer credential on every connect: a session that
    # subscribed with one and resumes without it is taken off them.
    session.observer = identity is not None and identity.observer
    session.identity = _session_identity(identity, session.user_id)
    if not session.observer and not session.channels.isdisjoint(SYSTEM_CHANNELS):
        for channel in SYSTEM_CHANNELS:
            registry.leave(session, channel)
    connections.add(conn)
    conn.start()
    if identity is not None and identity.subs:
        gateway.channels.join_claimed(session, identity.subs)
    (CONNECTS_RESUMED if resumed else CONNECTS_NEW).inc()
    if identity is not None and identity.expires_at is not None:
        conn.expiry = _close_at_expiry(conn, identity.expires_at)
    log.info("client_connected", client_id=session.client_id, client_type=session.client_type,
             resumed=resumed, recovered=recovered, replayed=len(replay), peer=peer,
             path=request.path)
    return conn


def _closed(conn: Connection, gateway: Gateway, connections: set[Connection]) -> None:
    """The connection's reader has stopped: detach it from its session and count why."""
    session = conn.session
    registry = gateway.registry
    connections.discard(conn)
    conn.finish()
    registry.detach(session, conn)
    if session.outbox is None:
        # SESSION_TTL=0 ends the session on detach: then even wait_for_client calls fail.
        gateway.client_gone(session, ended=registry.get(session.client_id) is not session)
    code = conn.ws.close_code if conn.close_code is None else conn.close_code
    disconnect_counter(code).inc()
    if code == CloseCode.SLOW_CONSUMER:
        registry.counters.total_slow_disconnects += 1
    log.info("client_disconnected", client_id=session.client_id, code=code,
             duration_s=round(time.time() - session.last_activity, 3))


def _requested_client_id(request: web.Request, identity: Any) -> tuple[str | None, bool]:
    """The client_id this connection asks for, and whether its path addresses it.

    ``?client_id=`` asks for an id (another is picked when it is taken; with a verified JWT,
    one of the user's own sessions is resumed). Seed 001's ``/agent_backend/ws/{session_id}``
    *addresses* one: the session_id is the client_id, so it must be a valid one (else 400);
    with a verified JWT it must be the token's ``sub`` (403 otherwise: nobody takes over an id
    that names another user).
    """
    path_id = request.match_info.get("session_id")
    if path_id is not None and not valid_client_id(path_id):
        raise ProtocolError("the session_id in /agent_backend/ws/{session_id} must be 1-128 "
                            "letters, digits or -_.:@", code="invalid_request")
    if (path_id is not None and identity is not None and identity.verified
            and path_id != identity.subject):
        raise ForbiddenError("the session_id in the path is not the one your token is for",
                             code="forbidden")
    if path_id is not None:
        return path_id, True
    return request.query.get("client_id") or None, False


def _user_id(request: web.Request, identity: Identity | None) -> str | None:
    """The user this connection acts for: a verified JWT's ``sub`` (``?user_id=`` naming
    another is refused, 403), else the ``user_id`` it declares (WS_AUTH=token / none; it
    must be a valid id, 400), else None (anonymous)."""
    declared = request.query.get("user_id") or None
    if declared is not None and not valid_client_id(declared):
        raise ProtocolError("user_id must be 1-128 letters, digits or -_.:@",
                            code="invalid_request")
    if identity is not None and identity.verified:
        if declared is not None and declared != identity.user_id:
            raise ForbiddenError("user_id is not the user your token is for",
                                 code="forbidden")
        return identity.user_id
    return declared


def _session_identity(identity: Identity | None, user_id: str | None) -> Identity | None:
    """Who the channel rules see for this connection: its credential, as the session's user
    (a declared user is not ``authenticated`` without WS_AUTH)."""
    if identity is None:
        return None if user_id is None else Identity(subject=None, user_id=user_id)
    if identity.user_id == user_id:
        return identity
    return dataclasses.replace(identity, user_id=user_id)


def _wants_flat(request: web.Request) -> bool:
    """The connection's profile: ``?format=flat|envelope``, else flat on seed 004's path."""
    fmt = request.query.get("format")
    if not fmt:
        return request.path in FLAT_PATHS
    if fmt not in FORMATS:
        raise ProtocolError(f"format must be one of {', '.join(FORMATS)}",
                            code="invalid_request")
    return fmt == "flat"


async def _take_over(gateway: Gateway, client_id: str, peer: str) -> None:
    """Seed 001's front ends are addressed by the session_id in their path, and reconnect to
    it (a page reload) without a session_token: the new connection takes the id over, as the
    seed server did. The session it replaces is ended (its socket, if any, is closed with 4000)
    and its history dropped: only a session_token resumes a session with its history."""
    try:
        await gateway.disconnect(client_id, code=CloseCode.REPLACED,
                                 reason=CloseCode.REPLACED.explanation, end_reason="replaced")
    except SwitchboardError as exc:  # another node's "not found" comes back by its code
        if exc.code == ClientNotFound.code:
            return
        raise
    log.info("session_taken_over", client_id=client_id, peer=peer)


def _close_at_expiry(conn: Connection, expires_at: float) -> asyncio.TimerHandle:
    """One loop timer per authenticated connection: at the token's ``exp`` (wall clock,
    converted to the loop's clock) the socket is closed with 4010; the client reconnects with a
    fresh token and resumes."""
    loop = asyncio.get_running_loop()
    when = loop.time() + max(0.0, expires_at - time.time())
    code = CloseCode.TOKEN_EXPIRED
    return loop.call_at(when, conn.close_soon, int(code), code.explanation)


async def _refuse(ws: web.WebSocketResponse, code: CloseCode, message: str,
                  flat: bool = False, **details: Any) -> None:
    encoded = protocol.encode(protocol.error_frame(code.name.lower(), message,
                                                   close_code=int(code), **details))
    if flat:
        encoded = protocol.to_flat(encoded, None)  # no session, so no client_id
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_frame(encoded, WSMsgType.TEXT)
        await ws.close(code=int(code), message=code.explanation.encode())


def _read_failed(conn: Connection, error: Any) -> None:
    """aiohttp's reader failed (a protocol violation it detected): keep the code it closed
    with, and log it."""
    exc = error if isinstance(error, BaseException) else conn.ws.exception()
    if isinstance(exc, WebSocketError) and conn.close_code is None:
        # The code aiohttp closed with (1002, 1007, 1009): what the metrics count, not the
        # 1006 left when the peer does not answer the close.
        conn.close_code = int(exc.code)
    log.info("ws_protocol_error", client_id=conn.session.client_id, error=str(exc),
             code=conn.close_code if conn.close_code is not None else conn.ws.close_code)


_DATA_TYPES = (WSMsgType.TEXT, WSMsgType.BINARY)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _invalid_utf8(conn: Connection) -> None:
    """RFC 6455 section 8.1: a text frame that is not UTF-8 fails the connection (1007)."""
    code = CloseCode.INVALID_DATA
    conn.close_soon(code, code.explanation)


def _rate_limited(conn: Connection, gateway: Gateway, limiter: Any) -> None:
    if limiter.should_close():
        conn.close_soon(CloseCode.RATE_LIMITED, CloseCode.RATE_LIMITED.explanation)
        return
    if limiter.should_warn():
        gateway.emit(conn.session, "error", {
            "code": "rate_limited",
            "message": "too many frames: this one was dropped; slow down or the connection "
                       "will be closed with 4009",
            "retry_after": limiter.retry_after()})


def _handle_text(conn: Connection, gateway: Gateway, router: MessageRouter, data: bytes,
                 sniff: bool = False) -> Awaitable[None] | None:
    """Decode, count, keep and dispatch one text frame; a refused frame is answered with an
    ``error`` frame (a crashed handler with ``internal_error``).

    Synchronous up to the handler, on purpose: a plain handler (``ping``'s: the round trip a
    client measures) runs to completion in here, so such a frame costs the reader loop no
    coroutine and no await. An ``async`` handler's run is returned, wrapped by
    :func:`_finish` (which answers its failures the same way), for the reader loop to await
    before it reads the next frame.
    """
    session = conn.session
    reply_to: str | None = None
    frame: protocol.ClientFrame | None = None
    try:
        frame = protocol.decode_client_frame(data, gateway.settings.max_json_depth)
        if sniff and protocol.is_flat_form(frame.raw):
            conn.__class__ = FlatConnection
        frame_type = frame.type
        HOT.frame_in(frame_type, router)
        reply_to = frame.message_id
        if frame_type in _LIVENESS_TYPES:
            # Liveness is not history: like their pongs, pings are not kept (they would
            # push real frames out of a chatty client's resume window).
            session.last_activity = time.time()
        else:
            router.route_for(frame_type)  # a frame of unknown type is refused, not kept
            gateway.registry.record_inbound(session, data)
        pending = router.dispatch(HandlerContext(gateway, session, frame), frame)
    except SwitchboardError as exc:
        if frame is None:
            HOT.frame_in_special("invalid")
            if exc.code == "invalid_json" and not _is_utf8(data):
                # orjson validated the UTF-8 already: only a refused frame is checked again.
                _invalid_utf8(conn)
                return None
            if exc.code == "json_too_deep":
                HOT.limit_hit("json_depth")
        _refused(gateway, session, exc, reply_to)
        return None
    except Exception:
        _crashed(gateway, session, reply_to)
        return None
    if pending is None:
        return None
    return _finish(gateway, session, pending, reply_to)


async def _finish(gateway: Gateway, session: Session, pending: Awaitable[None],
                  reply_to: str) -> None:
    """Await an ``async`` handler's run (see :func:`_handle_text`)."""
    try:
        await pending
    except SwitchboardError as exc:
        _refused(gateway, session, exc, reply_to)
    except Exception:
        _crashed(gateway, session, reply_to)


def _refused(gateway: Gateway, session: Session, exc: SwitchboardError,
             reply_to: str | None) -> None:
    """Answer a refused frame with an ``error`` frame carrying the error's code and details."""
    details = dict(exc.details)
    reply_to = details.pop("reply_to", reply_to)
    payload = {"code": exc.code, "message": exc.message, **details}
    gateway.emit(session, "error", payload, reply_to=reply_to,
                 extra={key: payload[key] for key in exc.top_level if key in payload})


def _crashed(gateway: Gateway, session: Session, reply_to: str | None) -> None:
    log.exception("handler_crashed", client_id=session.client_id, message_id=reply_to)
    gateway.emit(session, "error", {"code": "internal_error",
                                    "message": "the server failed to handle this frame"},
                 reply_to=reply_to)


# --- seed 004's read-only HTTP routes on the WebSocket port -------------------------------------

#: How long the WebSocket port's ``/ws/status`` answer is reused: the port is public, and a
#: cluster's status reads every session from Redis.
STATUS_TTL = 1.0


class PublicStatus:
    """``/ws/status`` on the WebSocket port: the API's ``/status`` without the broker's
    description (its URL names internal hosts), computed at most once per STATUS_TTL."""

    __slots__ = ("at", "body", "lock")

    def __init__(self) -> None:
        self.at = -STATUS_TTL
        self.body = b""
        self.lock = asyncio.Lock()

    async def get(self, gateway: Gateway) -> bytes:
        async with self.lock:
            if time.monotonic() - self.at >= STATUS_TTL:
                status = await gateway.status()
                status.pop("broker", None)
                self.body = protocol.encode(status)
                self.at = time.monotonic()
        return self.body


async def _client_refusal(request: web.Request) -> web.StreamResponse | None:
    """The socket's own rules for a plain request on its port: origin (403), then client
    authentication (401)."""
    security = request.app[SECURITY]
    refusal = security.check_handshake(request)
    if refusal is None:
        identity = await security.authenticate_client(request)
        if isinstance(identity, web.StreamResponse):
            refusal = identity
    return refusal


async def ws_status(request: web.Request) -> web.StreamResponse:
    """``GET /ws/status`` on the WebSocket port (seed 004 served it beside its socket)."""
    refusal = await _client_refusal(request)
    if refusal is not None:
        return refusal
    try:
        body = await request.app[PUBLIC_STATUS].get(request.app[GATEWAY])
    except SwitchboardError as exc:  # a cluster without Redis: 503, as on the API port
        return _bad_request(exc.message, exc.code, exc.http_status)
    return web.Response(body=body, content_type="application/json")


async def ws_handlers(request: web.Request) -> web.StreamResponse:
    """``GET /ws/handlers`` on the WebSocket port: the registered frame types."""
    refusal = await _client_refusal(request)
    if refusal is not None:
        return refusal
    return web.Response(body=protocol.encode(request.app[ROUTER].listing()),
                        content_type="application/json")


async def close_all(connections: set[Connection], code: CloseCode,
                    reason: str | None = None) -> None:
    """Close every socket with ``code`` (shutdown: 1001, clients reconnect) and ``reason``
    (default: the code's explanation)."""
    for conn in list(connections):
        conn.close_soon(code, code.explanation if reason is None else reason)
    closing = [c.closing for c in connections if c.closing is not None]
    if closing:
        # Each close already gives up after CLOSE_GRACE and aborts the transport.
        await asyncio.gather(*closing, return_exceptions=True)
