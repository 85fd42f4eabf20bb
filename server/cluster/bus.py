"""The peer bus: requests between nodes over Redis pub/sub (the :class:`~server.seams.Peers`
seam).

Every node subscribes to two channels: ``sb:node:{node_id}`` (requests addressed to it, and
replies to its own requests) and ``sb:all`` (messages to every node). A message is one JSON
header line (``op``, ``from``, ``req`` when a reply is wanted, and the operation's fields)
followed by an optional binary body (an encoded frame). A reply is published on the asker's
channel: ``{"op": "reply", "req", "ok": {…}}`` or ``{"op": "reply", "req", "error": {…},
"http_status"}``. PUBLISH says how many nodes listen, so the asker knows at once that nobody
does (``PeerUnreachable``) and how many replies a message to all nodes can get.

Handlers run in the order messages arrive, up to their first ``await`` (a broadcast fans out
before the next message is looked at); what awaits goes on in a task of its own.

The listener reconnects by itself with capped exponential backoff (``RECONNECT_BASE``
doubling up to ``RECONNECT_CAP``); once it has subscribed again (and PING answered), the
store is marked healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import secrets
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from server.cluster.store import ALL_TOPIC, UNREACHABLE, RedisStore, node_topic, redact_url
from server.errors import (
    ClientNotFound,
    PeerUnreachable,
    SessionMoved,
    SwitchboardError,
    Unavailable,
)
from server.seams import PeerHandler

log = structlog.get_logger("switchboard.cluster.bus")

#: First and longest wait between reconnection attempts of the listener (seconds).
RECONNECT_BASE = 0.05
RECONNECT_CAP = 2.0
#: How long start() waits for the first subscription before going on unhealthy.
START_WAIT = 5.0
#: Errors a handler raises that are raised again, as such, on the asking node.
_ERRORS_BY_CODE: dict[str, type[SwitchboardError]] = {
    SessionMoved.code: SessionMoved, Unavailable.code: Unavailable,
    ClientNotFound.code: ClientNotFound}


class _Waiting:
    """Replies to one request as they arrive."""

    __slots__ = ("arrived", "expected", "replies")

    def __init__(self) -> None:
        self.replies: list[dict[str, Any]] = []
        self.expected = 1
        self.arrived = asyncio.Event()

    def add(self, reply: dict[str, Any]) -> None:
        self.replies.append(reply)
        self.arrived.set()


class _Gathering:
    """A message to every other node, and their replies."""

    def __init__(self, bus: RedisPeers, request_id: str, waiting: _Waiting, nodes: int) -> None:
        self.bus = bus
        self.request_id = request_id
        self.waiting = waiting
        self.nodes = nodes

    async def replies(self, timeout: float,  # noqa: ASYNC109 - a bound
                      until: Callable[[dict[str, Any]], bool] | None = None
                      ) -> list[dict[str, Any]]:
        waiting = self.waiting
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    while len(waiting.replies) < self.nodes:
                        if until is not None and any(until(r) for r in self._ok()):
                            break
                        waiting.arrived.clear()
                        await waiting.arrived.wait()
        finally:
            self.bus.requests.pop(self.request_id, None)
        return self._ok()

    def _ok(self) -> list[dict[str, Any]]:
        return [reply["ok"] for reply in self.waiting.replies if "ok" in reply]


class RedisPeers:
    """This node's end of the peer bus."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.me = store.me
        self.handlers: dict[str, PeerHandler] = {}
        self.requests: dict[str, _Waiting] = {}
        self.topics = (node_topic(self.me), ALL_TOPIC)
        self.tasks: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    def handle(self, op: str, handler: PeerHandler) -> None:
        self.handlers[op] = handler

    # --- asking ---------------------------------------------------------------------------

    async def _publish(self, topic: str, header: dict[str, Any], body: bytes) -> int:
        async with self.store.guard():
            return int(await self.store.redis.publish(topic, orjson.dumps(header) + b"\n" + body))

    async def request(self, node: str, op: str, header: dict[str, Any], body: bytes = b"", *,
                      timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        request_id = secrets.token_hex(8)
        waiting = self.requests[request_id] = _Waiting()
        try:
            listeners = await self._publish(
                node_topic(node), {**header, "op": op, "req": request_id, "from": self.me}, body)
            if listeners == 0:
                raise PeerUnreachable(node)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await waiting.arrived.wait()
        finally:
            self.requests.pop(request_id, None)
        if not waiting.replies:
            raise Unavailable(f"node {node!r} did not answer {op!r} in time; retry")
        reply = waiting.replies[0]
        if "error" in reply:
            error = dict(reply["error"])
            code = error.pop("code", "internal_error")
            message = error.pop("message", "error on another node")
            raise _ERRORS_BY_CODE.get(code, SwitchboardError)(
                message, code=code, http_status=int(reply.get("http_status", 500)),
                details=error)
        return dict(reply["ok"])

    async def publish_all(self, op: str, header: dict[str, Any], body: bytes = b""
                          ) -> _Gathering:
        request_id = secrets.token_hex(8)
        waiting = self.requests[request_id] = _Waiting()
        try:
            listeners = await self._publish(
                ALL_TOPIC, {**header, "op": op, "req": request_id, "from": self.me}, body)
        except BaseException:
            self.requests.pop(request_id, None)
            raise
        return _Gathering(self, request_id, waiting, max(0, listeners - 1))

    # --- answering ------------------------------------------------------------------------

    async def _dispatch(self, payload: bytes) -> None:
        raw_header, _, body = payload.partition(b"\n")
        header = orjson.loads(raw_header)
        op = header.get("op")
        if op == "reply":
            waiting = self.requests.get(header["req"])
            if waiting is not None:
                waiting.add(header)
            return
        if header.get("from") == self.me:
            return  # our own message to every node
        handler = self.handlers.get(op)
        if handler is None:
            log.warning("cluster_unknown_op", op=op, sender=header.get("from"))
            return
        try:
            result = handler(header, body)
        except Exception as exc:
            self._spawn(self._reply(header, error=exc))
            return
        if inspect.isawaitable(result):
            self._spawn(self._answer(header, result))
        else:
            self._spawn(self._reply(header, ok=result))

    async def _answer(self, header: dict[str, Any], result: Any) -> None:
        try:
            ok = await result
        except Exception as exc:
            await self._reply(header, error=exc)
        else:
            await self._reply(header, ok=ok)

    async def _reply(self, header: dict[str, Any], *, ok: dict[str, Any] | None = None,
                     error: Exception | None = None) -> None:
        reply: dict[str, Any] = {"op": "reply", "req": header["req"]}
        if error is None:
            reply["ok"] = ok
        elif isinstance(error, SwitchboardError):
            reply["error"] = error.to_dict()
            reply["http_status"] = error.http_status
        else:
            log.error("cluster_op_failed", op=header.get("op"), exc_info=error)
            reply["error"] = {"code": "internal_error", "message": "internal server error"}
            reply["http_status"] = 500
        try:
            await self.store.redis.publish(node_topic(header["from"]), orjson.dumps(reply))
        except UNREACHABLE as exc:
            self.store.report_failure(exc)
            log.warning("cluster_reply_lost", op=header.get("op"), to=header.get("from"))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- the listener ---------------------------------------------------------------------

    async def start(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(
            self._listen_forever(), name=f"redis-listener-{self.me}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(START_WAIT):
                await self._subscribed.wait()
        if not self.store.healthy:
            log.warning("broker_unreachable_at_start", url=redact_url(self.store.url),
                        error=self.store.last_error)

    async def stop(self) -> None:
        """Stop taking messages (other nodes see this node gone); requests in progress end."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _listen_forever(self) -> None:
        store = self.store
        delay = RECONNECT_BASE
        while True:
            pubsub = store.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self.topics)
                await store.redis.ping()
                store.kick.clear()
                self._subscribed.set()
                store.set_healthy(True)
                delay = RECONNECT_BASE
                await self._pump(pubsub)
            except asyncio.CancelledError:
                raise
            except (*UNREACHABLE, RedisError) as exc:
                store.last_error = f"{type(exc).__name__}: {exc}"
                store.set_healthy(False)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_CAP)

    async def _pump(self, pubsub: Any) -> None:
        """Hand each message to its handler in order; returns (raising) when a command failure
        kicked the listener (it then re-subscribes, verifying the connection)."""
        kick = self.store.kick
        while not kick.is_set():
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None or message.get("type") != "message":
                continue
            try:
                await self._dispatch(message["data"])
            except Exception:
                log.exception("broker_message_failed", channel=str(message.get("channel")))
        raise RedisConnectionError(self.store.last_error or "a command found Redis unreachable")
