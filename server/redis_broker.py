"""The Redis broker: pub/sub between nodes, and the connection the cluster keeps its state in.

Imported lazily by :func:`server.broker.create_broker` for ``redis://`` and ``rediss://`` URLs
(redis-py's asyncio client). Every node subscribes to two channels:

* ``sb:node:{node_id}``: requests addressed to this node (send, call, disconnect, takeover of a
  session it holds) and replies to its own requests;
* ``sb:all``: cluster-wide messages (broadcasts, relayed tool results).

Redis trouble is visible, never silent: :attr:`healthy` is False from the moment the
subscription breaks (or a command finds Redis unreachable) until the listener has subscribed
again; ``GET /ready`` answers 503 meanwhile. The listener reconnects by itself with capped
exponential backoff (``RECONNECT_BASE`` doubling up to ``RECONNECT_CAP``) and logs each state
change; commands retry briefly through redis-py's ``Retry(ExponentialBackoff)``. Callbacks
registered with :meth:`on_state_change` run when health flips (the cluster re-syncs then).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.broker import Broker, OnMessage

log = structlog.get_logger("switchboard.broker")

PREFIX = "sb:"
ALL_TOPIC = f"{PREFIX}all"
#: First and longest wait between reconnection attempts of the pub/sub listener (seconds).
RECONNECT_BASE = 0.05
RECONNECT_CAP = 2.0
#: How long start() waits for the first subscription before going on unhealthy.
START_WAIT = 5.0
#: Seconds a command may take on an established connection / to connect.
SOCKET_TIMEOUT = 5.0
CONNECT_TIMEOUT = 1.0

StateCallback = Callable[[bool], Awaitable[None]]
#: Errors meaning "Redis is unreachable right now" (as opposed to a bad command).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError,
               TimeoutError)


def node_topic(node_id: str) -> str:
    return f"{PREFIX}node:{node_id}"


def redact_url(url: str) -> str:
    """The URL without its password (for logs and ``/status``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


class RedisBroker(Broker):
    """Pub/sub over Redis with its own reconnect loop; ``redis`` is the shared command client."""

    scheme = "redis"

    def __init__(self, url: str, node_id: str = "") -> None:
        super().__init__(url, node_id)
        self.scheme = urlsplit(url).scheme or "redis"
        self.redis: Redis = Redis.from_url(
            url,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), retries=2),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
            health_check_interval=10,
        )
        self.topics = (node_topic(self.node_id), ALL_TOPIC)
        self._healthy = False
        self._listener: asyncio.Task[None] | None = None
        self._callbacks: list[StateCallback] = []
        self._start_hooks: list[Callable[[], Awaitable[None]]] = []
        self._stop_hooks: list[Callable[[], Awaitable[None]]] = []
        self._subscribed = asyncio.Event()
        self._kick: asyncio.Event | None = None
        self.last_error = ""

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def distributed(self) -> bool:
        return True

    def on_state_change(self, callback: StateCallback) -> None:
        """``await callback(healthy)`` each time health flips (after the flip is logged)."""
        self._callbacks.append(callback)

    def on_start(self, hook: Callable[[], Awaitable[None]]) -> None:
        self._start_hooks.append(hook)

    def on_stop(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run before the connections close (the cluster flushes and leaves here)."""
        self._stop_hooks.append(hook)

    async def start(self, on_message: OnMessage) -> None:
        await super().start(on_message)
        self._kick = asyncio.Event()
        for hook in self._start_hooks:
            await hook()
        self._listener = asyncio.get_running_loop().create_task(
            self._listen_forever(), name=f"redis-listener-{self.node_id}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(START_WAIT):
                await self._subscribed.wait()
        if not self._healthy:
            log.warning("broker_unreachable_at_start", url=redact_url(self.url),
                        error=self.last_error)

    async def stop(self) -> None:
        # Stop taking requests from other nodes first (they see this node gone and wait or
        # answer 503), then let the hooks write everything out over the command connection.
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        for hook in self._stop_hooks:
            try:
                await hook()
            except Exception:
                log.exception("broker_stop_hook_failed")
        await self.redis.aclose()
        self._healthy = False
        await super().stop()

    async def publish(self, topic: str, payload: bytes) -> None:
        await self.publish_count(topic, payload)

    async def publish_count(self, topic: str, payload: bytes) -> int:
        """PUBLISH; returns how many subscribers (nodes) received it."""
        try:
            return int(await self.redis.publish(topic, payload))
        except UNREACHABLE as exc:
            self.report_failure(exc)
            raise

    def report_failure(self, exc: BaseException) -> None:
        """A command found Redis unreachable: mark unhealthy and make the listener reconnect
        (it marks healthy again once it has subscribed)."""
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self._healthy:
            self._set_healthy(False)
        if self._kick is not None:
            self._kick.set()

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"backend": self.scheme, "node_id": self.node_id,
                                  "healthy": self.healthy, "url": redact_url(self.url)}
        if not self._healthy and self.last_error:
            out["error"] = self.last_error
        return out

    # --- the listener -------------------------------------------------------------------------

    def _set_healthy(self, healthy: bool) -> None:
        if healthy == self._healthy:
            return
        self._healthy = healthy
        if healthy:
            self.last_error = ""
            log.info("broker_connected", node_id=self.node_id, url=redact_url(self.url))
        else:
            log.warning("broker_unreachable", node_id=self.node_id, url=redact_url(self.url),
                        error=self.last_error)
        for callback in self._callbacks:
            asyncio.get_running_loop().create_task(self._run_callback(callback, healthy))

    async def _run_callback(self, callback: StateCallback, healthy: bool) -> None:
        try:
            await callback(healthy)
        except Exception:
            log.exception("broker_state_callback_failed", healthy=healthy)

    async def _listen_forever(self) -> None:
        delay = RECONNECT_BASE
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self.topics)
                await self.redis.ping()
                assert self._kick is not None
                self._kick.clear()
                self._subscribed.set()
                self._set_healthy(True)
                delay = RECONNECT_BASE
                await self._pump(pubsub)
            except asyncio.CancelledError:
                raise
            except (*UNREACHABLE, RedisError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._set_healthy(False)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_CAP)

    async def _pump(self, pubsub: Any) -> None:
        """Hand each message to ``on_message`` in order; returns when a command failure
        kicked the listener (it then re-subscribes, verifying the connection)."""
        assert self._kick is not None
        kick = self._kick
        while not kick.is_set():
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None or message.get("type") != "message":
                continue
            handler = self._on_message
            if handler is None:
                continue
            channel = message["channel"]
            topic = channel.decode() if isinstance(channel, bytes) else str(channel)
            try:
                await handler(topic, message["data"])
            except Exception:
                log.exception("broker_message_failed", topic=topic)
        raise RedisConnectionError(self.last_error or "a command found Redis unreachable")
