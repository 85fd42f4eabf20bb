"""Asynchronous WebSocket client for the Switchboard gateway.

Typical use::

    async with SwitchboardClient("ws://127.0.0.1:9004/", client_type="agent") as client:

        @client.on("message")
        async def got(frame):
            print(frame.data["content"])

        @client.tool("add")
        def add(a: int, b: int) -> int:
            return a + b

        reply = await client.chat("hello")
        await client.wait_closed()

What callers must know:

- ``connect()`` (or ``async with``) makes the first connection and raises
  :class:`~switchboard_client.errors.ConnectError` if it fails; after that the client
  reconnects by itself following the close-code policy of
  :func:`~switchboard_client.protocol.close_action`, resuming the session with
  ``session_token`` + ``last_seq``. Frames replayed by the server are delivered once: a frame
  whose ``seq`` is not above the highest seq already seen is dropped.
- Handlers run one at a time, in arrival order, in a dispatcher task separate from the socket
  reader, so a handler may ``await client.request(...)`` without deadlocking. A handler that
  raises is logged (logger ``switchboard_client``) and does not stop the client.
- Registered tools answer server ``tool_call`` frames automatically (each call in its own
  task). ``mcp_tool_waiting_permission`` is answered with ``granted: false`` unless a
  permission handler returns true.
- Frames sent by the client are at-most-once: ``send`` waits for a connection while the client
  is reconnecting, but a frame written just before the socket drops may be lost. Use
  ``request`` (which times out) and retry where that matters.
"""

# Request-style methods take a reply ``timeout`` on purpose (it also maps to RequestTimeout).
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import orjson
from yarl import URL

from switchboard_client.errors import (
    ConnectError,
    ConnectionClosed,
    RequestError,
    RequestTimeout,
    SwitchboardError,
    ToolError,
)
from switchboard_client.protocol import (
    DEFAULT_REPLY_TYPES,
    CloseAction,
    CloseCode,
    Frame,
    Lifecycle,
    close_action,
    describe_close,
    dumps,
    make_frame,
    new_message_id,
)

log = logging.getLogger("switchboard_client")

Handler = Callable[[Any], Any]
"""A frame handler: called with a :class:`Frame` (or a dict for lifecycle events); may be async."""
TokenSource = str | Callable[[], "str | Awaitable[str]"]
PermissionHandler = Callable[[Frame], "bool | Awaitable[bool]"]
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_URL = "ws://127.0.0.1:9004/"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter for reconnect attempts.

    The delay before attempt ``n`` (0-based) is ``min(maximum, initial * factor**n)``, reduced
    by a random fraction of up to ``jitter`` (0 = no jitter, 1 = "full jitter"). After close
    4009 (rate limited) the delay is at least ``rate_limited`` seconds.
    """

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5
    rate_limited: float = 5.0

    def delay(self, attempt: int) -> float:
        """Return the delay in seconds before reconnect attempt ``attempt`` (0-based)."""
        base = min(self.maximum, self.initial * self.factor ** min(max(attempt, 0), 64))
        return max(0.0, base * (1.0 - self.jitter * random.random()))


@dataclass(slots=True)
class ClientStats:
    """Counters kept by a client (read them from ``client.stats``)."""

    frames_received: int = 0
    frames_sent: int = 0
    duplicates_dropped: int = 0
    connects: int = 0
    reconnects: int = 0
    resumes: int = 0
    recovery_failures: int = 0


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[Frame]
    expect: frozenset[str] | None


class _Closed(Exception):
    """Internal: the socket closed before ``connection_established``."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


_STOP = object()


class SwitchboardClient:
    """A resilient client of the Switchboard WebSocket gateway.

    Arguments:
        url: ``ws://host:9004/`` (``/ws`` works too). Query parameters already in the URL are
            kept.
        client_id: ask for this id (the server picks one when omitted, or when it is taken).
            After a connection the id in use is ``client.client_id``. When the server rejects
            the session (close 4003: expired or unknown), the client starts a new session asking
            for this id again.
        client_type: sent as ``client_type`` (lets the API filter and target clients).
        token: WebSocket auth token sent as the ``token`` query parameter; either a string or
            a callable (sync or async) returning one, called before every connection attempt.
            Close 4010 (token expired) reconnects only when ``token`` is a callable.
        session_token, last_seq: resume a session saved from an earlier process
            (``client.session_token`` / ``client.last_seq``).
        reconnect: reconnect automatically after a close that allows it (default ``True``).
        backoff: reconnect delays (:class:`Backoff`).
        max_reconnect_attempts: give up after this many consecutive failed attempts
            (``None``: never give up).
        heartbeat: seconds between WebSocket pings (aiohttp's heartbeat; a missing pong drops
            the connection, which then reconnects). ``None`` disables it.
        connect_timeout: seconds allowed for the upgrade plus ``connection_established``.
        max_msg_size: largest frame accepted from the server, in bytes.
        session: an existing ``aiohttp.ClientSession`` to use (not closed by the client).
        permission_handler: decides ``mcp_tool_waiting_permission`` prompts; see
            :meth:`on_permission`.
        answer_unknown_tools: answer a server ``tool_call`` for a tool that is not registered
            with an error (so the HTTP caller is not left waiting), unless a handler is
            registered for ``"tool_call"`` itself (then the program answers with
            :meth:`reply_tool`).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        client_id: str | None = None,
        client_type: str | None = None,
        user_id: str | None = None,
        token: TokenSource | None = None,
        session_token: str | None = None,
        last_seq: int = 0,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        max_reconnect_attempts: int | None = None,
        heartbeat: float | None = 20.0,
        connect_timeout: float = 10.0,
        max_msg_size: int = 4 * 1024 * 1024,
        session: aiohttp.ClientSession | None = None,
        permission_handler: PermissionHandler | None = None,
        answer_unknown_tools: bool = True,
    ) -> None:
        self.url = url
        self.client_id = client_id
        self._requested_client_id = client_id
        self.client_type = client_type
        #: The user this client acts for (sent as ``user_id`` with WS_AUTH=none/token; a JWT's
        #: ``sub`` decides with jwt): updated from ``connection_established``.
        self.user_id = user_id
        self._declared_user_id = user_id
        self.session_token = session_token
        self.last_seq = last_seq
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.max_reconnect_attempts = max_reconnect_attempts
        self.heartbeat = heartbeat
        self.connect_timeout = connect_timeout
        self.max_msg_size = max_msg_size
        self.answer_unknown_tools = answer_unknown_tools
        self.stats = ClientStats()
        #: ``data`` of the latest ``connection_established`` frame.
        self.connection_info: dict[str, Any] = {}
        #: Final close code and reason once the client is closed.
        self.close_code: int | None = None
        self.close_reason: str = ""

        self._token = token
        self._permission_handler = permission_handler
        self._session = session
        self._own_session = session is None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._handlers: dict[str, list[Handler]] = {}
        self._tools: dict[str, Callable[..., Any]] = {}
        self._pending: dict[str, _Pending] = {}
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._connected = asyncio.Event()
        self._closed = asyncio.Event()
        self._closing = asyncio.Event()
        self._started = False
        self._runner: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._oversized = False

    # ------------------------------------------------------------------ registration

    def on(self, type: str, handler: Handler | None = None) -> Any:
        """Register ``handler`` for frames of ``type``; usable as ``@client.on("type")``.

        ``"*"`` receives every server frame (after the type-specific handlers). Lifecycle
        events (:class:`~switchboard_client.protocol.Lifecycle`, e.g. ``"client.connected"``)
        are registered the same way and receive a dict. Handlers may be plain functions or
        coroutines; they run sequentially in arrival order.
        """

        def register(fn: Handler) -> Handler:
            self._handlers.setdefault(type, []).append(fn)
            return fn

        return register(handler) if handler is not None else register

    def off(self, type: str, handler: Handler) -> None:
        """Unregister a handler added with :meth:`on` (no error if it is not registered)."""
        with contextlib.suppress(KeyError, ValueError):
            self._handlers[type].remove(handler)

    def on_recovery_failed(self, handler: Handler) -> Handler:
        """Register a handler for :attr:`Lifecycle.RECOVERY_FAILED` (frames were lost).

        Called with ``{"reason", "last_seq", "client_id"}`` when a resume could not replay
        everything (``recovered: false``) or the session was gone; reload state then.
        """
        return self.on(Lifecycle.RECOVERY_FAILED, handler)

    def tool(self, name: str | None = None) -> Callable[[F], F]:
        """Decorator registering a tool that answers server ``tool_call`` frames.

        The function is called with the call's ``params`` as keyword arguments (or as one
        positional argument when ``params`` is not an object) and may be async. Its return
        value (JSON-serialisable) is sent as ``tool_result {call_id, result}``; an exception
        is sent as ``tool_result {call_id, error: "<Type>: <message>"}``.
        """

        def register(fn: F) -> F:
            self.add_tool(name or fn.__name__, fn)
            return fn

        return register

    def add_tool(self, name: str, fn: Callable[..., Any]) -> None:
        """Register ``fn`` as tool ``name`` (see :meth:`tool`)."""
        self._tools[name] = fn

    @property
    def tools(self) -> Mapping[str, Callable[..., Any]]:
        """The registered tools, by name (read-only view)."""
        return dict(self._tools)

    def on_permission(self, handler: PermissionHandler) -> PermissionHandler:
        """Set the handler deciding ``mcp_tool_waiting_permission`` prompts.

        It gets the prompt :class:`Frame` (``data`` has ``call_id``, ``tool_name``,
        ``parameters``, ``risk_level``) and returns (or resolves to) a bool; the client sends
        ``permission_response {call_id, granted}``. Without a handler, or when it raises, the
        answer is ``granted: false``.
        """
        self._permission_handler = handler
        return handler

    # ------------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        """True while a socket is open and greeted (``connection_established`` received)."""
        return self._ws is not None and not self._ws.closed and self._connected.is_set()

    @property
    def closed(self) -> bool:
        """True once the client is closed for good (no further reconnects)."""
        return self._closed.is_set()

    async def __aenter__(self) -> SwitchboardClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, *, retry: bool = False) -> None:
        """Open the first connection and start the background reader.

        Returns once ``connection_established`` has been received. Raises
        :class:`ConnectError` when the gateway cannot be reached or refuses the connection,
        unless ``retry`` is true, in which case it keeps trying with backoff (still raising for
        refusals that a retry cannot fix, such as 401/403).
        """
        if self._started:
            raise SwitchboardError("connect() may be called once per client")
        self._started = True
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="switchboard-dispatch")
        try:
            await self._first_connection(retry)
            if self._closing.is_set():
                raise ConnectionClosed("client closed while connecting")
        except BaseException:
            # Failed, refused or cancelled: release the dispatcher and the HTTP session.
            await self._shutdown(
                self.close_code, self.close_reason or "not connected", notify=False
            )
            raise
        self._runner = asyncio.create_task(self._run(), name="switchboard-reader")

    async def _first_connection(self, retry: bool) -> None:
        attempt = 0
        while True:
            try:
                await self._open(reconnect=False)
                break
            except _Closed as closed:
                action = close_action(closed.code)
                if action is CloseAction.FRESH_SESSION and self.session_token is not None:
                    self._reset_session(closed.code)
                    continue
                error = ConnectError(
                    f"{self.url}: closed by the server before the greeting "
                    f"({describe_close(closed.code)}{': ' + closed.reason if closed.reason else ''})",
                    close_code=closed.code,
                    retryable=action is not CloseAction.STOP,
                )
            except ConnectError as exc:
                error = exc
            if not (retry and error.retryable) or (
                self.max_reconnect_attempts is not None and attempt >= self.max_reconnect_attempts
            ):
                self.close_code, self.close_reason = error.close_code, str(error)
                raise error
            delay = self.backoff.delay(attempt)
            attempt += 1
            self._emit(
                Lifecycle.RECONNECTING, {"attempt": attempt, "delay": delay, "error": str(error)}
            )
            if await self._sleep_or_closing(delay):
                raise ConnectionClosed("client closed while connecting")

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close the connection (``code`` 1000 by default) and stop reconnecting.

        Queued handler calls still run; pending requests fail with :class:`ConnectionClosed`.
        Safe to call more than once, and from inside a handler.
        """
        if self._closed.is_set():
            return
        self._closing.set()
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close(code=code, message=reason.encode())
        runner = self._runner
        if runner is not None and runner is not asyncio.current_task():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        await self._shutdown(int(code), reason or "closed by the client")

    async def wait_closed(self) -> tuple[int | None, str]:
        """Wait until the client is closed for good; return ``(close_code, close_reason)``."""
        await self._closed.wait()
        return self.close_code, self.close_reason

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until a connection is established (now or after a reconnect).

        Raises :class:`ConnectionClosed` if the client closes first, ``TimeoutError`` after
        ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            await self._wait_ws()

    def simulate_network_drop(self) -> None:
        """Abort the current TCP connection without a close frame, as a network failure would.

        A testing aid: the client then behaves exactly as after a real drop (close code 1006,
        reconnect and resume). Does nothing when no socket is open.
        """
        ws = self._ws
        if ws is None:
            return
        conn = getattr(ws, "_conn", None)
        transport = getattr(conn, "transport", None) or getattr(
            getattr(ws, "_writer", None), "transport", None
        )
        if transport is not None:
            transport.abort()

    # ------------------------------------------------------------------ sending

    async def send(
        self, type: str, data: Mapping[str, Any] | None = None, *, message_id: str | None = None
    ) -> str:
        """Send one frame and return its ``message_id``.

        While the client is reconnecting this waits for the connection (wrap it in
        ``asyncio.timeout`` to bound that); raises :class:`ConnectionClosed` once the client is
        closed for good.
        """
        frame = make_frame(type, data, message_id=message_id)
        text = dumps(frame)
        for _ in range(3):
            ws = await self._wait_ws()
            try:
                await ws.send_str(text)
            except (ConnectionError, aiohttp.ClientError) as exc:
                log.debug("send of %s failed (%s); waiting for reconnect", type, exc)
                # The transport is closing: the reader will see the drop and reconnect.
                self._connected.clear()
                continue
            self.stats.frames_sent += 1
            return frame["message_id"]
        raise ConnectionClosed(f"could not send {type!r}: the connection keeps dropping")

    async def request(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = 10.0,
        expect: str | Iterable[str] | None = None,
        message_id: str | None = None,
    ) -> Frame:
        """Send a frame and wait for the server frame answering it (``reply_to``).

        ``expect`` names the reply type(s) that complete the request; by default the known
        answer of ``type`` (``ping`` -> ``pong``, ``chat_message`` -> ``chat_response`` or
        ``stream_end``, ...; see ``DEFAULT_REPLY_TYPES``), else the first reply. Interim
        replies still reach the handlers. An ``error`` reply raises :class:`RequestError`; no
        reply within ``timeout`` seconds (including time spent reconnecting) raises
        :class:`RequestTimeout`. ``message_id`` chooses the request's id (default: random), so
        a ``"*"`` handler can pick out interim replies by ``reply_to``.
        """
        if expect is None:
            expected = DEFAULT_REPLY_TYPES.get(type)
        elif isinstance(expect, str):
            expected = frozenset({expect})
        else:
            expected = frozenset(expect)
        message_id = message_id or new_message_id()
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = _Pending(future, expected)
        try:
            async with asyncio.timeout(timeout):
                await self.send(type, data, message_id=message_id)
                return await future
        except TimeoutError:
            raise RequestTimeout(f"no reply to {type!r} within {timeout} s") from None
        finally:
            self._pending.pop(message_id, None)

    async def ping(self, timeout: float | None = 10.0) -> Frame:
        """Send an application-level ``ping`` and return the ``pong``."""
        return await self.request("ping", {}, timeout=timeout)

    async def subscribe(self, channel: str, timeout: float | None = 10.0) -> Frame:
        """Subscribe to ``channel``; returns ``subscribed`` or raises :class:`RequestError`."""
        return await self.request("subscribe", {"channel": channel}, timeout=timeout)

    async def unsubscribe(self, channel: str, timeout: float | None = 10.0) -> Frame:
        """Unsubscribe from ``channel``; returns ``unsubscribed``."""
        return await self.request("unsubscribe", {"channel": channel}, timeout=timeout)

    async def publish(self, channel: str, data: Mapping[str, Any] | None = None,
                      timeout: float | None = 10.0) -> Frame:
        """Publish to ``channel`` where its rule allows; returns ``published`` {channel,
        message_id, recipients, queued} or raises :class:`RequestError`
        (``forbidden_channel``). Subscribers get a ``publication`` frame."""
        return await self.request("publish", {"channel": channel, "data": dict(data or {})},
                                  timeout=timeout)

    async def presence(self, channel: str, timeout: float | None = 10.0) -> dict[str, Any]:
        """Who is in ``channel`` (where its rule allows presence): the ``presence`` frame's
        data {channel, count, sessions, users, truncated}. Changes arrive as ``join`` /
        ``leave`` frames where the rule has join_leave (``client.on("join", ...)``)."""
        return (await self.request("presence", {"channel": channel}, timeout=timeout)).data

    async def channel_history(self, channel: str, limit: int | None = None,
                              timeout: float | None = 10.0) -> list[dict[str, Any]]:
        """A subscribed channel's recent frames (its rule's history), oldest first."""
        data: dict[str, Any] = {"channel": channel}
        if limit is not None:
            data["limit"] = limit
        reply = await self.request("channel_history", data, timeout=timeout)
        return list(reply.data["frames"])

    async def get_status(self, timeout: float | None = 10.0) -> dict[str, Any]:
        """Return the ``data`` of the server's ``status_response``."""
        return (await self.request("get_status", {}, timeout=timeout)).data

    async def chat(self, content: str, role: str = "user", timeout: float | None = 60.0) -> Frame:
        """Send a ``chat_message`` and return the final answer.

        The answer is ``chat_response`` (``data.content``) or, for a streamed answer,
        ``stream_end`` (``data.full_content``). ``processing`` / ``stream_chunk`` frames reach
        the handlers meanwhile.
        """
        return await self.request(
            "chat_message", {"content": content, "role": role}, timeout=timeout
        )

    async def call_tool(
        self,
        tool_name: str,
        params: Mapping[str, Any] | None = None,
        *,
        call_id: str | None = None,
        timeout: float | None = 60.0,
    ) -> Any:
        """Call a gateway-side tool and return its ``result``.

        Raises :class:`ToolError` when the ``tool_response`` says ``success: false`` and
        :class:`RequestError` when the gateway answers with an ``error`` frame.
        """
        data: dict[str, Any] = {"tool_name": tool_name, "params": dict(params or {})}
        if call_id is not None:
            data["call_id"] = call_id
        reply = await self.request("tool_call", data, timeout=timeout)
        if reply.data.get("success") is False:
            result = reply.data.get("result")
            detail = reply.data.get("error") or (
                result.get("content") if isinstance(result, dict) else result
            )
            raise ToolError(
                f"tool {tool_name!r} failed: {detail}", tool_name=tool_name, result=reply.data
            )
        return reply.data.get("result")

    async def reply_tool(
        self, call_id: str, *, result: Any = None, error: str | None = None
    ) -> None:
        """Answer a server-initiated ``tool_call`` by hand (``tool_result``)."""
        data: dict[str, Any] = {"call_id": call_id}
        if error is not None:
            data["error"] = error
        else:
            data["result"] = result
        await self.send("tool_result", data)

    # ------------------------------------------------------------------ internals: connection

    async def _resolve_token(self) -> str | None:
        token = self._token
        if token is None or isinstance(token, str):
            return token
        value = token()
        if inspect.isawaitable(value):
            value = await value
        return value

    def _build_url(self, token: str | None) -> URL:
        url = URL(self.url)
        params: dict[str, str] = {}
        if self.client_id:
            params["client_id"] = self.client_id
        if self.client_type:
            params["client_type"] = self.client_type
        if self._declared_user_id:
            params["user_id"] = self._declared_user_id
        if self.session_token:
            params["session_token"] = self.session_token
            params["last_seq"] = str(self.last_seq)
        if token:
            params["token"] = token
        return url.update_query(params) if params else url

    async def _open(self, *, reconnect: bool) -> None:
        """Open a socket and process ``connection_established``; raise ConnectError/_Closed."""
        assert self._session is not None
        try:
            token = await self._resolve_token()
        except Exception as exc:
            raise ConnectError(f"could not obtain an auth token: {exc}") from exc
        url = self._build_url(token)
        ws: aiohttp.ClientWebSocketResponse | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                ws = await self._session.ws_connect(
                    url,
                    heartbeat=self.heartbeat,
                    max_msg_size=self.max_msg_size,
                    autoping=True,
                )
                msg = await ws.receive()
        except aiohttp.WSServerHandshakeError as exc:
            raise _handshake_error(self.url, exc, token_refreshable=callable(self._token)) from None
        except TimeoutError:
            if ws is not None:
                await ws.close()
            raise ConnectError(
                f"{self.url}: no connection_established within {self.connect_timeout} s"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectError(f"cannot connect to {self.url}: {_reason(exc)}") from None

        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
        ):
            reason = msg.extra if msg.type is aiohttp.WSMsgType.CLOSE and msg.extra else ""
            code = ws.close_code
            await ws.close()
            raise _Closed(int(code if code is not None else CloseCode.ABNORMAL), str(reason))
        first = _decode(msg)
        if first is not None and first.get("type") == "error":
            # A refusal after the upgrade: an error frame, then a close with a documented code.
            err = Frame.from_raw(first).data
            text = str(err.get("message") or err.get("code") or "refused")
            code = err.get("close_code")
            if not isinstance(code, int):
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.connect_timeout):
                        while (await ws.receive()).type is aiohttp.WSMsgType.TEXT:
                            pass
                code = ws.close_code
            await ws.close()
            if isinstance(code, int) and code != CloseCode.NORMAL:
                raise _Closed(int(code), text)
            raise ConnectError(f"{self.url}: refused: {text}", retryable=False)
        if first is None or first.get("type") != "connection_established":
            await ws.close()
            raise ConnectError(
                f"{self.url}: expected connection_established, got {msg.data!r:.200}"
            )

        established = Frame.from_raw(first)
        self._ws = ws
        self._apply_established(established, reconnect=reconnect)
        self._connected.set()

    def _apply_established(self, frame: Frame, *, reconnect: bool) -> None:
        data = frame.data
        had_session = self.session_token is not None
        resumed = bool(data.get("resumed"))
        recovered = data.get("recovered", True) is not False
        self.stats.connects += 1
        if reconnect:
            self.stats.reconnects += 1
        lost: str | None = None
        if resumed:
            self.stats.resumes += 1
            if not recovered:
                lost = "history_gap"
        else:
            if had_session:
                lost = "session_lost"
            # A new session numbers its frames from 1 again: forget the old high-water mark.
            self.last_seq = 0
        if isinstance(data.get("client_id"), str):
            self.client_id = data["client_id"]
        if "user_id" in data:
            self.user_id = data["user_id"]
        if isinstance(data.get("session_token"), str):
            self.session_token = data["session_token"]
        self.connection_info = dict(data)
        self._enqueue(frame.type, frame)
        self._emit(
            Lifecycle.CONNECTED,
            {
                "client_id": self.client_id,
                "resumed": resumed,
                "recovered": recovered,
                "last_seq": self.last_seq,
                "server_last_seq": data.get("last_seq"),
                "url": self.url,
                "reconnect": reconnect,
            },
        )
        if lost is not None:
            self.stats.recovery_failures += 1
            self._emit(
                Lifecycle.RECOVERY_FAILED,
                {"reason": lost, "last_seq": self.last_seq, "client_id": self.client_id},
            )

    def _reset_session(self, code: int | None) -> None:
        """Forget the rejected session: connect afresh as the client_id asked for (or none)."""
        old = self.client_id
        self.client_id = self._requested_client_id
        self.session_token = None
        self.last_seq = 0
        self._emit(Lifecycle.SESSION_RESET, {"code": code, "old_client_id": old})
        self.stats.recovery_failures += 1
        self._emit(
            Lifecycle.RECOVERY_FAILED,
            {"reason": "session_lost", "last_seq": 0, "client_id": old},
        )

    async def _run(self) -> None:
        """Read frames; on close, reconnect according to the close-code policy."""
        code: int | None = None
        reason = ""
        try:
            while True:
                ws = self._ws
                assert ws is not None
                code, reason = await self._read(ws)
                self._connected.clear()
                self._ws = None
                if self._closing.is_set():
                    return
                action = close_action(code)
                if self._oversized:
                    action = CloseAction.STOP
                if action is CloseAction.NEW_TOKEN and not callable(self._token):
                    action = CloseAction.STOP
                    reason = reason or "auth token expired (pass a token callable to refresh it)"
                will = self.reconnect and action is not CloseAction.STOP
                self._emit(
                    Lifecycle.DISCONNECTED,
                    {
                        "code": code,
                        "reason": reason,
                        "description": describe_close(code),
                        "will_reconnect": will,
                    },
                )
                if not will:
                    return
                if action is CloseAction.FRESH_SESSION:
                    self._reset_session(code)
                outcome = await self._reconnect(action)
                if outcome is not None:
                    code, reason = outcome
                    return
        except Exception as exc:  # a bug, not a network condition: close rather than hang
            log.exception("reader failed")
            code, reason = None, f"client error: {exc}"
        finally:
            if not self._closing.is_set():
                await self._shutdown(code, reason)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
        """Deliver frames until the socket closes; return (close code, reason).

        Sets ``self._oversized`` when the client itself refused a frame above
        ``max_msg_size``: resuming would replay the same frame, so that is final.
        """
        reason = ""
        self._oversized = False
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                raw = _decode(msg)
                if raw is not None:
                    self._handle(raw)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                log.debug("ignoring a binary frame of %d bytes", len(msg.data))
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                reason = str(msg.extra or "")
                break
            elif msg.type is aiohttp.WSMsgType.ERROR:
                error = msg.data
                if (
                    isinstance(error, aiohttp.WebSocketError)
                    and error.code == CloseCode.MESSAGE_TOO_BIG
                ):
                    self._oversized = True
                    reason = (
                        f"a server frame exceeded max_msg_size ({self.max_msg_size} bytes); "
                        "raise max_msg_size to receive it"
                    )
                else:
                    reason = _reason(error) if isinstance(error, BaseException) else ""
                break
            else:  # CLOSING / CLOSED
                break
        if not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()
        code = ws.close_code
        return int(code if code is not None else CloseCode.ABNORMAL), reason

    async def _reconnect(self, action: CloseAction) -> tuple[int | None, str] | None:
        """Reconnect with backoff; return None on success, else the final (code, reason)."""
        attempt = 0
        error: str | None = None
        immediate = action in (CloseAction.FRESH_SESSION, CloseAction.NEW_TOKEN)
        while True:
            if self.max_reconnect_attempts is not None and attempt >= self.max_reconnect_attempts:
                return (None, f"gave up after {attempt} reconnect attempts: {error}")
            if immediate:
                # Nothing to wait for: the session was reset, or a new token is at hand.
                immediate = False
                delay = 0.0
            else:
                delay = self.backoff.delay(attempt)
                if action is CloseAction.BACKOFF:
                    delay = max(delay, self.backoff.rate_limited)
            attempt += 1
            self._emit(Lifecycle.RECONNECTING, {"attempt": attempt, "delay": delay, "error": error})
            if await self._sleep_or_closing(delay):
                return (None, "closed by the client")
            try:
                await self._open(reconnect=True)
                return None
            except _Closed as closed:
                next_action = close_action(closed.code)
                error = describe_close(closed.code) + (
                    f": {closed.reason}" if closed.reason else ""
                )
                if next_action is CloseAction.STOP:
                    return closed.code, closed.reason or describe_close(closed.code)
                if next_action is CloseAction.FRESH_SESSION and self.session_token is not None:
                    self._reset_session(closed.code)
                    immediate = True
                action = next_action
            except ConnectError as exc:
                error = str(exc)
                if not exc.retryable:
                    return exc.close_code, str(exc)

    async def _sleep_or_closing(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; return True early if the client is being closed."""
        if self._closing.is_set():
            return True
        try:
            async with asyncio.timeout(delay):
                await self._closing.wait()
        except TimeoutError:
            return False
        return True

    async def _wait_ws(self) -> aiohttp.ClientWebSocketResponse:
        while True:
            if self._closed.is_set() or self._closing.is_set():
                raise ConnectionClosed(
                    f"client is closed ({self.close_reason or describe_close(self.close_code)})",
                    code=self.close_code,
                    reason=self.close_reason,
                )
            ws = self._ws
            if ws is not None and not ws.closed and self._connected.is_set():
                return ws
            if not self._started:
                raise ConnectionClosed("client is not connected: call connect() first")
            connected = asyncio.ensure_future(self._connected.wait())
            closing = asyncio.ensure_future(self._closing.wait())
            try:
                await asyncio.wait({connected, closing}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                connected.cancel()
                closing.cancel()
            if self._ws is None or self._ws.closed:
                # Woken by a stale "connected" flag: wait for the reader to notice the drop.
                self._connected.clear()

    async def _shutdown(self, code: int | None, reason: str, *, notify: bool = True) -> None:
        if self._closed.is_set():
            return
        self._closing.set()
        self.close_code = code
        self.close_reason = reason
        self._closed.set()
        self._connected.clear()
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()
        closed_error = ConnectionClosed(
            f"client closed ({reason or describe_close(code)})", code=code, reason=reason
        )
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(closed_error)
        if notify:
            self._emit(
                Lifecycle.CLOSED,
                {"code": code, "reason": reason, "description": describe_close(code)},
            )
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        self._queue.put_nowait(_STOP)
        dispatcher = self._dispatcher
        if dispatcher is not None and dispatcher is not current:
            with contextlib.suppress(asyncio.CancelledError):
                await dispatcher
        if self._own_session and self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------ internals: frames

    def _handle(self, raw: dict[str, Any]) -> None:
        frame = Frame.from_raw(raw)
        if frame.seq is not None:
            if frame.seq <= self.last_seq:
                self.stats.duplicates_dropped += 1
                log.debug("dropping duplicate frame seq=%d type=%s", frame.seq, frame.type)
                return
            self.last_seq = frame.seq
        self.stats.frames_received += 1
        if frame.reply_to is not None:
            pending = self._pending.get(frame.reply_to)
            if pending is not None and not pending.future.done():
                if frame.type == "error":
                    pending.future.set_exception(
                        RequestError(
                            str(frame.data.get("code") or "error"),
                            str(frame.data.get("message") or ""),
                            frame,
                        )
                    )
                elif pending.expect is None or frame.type in pending.expect:
                    pending.future.set_result(frame)
        if frame.type == "tool_call" and "call_id" in frame.data and frame.reply_to is None:
            self._spawn(self._answer_tool(frame))
        elif frame.type == "mcp_tool_waiting_permission" and "call_id" in frame.data:
            self._spawn(self._answer_permission(frame))
        self._enqueue(frame.type, frame)

    def _enqueue(self, type: str, payload: Any) -> None:
        self._queue.put_nowait((type, payload))

    def _emit(self, event: str, payload: dict[str, Any]) -> None:
        log.debug("%s %s", event, payload)
        self._queue.put_nowait((event, payload))

    async def _dispatch_loop(self) -> None:
        while True:
            item = await self._queue.get()
            if item is _STOP:
                return
            type, payload = item
            handlers = list(self._handlers.get(type, ()))
            if type not in Lifecycle.ALL:
                handlers += self._handlers.get("*", ())
            for handler in handlers:
                try:
                    result = handler(payload)
                    if inspect.isawaitable(result):
                        await result
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("handler %r for %r raised", handler, type)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, ConnectionClosed):
                log.error("background task failed", exc_info=exc)

    async def _answer_tool(self, frame: Frame) -> None:
        call_id = frame.data.get("call_id")
        name = str(frame.data.get("tool_name") or "")
        params = frame.data.get("params")
        fn = self._tools.get(name)
        if fn is None:
            if self.answer_unknown_tools and not self._handlers.get("tool_call"):
                await self.send(
                    "tool_result", {"call_id": call_id, "error": f"unknown tool {name!r}"}
                )
            return
        data: dict[str, Any] = {"call_id": call_id}
        try:
            if isinstance(params, dict):
                result = fn(**params)
            else:
                result = fn() if params is None else fn(params)
            if inspect.isawaitable(result):
                result = await result
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("tool %r raised %s", name, exc)
            data["error"] = f"{type(exc).__name__}: {exc}"
        else:
            try:
                orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS)
            except orjson.JSONEncodeError as exc:
                data["error"] = f"result is not JSON-serialisable: {exc}"
            else:
                data["result"] = result
        await self.send("tool_result", data)

    async def _answer_permission(self, frame: Frame) -> None:
        granted = False
        handler = self._permission_handler
        if handler is not None:
            try:
                value = handler(frame)
                if inspect.isawaitable(value):
                    value = await value
                granted = bool(value)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("permission handler raised; denying")
        await self.send(
            "permission_response", {"call_id": frame.data["call_id"], "granted": granted}
        )


def _decode(msg: aiohttp.WSMessage) -> dict[str, Any] | None:
    try:
        raw = orjson.loads(msg.data)
    except (orjson.JSONDecodeError, TypeError):
        log.warning("ignoring a frame that is not JSON: %.200r", msg.data)
        return None
    if not isinstance(raw, dict):
        log.warning("ignoring a frame that is not a JSON object: %.200r", msg.data)
        return None
    return raw


def _reason(exc: BaseException) -> str:
    """A short human reason for a connection exception (no traceback)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        inner = exc.os_error
        if isinstance(inner, ConnectionRefusedError):
            return "connection refused"
        return inner.strerror or str(inner) or type(inner).__name__
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or type(exc).__name__


def _handshake_error(
    url: str, exc: aiohttp.WSServerHandshakeError, *, token_refreshable: bool
) -> ConnectError:
    """Turn a refused upgrade into a ConnectError; 401 is retryable with a token callable."""
    status = exc.status
    meaning = {
        401: "bad or missing credentials",
        403: "forbidden (origin or token not allowed)",
        404: "no WebSocket endpoint at this path",
        429: "too many connection attempts",
        503: "gateway at capacity or not ready",
    }.get(status, exc.message or "upgrade refused")
    return ConnectError(
        f"{url}: HTTP {status} {meaning}",
        status=status,
        retryable=status not in (400, 403, 404, 426) and (status != 401 or token_refreshable),
    )
